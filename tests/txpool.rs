//! Transaction pooling end to end: many clients over few backends with named prepared statements
//! (tokio-postgres, psycopg `prepare=True`, asyncpg, `pgbench -M prepared`), the exact extended-protocol
//! responses compared with direct PostgreSQL, isolation of statements and settings between clients, pinning,
//! cancel, the queue timeout, and backends or clients that die mid-transaction.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pgveil::config::PoolMode;
use pgveil::server::ServerOptions;
use support::raw::script::{Raw, Reply};
use support::{Fixture, Running, connect, sqlstate};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        (
            "fifty_clients_three_backends_tokio_postgres",
            fifty_clients_tokio_postgres,
        ),
        ("python_drivers_psycopg_prepare_and_asyncpg", python_drivers),
        ("node_postgres_named_queries", node_postgres_named_queries),
        (
            "pgbench_prepared_extended_simple",
            pgbench_through_transaction_pool,
        ),
        (
            "extended_protocol_replies_match_direct",
            replies_match_direct,
        ),
        (
            "statement_names_are_per_client",
            statement_names_are_per_client,
        ),
        (
            "settings_follow_client_and_do_not_leak",
            settings_follow_client,
        ),
        ("session_state_pins_client", session_state_pins),
        ("cancel_follows_client", cancel_follows_client),
        ("queue_timeout_gives_53300", queue_timeout),
        ("backend_dies_mid_transaction", backend_dies_mid_transaction),
        (
            "client_disconnects_mid_transaction",
            client_disconnects_mid_transaction,
        ),
        (
            "event_loops_share_the_pool_without_losing_updates",
            event_loops_share_the_pool,
        ),
    ])
}

/// A transaction-mode proxy with `size` backends per pool.
fn txn_proxy(fx: &Fixture, size: usize, checkout: Duration) -> Result<Running> {
    fx.start_server(
        |cfg| {
            cfg.pool.mode = PoolMode::Transaction;
            cfg.pool.size = size;
            cfg.pool.checkout_timeout = checkout;
            cfg.pool.max_prepared_statements = 8;
            for t in &mut cfg.tenants {
                t.pool_size = None;
                t.pool_mode = None;
            }
        },
        ServerOptions::default(),
    )
}

fn fifty_clients_tokio_postgres(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 3, Duration::from_secs(30))?;
    fx.block_on(async {
        let admin = fx.direct("acme").await?;
        admin
            .batch_execute("DROP TABLE IF EXISTS txp_counter; CREATE TABLE txp_counter (client int PRIMARY KEY, n int)")
            .await?;
        let mut tasks = Vec::new();
        for i in 0..50i32 {
            let token = fx.token(&format!("u{i}"), "acme", "analyst");
            let cs = fx.conn_str(proxy.addr, "acme", "u", &token);
            tasks.push(tokio::spawn(async move {
                let mut c = connect(&cs).await?;
                let double = c.prepare("SELECT $1::int * 2, pg_backend_pid()").await?;
                let bump = c.prepare("UPDATE txp_counter SET n = n + $2 WHERE client = $1").await?;
                let email = c.prepare("SELECT email FROM payers WHERE id = $1").await?;
                c.execute("INSERT INTO txp_counter VALUES ($1, 0)", &[&i]).await?;
                let mut pids = HashSet::new();
                for k in 0..20i32 {
                    let tx = c.transaction().await?;
                    let row = tx.query_one(&double, &[&(i * 1000 + k)]).await?;
                    ensure!(row.get::<_, i32>(0) == (i * 1000 + k) * 2, "wrong result");
                    pids.insert(row.get::<_, i32>(1));
                    tx.execute(&bump, &[&i, &k]).await?;
                    tx.commit().await?;
                    let e: String = c.query_one(&email, &[&i64::from(k % 40 + 1)]).await?.get(0);
                    ensure!(!e.is_empty());
                }
                let n: i32 = c.query_one("SELECT n FROM txp_counter WHERE client = $1", &[&i]).await?.get(0);
                anyhow::Ok((n, pids))
            }));
        }
        let mut all_pids = HashSet::new();
        let mut moved = 0;
        for t in tasks {
            let (n, pids) = t.await??;
            ensure!(n == (0..20).sum::<i32>(), "lost updates: {n}");
            moved += usize::from(pids.len() > 1);
            all_pids.extend(pids);
        }
        ensure!(all_pids.len() <= 3, "more than 3 backends served: {all_pids:?}");
        ensure!(moved > 0, "no client ever moved between backends: not transaction pooling");
        let status = proxy.shared.pools.status();
        ensure!(status.iter().all(|(_, size, _)| *size <= 3), "pool grew past its size: {status:?}");
        Ok(())
    })
}

