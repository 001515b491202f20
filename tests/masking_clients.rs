//! Real client libraries as the masked role `analyst` on the extension schema (citext `payers.email`,
//! pgcrypto, the tenant type `money_amount` with its own operator), through pgveil in session and transaction
//! pool mode: postgres.js (type lookup at connect, prepared statements, tagged templates), node-postgres (a
//! pool, named statements), an asyncpg pool (acquire/release cycles, so its reset idiom runs) and SQLAlchemy
//! reflection. Each client's output must be what a direct connection gives, except masked values, and the
//! refusals pgveil counted while it ran are reported (goal: 0). On `globex`, whose tenant also defines its
//! own `=` on `money_amount`, psql's `\d` family (but `\d table`, a known gap) and pgjdbc's metadata calls
//! give what they give directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::process::Command;

use anyhow::{Context as _, Result, anyhow, ensure};
use pgveil::config::PoolMode;
use serde_json::Value;
use support::masking::{masking_proxy, masking_proxy_with, write_policy_dir};
use support::{Fixture, Running};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        (
            "postgres_js_matches_direct_except_masked_values",
            postgres_js,
        ),
        (
            "node_postgres_pool_matches_direct_except_masked_values",
            node_postgres,
        ),
        (
            "asyncpg_pool_matches_direct_except_masked_values",
            asyncpg_pool,
        ),
        ("sqlalchemy_reflection_matches_direct", sqlalchemy),
        (
            "tenant_equals_operator_keeps_psql_and_pgjdbc_metadata_working",
            tenant_equals,
        ),
    ])
}

/// A masking pgveil in session mode and one in transaction mode.
fn proxies(fx: &Fixture, name: &str) -> Result<Vec<(&'static str, Running)>> {
    let session = masking_proxy(fx, write_policy_dir(fx, &format!("{name}-session"))?)?;
    let txn = masking_proxy_with(fx, write_policy_dir(fx, &format!("{name}-txn"))?, |cfg| {
        cfg.pool.mode = PoolMode::Transaction;
        for t in &mut cfg.tenants {
            t.pool_mode = None;
        }
    })?;
    Ok(vec![("session", session), ("transaction", txn)])
}

/// The refusals counted by a proxy's masking engine.
fn refusals(proxy: &Running) -> u64 {
    proxy
        .shared
        .masking
        .as_ref()
        .map(|e| e.stats.refused.load(std::sync::atomic::Ordering::Relaxed))
        .unwrap_or(0)
}

/// Where a client connects: (host, port, database, user, password).
struct Target {
    port: u16,
    user: String,
    password: String,
}

impl Target {
    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=acme user={} sslmode=disable",
            self.port, self.user
        )
    }
}

