//! End-to-end tests with real client programs (psql, pgbench, psycopg, asyncpg): each drives pgveil and, where
//! it makes sense, the same client drives PostgreSQL directly, and the two outputs must be identical.
//!
//! Tenants are shared by the tests of this binary, which run in parallel, so each test that writes keeps to
//! its own objects: `\copy` in uses a scratch table on acme, pgbench owns clearco's `pgbench_*` tables,
//! asyncpg writes only to a temporary table. Catalog listings (`\d`, `\dt`, ...) are compared on globex,
//! which nothing modifies.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

#[path = "clients/pgbench.rs"]
mod pgbench;
#[path = "clients/psql.rs"]
mod psql;
#[path = "clients/python.rs"]
mod python;

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use support::Fixture;

fn main() -> std::process::ExitCode {
    support::main_with(&[
        ("psql_queries_match_direct", psql::queries_match_direct),
        ("psql_errors_match_direct", psql::errors_match_direct),
        (
            "psql_describe_matches_direct",
            psql::describe_matches_direct,
        ),
        (
            "psql_copy_out_matches_direct",
            psql::copy_out_matches_direct,
        ),
        ("psql_copy_in_large_values", psql::copy_in_large_values),
        (
            "psql_startup_settings_match_direct",
            psql::startup_settings_match_direct,
        ),
        (
            "psql_cross_tenant_database_refused",
            psql::cross_tenant_database_refused,
        ),
        ("pgbench_all_query_modes", pgbench::all_query_modes),
        ("psycopg_matches_direct", python::psycopg_matches_direct),
        ("asyncpg_matches_direct", python::asyncpg_matches_direct),
    ])
}

/// Where a client connects: a libpq connection string without the password, and the password (passed to
/// the client in `PGPASSWORD`, never on its command line).
#[derive(Clone)]
pub struct Target {
    /// `host=... port=... dbname=... user=... sslmode=...`.
    pub conninfo: String,
    /// Token (through pgveil) or the tenant's backend password (direct).
    pub password: String,
}

impl Target {
    /// Through the default proxy as `role` of `tenant`, asking for `dbname`, with extra libpq settings
    /// (`sslmode=...` at least).
    pub fn proxy_db(fx: &Fixture, tenant: &str, role: &str, dbname: &str, extra: &str) -> Target {
        let addr = fx.proxy.addr;
        Target {
            conninfo: format!(
                "host={} port={} dbname={dbname} user=clients {extra}",
                addr.ip(),
                addr.port()
            ),
            password: fx.token(&format!("clients-{role}@{tenant}"), tenant, role),
        }
    }

    /// Through the default proxy to the tenant's own database.
    pub fn proxy(fx: &Fixture, tenant: &str, role: &str, extra: &str) -> Target {
        Target::proxy_db(fx, tenant, role, tenant, extra)
    }

    /// Through the default proxy with TLS verified against the dev CA (`verify-full`, host name `localhost`).
    pub fn proxy_verified(fx: &Fixture, tenant: &str, role: &str) -> Target {
        let ca = fx.env.certs.ca_cert.display().to_string();
        let mut t = Target::proxy(
            fx,
            tenant,
            role,
            &format!("sslmode=verify-full sslrootcert={ca}"),
        );
        // Verify the name `localhost` while connecting to the IPv4 address the proxy listens on.
        t.conninfo = t
            .conninfo
            .replacen("host=127.0.0.1", "host=localhost hostaddr=127.0.0.1", 1);
        t
    }

    /// Directly to the tenant's database as its backend user.
    pub fn direct(fx: &Fixture, tenant: &str) -> Target {
        let (user, password) = fx.creds(tenant);
        Target {
            conninfo: format!(
                "host=127.0.0.1 port={} dbname={tenant} user={user} sslmode=disable",
                fx.env.cluster.port()
            ),
            password,
        }
    }
}

/// Upper bound for one client run, so a hung proxy fails the test instead of hanging CI (not a timing assertion).
const CLIENT_LIMIT_SECS: &str = "300";

/// A command running `program` with `args` for `target`: no inherited `PG*` variables, the password in
/// `PGPASSWORD`, `PGCONNECT_TIMEOUT=10`, stdin closed, under `timeout(1)`.
pub fn client<I, S>(target: &Target, program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("timeout");
    c.arg("--kill-after=10")
        .arg(CLIENT_LIMIT_SECS)
        .arg(program)
        .args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
    c.env("PGPASSWORD", &target.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PSQLRC")
        .env_remove("PAGER")
        .stdin(Stdio::null());
    c
}

/// Runs a command and returns its output, whatever the exit status.
pub fn run(c: &mut Command) -> Result<Output> {
    let out = c.output().with_context(|| format!("starting {c:?}"))?;
    if out.status.code() == Some(124) {
        bail!(
            "{} timed out\nstderr:\n{}",
            describe(c),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(c: &mut Command) -> Result<String> {
    let out = run(c)?;
    if !out.status.success() {
        bail!(
            "{} failed ({})\nstdout:\n{}\nstderr:\n{}",
            describe(c),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("client output is not UTF-8")
}

/// The program and its arguments (no environment: it holds the password).
fn describe(c: &Command) -> String {
    let mut s: Vec<String> = vec![c.get_program().to_string_lossy().into_owned()];
    s.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
    s.join(" ")
}

/// Fails unless `proxy` and `direct` are identical, showing the first differing lines.
pub fn same(what: &str, proxy: &str, direct: &str) -> Result<()> {
    if proxy == direct {
        return Ok(());
    }
    let p: Vec<&str> = proxy.lines().collect();
    let d: Vec<&str> = direct.lines().collect();
    let first = p
        .iter()
        .zip(&d)
        .position(|(a, b)| a != b)
        .unwrap_or(p.len().min(d.len()));
    let mut msg = format!(
        "{what}: output through pgveil differs from direct ({} vs {} lines, {} vs {} bytes); \
         first difference at line {}:\n",
        p.len(),
        d.len(),
        proxy.len(),
        direct.len(),
        first + 1
    );
    for i in first.saturating_sub(2)..(first + 3).min(p.len().max(d.len())) {
        let (a, b) = (
            p.get(i).copied().unwrap_or("<none>"),
            d.get(i).copied().unwrap_or("<none>"),
        );
        let mark = if a == b { ' ' } else { '!' };
        msg.push_str(&format!(
            "{mark} {:>5} proxy : {}\n{mark} {:>5} direct: {}\n",
            i + 1,
            clip(a),
            i + 1,
            clip(b)
        ));
    }
    bail!(msg)
}

fn clip(s: &str) -> String {
    if s.len() <= 200 {
        s.to_owned()
    } else {
        let end = (0..=200)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}... ({} bytes)", &s[..end], s.len())
    }
}
