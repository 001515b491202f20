//! The exfiltration guard and the audit records, through pgveil with the example policy plus a guard on the
//! `analyst` role, against the fixture's PostgreSQL: a statement over `max_rows_per_statement` is cancelled
//! with a 53400 error naming the budget after exactly the cap's rows, in both pool modes, over the simple and
//! the extended protocol and for COPY TO, and the session stays usable; a user's window budget is shared by
//! that user's sessions, not by another user's, and is available again when the window ends; audit records
//! (file sink) carry rows and durations, survive a rename + reopen, and none is lost on a clean shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use support::Fixture;
use support::masking::masking_proxy_with;
use tokio_postgres::SimpleQueryMessage;

fn main() -> std::process::ExitCode {
    support::main_with(&[
        (
            "a_statement_over_its_cap_is_cancelled_and_the_session_goes_on_session_mode",
            cap_session_mode,
        ),
        (
            "a_statement_over_its_cap_is_cancelled_and_the_session_goes_on_transaction_mode",
            cap_transaction_mode,
        ),
        (
            "window_budgets_are_per_user_across_sessions_and_end_with_the_window",
            window_budgets,
        ),
        (
            "audit_file_has_rows_and_durations_reopens_and_loses_nothing_at_shutdown",
            audit_file,
        ),
    ])
}

const CAP: usize = 5;

/// The example policy with a guard on `analyst`.
fn policy_dir(fx: &Fixture, name: &str, guard: &str) -> Result<PathBuf> {
    let dir = fx.env.dir().join(name);
    std::fs::create_dir_all(&dir)?;
    let text = format!(
        "{}\n[roles.analyst.guard]\n{guard}\n",
        support::demo::env::EXAMPLE_POLICY
    );
    std::fs::write(dir.join("payments.toml"), text)?;
    Ok(dir)
}

fn proxy(
    fx: &Fixture,
    name: &str,
    guard: &str,
    txn: bool,
    audit: Option<&Path>,
) -> Result<support::Running> {
    let dir = policy_dir(fx, name, guard)?;
    let audit = audit.map(Path::to_owned);
    masking_proxy_with(fx, dir, move |cfg| {
        if txn {
            cfg.pool.mode = pgveil::config::PoolMode::Transaction;
            for t in &mut cfg.tenants {
                t.pool_mode = None;
            }
        }
        cfg.audit.file = audit;
    })
}

async fn connect_as(
    fx: &Fixture,
    addr: std::net::SocketAddr,
    user: &str,
) -> Result<tokio_postgres::Client> {
    let token = fx.token(user, "acme", "analyst");
    support::connect(&fx.conn_str(addr, "acme", "tester", &token)).await
}

fn guard_error(e: &tokio_postgres::Error, budget: &str) -> Result<()> {
    let db = e
        .as_db_error()
        .ok_or_else(|| anyhow!("not a server error: {e:#}"))?;
    ensure!(
        db.code().code() == "53400",
        "SQLSTATE {}: {}",
        db.code().code(),
        db.message()
    );
    ensure!(
        db.message().contains(budget),
        "message does not name {budget}: {}",
        db.message()
    );
    Ok(())
}

fn row_count(msgs: &[SimpleQueryMessage]) -> usize {
    msgs.iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count()
}

/// A result large enough to be streamed while the cancel travels (2.56 million rows).
const BIG: &str = "SELECT a.id FROM payers a, payers b, payers c, payers d";

fn cap_session_mode(fx: &Fixture) -> Result<()> {
    cap(fx, false)
}

fn cap_transaction_mode(fx: &Fixture) -> Result<()> {
    cap(fx, true)
}