const PY_DRIVERS: &str = r#"
import asyncio, sys
import asyncpg, psycopg

host, port, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

async def with_asyncpg(i):
    c = await asyncpg.connect(host=host, port=port, user="a", password=token, database="acme", ssl=False)
    for k in range(15):
        async with c.transaction():
            v = await c.fetchval("SELECT $1::int * 3", i * 100 + k)
            assert v == (i * 100 + k) * 3, v
            e = await c.fetchval("SELECT email FROM payers WHERE id = $1", k % 40 + 1)
            assert e
        s = await c.prepare("SELECT $1::text || 'x'")
        assert await s.fetchval(str(k)) == str(k) + "x"
    await c.close()

async def with_psycopg(i):
    c = await psycopg.AsyncConnection.connect(host=host, port=port, user="p", password=token, dbname="acme",
                                              sslmode="disable", autocommit=True)
    for k in range(15):
        async with c.transaction():
            cur = await c.execute("SELECT %s::int * 5", (i * 100 + k,), prepare=True)
            assert (await cur.fetchone())[0] == (i * 100 + k) * 5
        cur = await c.execute("SELECT count(*) FROM payers WHERE id <= %s", (k + 1,), prepare=True)
        assert (await cur.fetchone())[0] == k + 1
    await c.close()

async def main():
    await asyncio.gather(*[with_asyncpg(i) for i in range(n)], *[with_psycopg(i) for i in range(n)])
    print("ok")

asyncio.run(main())
"#;

fn python_drivers(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 3, Duration::from_secs(30))?;
    let token = fx.token("py", "acme", "analyst");
    let out = Command::new("python3")
        .args([
            "-c",
            PY_DRIVERS,
            "127.0.0.1",
            &proxy.addr.port().to_string(),
            &token,
            "25",
        ])
        .output()
        .context("running python3")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "python drivers failed:\n{stderr}"
    );
    Ok(())
}

/// node-postgres named queries (Parse with a name once per client, then Bind/Execute) from 20 clients over
/// 3 backends, with and without explicit transactions (tests/node/named_queries.mjs).
fn node_postgres_named_queries(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 3, Duration::from_secs(30))?;
    let token = fx.token("node", "acme", "analyst");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/named_queries.mjs");
    let out = Command::new("node")
        .args([
            script,
            "127.0.0.1",
            &proxy.addr.port().to_string(),
            &token,
            "20",
        ])
        .output()
        .context("running node (tests/run.sh installs node-postgres in tests/node)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "node-postgres failed:\n{stderr}"
    );
    let status = proxy.shared.pools.status();
    ensure!(
        status.iter().all(|(_, size, _)| *size <= 3),
        "pool grew past its size: {status:?}"
    );
    Ok(())
}

fn pgbench_through_transaction_pool(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 3, Duration::from_secs(30))?;
    let (user, password) = fx.creds("globex");
    let port = fx.env.cluster.port().to_string();
    let init = Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            &user,
            "globex",
        ])
        .env("PGPASSWORD", &password)
        .output()?;
    ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let token = fx.token("bench", "globex", "analyst");
    // pgbench prepares each command synchronously the first time (PQprepare), blocking its whole thread:
    // with several clients per thread, a client waiting for a backend inside that call would stall clients
    // of the same thread that hold backends mid-transaction. One thread per client avoids that artifact.
    for (mode, extra) in [
        ("prepared", None),
        ("prepared", Some("-S")),
        ("extended", None),
        ("simple", Some("-S")),
    ] {
        let mut args = vec![
            "-n",
            "-M",
            mode,
            "-c",
            "12",
            "-j",
            "12",
            "-t",
            "40",
            "-h",
            "127.0.0.1",
            "-U",
            "bench",
        ];
        args.extend(extra);
        let port = proxy.addr.port().to_string();
        args.extend(["-p", &port, "globex"]);
        let out = Command::new("pgbench")
            .args(&args)
            .env("PGPASSWORD", &token)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success()
                && stdout.contains("number of transactions actually processed: 480/480"),
            "pgbench -M {mode} {extra:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            !stdout.contains("number of failed transactions: ")
                || stdout.contains("failed transactions: 0 "),
            "{stdout}"
        );
    }
    Ok(())
}

