//! CPU cost of writing one audit record on the audit writer thread (off the relay's path, but still CPU the
//! proxy spends per audited statement): queues statement events like a masked session's, waits until they
//! are written and flushed, and reads the writer thread's own CPU time (utime+stime of the `pgveil-audit`
//! thread from /proc). Sinks: an `[audit] file` (JSON lines) and the process log (tracing, text
//! format, written to /dev/null). Prints µs of writer CPU per record.
//!
//! Usage: cargo run --release --example audit_cost
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgveil::audit::{AuditConfig, AuditTag, Auditor, Event, Outcome, SessionInfo};
use pgveil::ids::{RoleName, TenantId, UserId};

const BATCH: u64 = 50_000;
const BATCHES: u64 = 8;

fn event(session: &Arc<SessionInfo>, rows: u64) -> Event {
    Event::Statement {
        session: session.clone(),
        at: SystemTime::now(),
        tag: Some(AuditTag {
            fingerprint: "9f86d081884c7d65".into(),
            decision: "rewritten",
            code: "",
            rule: "",
            masked: vec!["public.pgbench_accounts.filler -> address".to_owned()].into(),
        }),
        rows,
        duration: Duration::from_micros(180),
        outcome: Outcome::Complete,
        code: None,
    }
}

/// utime+stime (clock ticks) of this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
        // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        total += rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    }
    total
}

fn measure(label: &str, cfg: &AuditConfig) {
    let auditor = Auditor::start(cfg).unwrap();
    let session = Arc::new(SessionInfo {
        client: "127.0.0.1:53412".into(),
        user: UserId::new("bench-analyst"),
        startup_user: "bench".into(),
        tenant: TenantId::new("acme"),
        role: RoleName::new("analyst"),
    });
    let before = thread_ticks("pgveil-audit");
    for _ in 0..BATCHES {
        for i in 0..BATCH {
            auditor.record(event(&session, i % 10));
        }
        assert!(auditor.flush_blocking(Duration::from_secs(60)));
    }
    let ticks = thread_ticks("pgveil-audit") - before;
    let tck = 100.0; // USER_HZ on Linux
    let n = BATCH * BATCHES - auditor.dropped();
    println!(
        "{label:<28} {:>6.2} µs writer CPU per record ({n} records, {} dropped)",
        ticks as f64 / tck * 1e6 / n as f64,
        auditor.dropped()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let file = AuditConfig {
        file: Some(dir.path().join("audit.jsonl")),
        ..AuditConfig::default()
    };
    measure("[audit] file (JSON lines)", &file);
    // The log sink through the process log's text format, written to /dev/null (a global subscriber: the
    // writer thread does not see a thread's default).
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::sink)
        .init();
    measure("log, text format", &AuditConfig::default());
}
