//! Pools in both modes, driven from outside with a raw-protocol client: backends left with unsynced
//! extended-protocol messages are drained (never wedged, never handed on with an open portal, an uncommitted
//! UPDATE or a skip-until-Sync state), dead pooled backends are never handed out, a refused Parse of the
//! unnamed statement leaves none, transaction-mode logins do not need a free backend, and the startup phase
//! and oversized frames are bounded.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use pgveil::config::PoolMode;
use pgveil::identity::Identity;
use pgveil::policy::{Decision, StatementPolicy};
use pgveil::proto::PgError;
use pgveil::server::ServerOptions;
use support::raw::script::{Frontend, Raw, Reply};
use support::{Fixture, Running, raw};
use tokio::io::AsyncWriteExt;

fn main() -> std::process::ExitCode {
    support::main_with(&[
        ("unsynced_error_then_exit_session", |fx| {
            unsynced_error_then_exit(fx, PoolMode::Session)
        }),
        ("unsynced_error_then_exit_transaction", |fx| {
            unsynced_error_then_exit(fx, PoolMode::Transaction)
        }),
        ("victim_portal_and_update_session", |fx| {
            victim_portal_and_update(fx, PoolMode::Session)
        }),
        ("victim_portal_and_update_transaction", |fx| {
            victim_portal_and_update(fx, PoolMode::Transaction)
        }),
        ("refused_unnamed_parse_session", |fx| {
            refused_unnamed_parse(fx, PoolMode::Session)
        }),
        ("refused_unnamed_parse_transaction", |fx| {
            refused_unnamed_parse(fx, PoolMode::Transaction)
        }),
        ("dead_backends_not_handed_out", dead_backends_not_handed_out),
        ("txn_login_while_pool_busy", txn_login_while_pool_busy),
        ("frame_claiming_1gib_refused", frame_claiming_1gib_refused),
        (
            "silent_sockets_do_not_block_clients",
            silent_sockets_do_not_block_clients,
        ),
        ("state_leak_scenarios_transaction", state_leak_scenarios),
        (
            "masked_role_big_statements_memory_bounded",
            big_statements_memory_bounded,
        ),
    ])
}

/// Denies SQL mentioning `forbidden_word` for the inspected role `analyst`.
struct DenyPolicy;

impl StatementPolicy for DenyPolicy {
    fn inspects(&self, who: &Identity) -> bool {
        who.role.as_str() == "analyst"
    }
    fn check(&self, sql: &str, _: &Identity) -> Decision {
        if sql.contains("forbidden_word") {
            Decision::Deny(PgError::insufficient_privilege("refused by test policy"))
        } else {
            Decision::Allow
        }
    }
}

/// A proxy in `mode` with `size` backends per pool, the deny policy, a short checkout timeout.
fn proxy(fx: &Fixture, mode: PoolMode, size: usize, checkout: Duration) -> Result<Running> {
    fx.start_server(
        |cfg| {
            cfg.pool.mode = mode;
            cfg.pool.size = size;
            cfg.pool.checkout_timeout = checkout;
            cfg.pool.reset_timeout = Duration::from_secs(3);
            for t in &mut cfg.tenants {
                t.pool_size = None;
                t.pool_mode = None;
            }
        },
        ServerOptions {
            policy: Arc::new(DenyPolicy),
            ..ServerOptions::default()
        },
    )
}

async fn raw_client(fx: &Fixture, addr: SocketAddr, tenant: &str, role: &str) -> Result<Raw> {
    let token = fx.token(&format!("{role}@{tenant}"), tenant, role);
    Raw::connect(&addr.to_string(), "tester", tenant, &token).await
}

/// Reads replies until an ErrorResponse (its SQLSTATE), with a safety net.
async fn until_error(c: &mut Raw) -> Result<String> {
    let r = tokio::time::timeout(raw::SAFETY, c.until(|r| matches!(r, Reply::Error(_))))
        .await
        .context("no error reply")??;
    match r {
        Reply::Error(code) => Ok(code),
        _ => unreachable!(),
    }
}

fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

/// 25 clients each send a failing Parse (half of them one pgveil refuses) + Describe + Flush, read the
/// error and leave without Sync. Then the pool still serves, and the next client's INSERT is written.
fn unsynced_error_then_exit(fx: &Fixture, mode: PoolMode) -> Result<()> {
    let proxy = proxy(fx, mode, 2, Duration::from_secs(3))?;
    let table = format!("pools_ins_{}", mode_name(mode));
    fx.superuser_sql("acme", &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int); GRANT ALL ON {table} TO PUBLIC"))?;
    fx.block_on(async {
        for i in 0..25 {
            let mut c = raw_client(fx, proxy.addr, "acme", "analyst").await?;
            let sql = if i % 2 == 0 {
                "SELECT * FROM pools_no_such_table"
            } else {
                "SELECT forbidden_word"
            };
            c.send(&[
                Frontend::Parse("", sql),
                Frontend::Describe('S', ""),
                Frontend::Flush,
            ])
            .await?;
            let code = until_error(&mut c).await?;
            ensure!(code == "42P01" || code == "42501", "client {i}: got {code}");
            drop(c); // exits without Sync
        }
        let insert = format!("INSERT INTO {table} VALUES (7)");
        let mut c = raw_client(fx, proxy.addr, "acme", "analyst").await?;
        let replies = tokio::time::timeout(
            raw::SAFETY,
            c.round(&[
                Frontend::Parse("", &insert),
                Frontend::Bind("", "", &[]),
                Frontend::Execute(""),
                Frontend::Sync,
            ]),
        )
        .await
        .context("the INSERT got no answer")??;
        ensure!(
            replies.contains(&Reply::Complete("INSERT 0 1".into())),
            "INSERT not executed: {replies:?}"
        );
        let n = fx.superuser_sql("acme", &format!("SELECT count(*) FROM {table}"))?;
        ensure!(n.trim() == "1", "rows written: {n}");
        let status = proxy.shared.pools.status();
        ensure!(
            status.iter().all(|(_, size, _)| *size <= 2),
            "pool grew past its size: {status:?}"
        );
        Ok(())
    })
}