fn cap(fx: &Fixture, txn: bool) -> Result<()> {
    let name = if txn {
        "guard-cap-txn"
    } else {
        "guard-cap-session"
    };
    let guard = format!("max_rows_per_statement = {CAP}");
    let p = proxy(fx, name, &guard, txn, None)?;
    let handle = pgveil::telemetry::install();
    fx.block_on(async {
        let c = connect_as(fx, p.addr, "carol@acme.example").await?;
        // Simple protocol, small result (complete before the cancel lands): error, session usable.
        let e = c
            .simple_query("SELECT id FROM payers")
            .await
            .expect_err("over the cap");
        guard_error(&e, "max_rows_per_statement")?;
        let ok = c
            .simple_query("SELECT id FROM payers ORDER BY id LIMIT 5")
            .await?;
        ensure!(
            row_count(&ok) == CAP,
            "within the cap: {} rows",
            row_count(&ok)
        );
        // Simple protocol, a big result: cancelled while streaming.
        let e = c.simple_query(BIG).await.expect_err("over the cap");
        guard_error(&e, "max_rows_per_statement")?;
        // Extended protocol: exactly the cap's rows were relayed before the error (a portal with a row
        // stream shows them).
        let stream = c
            .query_raw("SELECT id FROM payers ORDER BY id", Vec::<i32>::new())
            .await?;
        let rows: Vec<Result<tokio_postgres::Row, _>> =
            futures_util::StreamExt::collect(stream).await;
        let got = rows.iter().filter(|r| r.is_ok()).count();
        ensure!(
            got == CAP,
            "extended protocol relayed {got} rows before the error"
        );
        let err = rows
            .into_iter()
            .find_map(|r| r.err())
            .ok_or_else(|| anyhow!("no error"))?;
        guard_error(&err, "max_rows_per_statement")?;
        let one: i64 = c
            .query_one("SELECT id FROM payers WHERE id = $1", &[&3i64])
            .await?
            .get(0);
        ensure!(one == 3);
        // COPY TO: one CopyData per row.
        // (A COPY stream that failed keeps failing when polled again: read up to its first error.)
        let copy = c.copy_out("COPY (SELECT id FROM payers) TO STDOUT").await?;
        futures_util::pin_mut!(copy);
        let mut copied = 0;
        let err = loop {
            match futures_util::StreamExt::next(&mut copy).await {
                Some(Ok(_)) => copied += 1,
                Some(Err(e)) => break e,
                None => anyhow::bail!("COPY was not stopped ({copied} rows)"),
            }
        };
        ensure!(copied == CAP, "COPY relayed {copied} rows before the error");
        guard_error(&err, "max_rows_per_statement")?;
        let copy = c
            .copy_out("COPY (SELECT id FROM payers LIMIT 3) TO STDOUT")
            .await?;
        let chunks: Vec<Result<bytes::Bytes, _>> = futures_util::StreamExt::collect(copy).await;
        ensure!(
            chunks.len() == 3 && chunks.iter().all(|c| c.is_ok()),
            "{chunks:?}"
        );
        // Inside a transaction block, cancelled while streaming: the transaction is failed like the
        // client was told (25P02 until ROLLBACK), then the session goes on.
        c.batch_execute("BEGIN").await?;
        let e = c.simple_query(BIG).await.expect_err("over the cap");
        guard_error(&e, "max_rows_per_statement")?;
        let e = c
            .simple_query("SELECT 1")
            .await
            .expect_err("transaction is failed");
        ensure!(e.code().map(|c| c.code()) == Some("25P02"), "{e:#}");
        c.batch_execute("ROLLBACK").await?;
        let ok = c.simple_query("SELECT id FROM payers LIMIT 2").await?;
        ensure!(row_count(&ok) == 2);
        // Inside a transaction block, a small result had completed before the cancel: the session is ended
        // (its transaction could not be failed in step), never left out of step.
        c.batch_execute("BEGIN").await?;
        let e = c
            .simple_query("SELECT id FROM payers")
            .await
            .expect_err("over the cap");
        guard_error(&e, "max_rows_per_statement")?;
        match c.simple_query("SELECT 1").await {
            Err(e) if e.code().map(|c| c.code()) == Some("25P02") => {}
            Err(e) if c.is_closed() => {
                let _ = e;
            }
            other => anyhow::bail!("transaction state out of step with the error: {other:?}"),
        }
        // Another role without a guard is not limited.
        let support = fx.connect_to(p.addr, "acme", "support").await?;
        let all = support.simple_query("SELECT id FROM payers").await?;
        ensure!(row_count(&all) == 40, "{}", row_count(&all));
        anyhow::Ok(())
    })?;
    if let Some(h) = handle {
        let text = h.render();
        ensure!(
            text.lines()
                .any(|l| l
                    .starts_with("pgveil_guard_trips_total{budget=\"max_rows_per_statement\"}")),
            "no guard metric:\n{text}"
        );
    }
    Ok(())
}

fn window_budgets(fx: &Fixture) -> Result<()> {
    let p = proxy(
        fx,
        "guard-window",
        "max_rows = 30\nwindow = \"3s\"",
        false,
        None,
    )?;
    fx.block_on(async {
        let sql = "SELECT id FROM payers ORDER BY id LIMIT 20";
        let one = connect_as(fx, p.addr, "dave@acme.example").await?;
        let two = connect_as(fx, p.addr, "dave@acme.example").await?;
        let other = connect_as(fx, p.addr, "erin@acme.example").await?;
        let started = tokio::time::Instant::now();
        ensure!(row_count(&one.simple_query(sql).await?) == 20);
        // The same user's second session shares the window: 10 rows left.
        let e = two
            .simple_query(sql)
            .await
            .expect_err("over the window budget");
        guard_error(&e, "max_rows")?;
        ensure!(row_count(&two.simple_query("SELECT id FROM payers LIMIT 0").await?) == 0);
        // Another user has a budget of their own.
        ensure!(row_count(&other.simple_query(sql).await?) == 20);
        // The window ends (3 s after dave's first row): reads are allowed again, on the same session.
        tokio::time::sleep_until(started + Duration::from_millis(3200)).await;
        ensure!(row_count(&two.simple_query(sql).await?) == 20);
        anyhow::Ok(())
    })
}

