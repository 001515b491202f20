//! The fuzz targets: one function per parser that faces clients or operators, each taking arbitrary bytes.
//! A target panics only when pgveil misbehaves: a panic inside pgveil, or a property below that does not hold.
//! Shared by the coverage-guided binaries of the `fuzz/` crate (cargo-afl) and by the bounded replay in the
//! normal test suite (tests/fuzz.rs), which includes this file with `#[path]`.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use bytes::BytesMut;
use pgveil::frontend::{sqlscan, sqltree};
use pgveil::ids::{RoleName, TenantId};
use pgveil::policy::catalog::Catalog;
use pgveil::policy::catalog::saved;
use pgveil::policy::file::Policy;
use pgveil::policy::functions::PseudonymKey;
use pgveil::policy::rewrite::{self, Context, Outcome};
use pgveil::proto::error::{parse_fields, replace_detail};
use pgveil::proto::frame::{self, FrameSplitter, Item};
use pgveil::proto::messages;
use pgveil::proto::startup::{StartupPacket, decode_startup};

/// A target: arbitrary bytes in, a panic when pgveil misbehaves.
pub type Target = fn(&[u8]);

/// Every target with its name (the corpus folder `fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("startup", startup),
    ("frames", frames),
    ("parse_bind", parse_bind),
    ("rewrite_check", rewrite_check),
    ("sqlscan", sqlscan),
    ("policy_load", policy_load),
];

/// The `fuzz/` folder (corpora, catalog).
pub fn fuzz_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if manifest.ends_with("fuzz") {
        manifest.to_path_buf()
    } else {
        manifest.join("fuzz")
    }
}

/// Startup-phase packets (the body after the length word): a value or a protocol error, and a decoded
/// startup message never holds a parameter twice.
pub fn startup(data: &[u8]) {
    if let Ok(StartupPacket::Startup(m)) = decode_startup(data) {
        for (i, (k, _)) in m.params.iter().enumerate() {
            assert!(
                !m.params[..i].iter().any(|(o, _)| o == k),
                "duplicate {k:?}"
            );
        }
    }
}

/// The relay's frame splitter over a byte stream arriving in chunks: every byte comes out once, in order and
/// unchanged; inspected frames are whole and within the cap; the splitter never stalls with a whole frame
/// buffered. The first two bytes choose the cap and the chunking, the rest is the stream.
pub fn frames(data: &[u8]) {
    let [cap, chunking, stream @ ..] = data else {
        return;
    };
    let max_inspected = 5 + usize::from(*cap) * 4;
    let chunk = 1 + usize::from(*chunking % 64);
    let inspect = |t: u8| matches!(t, b'Q' | b'P' | b'B' | b'Z' | b'E');
    let mut splitter = FrameSplitter::new(max_inspected);
    let mut buf = BytesMut::new();
    let mut out = Vec::with_capacity(stream.len());
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        // Each item takes at least one byte: the loop ends within the input's length.
        for _ in 0..=stream.len() {
            match splitter.next(&mut buf, inspect) {
                Ok(Some(Item::Inspect(f))) => {
                    assert!(inspect(f[0]) && f.len() <= max_inspected);
                    let len = i32::from_be_bytes([f[1], f[2], f[3], f[4]]);
                    assert_eq!(usize::try_from(len).ok(), Some(f.len() - 1));
                    assert_eq!(frame::payload(&f).len(), f.len() - 5);
                    out.extend_from_slice(&f);
                }
                Ok(Some(Item::Forward(b))) => {
                    assert!(!b.is_empty());
                    out.extend_from_slice(&b);
                }
                Ok(None) => break,
                // Only counting splitters (the guard's backend side) limit or discard; this one does not count.
                Ok(Some(Item::Limit | Item::Discarded)) => {
                    panic!("a non-counting splitter limited")
                }
                Err(_) => return, // the relay ends the session: nothing more is read
            }
        }
    }
    assert_eq!(out, stream[..out.len()], "bytes changed or reordered");
    assert_eq!(out.len() + buf.len(), stream.len(), "bytes lost");
}

/// Parse, Bind, Query, Describe/Close and ErrorResponse payloads: decoded or refused, and what pgveil
/// re-encodes from a decoded Parse or Bind (renaming statements) is byte-for-byte the payload it came from.
pub fn parse_bind(data: &[u8]) {
    if let Some(p) = messages::decode_parse(data) {
        let mut def = p.sql.to_vec();
        def.push(0);
        def.extend_from_slice(p.param_types);
        let mut out = BytesMut::new();
        messages::parse_def(&mut out, p.name, &def);
        assert_eq!(out[0], messages::tag::PARSE);
        assert_eq!(frame::payload(&out), data);
    }
    if let Some(b) = messages::decode_bind(data) {
        let mut out = BytesMut::new();
        messages::bind_renamed(&mut out, b.portal, b.statement, b.rest);
        assert_eq!(frame::payload(&out), data);
    }
    let _ = messages::decode_query(data);
    let _ = messages::decode_target(data);
    let fields = parse_fields(data);
    assert!(fields.iter().map(|(_, v)| v.len() + 2).sum::<usize>() <= data.len() + 1);
    let mut e = vec![b'E', 0, 0, 0, 0];
    e.extend_from_slice(data);
    let len = i32::try_from(e.len() - 1).unwrap_or(i32::MAX);
    e[1..5].copy_from_slice(&len.to_be_bytes());
    if let Some(f) = replace_detail(&e, "replaced") {
        assert_eq!(f[0], b'E');
        let len = i32::from_be_bytes([f[1], f[2], f[3], f[4]]);
        assert_eq!(usize::try_from(len).ok(), Some(f.len() - 1));
    }
}

