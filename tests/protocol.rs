//! Protocol relay end to end, with tokio-postgres against real PostgreSQL through pgveil: results identical to
//! a direct connection (simple, extended, binary), portals, COPY, errors in transactions, notices and
//! notifications, cancel, backend reuse without leaked state, disconnects and backend failures, startup
//! settings, and the statement policy hook (deny and rewrite, in transactions and pipelines).
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgveil::identity::Identity;
use pgveil::policy::{Decision, StatementPolicy};
use pgveil::proto::PgError;
use pgveil::server::ServerOptions;
use support::{Fixture, connect, sqlstate};
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        (
            "simple_query_matches_direct_for_every_backend_auth",
            simple_query_matches_direct,
        ),
        (
            "extended_binary_results_match_direct",
            extended_matches_direct,
        ),
        ("binary_parameters_roundtrip", binary_parameters_roundtrip),
        ("portal_with_row_limit", portal_with_row_limit),
        ("errors_inside_transactions", errors_inside_transactions),
        ("copy_in_and_out", copy_in_and_out),
        (
            "notices_and_notifications_are_relayed",
            notices_and_notifications,
        ),
        ("backend_tls_is_used_for_tls_tenant", backend_tls_is_used),
        ("cancel_reaches_own_backend", cancel_reaches_own_backend),
        ("forged_cancel_key_does_nothing", forged_cancel_does_nothing),
        (
            "reused_backend_has_no_session_state",
            reused_backend_has_no_state,
        ),
        ("client_disconnect_mid_query", client_disconnect_mid_query),
        ("client_disconnect_mid_copy", client_disconnect_mid_copy),
        ("backend_killed_mid_query", backend_killed_mid_query),
        ("startup_settings_are_applied", startup_settings_applied),
        ("many_clients_share_a_small_pool", many_clients_small_pool),
        ("policy_denies_and_session_stays_usable", policy_denies),
        (
            "policy_deny_aborts_transaction_like_postgres",
            policy_deny_in_transaction,
        ),
        (
            "policy_deny_keeps_pipeline_order",
            policy_deny_pipeline_order,
        ),
        ("policy_rewrites_simple_and_extended", policy_rewrites),
        (
            "policy_checks_startup_settings",
            policy_checks_startup_settings,
        ),
        (
            "policy_change_applies_to_open_sessions",
            policy_change_applies_to_open_sessions,
        ),
    ])
}

fn rows_text(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn simple_query_matches_direct(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        for tenant in ["acme", "globex", "tlsco", "clearco"] {
            let proxy = fx.connect(tenant, "admin").await.with_context(|| format!("proxy {tenant}"))?;
            let direct = fx.direct(tenant).await?;
            for sql in [
                "SELECT * FROM payers ORDER BY id",
                "SELECT p.*, d.reason FROM payments p LEFT JOIN disputes d ON d.payment_id = p.id ORDER BY p.id",
                "SELECT count(*), sum(amount), min(created_at) FROM payments",
                "SELECT 1; SELECT 'two', NULL; SELECT current_database()",
            ] {
                let a = rows_text(proxy.simple_query(sql).await?);
                let b = rows_text(direct.simple_query(sql).await?);
                ensure!(!a.is_empty(), "{tenant}: no rows for {sql}");
                ensure!(a == b, "{tenant}: results differ for {sql}");
            }
            let db: String = proxy.query_one("SELECT current_database()", &[]).await?.get(0);
            ensure!(db == tenant, "routed to {db}, expected {tenant}");
        }
        Ok(())
    })
}

fn extended_matches_direct(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let proxy = fx.connect("acme", "admin").await?;
        let direct = fx.direct("acme").await?;
        let sql = "SELECT id, payer_id, amount::text, currency, created_at, status FROM payments \
                   WHERE payer_id <= $1 ORDER BY id";
        let a = fetch_payments(&proxy, sql).await?;
        let b = fetch_payments(&direct, sql).await?;
        ensure!(
            a.len() > 10 && a == b,
            "extended results differ ({} vs {} rows)",
            a.len(),
            b.len()
        );
        // A named prepared statement reused many times.
        let stmt = proxy
            .prepare("SELECT email FROM payers WHERE id = $1")
            .await?;
        for id in 1..=30i64 {
            let e: String = proxy.query_one(&stmt, &[&id]).await?.get(0);
            let d: String = direct
                .query_one("SELECT email FROM payers WHERE id = $1", &[&id])
                .await?
                .get(0);
            ensure!(e == d);
        }
        Ok(())
    })
}

