//! The seeded mutator shared by the bounded fuzz replays (tests/fuzz.rs, tests/fuzz_live.rs): corpus and
//! dictionary reading, the mutation itself, and where a failing input is saved.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Inputs of a folder, sorted by name (empty when the folder is missing).
pub fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    v.sort();
    v
}

/// The tokens of an AFL dictionary (`name="value"` or `"value"` lines, `\xNN`, `\\` and `\"` escapes).
pub fn dictionary(path: &Path) -> Vec<Vec<u8>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut tokens = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let (Some(a), Some(b)) = (line.find('"'), line.rfind('"')) else {
            continue;
        };
        if b <= a {
            continue;
        }
        let raw = &line.as_bytes()[a + 1..b];
        let mut tok = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\' && raw.get(i + 1) == Some(&b'x') && i + 3 < raw.len() {
                let hex = std::str::from_utf8(&raw[i + 2..i + 4]).unwrap();
                tok.push(u8::from_str_radix(hex, 16).unwrap());
                i += 4;
            } else if raw[i] == b'\\' && i + 1 < raw.len() {
                tok.push(raw[i + 1]);
                i += 2;
            } else {
                tok.push(raw[i]);
                i += 1;
            }
        }
        tokens.push(tok);
    }
    tokens
}

/// A few random edits of a seed: byte flips and inserts, deletions, duplicated runs, dictionary tokens,
/// splices with another seed.
pub fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8], dict: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..6u32) {
        let at = if v.is_empty() {
            0
        } else {
            rng.random_range(0..=v.len())
        };
        match rng.random_range(0..7u32) {
            0 if at < v.len() => v[at] ^= 1 << rng.random_range(0..8u32),
            1 => v.insert(at, rng.random()),
            2 if at < v.len() => {
                let end = rng.random_range(at..=v.len().min(at + 16));
                v.drain(at..end);
            }
            3 if at < v.len() => {
                let end = rng.random_range(at..=v.len().min(at + 32));
                let run = v[at..end].to_vec();
                v.splice(at..at, run);
            }
            4 | 5 if !dict.is_empty() => {
                let tok = &dict[rng.random_range(0..dict.len())];
                v.splice(at..at, tok.iter().copied());
            }
            6 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let end = rng.random_range(from..=other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..end]);
            }
            _ => v.insert(at, [0, b'\'', b'$', b';', b'\\', 0xff][at % 6]),
        }
    }
    v.truncate(64 * 1024);
    v
}

/// FNV-1a of the bytes (names saved inputs and varies the seed per target).
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// An integer from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of a target's mutations (`PGVEIL_FUZZ_SEED`, or a fixed default, mixed with the target's name) and
/// its generator.
pub fn seeded(name: &str) -> (u64, StdRng) {
    let seed = env_u64("PGVEIL_FUZZ_SEED", 0x9e37_79b9_7f4a_7c15) ^ fnv(name.as_bytes());
    (seed, StdRng::seed_from_u64(seed))
}

/// Saves a failing input for reproduction as `target/fuzz-failures/<name>-<fnv of the input>`.
pub fn save_failure(name: &str, data: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}-{:016x}", fnv(data)));
    let _ = std::fs::write(&file, data);
    file
}
