use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[tokio::test]
async fn exact_mode_never_reads_past_the_frame() {
    let data = [msg(b'p', b"token\0"), b"\x16\x03\x01more".to_vec()].concat();
    let mut r: &[u8] = &data;
    let frame = Framed::exact(&mut r).read_frame(100).await.unwrap();
    assert_eq!(frame.tag(), b'p');
    assert_eq!(frame.payload(), b"token\0");
    // What follows (e.g. a TLS handshake) is still in the stream.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"\x16\x03\x01more");
}

#[tokio::test]
async fn buffered_mode_keeps_what_follows_in_the_buffer() {
    let data = [msg(b'Z', b"I"), msg(b'C', b"SELECT 1\0")].concat();
    let mut r: &[u8] = &data;
    let mut rbuf = BytesMut::new();
    let mut f = Framed::buffered(&mut r, &mut rbuf);
    assert_eq!(f.read_frame(1 << 20).await.unwrap().payload(), b"I");
    assert_eq!(f.read_frame(1 << 20).await.unwrap().tag(), b'C');
    assert!(matches!(
        f.read_frame(1 << 20).await,
        Err(ReadError::Closed)
    ));
}

#[tokio::test]
async fn caps_lengths_before_allocating() {
    let mut r: &[u8] = &[b'p', 0x7f, 0xff, 0xff, 0xff, 0, 0];
    let err = Framed::exact(&mut r).read_frame(100).await.unwrap_err();
    assert!(matches!(err, ReadError::BadLength(0x7fff_ffff)));
    let mut r: &[u8] = &[b'Q', 0, 0, 0, 3];
    let err = Framed::exact(&mut r).read_frame(100).await.unwrap_err();
    assert!(matches!(err, ReadError::BadLength(3)));
    // The cap is on the length word: 4 + payload.
    let data = msg(b'p', &[1u8; 96]);
    assert!(Framed::exact(&data[..]).read_frame(100).await.is_ok());
    assert!(matches!(
        Framed::exact(&data[..]).read_frame(99).await,
        Err(ReadError::BadLength(100))
    ));
}

#[tokio::test]
async fn startup_packets_are_capped_and_decoded() {
    let mut data: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0];
    let err = Framed::exact(&mut data)
        .read_startup(10_000)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::Refused(e) if e.code() == "08P01"));
    let mut data: &[u8] = &[0, 0, 0, 4];
    let err = Framed::exact(&mut data)
        .read_startup(10_000)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::Refused(e) if e.code() == "08P01"));
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 0x16];
    let mut r: &[u8] = &ssl;
    let p = Framed::exact(&mut r).read_startup(10_000).await.unwrap();
    assert_eq!(p, StartupPacket::SslRequest);
    assert_eq!(r, &[0x16]);
    let mut r: &[u8] = &ssl[..6];
    assert!(matches!(
        Framed::exact(&mut r).read_startup(10_000).await,
        Err(ReadError::Closed)
    ));
}

#[tokio::test]
async fn skips_frames_over_the_cap() {
    let data = [msg(b'D', &[9u8; 50_000]), msg(b'Z', b"I")].concat();
    let mut r: &[u8] = &data;
    let mut f = Framed::buffered(&mut r, BytesMut::new());
    let skipped = f.read_frame_or_skip(1000).await.unwrap();
    assert_eq!((skipped.tag(), skipped.payload()), (b'D', &b""[..]));
    let z = f.read_frame_or_skip(1000).await.unwrap();
    assert_eq!(z.into_bytes(), BytesMut::from(&msg(b'Z', b"I")[..]));
}

#[tokio::test]
async fn writes_fatal_and_error_with_ready_for_query() {
    let mut out = Vec::new();
    let err = PgError::protocol_violation("bad");
    Framed::exact(&mut out).write_fatal(&err).await.unwrap();
    let mut expected = BytesMut::new();
    err.encode(&mut expected);
    assert_eq!(out, expected.to_vec());

    let mut out = Vec::new();
    let err = PgError::insufficient_privilege("no");
    Framed::exact(&mut out)
        .write_error(&err, b'T')
        .await
        .unwrap();
    let mut expected = BytesMut::new();
    err.encode(&mut expected);
    messages::ready_for_query(&mut expected, b'T');
    assert_eq!(out, expected.to_vec());
}