type PaymentRow = (i64, i64, String, String, std::time::SystemTime, String);

async fn fetch_payments(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<PaymentRow>> {
    let rows = c.query(sql, &[&20i64]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect())
}

fn binary_parameters_roundtrip(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let c = fx.connect("globex", "analyst").await?;
        let json = serde_json::json!({"a": [1, 2, {"b": "ü"}]});
        let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let row = c
            .query_one(
                "SELECT $1::jsonb, $2::bytea, $3::text, length($2::bytea)",
                &[&json, &bytes, &"x\u{0}y".replace('\0', "")],
            )
            .await?;
        let j: serde_json::Value = row.get(0);
        let b: Vec<u8> = row.get(1);
        let n: i32 = row.get(3);
        ensure!(
            j == json && b == bytes && n == 300_000,
            "binary roundtrip mismatch"
        );
        Ok(())
    })
}

fn portal_with_row_limit(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let mut c = fx.connect("acme", "analyst").await?;
        let total: i64 = c
            .query_one("SELECT count(*) FROM payments", &[])
            .await?
            .get(0);
        let tx = c.transaction().await?;
        let stmt = tx.prepare("SELECT id FROM payments ORDER BY id").await?;
        let portal = tx.bind(&stmt, &[]).await?;
        let mut seen = 0i64;
        let mut batches = 0;
        loop {
            let rows = tx.query_portal(&portal, 7).await?;
            if rows.is_empty() {
                break;
            }
            ensure!(rows.len() <= 7);
            seen += rows.len() as i64;
            batches += 1;
        }
        tx.commit().await?;
        ensure!(
            seen == total && batches >= total / 7,
            "portal returned {seen} of {total} rows in {batches} batches"
        );
        Ok(())
    })
}

fn errors_inside_transactions(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let c = fx.connect("acme", "admin").await?;
        c.batch_execute("BEGIN").await?;
        let e = c
            .simple_query("SELECT 1/0")
            .await
            .map_err(anyhow::Error::from)
            .unwrap_err();
        ensure!(sqlstate(&e).as_deref() == Some("22012"), "got {e:#}");
        let e = c
            .simple_query("SELECT 1")
            .await
            .map_err(anyhow::Error::from)
            .unwrap_err();
        ensure!(sqlstate(&e).as_deref() == Some("25P02"), "got {e:#}");
        c.batch_execute("ROLLBACK").await?;
        let e = c
            .query("SELECT no_such_column FROM payers", &[])
            .await
            .map_err(anyhow::Error::from)
            .unwrap_err();
        ensure!(sqlstate(&e).as_deref() == Some("42703"), "got {e:#}");
        let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
        ensure!(one == 1);
        Ok(())
    })
}

fn copy_in_and_out(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let c = fx.connect("globex", "admin").await?;
        c.batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (id int, body text)")
            .await?;
        let sink = c.copy_in("COPY copy_t FROM STDIN").await?;
        let mut sink = std::pin::pin!(sink);
        let mut expected = String::new();
        for i in 0..5000 {
            let line = format!("{i}\trow {i} {}\n", "x".repeat(i % 200));
            expected.push_str(&line);
            sink.send(bytes::Bytes::from(line)).await?;
        }
        let big = format!("5000\t{}\n", "y".repeat(300_000));
        expected.push_str(&big);
        sink.send(bytes::Bytes::from(big)).await?;
        let n = sink.as_mut().finish().await?;
        ensure!(n == 5001, "copied {n}");
        let out = c
            .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")
            .await?;
        let chunks: Vec<bytes::Bytes> = out.try_collect().await?;
        let got: Vec<u8> = chunks.concat();
        ensure!(
            got == expected.as_bytes(),
            "COPY OUT differs from what was copied in"
        );
        c.batch_execute("DROP TABLE copy_t").await?;
        Ok(())
    })
}

