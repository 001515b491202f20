//! The fuzz targets (fuzz/targets.rs) as a bounded, deterministic test: every committed corpus input of each
//! target, then inputs mutated from them with a fixed seed (`PGVEIL_FUZZ_ITERS` per target, default 5000;
//! `PGVEIL_FUZZ_SEED` picks another seed). No instrumentation: the coverage-guided long run is the `fuzz/`
//! crate under cargo-afl (README "Tests"). A failing input is printed and saved under target/fuzz-failures/.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use targets::{TARGETS, Target, fuzz_dir};

/// Inputs of a folder, sorted by name (empty when the folder is missing).
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
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
fn dictionary(path: &Path) -> Vec<Vec<u8>> {
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
fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8], dict: &[Vec<u8>]) -> Vec<u8> {
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

/// Runs one input; on a failure, prints it and saves it for reproduction before failing.
fn run_one(name: &str, target: Target, what: &str, data: &[u8]) {
    let result = std::panic::catch_unwind(|| target(data));
    if let Err(panic) = result {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{name}-{:016x}", fnv(data)));
        let _ = std::fs::write(&file, data);
        eprintln!(
            "fuzz target {name} failed on {what}, saved as {}: {:?}",
            file.display(),
            String::from_utf8_lossy(data)
        );
        std::panic::resume_unwind(panic);
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fuzz(name: &str) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap();
    let corpus = inputs(&fuzz_dir().join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no inputs");
    for (path, data) in &corpus {
        run_one(name, target, &path.display().to_string(), data);
    }
    let dict = dictionary(&fuzz_dir().join("dict").join(format!("{name}.dict")));
    let iterations = env_u64("PGVEIL_FUZZ_ITERS", 5000);
    let seed = env_u64("PGVEIL_FUZZ_SEED", 0x9e37_79b9_7f4a_7c15) ^ fnv(name.as_bytes());
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..iterations {
        let a = &corpus[rng.random_range(0..corpus.len())].1;
        let b = &corpus[rng.random_range(0..corpus.len())].1;
        let data = mutate(&mut rng, a, b, &dict);
        run_one(
            name,
            target,
            &format!("mutation {i} (seed {seed:#x})"),
            &data,
        );
    }
}

#[test]
fn startup() {
    fuzz("startup");
}

#[test]
fn frames() {
    fuzz("frames");
}

#[test]
fn parse_bind() {
    fuzz("parse_bind");
}

#[test]
fn rewrite_check() {
    fuzz("rewrite_check");
}

#[test]
fn sqlscan() {
    fuzz("sqlscan");
}

#[test]
fn policy_load() {
    fuzz("policy_load");
}

/// Every target is run by a test above and has a corpus.
#[test]
fn every_target_has_a_test_and_a_corpus() {
    let here = include_str!("fuzz.rs");
    for (name, _) in TARGETS {
        assert!(
            here.contains(&format!("fuzz(\"{name}\")")),
            "{name} has no test"
        );
        assert!(
            fuzz_dir().join("corpus").join(name).is_dir(),
            "{name} has no corpus"
        );
    }
}
