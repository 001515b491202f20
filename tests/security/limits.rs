//! Connection limits and backend failures: refused cleanly with the right SQLSTATE, never a hang, and the
//! proxy keeps serving afterwards.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use pgveil::config::PoolMode;
use pgveil::server::ServerOptions;
use tokio::io::AsyncWriteExt;

use super::common::{eventually, expect_refused, healthy, raw_session};
use crate::support::{Fixture, connect, raw};

pub fn too_many_clients(fx: &Fixture) -> Result<()> {
    let srv = fx.start_server(|c| c.listen.max_clients = 2, ServerOptions::default())?;
    let token = fx.token("alice", "acme", "admin");
    fx.block_on(async {
        let a = fx.connect_to(srv.addr, "acme", "admin").await?;
        let b = fx.connect_to(srv.addr, "globex", "admin").await?;
        a.simple_query("SELECT 1").await?;
        b.simple_query("SELECT 1").await?;
        for _ in 0..3 {
            expect_refused(
                &fx.conn_str(srv.addr, "acme", "tester", &token),
                "53300",
                &[&token],
            )
            .await?;
        }
        drop(a);
        // Once a slot is free again, a new client gets in.
        eventually(|| healthy(fx, srv.addr, "acme")).await?;
        b.simple_query("SELECT 1").await?;
        Ok(())
    })
}

/// `listen.max_sessions_per_user` and a tenant's `max_clients`: the session over the cap is refused (53300,
/// FATAL, naming the cap), others are not affected, and a freed place is usable again.
pub fn session_caps(fx: &Fixture) -> Result<()> {
    let srv = fx.start_server(
        |c| {
            c.listen.max_sessions_per_user = Some(2);
            for t in c.tenants.iter_mut().filter(|t| t.id.as_str() == "acme") {
                t.max_clients = Some(3);
            }
        },
        ServerOptions::default(),
    )?;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| fx.token(u, "acme", "admin"));
    let conn = |token: &str| fx.conn_str(srv.addr, "acme", "tester", token);
    fx.block_on(async {
        let a1 = connect(&conn(&alice)).await?;
        let a2 = connect(&conn(&alice)).await?;
        let r = expect_refused(&conn(&alice), "53300", &[&alice]).await?;
        ensure!(r.text.contains("too many sessions for this user"), "{r:?}");
        let b1 = connect(&conn(&bob)).await?;
        // acme has 3 sessions: carol's first one is over the tenant's cap.
        let r = expect_refused(&conn(&carol), "53300", &[&carol]).await?;
        ensure!(
            r.text.contains("too many sessions for this tenant"),
            "{r:?}"
        );
        // Another tenant is not affected.
        healthy(fx, srv.addr, "globex").await?;
        // The refusals did not take places: once alice leaves one, carol gets in.
        drop(a1);
        let carol_conn = conn(&carol);
        let c1 = eventually(|| connect(&carol_conn)).await?;
        for c in [&a2, &b1, &c1] {
            c.simple_query("SELECT 1").await?;
        }
        Ok(())
    })
}

