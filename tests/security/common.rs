//! Helpers shared by the security tests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail, ensure};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{self, Fixture, raw};

/// What a refused tokio-postgres connection attempt reported.
#[derive(Debug)]
pub struct Refusal {
    /// SQLSTATE.
    pub code: String,
    /// Severity (FATAL, ERROR).
    pub severity: String,
    /// Message, detail and hint joined (to search for leaked values).
    pub text: String,
}

/// Connects with tokio-postgres and expects the proxy to refuse with a server error.
pub async fn refused(conn_str: &str) -> Result<Refusal> {
    let e = match support::connect(conn_str).await {
        Ok(c) => {
            let db = c
                .query_one("SELECT current_database()", &[])
                .await
                .map(|r| r.get::<_, String>(0));
            bail!("connection unexpectedly succeeded (current_database = {db:?})");
        }
        Err(e) => e,
    };
    let db = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .ok_or_else(|| anyhow!("refused without a server error: {e:#}"))?;
    let text = [Some(db.message()), db.detail(), db.hint()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Refusal {
        code: db.code().code().to_owned(),
        severity: db.severity().to_owned(),
        text,
    })
}

/// Expects a FATAL refusal with `code`, and that `secrets` appear nowhere in what the client saw.
pub async fn expect_refused(conn_str: &str, code: &str, secrets: &[&str]) -> Result<Refusal> {
    let r = refused(conn_str).await?;
    ensure!(r.code == code, "expected SQLSTATE {code}, got {r:?}");
    ensure!(r.severity == "FATAL", "expected FATAL, got {r:?}");
    for s in secrets {
        ensure!(
            !s.is_empty() && !r.text.contains(s),
            "client error reveals {s:?}: {r:?}"
        );
    }
    Ok(r)
}

/// `SELECT current_database()` through a new tokio-postgres session.
pub async fn current_database(conn_str: &str) -> Result<String> {
    let c = support::connect(conn_str).await?;
    Ok(c.query_one("SELECT current_database()", &[]).await?.get(0))
}

/// Checks that a fresh session for `tenant` works through `addr` (the proxy is still healthy).
pub async fn healthy(fx: &Fixture, addr: SocketAddr, tenant: &str) -> Result<()> {
    let c = fx.connect_to(addr, tenant, "admin").await?;
    let db: String = c.query_one("SELECT current_database()", &[]).await?.get(0);
    ensure!(db == tenant, "healthy check reached {db}, not {tenant}");
    Ok(())
}

/// Retries `f` until it succeeds or 10 s pass (for state that settles asynchronously, e.g. a session's
/// backend being reset and returned after its client left).
pub async fn eventually<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context("still failing after 10 s"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A raw plain-text session on `addr`, logged in to `tenant` as `admin`.
pub async fn raw_session(fx: &Fixture, addr: SocketAddr, tenant: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let token = fx.token("raw@test", tenant, "admin");
    raw::login(&mut s, tenant, &token, &[]).await?;
    Ok(s)
}

/// Sends a StartupMessage with `params` (user and database added), the password, and expects a FATAL
/// error with `code` followed by the connection closing.
pub async fn login_expect_fatal(
    addr: SocketAddr,
    tenant: &str,
    token: &str,
    params: &[(&str, &str)],
    code: &str,
) -> Result<raw::Msg> {
    let mut s = TcpStream::connect(addr).await?;
    let mut all = vec![("user", "tester"), ("database", tenant)];
    all.extend_from_slice(params);
    s.write_all(&raw::startup(&all)).await?;
    let m = raw::next_msg(&mut s).await?;
    ensure!(
        m.auth_code() == Some(3),
        "expected a password request, got {m}"
    );
    s.write_all(&raw::password(token)).await?;
    raw::expect_fatal(&mut s, code).await
}

pub use crate::support::free_port;