/// Connects and forwards notices/notifications into a channel.
async fn connect_with_messages(
    conn_str: &str,
) -> Result<(
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
)> {
    let (client, mut conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    Ok((client, rx))
}

fn notices_and_notifications(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let token = fx.token("n@acme", "acme", "analyst");
        let (listener, mut rx) = connect_with_messages(&fx.conn_str(fx.proxy.addr, "acme", "l", &token)).await?;
        listener.batch_execute("LISTEN pgveil_test").await?;
        listener.batch_execute("DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$").await?;
        let notifier = fx.connect("acme", "analyst").await?;
        notifier.batch_execute("NOTIFY pgveil_test, 'payload-1'").await?;
        let mut got_notice = false;
        let mut got_notify = false;
        while !(got_notice && got_notify) {
            // Poke the listener so its connection reads pending notifications.
            let m = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    tokio::select! {
                        m = rx.recv() => return m,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => { let _ = listener.batch_execute("SELECT 1").await; }
                    }
                }
            })
            .await
            .context("waiting for notice/notification")?
            .ok_or_else(|| anyhow!("connection ended"))?;
            match m {
                AsyncMessage::Notice(n) => got_notice |= n.message() == "hello 42",
                AsyncMessage::Notification(n) => {
                    got_notify |= n.channel() == "pgveil_test" && n.payload() == "payload-1"
                }
                _ => {}
            }
        }
        Ok(())
    })
}

fn backend_tls_is_used(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let c = fx.connect("tlsco", "analyst").await?;
        let ssl: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        ensure!(ssl, "tlsco backend connection is not TLS");
        let c = fx.connect("acme", "analyst").await?;
        let ssl: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        ensure!(!ssl, "acme backend unexpectedly TLS");
        Ok(())
    })
}

fn cancel_reaches_own_backend(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let c = fx.connect("acme", "analyst").await?;
        let other = fx.connect("acme", "analyst").await?;
        let token = c.cancel_token();
        let sleeper = tokio::spawn(async move {
            let r = c.simple_query("SELECT pg_sleep(60)").await;
            (r.map(|_| ()), c)
        });
        // Wait until the sleep is visibly running on the backend.
        let probe = fx.direct("acme").await?;
        wait_for(&probe, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").await?;
        token.cancel_query(tokio_postgres::NoTls).await?;
        let (r, c) = sleeper.await?;
        let e = anyhow::Error::from(r.unwrap_err());
        ensure!(sqlstate(&e).as_deref() == Some("57014"), "expected 57014, got {e:#}");
        // The cancelled session and the other session both keep working.
        c.simple_query("SELECT 1").await?;
        other.simple_query("SELECT 1").await?;
        Ok(())
    })
}

/// Polls a count query until it returns at least 1 (bounded).
async fn wait_for(probe: &tokio_postgres::Client, sql: &str) -> Result<()> {
    for _ in 0..400 {
        let n: i64 = probe.query_one(sql, &[]).await?.get(0);
        if n > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("condition never became true: {sql}")
}

fn forged_cancel_does_nothing(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let c = fx.connect("acme", "analyst").await?;
        let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(1.5), 'done'").await.map(rows_text) });
        let probe = fx.direct("acme").await?;
        wait_for(&probe, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(1.5)%' AND state = 'active'").await?;
        for _ in 0..20 {
            let mut pkt = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
            pkt.extend_from_slice(&rand::random::<u32>().to_be_bytes());
            pkt.extend_from_slice(&rand::random::<u32>().to_be_bytes());
            let mut s = tokio::net::TcpStream::connect(fx.proxy.addr).await?;
            tokio::io::AsyncWriteExt::write_all(&mut s, &pkt).await?;
        }
        let rows = sleeper.await??;
        ensure!(rows == vec![vec![Some(String::new()), Some("done".into())]], "query was disturbed: {rows:?}");
        Ok(())
    })
}

/// A proxy whose pools hold one backend, so consecutive sessions reuse the same backend.
fn single_backend_proxy(fx: &Fixture) -> Result<support::Running> {
    fx.start_server(
        |cfg| {
            cfg.pool.size = 1;
            cfg.pool.checkout_timeout = Duration::from_secs(20);
        },
        ServerOptions::default(),
    )
}