/// What the statement check needs: the shipped example policy, the unit tests' catalog (the demo payments
/// schema plus a partition, an inheritance child, a view, a generated column, a user function and operator;
/// `fuzz/catalog.json`, saved by `pgveil policy catalog`'s format) and a placeholder key.
struct Decider {
    policy: Policy,
    catalog: Catalog,
    key: PseudonymKey,
    tenant: TenantId,
}

static DECIDER: LazyLock<Decider> = LazyLock::new(|| {
    let root = fuzz_dir().join("..");
    let policy_path = root.join("policies/payments.toml");
    let text = std::fs::read_to_string(&policy_path).unwrap_or_default();
    let policy = Policy::from_texts(&[(policy_path, text)]).unwrap_or_else(|e| {
        panic!("policies/payments.toml: {e}");
    });
    let catalog_path = fuzz_dir().join("catalog.json");
    let text = std::fs::read_to_string(&catalog_path).unwrap_or_default();
    let saved = saved::from_json(&text, &catalog_path).unwrap_or_else(|e| panic!("{e}"));
    Decider {
        policy,
        catalog: saved.catalog,
        key: PseudonymKey::new(b"pgveil-fuzz-key"),
        tenant: saved.tenant,
    }
});

/// The policy engine's statement decision (`rewrite::check`) for every role of the example policy, held to
/// PostgreSQL's own parser (libpg_query): a statement pgveil lets through parses, a rewrite parses and keeps
/// the number of statements, and a rewrite is only of text the role may not read as it is.
pub fn rewrite_check(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    if sql.contains('\0') {
        return; // a Query or Parse text ends at its NUL: it cannot hold one
    }
    let d = &*DECIDER;
    let mut roles: Vec<&RoleName> = d.policy.roles().collect();
    roles.sort();
    let statements = |s: &str| pg_query::parse(s, 0).map(|p| p.protobuf.stmts.len());
    let original = on_deep_stack(|| statements(sql));
    for role in roles {
        let Some(eff) = d.policy.effective(&d.tenant, role) else {
            continue;
        };
        let ctx = Context {
            policy: &eff,
            catalog: Some(&d.catalog),
            key: Some(&d.key),
            role,
        };
        match rewrite::check(sql, &ctx).outcome {
            Outcome::Allow => assert!(
                original.is_ok(),
                "{role}: allowed text PostgreSQL does not parse: {:?}",
                original.as_ref().err()
            ),
            Outcome::Rewrite { sql: new, .. } => {
                let rewritten = on_deep_stack(|| statements(&new));
                assert!(
                    rewritten.is_ok() && rewritten.as_ref().ok() == original.as_ref().ok(),
                    "{role}: rewrite {new:?} of a statement with {original:?} statements parses as {rewritten:?}"
                );
            }
            Outcome::Refuse(r) => {
                assert!(["42501", "0A000", "42601", "42P01"].contains(&r.code));
                let _ = r.to_pg_error();
            }
        }
    }
}

/// The transaction-mode pinning scan, and a differential against PostgreSQL's parse: for text that parses,
/// every effect the parse tree shows (settings, dropped statements, pinning) is also found by the scan
/// (the scan may say more, never less: a missed pin leaks session state to the next client).
pub fn sqlscan(data: &[u8]) {
    let fx = sqlscan::scan(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('\0') || !on_deep_stack(|| pg_query::parse(text, 0).is_ok()) {
        return;
    }
    let mut tree = sqlscan::SqlEffects::default();
    sqltree::add_effects(data, &mut tree);
    assert!(
        !tree.settings || fx.settings,
        "settings missed: tree {tree:?}, scan {fx:?}"
    );
    assert!(
        !tree.drops_statements || fx.drops_statements,
        "dropped statements missed: tree {tree:?}, scan {fx:?}"
    );
    assert!(
        tree.pins.is_none() || fx.pins.is_some(),
        "pin missed: tree {tree:?}, scan {fx:?}"
    );
    assert!(
        !tree.reserved || fx.reserved,
        "reserved name missed: tree {tree:?}, scan {fx:?}"
    );
}

/// Policy loading from operator-written TOML: a policy or a list of problems, alone and next to the shipped
/// example (files merge).
pub fn policy_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let own = (PathBuf::from("fuzz.toml"), text.to_owned());
    if let Ok(p) = Policy::from_texts(std::slice::from_ref(&own)) {
        assert!(p.roles().next().is_some(), "a policy without roles loaded");
    }
    let example = fuzz_dir().join("../policies/payments.toml");
    let base = std::fs::read_to_string(&example).unwrap_or_default();
    let _ = Policy::from_texts(&[(example, base), own]);
}

/// Runs `f` on a thread with a large stack: PostgreSQL's parser and the protobuf decoding of its tree recurse
/// per nesting level, like pgveil's own decision (which runs deep statements on such a thread itself).
fn on_deep_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(s, f)
            .map(|h| h.join())
            .unwrap_or_else(|e| panic!("thread: {e}"))
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