/// `listen.client_idle_timeout` and `listen.idle_transaction_timeout`, in session and transaction mode: a
/// silent client gets 57P05 (idle) or 25P03 (in a transaction) and is closed; the transaction is rolled back
/// and the only backend serves the next client; a client that keeps talking is never cut off.
pub fn idle_timeouts(fx: &Fixture) -> Result<()> {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let srv = fx.start_server(
            |c| {
                c.pool.size = 1;
                c.pool.mode = mode;
                c.listen.client_idle_timeout = Some(Duration::from_millis(400));
                c.listen.idle_transaction_timeout = Some(Duration::from_millis(600));
            },
            ServerOptions::default(),
        )?;
        fx.block_on(async {
            // Idle outside a transaction.
            let mut s = raw_session(fx, srv.addr, "acme").await?;
            raw::simple_query(&mut s, "SELECT 1")
                .await?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            raw::expect_fatal(&mut s, "57P05").await?;

            // Idle inside a transaction that wrote a row: rolled back, backend freed.
            let mut s = raw_session(fx, srv.addr, "acme").await?;
            for sql in ["BEGIN", "CREATE TABLE idle_probe_never_committed (id int)"] {
                raw::simple_query(&mut s, sql)
                    .await?
                    .map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
            }
            raw::expect_fatal(&mut s, "25P03").await?;
            let c = eventually(|| fx.connect_to(srv.addr, "acme", "admin")).await?;
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_class WHERE relname = 'idle_probe_never_committed'",
                    &[],
                )
                .await?
                .get(0);
            ensure!(n == 0, "{mode:?}: the idle transaction was not rolled back");
            drop(c);

            // A client that keeps talking (more often than the timeout), in and out of transactions, stays.
            let mut s = raw_session(fx, srv.addr, "acme").await?;
            for i in 0..20 {
                let sql = match i % 4 {
                    0 => "BEGIN",
                    3 => "COMMIT",
                    _ => "SELECT 1",
                };
                raw::simple_query(&mut s, sql)
                    .await?
                    .map_err(|e| anyhow::anyhow!("{mode:?} {i}: {e}"))?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s.write_all(&raw::terminate()).await?;
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

pub fn pool_exhaustion(fx: &Fixture) -> Result<()> {
    let srv = fx.start_server(
        |c| {
            c.pool.size = 1;
            c.pool.checkout_timeout = Duration::from_secs(1);
        },
        ServerOptions::default(),
    )?;
    let token = fx.token("bob", "acme", "admin");
    fx.block_on(async {
        let held = fx.connect_to(srv.addr, "acme", "admin").await?;
        held.simple_query("SELECT 1").await?;
        // The conn string's connect_timeout (10 s) is the safety net: a hang would fail without a SQLSTATE.
        let started = Instant::now();
        let r = expect_refused(
            &fx.conn_str(srv.addr, "acme", "tester", &token),
            "53300",
            &[&token],
        )
        .await?;
        ensure!(
            started.elapsed() < Duration::from_secs(9),
            "pool exhaustion took {:?}",
            started.elapsed()
        );
        ensure!(!r.text.contains("acme_app"), "{r:?}");
        // Other pools (another role class, another tenant) are unaffected.
        let other = fx.connect_to(srv.addr, "acme", "analyst").await?;
        other.simple_query("SELECT 1").await?;
        healthy(fx, srv.addr, "globex").await?;
        // The held session still works, and once it leaves its backend serves the next client.
        held.simple_query("SELECT 1").await?;
        drop(held);
        eventually(|| healthy(fx, srv.addr, "acme")).await?;
        Ok(())
    })
}

pub fn backend_down(fx: &Fixture) -> Result<()> {
    let port = super::common::free_port()?;
    let srv = fx.start_server(
        |c| {
            let acme = c
                .tenants
                .iter_mut()
                .find(|t| t.id.as_str() == "acme")
                .expect("acme");
            acme.host = Some("127.0.0.1".into());
            acme.port = Some(port);
        },
        ServerOptions::default(),
    )?;
    let (user, password) = fx.creds("acme");
    let token = fx.token("carol", "acme", "admin");
    let port_text = port.to_string();
    let secret_id = fx
        .env
        .config
        .tenants
        .iter()
        .find(|t| t.id.as_str() == "acme")
        .unwrap()
        .secret
        .as_str()
        .to_owned();
    fx.block_on(async {
        for _ in 0..2 {
            let r = expect_refused(
                &fx.conn_str(srv.addr, "acme", "tester", &token),
                "08006",
                &[
                    "127.0.0.1",
                    "localhost",
                    &port_text,
                    &secret_id,
                    &user,
                    &password,
                    &token,
                ],
            )
            .await?;
            ensure!(
                !r.text.contains("refused"),
                "OS error text reaches the client: {r:?}"
            );
        }
        // Other tenants on the same proxy are served.
        healthy(fx, srv.addr, "globex").await?;
        healthy(fx, srv.addr, "clearco").await?;
        Ok(())
    })
}