fn reused_backend_has_no_state(fx: &Fixture) -> Result<()> {
    let proxy = single_backend_proxy(fx)?;
    fx.block_on(async {
        let a = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let pid_a: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        a.batch_execute(
            "CREATE TEMP TABLE leak (x int); INSERT INTO leak VALUES (1); SET work_mem = '7MB'; \
             PREPARE leaked AS SELECT 1; SELECT pg_advisory_lock(42); LISTEN leakchan; \
             BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT; SET application_name = 'leaky'",
        )
        .await?;
        drop(a);
        let b = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let pid_b: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        ensure!(pid_a == pid_b, "backend was not reused ({pid_a} vs {pid_b}): test proves nothing");
        let row = b
            .query_one(
                "SELECT to_regclass('pg_temp.leak') IS NULL, current_setting('work_mem'), \
                 (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaked'), (SELECT count(*) FROM pg_cursors WHERE name = 'c'), \
                 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'), \
                 (SELECT count(*) FROM pg_listening_channels()), current_setting('application_name')",
                &[],
            )
            .await?;
        let (no_temp, work_mem, prepared, cursors, locks, listening, app): (bool, String, i64, i64, i64, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5), row.get(6));
        ensure!(no_temp, "temp table leaked");
        ensure!(work_mem == "4MB", "work_mem leaked: {work_mem}");
        ensure!(prepared == 0, "prepared statements leaked: {prepared}");
        ensure!(
            cursors == 0 && locks == 0 && listening == 0,
            "leaked: cursors {cursors}, advisory locks {locks}, listening {listening}"
        );
        ensure!(app != "leaky", "application_name leaked");
        Ok(())
    })
}

fn client_disconnect_mid_query(fx: &Fixture) -> Result<()> {
    let proxy = single_backend_proxy(fx)?;
    fx.block_on(async {
        let (a, conn_task) = support::connect_with_handle(&fx.conn_str(proxy.addr, "acme", "a", &fx.token("a", "acme", "tiny"))).await?;
        let task = tokio::spawn(async move { a.simple_query("SELECT pg_sleep(60)").await });
        let probe = fx.direct("acme").await?;
        wait_for(&probe, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").await?;
        conn_task.abort(); // closes the client's socket mid-query
        let _ = conn_task.await;
        let _ = task.await;
        // The only backend slot is freed (the busy backend is cancelled and discarded) and a new session works.
        let b = fx.connect_to(proxy.addr, "acme", "tiny").await?;
        let n: i64 = b.query_one("SELECT count(*) FROM payers", &[]).await?.get(0);
        ensure!(n > 0);
        wait_for(&probe, "SELECT (count(*) = 0)::int::bigint FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'").await?;
        Ok(())
    })
}

fn client_disconnect_mid_copy(fx: &Fixture) -> Result<()> {
    let proxy = single_backend_proxy(fx)?;
    fx.block_on(async {
        let admin = fx.direct("clearco").await?;
        admin
            .batch_execute("DROP TABLE IF EXISTS half; CREATE TABLE half (x int)")
            .await?;
        let (a, conn_task) = support::connect_with_handle(&fx.conn_str(
            proxy.addr,
            "clearco",
            "a",
            &fx.token("a", "clearco", "tiny"),
        ))
        .await?;
        let task = tokio::spawn(async move {
            let sink = a.copy_in("COPY half FROM STDIN").await?;
            let mut sink = std::pin::pin!(sink);
            for i in 0..1000 {
                sink.send(bytes::Bytes::from(format!("{i}\n"))).await?;
            }
            sink.flush().await?;
            futures_util::future::pending::<()>().await;
            Ok::<_, tokio_postgres::Error>(())
        });
        let probe = fx.direct("clearco").await?;
        wait_for(
            &probe,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'COPY half FROM STDIN'",
        )
        .await?;
        conn_task.abort(); // closes the client's socket mid-COPY (no CopyFail, no CopyDone)
        let _ = conn_task.await;
        task.abort();
        let _ = task.await;
        let b = fx.connect_to(proxy.addr, "clearco", "tiny").await?;
        let n: i64 = b.query_one("SELECT count(*) FROM half", &[]).await?.get(0);
        ensure!(n == 0, "a COPY abandoned mid-way committed {n} rows");
        admin.batch_execute("DROP TABLE half").await?;
        Ok(())
    })
}

fn backend_killed_mid_query(fx: &Fixture) -> Result<()> {
    let proxy = single_backend_proxy(fx)?;
    fx.block_on(async {
        let a = fx.connect_to(proxy.addr, "globex", "tiny").await?;
        // Not the session's first statement: that one would be sent again to a fresh backend (README "Pool
        // modes", retry), which tests/pool_health.rs covers.
        a.simple_query("SELECT 1").await?;
        let task = tokio::spawn(async move { a.simple_query("SELECT pg_sleep(60), 'killme'").await });
        let probe = fx.direct("globex").await?;
        wait_for(&probe, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60), %' AND state = 'active'").await?;
        fx.superuser_sql(
            "globex",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60), %'",
        )?;
        let r = task.await?;
        let e = anyhow::Error::from(r.err().ok_or_else(|| anyhow!("query succeeded on a killed backend"))?);
        let code = sqlstate(&e);
        ensure!(
            matches!(code.as_deref(), Some("57P01") | Some("08006")) || code.is_none(),
            "unexpected error {e:#}"
        );
        let b = fx.connect_to(proxy.addr, "globex", "tiny").await?;
        b.simple_query("SELECT 1").await?;
        Ok(())
    })
}