/// One scripted conversation: batches of extended-protocol messages ending in Sync, and simple queries.
async fn scripted(c: &mut Raw) -> Result<Vec<Reply>> {
    use support::raw::script::Frontend::*;
    let mut out = Vec::new();
    let batches: Vec<Vec<support::raw::script::Frontend>> = vec![
        vec![
            Parse("s1", "SELECT $1::int + 1 AS n"),
            Describe('S', "s1"),
            Sync,
        ],
        vec![
            Bind("", "s1", &["41"]),
            Describe('P', ""),
            Execute(""),
            Sync,
        ],
        vec![
            Parse("s1", "SELECT 2"),
            Bind("", "s1", &["1"]),
            Execute(""),
            Sync,
        ],
        vec![Bind("", "nope", &[]), Execute(""), Sync],
        vec![Describe('S', "nope"), Sync],
        vec![Parse("", "SELECT 'unnamed'::text"), Sync],
        vec![Bind("", "", &[]), Execute(""), Sync],
        vec![
            Parse("s2", "SELECT * FROM no_such_table"),
            Bind("", "s2", &[]),
            Sync,
        ],
        vec![Bind("", "s2", &[]), Sync],
        vec![Close('S', "s1"), Sync],
        vec![Bind("", "s1", &["1"]), Sync],
        vec![Close('S', "never_existed"), Sync],
        // Pipelined: several batches before reading.
        vec![
            Parse("p1", "SELECT 10"),
            Sync,
            Bind("", "p1", &[]),
            Execute(""),
            Sync,
            Bind("", "p1", &[]),
            Execute(""),
            Flush,
        ],
        vec![Sync],
        vec![Query("BEGIN; SELECT 1")],
        vec![
            Parse("t1", "SELECT $1::text"),
            Bind("", "t1", &["in-txn"]),
            Execute(""),
            Sync,
        ],
        vec![Query("COMMIT")],
        vec![Bind("", "t1", &["after"]), Execute(""), Sync],
    ];
    for b in batches {
        out.push(Reply::Batch);
        out.extend(c.round(&b).await?);
    }
    Ok(out)
}

fn replies_match_direct(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 2, Duration::from_secs(30))?;
    fx.block_on(async {
        let (user, password) = fx.creds("clearco");
        let mut direct = Raw::connect(
            &format!("127.0.0.1:{}", fx.env.cluster.port()),
            &user,
            "clearco",
            &password,
        )
        .await?;
        let want = scripted(&mut direct).await?;
        // Another client keeps the pool's backends rotating while the scripted one runs.
        let token = fx.token("noise", "clearco", "analyst");
        let noise_cs = fx.conn_str(proxy.addr, "clearco", "n", &token);
        let noise = tokio::spawn(async move {
            let c = connect(&noise_cs).await?;
            for _ in 0..200 {
                c.simple_query("SELECT 1").await?;
            }
            anyhow::Ok(())
        });
        let token = fx.token("raw", "clearco", "analyst");
        let mut via = Raw::connect(&proxy.addr.to_string(), "raw", "clearco", &token).await?;
        let got = scripted(&mut via).await?;
        noise.await??;
        ensure!(
            got == want,
            "replies differ:\nproxy:  {got:?}\ndirect: {want:?}"
        );
        Ok(())
    })
}