/// Runs a client program (its last arguments: the target) and parses the JSON it prints.
fn run(program: &str, args: &[&str], target: &Target, conninfo: bool) -> Result<Value> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if conninfo {
        cmd.arg(target.conninfo());
    } else {
        cmd.args([
            "127.0.0.1",
            &target.port.to_string(),
            "acme",
            target.user.as_str(),
        ]);
    }
    let out = cmd
        .env("PGPASSWORD", &target.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .with_context(|| {
            format!("running {program} (tests/run.sh installs the client libraries)")
        })?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{program} output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Compares a client's output through pgveil with its direct output: every key the same, except keys
/// starting with `masked_`, which must show masked e-mail addresses where the direct output shows raw ones.
fn compare(what: &str, via: &Value, direct: &Value) -> Result<()> {
    let (via, direct) = (
        via.as_object()
            .ok_or_else(|| anyhow!("{what}: not an object"))?,
        direct
            .as_object()
            .ok_or_else(|| anyhow!("{what}: not an object"))?,
    );
    let text = serde_json::to_string(direct)?;
    ensure!(
        !text.contains("ERROR"),
        "{what} fails even directly: {text}"
    );
    let mut diffs = Vec::new();
    for (k, d) in direct {
        let v = via.get(k).unwrap_or(&Value::Null);
        let same = if k.starts_with("masked_") {
            let (vs, ds) = (v.to_string(), d.to_string());
            vs.contains("****@")
                && !vs.contains("ERROR")
                && !ds.contains("****@")
                && ds.contains('@')
        } else {
            v == d
        };
        if !same {
            diffs.push(format!("{k}: via pgveil {v} / direct {d}"));
        }
    }
    for k in via.keys().filter(|k| !direct.contains_key(*k)) {
        diffs.push(format!("{k}: only via pgveil: {}", via[k]));
    }
    ensure!(
        diffs.is_empty(),
        "{what} differs through pgveil:\n{}",
        diffs.join("\n")
    );
    Ok(())
}

/// Runs a client directly and through both pool modes as `analyst`; compares and counts refusals.
fn client_test(
    fx: &Fixture,
    name: &str,
    program: &str,
    args: &[&str],
    conninfo: bool,
    marker: &str,
) -> Result<()> {
    let (user, password) = fx.creds("acme");
    let direct = Target {
        port: fx.env.cluster.port(),
        user,
        password,
    };
    let raw = run(program, args, &direct, conninfo)?;
    ensure!(
        raw.to_string().contains(marker),
        "{name} direct output lacks {marker}: {raw:#}"
    );
    let mut report = Vec::new();
    for (mode, proxy) in proxies(fx, name)? {
        let before = refusals(&proxy);
        let via_target = Target {
            port: proxy.addr.port(),
            user: name.to_owned(),
            password: fx.token(&format!("{name}@acme"), "acme", "analyst"),
        };
        let via = run(program, args, &via_target, conninfo)?;
        let refused = refusals(&proxy) - before;
        compare(&format!("{name} ({mode} pool)"), &via, &raw)?;
        ensure!(refused == 0, "{name} ({mode} pool): {refused} refusals");
        report.push(format!("{mode} pool: {refused} refused"));
    }
    println!(
        "{name} as masked role analyst on the extension schema: identical to direct except masked values; {}",
        report.join(", ")
    );
    Ok(())
}

fn node_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/schema_clients.mjs")
}

fn postgres_js(fx: &Fixture) -> Result<()> {
    client_test(
        fx,
        "postgresjs",
        "node",
        &[node_script(), "postgres"],
        false,
        "money_amount",
    )
}

fn node_postgres(fx: &Fixture) -> Result<()> {
    client_test(
        fx,
        "nodepg",
        "node",
        &[node_script(), "pg"],
        false,
        "money_amount",
    )
}

fn asyncpg_pool(fx: &Fixture) -> Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/schema_clients.py");
    client_test(
        fx,
        "asyncpg",
        "python3",
        &[script, "asyncpg_pool"],
        true,
        "currency='EUR'",
    )
}

fn sqlalchemy(fx: &Fixture) -> Result<()> {
    // introspect.py reflects a view named intro_view too: one over the tenant type.
    fx.superuser_sql(
        "acme",
        "SET ROLE acme_app; CREATE VIEW intro_view AS SELECT id, quote, digest FROM fx_quotes;",
    )?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/introspect.py");
    client_test(
        fx,
        "sqlalchemy",
        "python3",
        &[script, "sqlalchemy"],
        true,
        "fx_quotes.columns",
    )
}

/// A tenant-defined `=` on the tenant's type (globex only: the other tests here use acme).
const TENANT_EQUALS: &str = "SET ROLE globex_app; \
    CREATE OPERATOR = (LEFTARG = money_amount, RIGHTARG = money_amount, FUNCTION = money_amount_eq);";

/// psql's describe commands that work with a tenant `=`.
const DESCRIBE: &[&str] = &[
    "\\dt", "\\dv", "\\di", "\\ds", "\\dT+", "\\dD", "\\df", "\\dn", "\\do", "\\dx",
];

/// Known gap (README, Masking): `\\d table` ends with `ORDER BY pg_get_expr(...) = 'DEFAULT'` (its partition
/// query), a comparison of a function result with an untyped literal: both of unknown type, so the tenant's
/// `=` could apply and it is refused. When this starts to pass, move it to `DESCRIBE`.
const DESCRIBE_GAPS: &[&str] = &["\\d payers", "\\d+ fx_quotes"];

/// pgjdbc probes refused with a tenant `=` (known gap, same cause as `DESCRIBE_GAPS`: getFunctions compares
/// `format_type(...) = 'unknown'`, a function result with an untyped literal).
const JDBC_GAPS: &[&str] = &["getFunctions:"];