fn audit_lines(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| l.to_owned()))
        .collect()
}

fn of_user<'a>(lines: &'a [serde_json::Value], user: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|v| v["span"]["user"] == user).collect()
}

fn audit_file(fx: &Fixture) -> Result<()> {
    let dir = fx.env.dir().join("guard-audit");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("audit.log");
    let p = proxy(
        fx,
        "guard-audit-policy",
        "max_rows_per_statement = 25",
        false,
        Some(&file),
    )?;
    let shared = p.shared.clone();
    const MANY: usize = 400;
    fx.block_on(async {
        let c = connect_as(fx, p.addr, "frank@acme.example").await?;
        c.simple_query("SELECT id, email FROM payers ORDER BY id LIMIT 7")
            .await?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM payers WHERE id > $1", &[&0i64])
            .await?
            .get(0);
        ensure!(n == 40);
        let e = c
            .simple_query("SELECT id FROM payers")
            .await
            .expect_err("over the cap");
        guard_error(&e, "max_rows_per_statement")?;
        anyhow::Ok(())
    })?;
    ensure!(
        shared.audit.flush_blocking(Duration::from_secs(10)),
        "audit flush"
    );
    let lines = audit_lines(&file)?;
    let frank = of_user(&lines, "frank@acme.example");
    let statement = |fp_rows: u64| {
        frank
            .iter()
            .find(|v| v["fields"]["message"] == "statement" && v["fields"]["rows"] == fp_rows)
            .copied()
    };
    let seven = statement(7).ok_or_else(|| anyhow!("no record with 7 rows: {frank:#?}"))?;
    let f = &seven["fields"];
    ensure!(
        f["decision"] == "rewritten" && f["outcome"] == "complete",
        "{seven}"
    );
    ensure!(
        f["fingerprint"].as_str().is_some_and(|s| s.len() == 16),
        "{seven}"
    );
    ensure!(f["duration_us"].as_u64().is_some_and(|d| d > 0), "{seven}");
    ensure!(
        f["masked"]
            .as_str()
            .is_some_and(|m| m.contains("payers.email")),
        "{seven}"
    );
    // The extended-protocol statement is correlated with its Parse's decision.
    ensure!(
        statement(1).is_some_and(|v| v["fields"]["fingerprint"]
            .as_str()
            .is_some_and(|s| s.len() == 16)),
        "{frank:#?}"
    );
    let trip = frank
        .iter()
        .find(|v| v["fields"]["message"] == "exfiltration guard tripped")
        .ok_or_else(|| anyhow!("no guard record: {frank:#?}"))?;
    ensure!(
        trip["fields"]["budget"] == "max_rows_per_statement" && trip["fields"]["limit"] == 25,
        "{trip}"
    );
    ensure!(
        frank.iter().any(|v| v["fields"]["outcome"] == "error"
            && v["fields"]["error"] == "53400"
            && v["fields"]["rows"] == 25),
        "{frank:#?}"
    );
    ensure!(
        !std::fs::read_to_string(&file)?.contains("@example.com"),
        "row values in the audit file"
    );

    // Rotation: move the file away, reopen (what SIGHUP does), new records go to a new file.
    let rotated = dir.join("audit.log.1");
    std::fs::rename(&file, &rotated)?;
    shared.audit.reopen();
    fx.block_on(async {
        let c = connect_as(fx, p.addr, "grace@acme.example").await?;
        for i in 0..MANY {
            c.simple_query(&format!(
                "SELECT id FROM merchants WHERE id = {}",
                i % 5 + 1
            ))
            .await?;
        }
        anyhow::Ok(())
    })?;
    // A clean shutdown writes every queued record before the server's run ends.
    drop(p);
    let fresh = audit_lines(&file)?;
    let grace = of_user(&fresh, "grace@acme.example");
    ensure!(
        grace.len() == MANY,
        "{} of {MANY} records after shutdown",
        grace.len()
    );
    ensure!(of_user(&audit_lines(&rotated)?, "grace@acme.example").is_empty());
    ensure!(shared.audit.dropped() == 0);
    Ok(())
}