fn statement_names_are_per_client(fx: &Fixture) -> Result<()> {
    use support::raw::script::Frontend::*;
    let proxy = txn_proxy(fx, 1, Duration::from_secs(30))?;
    fx.block_on(async {
        let ta = fx.token("a", "acme", "analyst");
        let tb = fx.token("b", "acme", "analyst");
        let mut a = Raw::connect(&proxy.addr.to_string(), "a", "acme", &ta).await?;
        let mut b = Raw::connect(&proxy.addr.to_string(), "b", "acme", &tb).await?;
        a.round(&[Parse("secret_stmt", "SELECT 'only-for-a'::text"), Sync])
            .await?;
        let r = a
            .round(&[Bind("", "secret_stmt", &[]), Execute(""), Sync])
            .await?;
        ensure!(
            r.contains(&Reply::Row(vec![Some("only-for-a".into())])),
            "A cannot use its statement: {r:?}"
        );
        // One backend: B is served by the very backend that has A's statement.
        for msgs in [
            vec![Bind("", "secret_stmt", &[]), Execute(""), Sync],
            vec![Describe('S', "secret_stmt"), Sync],
        ] {
            let r = b.round(&msgs).await?;
            ensure!(
                r.first() == Some(&Reply::Error("26000".into())),
                "B reached A's statement: {r:?}"
            );
        }
        for sql in [
            "EXECUTE pgveil_ps_1",
            "SELECT name, statement FROM pg_prepared_statements",
            "DEALLOCATE pgveil_ps_1",
        ] {
            let r = b.round(&[Query(sql)]).await?;
            ensure!(
                r.first() == Some(&Reply::Error("42501".into())),
                "{sql}: {r:?}"
            );
        }
        // B may use the same name for its own statement; A still gets its own.
        b.round(&[Parse("secret_stmt", "SELECT 'b'::text"), Sync])
            .await?;
        let r = b
            .round(&[Bind("", "secret_stmt", &[]), Execute(""), Sync])
            .await?;
        ensure!(r.contains(&Reply::Row(vec![Some("b".into())])), "{r:?}");
        let r = a
            .round(&[Bind("", "secret_stmt", &[]), Execute(""), Sync])
            .await?;
        ensure!(
            r.contains(&Reply::Row(vec![Some("only-for-a".into())])),
            "{r:?}"
        );
        // Another tenant never sees either.
        let tg = fx.token("g", "globex", "analyst");
        let mut g = Raw::connect(&proxy.addr.to_string(), "g", "globex", &tg).await?;
        let r = g.round(&[Bind("", "secret_stmt", &[]), Sync]).await?;
        ensure!(r.first() == Some(&Reply::Error("26000".into())), "{r:?}");
        Ok(())
    })
}

fn settings_follow_client(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 2, Duration::from_secs(30))?;
    fx.block_on(async {
        let token = fx.token("s", "acme", "analyst");
        let cs = format!(
            "{} application_name=txn-app",
            fx.conn_str(proxy.addr, "acme", "s", &token)
        );
        let a = connect(&cs).await?;
        let b = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        a.batch_execute("SET work_mem = '7MB'").await?;
        a.batch_execute("SELECT set_config('search_path', 'pg_catalog, public', false)")
            .await?;
        let sql = "SELECT current_setting('work_mem'), current_setting('application_name'), \
                   current_setting('search_path'), pg_backend_pid()";
        // C holds a backend now and then, so A and B are moved between backends.
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        let mut pids = HashSet::new();
        for i in 0..12 {
            if i % 2 == 0 {
                c.batch_execute("BEGIN").await?;
            }
            let ra = a.query_one(sql, &[]).await?;
            if i % 2 == 0 {
                c.batch_execute("COMMIT").await?;
            }
            let rb = b.query_one(sql, &[]).await?;
            let (wa, aa, sa): (String, String, String) = (ra.get(0), ra.get(1), ra.get(2));
            let (wb, ab): (String, String) = (rb.get(0), rb.get(1));
            ensure!(
                wa == "7MB" && aa == "txn-app" && sa == "pg_catalog, public",
                "A lost its settings: {wa} {aa} {sa}"
            );
            ensure!(
                wb == "4MB" && ab != "txn-app",
                "A's settings leaked to B: {wb} {ab}"
            );
            pids.insert(ra.get::<_, i32>(3));
        }
        ensure!(
            pids.len() == 2,
            "A never changed backend; the test proves nothing ({pids:?})"
        );
        a.batch_execute("RESET work_mem").await?;
        let w: String = a
            .query_one("SELECT current_setting('work_mem')", &[])
            .await?
            .get(0);
        ensure!(w == "4MB", "RESET not tracked: {w}");
        // SET LOCAL ends with its transaction.
        a.batch_execute("BEGIN; SET LOCAL work_mem = '9MB'; COMMIT")
            .await?;
        let w: String = b
            .query_one("SELECT current_setting('work_mem')", &[])
            .await?
            .get(0);
        ensure!(w == "4MB");
        Ok(())
    })
}

