//! Cost of the exfiltration guard per result batch, and of the statement tally (audit record queued) per
//! statement, on the relay's own code paths (no network, no PostgreSQL): a batch is one 16 KiB backend read of
//! DataRow messages (160 rows of 97 bytes), split the way the relay splits it, without and with counting
//! against a guard (`max_rows_per_statement`, `max_rows`, `max_bytes` with a window: the worst case, one
//! window lock per batch). Prints ns per batch (best of 5 runs) and the difference.
//!
//! Usage: cargo run --release --example guard_cost
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgveil::audit::{AuditConfig, AuditTag, Auditor, SessionInfo};
use pgveil::exfil::{Budgets, Limits};
use pgveil::frontend::tally::{EndAction, SessionAudit, Tally};
use pgveil::ids::{RoleName, TenantId, UserId};
use pgveil::proto::TxnStatus;
use pgveil::proto::frame::{FrameSplitter, Item};

const ROWS_PER_BATCH: usize = 160;
const BATCHES: usize = 100_000;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn batch() -> Vec<u8> {
    let row = msg(b'D', &[b'x'; 96]);
    row.repeat(ROWS_PER_BATCH)
}

fn inspect(t: u8) -> bool {
    matches!(t, b'Z' | b'S' | b'E' | b'C' | b'I' | b's')
}

/// The relay's loop over one batch without a guard.
fn plain(b: &[u8], out: &mut BytesMut) {
    let mut split = FrameSplitter::new(1 << 24);
    let mut buf = BytesMut::from(b);
    while let Some(item) = split.next(&mut buf, inspect).expect("frames") {
        if let Item::Forward(bytes) = item {
            out.extend_from_slice(&bytes);
        }
    }
}

/// The same with counting and the tally's per-batch work (arm, absorb).
fn guarded(b: &[u8], out: &mut BytesMut, tally: &mut Tally, limits: Option<Limits>) {
    let mut split = FrameSplitter::counting(1 << 24);
    let mut buf = BytesMut::from(b);
    tally.arm(&mut split, limits);
    while let Some(item) = split.next(&mut buf, inspect).expect("frames") {
        match item {
            Item::Forward(bytes) => out.extend_from_slice(&bytes),
            Item::Limit => tally.on_limit(&mut split),
            _ => {}
        }
    }
    tally.absorb(&mut split);
}

fn best(mut f: impl FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .expect("runs")
}

fn main() {
    let dir = std::env::temp_dir().join(format!("pgveil-guard-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let auditor = Auditor::start(&AuditConfig {
        file: Some(dir.join("audit.jsonl")),
        queue: 1 << 20,
    })
    .expect("auditor");
    let session = Arc::new(SessionInfo {
        client: "127.0.0.1:1".into(),
        user: UserId::new("bench"),
        startup_user: "bench".into(),
        tenant: TenantId::new("acme"),
        role: RoleName::new("analyst"),
    });
    let budgets = Budgets::default();
    let window = budgets.user(&session.tenant, &session.user);
    let mut tally = Tally::new(
        SessionAudit {
            auditor: auditor.clone(),
            session,
        },
        window,
    );
    let limits = Some(Limits {
        max_rows_per_statement: Some(u64::MAX / 4),
        max_rows: Some(u64::MAX / 4),
        max_bytes: Some(u64::MAX / 4),
        window: Duration::from_secs(3600),
    });
    let b = batch();
    let mut out = BytesMut::with_capacity(b.len() * 2);
    let base = best(|| {
        for _ in 0..BATCHES {
            out.clear();
            plain(black_box(&b), &mut out);
        }
    });
    let counted = best(|| {
        for _ in 0..BATCHES {
            out.clear();
            guarded(black_box(&b), &mut out, &mut tally, limits);
        }
    });
    let per = |d: Duration| d.as_nanos() as f64 / BATCHES as f64;
    println!(
        "batch of {ROWS_PER_BATCH} DataRows ({} bytes): relay split {:.0} ns, with guard counting {:.0} ns, guard cost {:.0} ns per batch ({:.2} ns per row)",
        b.len(),
        per(base),
        per(counted),
        per(counted) - per(base),
        (per(counted) - per(base)) / ROWS_PER_BATCH as f64
    );

    // Per statement: Query sent, CommandComplete, ReadyForQuery, with an audit record queued.
    let tag = AuditTag {
        fingerprint: "0123456789abcdef".into(),
        decision: "rewritten",
        code: "",
        rule: "",
        masked: vec!["public.payers.email -> email".to_owned()].into(),
    };
    let mut split = FrameSplitter::counting(1 << 24);
    const STATEMENTS: usize = 200_000;
    let (mut relay_best, mut total_best) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..STATEMENTS {
            tally.on_query(Some(tag.clone()));
            let a = tally.on_end(b'C', b"SELECT 1\0", None, &mut split);
            black_box(matches!(a, EndAction::Forward));
            black_box(tally.on_ready(TxnStatus::Idle, &mut split));
        }
        relay_best = relay_best.min(t.elapsed());
        // The writer thread formats and writes meanwhile (on another core); until it is done:
        auditor.flush_blocking(Duration::from_secs(60));
        total_best = total_best.min(t.elapsed());
    }
    let per = |d: Duration| d.as_nanos() as f64 / STATEMENTS as f64;
    println!(
        "statement tally with an audit record queued: {:.0} ns per statement on the relay; writer thread done after {:.0} ns per statement (wall); dropped {}",
        per(relay_best),
        per(total_best),
        auditor.dropped()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