fn startup_settings_applied(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let token = fx.token("s@acme", "acme", "analyst");
        let conn = format!(
            "{} application_name=bi-tool options='-c search_path=pg_catalog,public -c statement_timeout=5s -c DateStyle=SQL,DMY'",
            fx.conn_str(fx.proxy.addr, "acme", "s", &token)
        );
        let direct_conn = format!("{} {}", fx.direct_str("acme"), &conn[conn.find("application_name").unwrap()..]);
        let sql = "SELECT current_setting('application_name'), current_setting('search_path'), \
                   current_setting('statement_timeout'), current_setting('DateStyle'), \
                   current_setting('standard_conforming_strings')";
        let got = rows_text(connect(&conn).await?.simple_query(sql).await?);
        let want = rows_text(connect(&direct_conn).await?.simple_query(sql).await?);
        ensure!(got == want, "settings differ from a direct connection: {got:?} vs {want:?}");
        ensure!(got[0][0].as_deref() == Some("bi-tool") && got[0][2].as_deref() == Some("5s"), "{got:?}");
        Ok(())
    })
}

fn many_clients_small_pool(fx: &Fixture) -> Result<()> {
    let proxy = fx.start_server(|cfg| cfg.pool.size = 3, ServerOptions::default())?;
    fx.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..30i64 {
            let token = fx.token(&format!("u{i}"), "acme", "analyst");
            let cs = fx.conn_str(proxy.addr, "acme", "u", &token);
            tasks.push(tokio::spawn(async move {
                let c = connect(&cs).await?;
                let mut sum = 0i64;
                for k in 0..10i64 {
                    let v: i64 = c
                        .query_one("SELECT $1::bigint * 2", &[&(i * 100 + k)])
                        .await?
                        .get(0);
                    sum += v;
                }
                anyhow::Ok((i, sum))
            }));
        }
        for t in tasks {
            let (i, sum) = t.await??;
            ensure!(sum == (0..10).map(|k| (i * 100 + k) * 2).sum::<i64>());
        }
        let status = proxy.shared.pools.status();
        ensure!(
            status.iter().all(|(_, size, _)| *size <= 3),
            "pool grew past its size: {status:?}"
        );
        Ok(())
    })
}

/// A test policy: denies SQL mentioning `forbidden_word`, rewrites `SELECT 41` to `SELECT 42`.
struct TestPolicy;

impl StatementPolicy for TestPolicy {
    fn inspects(&self, who: &Identity) -> bool {
        who.role.as_str() == "analyst"
    }
    fn check(&self, sql: &str, _: &Identity) -> Decision {
        if sql.contains("forbidden_word") || sql.contains("E'blocked'") {
            Decision::Deny(PgError::insufficient_privilege("refused by test policy"))
        } else if sql.trim() == "SELECT 41" {
            Decision::Rewrite("SELECT 42".into())
        } else {
            Decision::Allow
        }
    }
}

fn policy_proxy(fx: &Fixture) -> Result<support::Running> {
    fx.start_server(
        |_| {},
        ServerOptions {
            policy: Arc::new(TestPolicy),
            ..ServerOptions::default()
        },
    )
}

fn expect_code(r: Result<impl std::fmt::Debug, tokio_postgres::Error>, code: &str) -> Result<()> {
    match r {
        Ok(v) => bail!("expected {code}, got success {v:?}"),
        Err(e) => {
            let e = anyhow::Error::from(e);
            ensure!(
                sqlstate(&e).as_deref() == Some(code),
                "expected {code}, got {e:#}"
            );
            Ok(())
        }
    }
}