fn session_state_pins(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 2, Duration::from_secs(30))?;
    fx.block_on(async {
        let a = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        let b = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        a.batch_execute("CREATE TEMP TABLE pinned_t (x int); INSERT INTO pinned_t VALUES (1), (2)").await?;
        a.batch_execute("PREPARE sqlp(int) AS SELECT $1 * 10").await?;
        let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        for i in 0..10 {
            let n: i64 = a.query_one("SELECT count(*) FROM pinned_t", &[]).await?.get(0);
            ensure!(n == 2);
            let r = a.simple_query(&format!("EXECUTE sqlp({i})")).await?;
            ensure!(r.len() == 3, "EXECUTE: {r:?}");
            let p: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
            ensure!(p == pid, "pinned client moved");
            b.simple_query("SELECT 1").await?; // B keeps working on the other backend
        }
        drop(a);
        // The pinned backend was reset (DISCARD ALL) and returned: nobody sees the temp table.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..4 {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let r = c.query_one("SELECT to_regclass('pg_temp.pinned_t') IS NULL, (SELECT count(*) FROM pg_prepared_statements WHERE name = 'sqlp')", &[]);
            let e = r.await.err();
            // pg_prepared_statements is refused in transaction mode; ask without it.
            ensure!(e.is_some(), "pg_prepared_statements should be refused");
            let gone: bool = c.query_one("SELECT to_regclass('pg_temp.pinned_t') IS NULL", &[]).await?.get(0);
            ensure!(gone, "temp table leaked");
        }
        Ok(())
    })
}

