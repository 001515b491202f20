//! The fuzz targets (fuzz/targets.rs) as a bounded, deterministic test: every committed corpus input of each
//! target, then inputs mutated from them with a fixed seed (`PGVEIL_FUZZ_ITERS` per target, default 5000;
//! `PGVEIL_FUZZ_SEED` picks another seed). No instrumentation: the coverage-guided long run is the `fuzz/`
//! crate under cargo-afl (README "Tests"). A failing input is printed and saved under target/fuzz-failures/.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

#[path = "../fuzz/targets.rs"]
mod targets;

mod mutation;

use rand::RngExt;

use mutation::{dictionary, env_u64, inputs, mutate, save_failure, seeded};
use targets::{TARGETS, Target, fuzz_dir};

/// Runs one input; on a failure, prints it and saves it for reproduction before failing.
fn run_one(name: &str, target: Target, what: &str, data: &[u8]) {
    let result = std::panic::catch_unwind(|| target(data));
    if let Err(panic) = result {
        let file = save_failure(name, data);
        eprintln!(
            "fuzz target {name} failed on {what}, saved as {}: {:?}",
            file.display(),
            String::from_utf8_lossy(data)
        );
        std::panic::resume_unwind(panic);
    }
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
    let (seed, mut rng) = seeded(name);
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