/// psql's describe commands on the extension schema; returns stdout and stderr.
fn psql_describe(conninfo: &str, password: &str, commands: &[&str]) -> Result<String> {
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo).arg("-X").arg("-q");
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = cmd
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn run_probe(url: &str, user: &str, password: &str) -> Result<Vec<String>> {
    let probe = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jdbc/Probe.java");
    let out = Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar", probe, url])
        .env("PGUSER", user)
        .env("PGPASSWORD", password)
        .output()?;
    ensure!(
        out.status.success(),
        "java Probe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

fn tenant_equals(fx: &Fixture) -> Result<()> {
    fx.superuser_sql("globex", TENANT_EQUALS)?;
    let (user, password) = fx.creds("globex");
    let port = fx.env.cluster.port();
    let direct_info =
        format!("host=127.0.0.1 port={port} dbname=globex user={user} sslmode=disable");
    let psql_direct = psql_describe(&direct_info, &password, DESCRIBE)?;
    let gaps_direct = psql_describe(&direct_info, &password, DESCRIBE_GAPS)?;
    ensure!(!gaps_direct.contains("ERROR"), "psql direct: {gaps_direct}");
    ensure!(
        !psql_direct.contains("ERROR") && psql_direct.contains("money_amount"),
        "psql direct: {psql_direct}"
    );
    let url = |p: u16| format!("jdbc:postgresql://127.0.0.1:{p}/globex");
    let jdbc_direct = run_probe(&url(port), &user, &password)?;
    ensure!(
        jdbc_direct.len() == 11 && !jdbc_direct.iter().any(|l| l.contains(": ERROR")),
        "pgjdbc direct: {jdbc_direct:#?}"
    );
    let mut report = Vec::new();
    for (mode, proxy) in proxies(fx, "tenant-eq")? {
        let token = fx.token("meta@globex", "globex", "analyst");
        let before = refusals(&proxy);
        let info = format!(
            "host=127.0.0.1 port={} dbname=globex user=meta sslmode=disable",
            proxy.addr.port()
        );
        let psql_via = psql_describe(&info, &token, DESCRIBE)?;
        ensure!(
            psql_via == psql_direct,
            "{mode}: psql \\d differs through pgveil:\n{psql_via}\n--- direct:\n{psql_direct}"
        );
        let gaps = refusals(&proxy);
        let gaps_via = psql_describe(&info, &token, DESCRIBE_GAPS)?;
        let gaps = refusals(&proxy) - gaps;
        ensure!(
            gaps == DESCRIBE_GAPS.len() as u64 && gaps_via.contains("(rule denied-operator)"),
            "{mode}: the known psql gap changed ({gaps} refusals):\n{gaps_via}"
        );
        let jdbc_via = run_probe(&url(proxy.addr.port()), "meta", &token)?;
        ensure!(jdbc_via.len() == jdbc_direct.len(), "{mode}: {jdbc_via:#?}");
        for (v, d) in jdbc_via.iter().zip(&jdbc_direct) {
            if JDBC_GAPS.iter().any(|g| v.starts_with(g)) {
                ensure!(v.contains("rule denied-operator"), "{mode}: {v}");
            } else if v.starts_with("masked:") {
                ensure!(
                    v.contains("email=****@") && !d.contains("email=****@"),
                    "{mode}: {v} / {d}"
                );
            } else {
                ensure!(
                    v == d,
                    "{mode}: pgjdbc differs:\n  via    {v}\n  direct {d}"
                );
            }
        }
        let refused = refusals(&proxy) - before;
        let refused = refused - gaps - JDBC_GAPS.len() as u64;
        ensure!(refused == 0, "{mode}: {refused} refusals");
        report.push(format!(
            "{mode} pool: {refused} refused (plus the {gaps} known \\d table refusals)"
        ));
    }
    // The tenant's `=` on its own type stays refused.
    let proxy = masking_proxy(fx, write_policy_dir(fx, "tenant-eq-refused")?)?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let e = c
            .simple_query("SELECT 1 FROM fx_quotes WHERE quote = quote")
            .await
            .err()
            .ok_or_else(|| anyhow!("tenant = on its own type was not refused"))?;
        ensure!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("(rule denied-operator)")),
            "{e}"
        );
        Ok(())
    })?;
    println!(
        "tenant-defined = on money_amount: psql \\dt \\dv \\di \\ds \\dT+ \\dD \\df \\dn \\do \\dx and 10 of 11 pgjdbc probes (not getFunctions) identical to direct; {}",
        report.join(", ")
    );
    Ok(())
}