fn cancel_follows_client(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 2, Duration::from_secs(30))?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        for _ in 0..3 {
            c.simple_query("SELECT 1").await?;
        }
        let token = c.cancel_token();
        let sleeper = tokio::spawn(async move { (c.simple_query("SELECT pg_sleep(60), 'txn'").await.map(|_| ()), c) });
        let probe = fx.direct("acme").await?;
        for _ in 0..400 {
            let n: i64 = probe
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60), ''txn''' AND state = 'active'", &[])
                .await?
                .get(0);
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        token.cancel_query(tokio_postgres::NoTls).await?;
        let (r, c) = sleeper.await?;
        let e = anyhow::Error::from(r.err().context("sleep was not cancelled")?);
        ensure!(sqlstate(&e).as_deref() == Some("57014"), "got {e:#}");
        c.simple_query("SELECT 1").await?;
        Ok(())
    })
}

fn queue_timeout(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 1, Duration::from_millis(300))?;
    fx.block_on(async {
        let holder = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let waiter = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        holder.batch_execute("BEGIN").await?;
        let start = Instant::now();
        let e = waiter
            .simple_query("SELECT 1")
            .await
            .map_err(anyhow::Error::from)
            .err()
            .context("no timeout")?;
        ensure!(sqlstate(&e).as_deref() == Some("53300"), "got {e:#}");
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
        holder.batch_execute("COMMIT").await?;
        let again = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        again.simple_query("SELECT 1").await?;
        Ok(())
    })
}

fn backend_dies_mid_transaction(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 2, Duration::from_secs(30))?;
    fx.block_on(async {
        let a = fx.connect_to(proxy.addr, "globex", "tiny").await?;
        let other = fx.connect_to(proxy.addr, "globex", "tiny").await?;
        a.batch_execute("BEGIN").await?;
        let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        fx.superuser_sql("globex", &format!("SELECT pg_terminate_backend({pid})"))?;
        let e = a
            .simple_query("SELECT 1")
            .await
            .map_err(anyhow::Error::from)
            .err()
            .context("query on a dead backend")?;
        let code = sqlstate(&e);
        ensure!(
            matches!(code.as_deref(), Some("57P01") | Some("08006")) || code.is_none(),
            "unexpected {e:#}"
        );
        for _ in 0..5 {
            other.simple_query("SELECT 1").await?;
        }
        let b = fx.connect_to(proxy.addr, "globex", "tiny").await?;
        for _ in 0..5 {
            b.simple_query("SELECT 1").await?;
        }
        Ok(())
    })
}

fn client_disconnects_mid_transaction(fx: &Fixture) -> Result<()> {
    let proxy = txn_proxy(fx, 1, Duration::from_secs(30))?;
    fx.block_on(async {
        let admin = fx.direct("acme").await?;
        admin.batch_execute("DROP TABLE IF EXISTS txp_abandoned; CREATE TABLE txp_abandoned (x int)").await?;
        let token = fx.token("d", "acme", "tiny");
        let (a, task) = support::connect_with_handle(&fx.conn_str(proxy.addr, "acme", "d", &token)).await?;
        a.batch_execute("BEGIN; INSERT INTO txp_abandoned VALUES (1)").await?;
        let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        // Let tokio-postgres finish closing its statement, so the backend is idle in the transaction.
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.abort(); // the client's socket closes with the transaction open
        let _ = task.await;
        let b = fx.connect_to(proxy.addr, "acme", "tiny").await?;
        let row = b
            .query_one("SELECT (SELECT count(*) FROM txp_abandoned), pg_backend_pid(), pg_current_xact_id_if_assigned() IS NULL", &[])
            .await?;
        let (n, pid_b, no_xact): (i64, i32, bool) = (row.get(0), row.get(1), row.get(2));
        ensure!(n == 0, "the abandoned transaction committed");
        ensure!(no_xact, "B runs inside A's transaction");
        if pid_b != pid {
            bail!("backend was discarded instead of rolled back and reused ({pid} vs {pid_b})");
        }
        Ok(())
    })
}

/// Thread per core (`pgveil serve --threads N`): sessions spread over two event loops, each with its share
/// of the pool (2 + 1 backends of 3); a loop whose share is busy borrows the other's; nothing is lost and the
/// pool never grows past its size.
fn event_loops_share_the_pool(fx: &Fixture) -> Result<()> {
    let loops = std::sync::Arc::new(pgveil::event_loops::EventLoops::start(2)?);
    let proxy = fx.start_server(
        |cfg| {
            cfg.pool.mode = PoolMode::Transaction;
            cfg.pool.size = 3;
            cfg.pool.checkout_timeout = Duration::from_secs(30);
            for t in &mut cfg.tenants {
                t.pool_size = None;
                t.pool_mode = None;
            }
        },
        ServerOptions {
            loops: Some(loops.clone()),
            ..ServerOptions::default()
        },
    )?;
    fx.block_on(async {
        let admin = fx.direct("acme").await?;
        admin
            .batch_execute("DROP TABLE IF EXISTS txp_loops; CREATE TABLE txp_loops (client int PRIMARY KEY, n int)")
            .await?;
        let mut clients = Vec::new();
        for i in 0..12i32 {
            let token = fx.token(&format!("l{i}"), "acme", "analyst");
            let c = connect(&fx.conn_str(proxy.addr, "acme", "u", &token)).await?;
            c.execute("INSERT INTO txp_loops VALUES ($1, 0)", &[&i]).await?;
            clients.push(c);
        }
        let loads = loops.loads();
        ensure!(loads == vec![6, 6], "sessions not spread evenly over the loops: {loads:?}");
        let mut tasks = Vec::new();
        for (i, mut c) in (0i32..).zip(clients) {
            tasks.push(tokio::spawn(async move {
                let bump = c.prepare("UPDATE txp_loops SET n = n + $2 WHERE client = $1").await?;
                let mut pids = HashSet::new();
                for k in 0..25i32 {
                    let tx = c.transaction().await?;
                    tx.execute(&bump, &[&i, &k]).await?;
                    let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                    pids.insert(pid);
                    tx.commit().await?;
                }
                let n: i32 = c.query_one("SELECT n FROM txp_loops WHERE client = $1", &[&i]).await?.get(0);
                anyhow::Ok((n, pids))
            }));
        }
        let mut all_pids = HashSet::new();
        for t in tasks {
            let (n, pids) = t.await??;
            ensure!(n == (0..25).sum::<i32>(), "lost updates: {n}");
            all_pids.extend(pids);
        }
        ensure!(all_pids.len() <= 3, "more than 3 backends served: {all_pids:?}");
        let status = proxy.shared.pools.status();
        ensure!(status.iter().all(|(_, size, _)| *size <= 3), "pool grew past its size: {status:?}");
        Ok(())
    })
}
