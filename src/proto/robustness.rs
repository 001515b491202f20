//! Randomized robustness checks for every decoder that faces the network: arbitrary bytes must produce an
//! error or a value, never a panic, an unbounded allocation or a hang.

use bytes::BytesMut;
use rand::{Rng, RngExt, SeedableRng};

use super::error::parse_fields;
use super::frame::{FrameSplitter, Item};
use super::messages::{decode_parse, decode_query};
use super::startup::decode_startup;

fn random_bytes(rng: &mut impl Rng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..max);
    let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    // Bias towards protocol-looking input: valid-ish lengths, NULs and known tags.
    if !v.is_empty() && rng.random_bool(0.5) {
        let i = rng.random_range(0..v.len());
        v[i] = 0;
    }
    v
}

#[test]
fn decoders_never_panic_on_random_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x005e_ed0f_9e11);
    for _ in 0..20_000 {
        let body = random_bytes(&mut rng, 64);
        let mut packet = body.clone();
        if packet.len() >= 4 && rng.random_bool(0.5) {
            packet[..4].copy_from_slice(&196608i32.to_be_bytes());
        }
        if packet.len() >= 4 {
            let _ = decode_startup(&packet);
        }
        let _ = decode_parse(&body);
        let _ = decode_query(&body);
        let _ = parse_fields(&body);
    }
}

#[test]
fn frame_splitter_consumes_random_streams_without_panicking() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..2_000 {
        let mut splitter = FrameSplitter::new(1024);
        let mut buf = BytesMut::new();
        let mut forwarded = 0usize;
        let total_in: usize = (0..rng.random_range(1..8usize))
            .map(|_| {
                let chunk = random_bytes(&mut rng, 300);
                buf.extend_from_slice(&chunk);
                chunk.len()
            })
            .sum();
        // Each step either consumes bytes or stops: the loop is bounded by the input size.
        for _ in 0..=total_in {
            match splitter.next(&mut buf, |t| t == b'Q' || t == b'Z') {
                Ok(Some(Item::Forward(b))) | Ok(Some(Item::Inspect(b))) => {
                    assert!(!b.is_empty());
                    forwarded += b.len();
                }
                Ok(Some(Item::Limit | Item::Discarded)) => panic!("a splitter that does not count"),
                Ok(None) | Err(_) => break,
            }
        }
        assert!(forwarded <= total_in);
    }
}