/// A victim leaves a suspended portal and an executed UPDATE without Sync; the next client of its backend
/// (pool of one) can read neither the portal nor the uncommitted change, which is rolled back.
fn victim_portal_and_update(fx: &Fixture, mode: PoolMode) -> Result<()> {
    let proxy = proxy(fx, mode, 1, Duration::from_secs(5))?;
    let table = format!("pools_upd_{}", mode_name(mode));
    fx.superuser_sql("globex", &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (v int); INSERT INTO {table} VALUES (0); GRANT ALL ON {table} TO PUBLIC"))?;
    fx.block_on(async {
        let mut victim = raw_client(fx, proxy.addr, "globex", "admin").await?;
        let update = format!("UPDATE {table} SET v = v + 1");
        victim
            .send(&[
                Frontend::Parse("", &update),
                Frontend::Bind("", "", &[]),
                Frontend::Execute(""),
                Frontend::Parse("", "SELECT g FROM generate_series(1, 100) g"),
                Frontend::Bind("victim_portal", "", &[]),
                Frontend::ExecuteMax("victim_portal", 1),
                Frontend::Flush,
            ])
            .await?;
        tokio::time::timeout(raw::SAFETY, victim.until(|r| matches!(r, Reply::Suspended)))
            .await
            .context("victim's portal did not suspend")??;
        drop(victim);

        let mut next = raw_client(fx, proxy.addr, "globex", "admin").await?;
        let replies = tokio::time::timeout(
            raw::SAFETY,
            next.round(&[Frontend::Execute("victim_portal"), Frontend::Sync]),
        )
        .await
        .context("next client got no answer")??;
        ensure!(
            !replies.iter().any(|r| matches!(r, Reply::Row(_))),
            "{mode:?}: the victim's portal was readable: {replies:?}"
        );
        ensure!(
            replies.contains(&Reply::Error("34000".into())),
            "{mode:?}: expected 34000, got {replies:?}"
        );
        let replies = next
            .round(&[Frontend::Query(&format!("SELECT v FROM {table}"))])
            .await?;
        ensure!(
            replies.contains(&Reply::Row(vec![Some("0".into())])),
            "{mode:?}: the victim's unsynced UPDATE was committed: {replies:?}"
        );
        Ok(())
    })
}

/// Parse of the unnamed statement, then a refused Parse of it: Bind of the unnamed statement gets 26000 as in
/// PostgreSQL, not the earlier statement's rows.
fn refused_unnamed_parse(fx: &Fixture, mode: PoolMode) -> Result<()> {
    let proxy = proxy(fx, mode, 2, Duration::from_secs(5))?;
    fx.block_on(async {
        let mut c = raw_client(fx, proxy.addr, "acme", "analyst").await?;
        let r = c
            .round(&[Frontend::Parse("", "SELECT 'earlier' AS a"), Frontend::Sync])
            .await?;
        ensure!(r.contains(&Reply::ParseComplete), "{r:?}");
        let r = c
            .round(&[Frontend::Parse("", "SELECT forbidden_word"), Frontend::Sync])
            .await?;
        ensure!(r.contains(&Reply::Error("42501".into())), "{r:?}");
        let r = c
            .round(&[
                Frontend::Bind("", "", &[]),
                Frontend::Execute(""),
                Frontend::Sync,
            ])
            .await?;
        ensure!(
            !r.iter().any(|x| matches!(x, Reply::Row(_))),
            "{mode:?}: the earlier unnamed statement ran: {r:?}"
        );
        ensure!(
            r.contains(&Reply::Error("26000".into())),
            "{mode:?}: expected 26000, got {r:?}"
        );
        // The session goes on.
        let r = c.round(&[Frontend::Query("SELECT 1")]).await?;
        ensure!(r.contains(&Reply::Row(vec![Some("1".into())])), "{r:?}");
        Ok(())
    })
}

/// Every idle pooled backend is killed the way a server restart kills it (57P01, then EOF); the sessions
/// that follow, in both modes, all succeed.
fn dead_backends_not_handed_out(fx: &Fixture) -> Result<()> {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = proxy(fx, mode, 4, Duration::from_secs(10))?;
        fx.block_on(async {
            // Fill the pool with 4 idle backends.
            let mut clients = Vec::new();
            for _ in 0..4 {
                let c = fx.connect_to(proxy.addr, "clearco", "admin").await?;
                c.batch_execute("BEGIN; SELECT 1").await?;
                clients.push(c);
            }
            for c in &clients {
                c.batch_execute("COMMIT").await?;
            }
            drop(clients);
            wait_pool_idle(&proxy, 4).await?;
            fx.superuser_sql(
                "clearco",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'clearco' AND pid <> pg_backend_pid()",
            )?;
            for _ in 0..100 {
                let n = fx.superuser_sql("clearco", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'clearco' AND pid <> pg_backend_pid()")?;
                if n.trim() == "0" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut failed = Vec::new();
            for i in 0..12 {
                let r = async {
                    let c = fx.connect_to(proxy.addr, "clearco", "admin").await?;
                    c.simple_query("SELECT 1").await?;
                    c.simple_query("SELECT 2").await?;
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = r {
                    failed.push(format!("{i}: {e:#}"));
                }
            }
            ensure!(
                failed.is_empty(),
                "{mode:?}: {} failed sessions: {failed:?}",
                failed.len()
            );
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

async fn wait_pool_idle(proxy: &Running, n: usize) -> Result<()> {
    for _ in 0..200 {
        if proxy
            .shared
            .pools
            .status()
            .iter()
            .any(|(_, size, avail)| *size == n && *avail == n)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("pool never became idle: {:?}", proxy.shared.pools.status())
}

/// Transaction mode: 20 open transactions hold every backend of the pool; a new login succeeds (from the
/// pool's cached server parameters) and its first statement runs once a backend is free.
fn txn_login_while_pool_busy(fx: &Fixture) -> Result<()> {
    let proxy = proxy(fx, PoolMode::Transaction, 20, Duration::from_secs(2))?;
    fx.block_on(async {
        let mut holders = Vec::new();
        for _ in 0..20 {
            let c = fx.connect_to(proxy.addr, "globex", "tiny").await?;
            c.batch_execute("BEGIN; SELECT 1").await?;
            holders.push(c);
        }
        let newcomer = fx
            .connect_to(proxy.addr, "globex", "tiny")
            .await
            .context("login while every backend is in a transaction")?;
        let q = tokio::spawn(async move {
            let r = newcomer
                .query_one("SELECT current_setting('TimeZone')", &[])
                .await;
            (r.map(|row| row.get::<_, String>(0)), newcomer)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        holders[0].batch_execute("COMMIT").await?;
        let (r, _newcomer) = q.await?;
        r.context("first statement after a backend was freed")?;
        for h in &holders[1..] {
            h.batch_execute("COMMIT").await?;
        }
        Ok(())
    })
}

/// A Bind frame announcing 1 GiB is refused with 08P01 (PostgreSQL's own limit), not forwarded.
fn frame_claiming_1gib_refused(fx: &Fixture) -> Result<()> {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = proxy(fx, mode, 2, Duration::from_secs(5))?;
        fx.block_on(async {
            let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
            let token = fx.token("big@acme", "acme", "admin");
            raw::login(&mut s, "acme", &token, &[]).await?;
            let mut frame = vec![b'B'];
            frame.extend_from_slice(&(1i32 << 30).to_be_bytes());
            frame.extend_from_slice(&[0u8; 64 * 1024]);
            s.write_all(&frame).await?;
            raw::expect_fatal(&mut s, "08P01")
                .await
                .with_context(|| format!("{mode:?}"))?;
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

/// 50 sockets that never finish their startup do not count against `max_clients`: a real client gets in.
fn silent_sockets_do_not_block_clients(fx: &Fixture) -> Result<()> {
    let srv = fx.start_server(|c| c.listen.max_clients = 5, ServerOptions::default())?;
    fx.block_on(async {
        let mut silent = Vec::new();
        for _ in 0..50 {
            silent.push(tokio::net::TcpStream::connect(srv.addr).await?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = fx.connect_to(srv.addr, "acme", "admin").await?;
        c.simple_query("SELECT 1").await?;
        drop(silent);
        Ok(())
    })
}

/// Session state created through spellings the word scan cannot see and inside tenant functions: the next
/// client of the backend (pool of one, transaction mode) sees none of it.
fn state_leak_scenarios(fx: &Fixture) -> Result<()> {
    fx.superuser_sql(
        "globex",
        "CREATE OR REPLACE FUNCTION leak_setcfg() RETURNS text LANGUAGE sql AS $$ SELECT set_config('application_name', 'leaked_by_fn', false) $$;
         CREATE OR REPLACE FUNCTION leak_mktemp() RETURNS void LANGUAGE plpgsql AS $$ BEGIN CREATE TEMP TABLE IF NOT EXISTS leak_fn_temp (x int); END $$;
         CREATE OR REPLACE FUNCTION leak_lock() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_lock(4242); END $$;",
    )?;
    let proxy = proxy(fx, PoolMode::Transaction, 1, Duration::from_secs(10))?;
    let check_temp = |name: &str| format!("SELECT (to_regclass('pg_temp.{name}') IS NULL)::text");
    let no_setting =
        |v: &str| format!("SELECT (current_setting('application_name') <> '{v}')::text");
    let no_lock = "SELECT (count(*) = 0)::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()".to_owned();
    let scenarios: Vec<(&str, &str, String, String)> = vec![
        (
            "U& temp table",
            "tiny",
            r#"CREATE TABLE U&"pg_t\0065mp".leak_u_temp AS SELECT 1 AS x"#.into(),
            check_temp("leak_u_temp"),
        ),
        (
            "U& set_config",
            "tiny",
            r#"SELECT U&"set\005fconfig"('application_name', 'leaked_u', false)"#.into(),
            no_setting("leaked_u"),
        ),
        (
            "U& set_config, masked role",
            "analyst",
            r#"SELECT U&"set\005fconfig"('application_name', 'leaked_um', false)"#.into(),
            no_setting("leaked_um"),
        ),
        (
            "function set_config",
            "tiny",
            "SELECT leak_setcfg()".into(),
            no_setting("leaked_by_fn"),
        ),
        (
            "function temp table",
            "tiny",
            "SELECT leak_mktemp()".into(),
            check_temp("leak_fn_temp"),
        ),
        (
            "function advisory lock",
            "tiny",
            "SELECT leak_lock()".into(),
            no_lock.clone(),
        ),
        (
            "plain advisory lock",
            "tiny",
            "SELECT pg_advisory_lock(4243)".into(),
            no_lock,
        ),
    ];
    fx.block_on(async {
        let mut leaks = Vec::new();
        for (what, role, sql, check) in &scenarios {
            let mut a = raw_client(fx, proxy.addr, "globex", role).await?;
            let r = a.round(&[Frontend::Query(sql)]).await?;
            ensure!(
                !r.iter().any(|x| matches!(x, Reply::Error(_))),
                "{what}: {r:?}"
            );
            drop(a);
            let mut b = raw_client(fx, proxy.addr, "globex", "tiny").await?;
            let r = tokio::time::timeout(raw::SAFETY, b.round(&[Frontend::Query(check)]))
                .await
                .with_context(|| format!("{what}: check got no answer"))??;
            if !r.contains(&Reply::Row(vec![Some("true".into())])) {
                leaks.push(format!("{what}: {r:?}"));
            }
        }
        ensure!(
            leaks.is_empty(),
            "{} of {} scenarios leaked: {leaks:?}",
            leaks.len(),
            scenarios.len()
        );
        Ok(())
    })
}

/// Resident set size of this process (the proxy runs in it), in bytes.
fn rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// The masked role sends 50 distinct 1 MiB statements (half made distinct by a comment, half by a literal):
/// the decision caches stay within their byte budget, and the process grows by far less than the statements.
fn big_statements_memory_bounded(fx: &Fixture) -> Result<()> {
    let dir = support::masking::write_policy_dir(fx, "policy-cache-budget")?;
    let proxy = support::masking::masking_proxy(fx, dir)?;
    let engine = proxy.shared.masking.clone().context("masking engine")?;
    let budget = pgveil::policy::engine::DEFAULT_CACHE_BYTES;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        let big = |i: usize| {
            let pad = format!("{i:04}").repeat(256 * 1024);
            if i.is_multiple_of(2) {
                format!("SELECT email FROM payers /* {pad} */ WHERE id < 3")
            } else {
                format!("SELECT email, '{pad}' AS pad FROM payers WHERE id < 3")
            }
        };
        // Warm up the allocator and the session with one statement of the same shape.
        c.simple_query(&big(9999)).await?;
        let before = rss()?;
        for i in 0..50 {
            c.simple_query(&big(i)).await?;
        }
        let after = rss()?;
        let held = engine.cache_weight();
        let growth = after.saturating_sub(before);
        eprintln!(
            "50 x 1 MiB statements: RSS {} -> {} MiB (+{} MiB), caches hold {} MiB of a {} MiB budget",
            before >> 20,
            after >> 20,
            growth >> 20,
            held >> 20,
            budget >> 20
        );
        ensure!(held <= budget, "caches hold {held} bytes, budget {budget}");
        ensure!(
            growth < budget + (16 << 20),
            "RSS grew by {} MiB (budget {} MiB)",
            growth >> 20,
            budget >> 20
        );
        Ok(())
    })
}
