//! Dead and dying backends (issue 13), on a cluster of this binary's own (the tests terminate backends and
//! restart PostgreSQL, one test at a time):
//! - a backend terminated while running the first statement of a transaction (or of a session) is replaced
//!   and the statement runs again, with no client-visible failure and no duplicated write;
//! - a batch that may have run (work committed before the backend died, or extended-protocol statements in
//!   transaction mode) is never sent twice: the client gets the error;
//! - a PostgreSQL restart with an idle pool costs no session a failure, in both modes;
//! - the periodic idle check (`pool.idle_check_interval`) removes dead idle backends from their pool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use pgveil::config::PoolMode;
use pgveil::server::ServerOptions;
use support::{Fixture, Running};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        ("retry_first_batch_session", |fx| {
            retry_first_batch(fx, PoolMode::Session)
        }),
        ("retry_first_batch_transaction", |fx| {
            retry_first_batch(fx, PoolMode::Transaction)
        }),
        ("restart_with_idle_pool_no_failures", restart_with_idle_pool),
        ("idle_check_discards_dead_backends", idle_check),
    ])
}

/// The tests terminate backends and restart the cluster: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

/// A proxy in `mode` with `size` backends per pool and the given periodic idle check (0: off).
fn proxy(fx: &Fixture, mode: PoolMode, size: usize, idle_check: Duration) -> Result<Running> {
    fx.start_server(
        |cfg| {
            cfg.pool.mode = mode;
            cfg.pool.size = size;
            cfg.pool.checkout_timeout = Duration::from_secs(10);
            cfg.pool.idle_check_interval = idle_check;
            for t in &mut cfg.tenants {
                t.pool_size = None;
                t.pool_mode = None;
            }
        },
        ServerOptions::default(),
    )
}