fn policy_denies(fx: &Fixture) -> Result<()> {
    let proxy = policy_proxy(fx)?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        let r = c.simple_query("SELECT 'forbidden_word'").await;
        match &r {
            Err(e) => ensure!(
                e.as_db_error().map(|d| d.message()) == Some("refused by test policy"),
                "wrong message: {e:?}"
            ),
            Ok(_) => bail!("denied statement ran"),
        }
        expect_code(
            c.query("SELECT $1::text, 'forbidden_word'", &[&"x"]).await,
            "42501",
        )?;
        expect_code(c.prepare("SELECT 'forbidden_word'").await, "42501")?;
        c.simple_query("SELECT 1").await?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM payers", &[])
            .await?
            .get(0);
        ensure!(n > 0);
        // The admin role is not inspected: the same text passes.
        let a = fx.connect_to(proxy.addr, "acme", "admin").await?;
        a.simple_query("SELECT 'forbidden_word'").await?;
        Ok(())
    })
}

fn policy_deny_in_transaction(fx: &Fixture) -> Result<()> {
    let proxy = policy_proxy(fx)?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        c.batch_execute("BEGIN").await?;
        c.simple_query("SELECT 1").await?;
        expect_code(c.simple_query("SELECT 'forbidden_word'").await, "42501")?;
        expect_code(c.simple_query("SELECT 1").await, "25P02")?;
        c.batch_execute("ROLLBACK").await?;
        c.simple_query("SELECT 1").await?;
        Ok(())
    })
}

fn policy_deny_pipeline_order(fx: &Fixture) -> Result<()> {
    let proxy = policy_proxy(fx)?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        let s1 = c.prepare("SELECT $1::int + 1").await?;
        // tokio-postgres pipelines concurrent requests on one connection.
        let (a, b, d, e) = tokio::join!(
            c.query_one(&s1, &[&1i32]),
            c.query_one("SELECT 'forbidden_word', $1::int", &[&2i32]),
            c.query_one(&s1, &[&3i32]),
            c.query_one("SELECT 41", &[]),
        );
        ensure!(a?.get::<_, i32>(0) == 2);
        expect_code(b, "42501")?;
        ensure!(d?.get::<_, i32>(0) == 4);
        ensure!(e?.get::<_, i32>(0) == 42);
        Ok(())
    })
}

fn policy_rewrites(fx: &Fixture) -> Result<()> {
    let proxy = policy_proxy(fx)?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        let simple = rows_text(c.simple_query("SELECT 41").await?);
        ensure!(
            simple == vec![vec![Some("42".to_owned())]],
            "simple rewrite: {simple:?}"
        );
        let v: i32 = c.query_one("SELECT 41", &[]).await?.get(0);
        ensure!(v == 42, "extended rewrite: {v}");
        Ok(())
    })
}

fn policy_checks_startup_settings(fx: &Fixture) -> Result<()> {
    let proxy = policy_proxy(fx)?;
    fx.block_on(async {
        let token = fx.token("p@acme", "acme", "analyst");
        let cs = format!(
            "{} application_name=blocked",
            fx.conn_str(proxy.addr, "acme", "p", &token)
        );
        let e = connect(&cs)
            .await
            .err()
            .ok_or_else(|| anyhow!("blocked setting accepted"))?;
        ensure!(sqlstate(&e).as_deref() == Some("42501"), "got {e:#}");
        let cs = format!(
            "{} application_name=fine",
            fx.conn_str(proxy.addr, "acme", "p", &token)
        );
        connect(&cs).await?.simple_query("SELECT 1").await?;
        Ok(())
    })
}

/// Inspects nobody until switched on, then denies everything: a reload that takes a role's unrestricted
/// access away.
struct SwitchPolicy(std::sync::atomic::AtomicBool);

impl StatementPolicy for SwitchPolicy {
    fn inspects(&self, _: &Identity) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn check(&self, _: &str, _: &Identity) -> Decision {
        Decision::Deny(PgError::insufficient_privilege(
            "refused after policy change",
        ))
    }
}

fn policy_change_applies_to_open_sessions(fx: &Fixture) -> Result<()> {
    let policy = Arc::new(SwitchPolicy(std::sync::atomic::AtomicBool::new(false)));
    let proxy = fx.start_server(
        |_| {},
        ServerOptions {
            policy: policy.clone(),
            ..ServerOptions::default()
        },
    )?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        c.simple_query("SELECT 1").await?;
        policy.0.store(true, std::sync::atomic::Ordering::SeqCst);
        expect_code(c.simple_query("SELECT 1").await, "42501")?;
        expect_code(c.query("SELECT $1::int", &[&1i32]).await, "42501")?;
        Ok(())
    })
}