/// Waits until a statement whose text contains `marker` is running, then terminates its backend (as an
/// operator or a restart would: FATAL 57P01). Returns whether PostgreSQL terminated one.
async fn terminate_running(fx: &Fixture, tenant: &str, marker: &str) -> Result<bool> {
    let d = fx.direct(tenant).await?;
    for _ in 0..500 {
        let rows = d
            .query(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' \
                 AND pid <> pg_backend_pid() AND position($1 in query) > 0",
                &[&marker],
            )
            .await?;
        if let Some(row) = rows.first() {
            let pid: i32 = row.get(0);
            return Ok(d
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await?
                .get(0));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("no statement with {marker} ran")
}

async fn count(fx: &Fixture, table: &str, x: i32) -> Result<i64> {
    let d = fx.direct("acme").await?;
    let sql = format!("SELECT count(*) FROM {table} WHERE x = $1");
    Ok(d.query_one(sql.as_str(), &[&x]).await?.get(0))
}

/// A: the first statement of a transaction (session: of the session) is killed while it runs, before any
/// answer: it runs again on a fresh backend, the client sees success, the row is written once.
/// B: a batch that committed a row before the backend was killed is not sent again: the client gets the
/// error and the row exists once. C: an extended-protocol statement (prepared before) is not retried.
fn retry_first_batch(fx: &Fixture, mode: PoolMode) -> Result<()> {
    let _serial = serial();
    let name = mode_name(mode);
    let proxy = proxy(fx, mode, 2, Duration::ZERO)?;
    let table = format!("retry_{name}");
    fx.superuser_sql(
        "acme",
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int); GRANT ALL ON {table} TO PUBLIC"),
    )?;
    fx.block_on(async {
        // Backends in the pool, idle: what a retry replaces.
        let warm = fx.connect_to(proxy.addr, "acme", "admin").await?;
        warm.simple_query("SELECT 1").await?;
        drop(warm);
        let mut failures = Vec::new();
        let runs = 5;
        for i in 0..runs {
            let marker = format!("retry-a-{i}-{name}");
            let c = fx.connect_to(proxy.addr, "acme", "admin").await?;
            let sql = format!("INSERT INTO {table} SELECT {i} FROM pg_sleep(0.3) /* {marker} */");
            let run = tokio::spawn(async move { c.simple_query(&sql).await.map(|_| c) });
            ensure!(
                terminate_running(fx, "acme", &marker).await?,
                "{name}: nothing terminated"
            );
            match run.await? {
                Ok(c) => {
                    // The session goes on, on its new backend.
                    c.simple_query("SELECT 1").await?;
                }
                Err(e) => failures.push(format!("{i}: {e}")),
            }
            let n = count(fx, &table, i).await?;
            ensure!(n == 1, "{name}: run {i} wrote {n} rows");
        }
        println!(
            "{name} mode: {runs} first statements killed while running: {} client-visible failures, each row written once",
            failures.len()
        );
        ensure!(failures.is_empty(), "{name}: failures: {failures:?}");

        // B: work committed before the kill: never sent twice.
        let marker = format!("retry-b-{name}");
        let c = fx.connect_to(proxy.addr, "acme", "admin").await?;
        let sql = format!(
            "BEGIN; INSERT INTO {table} VALUES (100); COMMIT; SELECT pg_sleep(5) /* {marker} */"
        );
        let run = tokio::spawn(async move { c.simple_query(&sql).await.map(drop) });
        ensure!(terminate_running(fx, "acme", &marker).await?);
        let r = run.await?;
        ensure!(r.is_err(), "{name}: a batch that committed was retried");
        let n = count(fx, &table, 100).await?;
        ensure!(n == 1, "{name}: committed row written {n} times");

        // C: extended protocol after a prepare: not retried (error, nothing written).
        let marker = format!("retry-c-{name}");
        let c = fx.connect_to(proxy.addr, "acme", "admin").await?;
        let sql = format!("INSERT INTO {table} SELECT 200 FROM pg_sleep(5) /* {marker} */");
        let stmt = c.prepare(&sql).await?;
        let run = tokio::spawn(async move { c.execute(&stmt, &[]).await.map(drop) });
        ensure!(terminate_running(fx, "acme", &marker).await?);
        ensure!(
            run.await?.is_err(),
            "{name}: extended-protocol statement retried"
        );
        ensure!(count(fx, &table, 200).await? == 0);
        println!(
            "{name} mode: committed-then-killed batch and extended-protocol statement: client errors, nothing duplicated"
        );
        Ok(())
    })
}

async fn wait_pool(proxy: &Running, size: usize, available: usize) -> Result<()> {
    for _ in 0..400 {
        if proxy
            .shared
            .pools
            .status()
            .iter()
            .any(|(_, s, a)| *s == size && *a == available)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!(
        "pool never reached {size}/{available}: {:?}",
        proxy.shared.pools.status()
    )
}

/// Fills the pool with `n` idle backends; returns their pids.
async fn fill_pool(fx: &Fixture, proxy: &Running, tenant: &str, n: usize) -> Result<Vec<i32>> {
    let mut clients = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..n {
        let c = fx.connect_to(proxy.addr, tenant, "admin").await?;
        c.batch_execute("BEGIN").await?;
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        pids.push(pid);
        clients.push(c);
    }
    for c in &clients {
        c.batch_execute("COMMIT").await?;
    }
    drop(clients);
    wait_pool(proxy, n, n).await?;
    Ok(pids)
}

/// `pg_ctl restart -m fast` with an idle pool: every following session succeeds, and in transaction mode a
/// client connected before the restart goes on.
fn restart_with_idle_pool(fx: &Fixture) -> Result<()> {
    let _serial = serial();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let name = mode_name(mode);
        let proxy = proxy(fx, mode, 4, Duration::ZERO)?;
        let long = fx.block_on(async {
            fill_pool(fx, &proxy, "globex", 4).await?;
            let long = match mode {
                PoolMode::Transaction => Some(fx.connect_to(proxy.addr, "globex", "admin").await?),
                PoolMode::Session => None,
            };
            anyhow::Ok(long)
        })?;
        fx.env
            .cluster
            .restart("fast")
            .context("restarting PostgreSQL")?;
        fx.block_on(async {
            let mut failed = Vec::new();
            for i in 0..12 {
                let r = async {
                    let c = fx.connect_to(proxy.addr, "globex", "admin").await?;
                    c.simple_query("SELECT 1").await?;
                    c.simple_query("SELECT 2").await?;
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = r {
                    failed.push(format!("{i}: {e:#}"));
                }
            }
            if let Some(long) = &long
                && let Err(e) = long.simple_query("SELECT 3").await
            {
                failed.push(format!("long-lived client: {e}"));
            }
            println!(
                "{name} mode: PostgreSQL restarted under an idle pool of 4: {} failed of 12 sessions{}",
                failed.len(),
                if long.is_some() { " + 1 long-lived client" } else { "" }
            );
            ensure!(failed.is_empty(), "{name}: {failed:?}");
            Ok(())
        })?;
    }
    Ok(())
}

/// Idle backends terminated from outside: without the periodic check they stay in the pool (counted, their
/// sockets open) until checked out; with it they are removed within a few intervals.
fn idle_check(fx: &Fixture) -> Result<()> {
    let _serial = serial();
    for (every, expect_removed) in [(Duration::ZERO, false), (Duration::from_millis(200), true)] {
        let proxy = proxy(fx, PoolMode::Session, 3, every)?;
        fx.block_on(async {
            let pids = fill_pool(fx, &proxy, "tlsco", 3).await?;
            let d = fx.direct("tlsco").await?;
            for pid in &pids {
                d.query_one("SELECT pg_terminate_backend($1)", &[pid])
                    .await?;
            }
            // Gone on the server side.
            for _ in 0..200 {
                let n: i64 = d
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                        &[&pids],
                    )
                    .await?
                    .get(0);
                if n == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let removed = wait_pool(&proxy, 0, 0).await.is_ok();
            println!(
                "idle check {every:?}: 3 idle backends terminated; removed from the pool without a checkout: {removed}"
            );
            ensure!(
                removed == expect_removed,
                "idle check {every:?}: pool {:?}",
                proxy.shared.pools.status()
            );
            // Either way no client sees a dead backend.
            let c = fx.connect_to(proxy.addr, "tlsco", "admin").await?;
            c.simple_query("SELECT 1").await?;
            Ok(())
        })?;
    }
    Ok(())
}
