//! Masked roles on a schema like real ones: the demo schema has citext (`payers.email`), pgcrypto and a
//! tenant type with its own `=` operator. Through pgveil with the example policy, in session and transaction
//! pool mode, over the simple and the extended protocol, as the masked role `analyst`: built-in comparisons,
//! citext and pgcrypto functions, information_schema functions and three-part names work as directly;
//! tenant code and untrusted extensions stay refused; an unknown relation gets PostgreSQL's 42P01 and a table
//! created outside pgveil is usable at once (on-demand catalog load); pool-reset idioms pass for every role;
//! read-only roles cannot lock, bump sequences, take advisory locks or notify; deep statements are decided;
//! `pgbench -i` directly, then `pgbench -S` through pgveil right away.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::process::Command;

use anyhow::{Context as _, Result, anyhow, ensure};
use pgveil::config::PoolMode;
use pgveil::event_loops::EventLoops;
use pgveil::server::ServerOptions;
use support::gate::Gate;
use support::masking::{masking_proxy, write_policy_dir};
use support::{Fixture, Running};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        (
            "extension_schema_works_for_the_masked_role",
            extension_schema,
        ),
        (
            "tenant_and_untrusted_extension_code_stays_refused",
            still_refused,
        ),
        (
            "unknown_relations_are_42p01_and_loaded_on_demand",
            unknown_relations,
        ),
        (
            "an_on_demand_load_holds_only_the_statement_waiting_for_it",
            on_demand_holds_one_statement,
        ),
        (
            "pool_resets_pass_and_read_only_roles_have_no_side_effects",
            resets_and_side_effects,
        ),
        ("deep_statements_are_decided", deep_statements),
        (
            "pgbench_select_only_right_after_init_as_masked_role",
            pgbench_right_away,
        ),
        (
            "pgjdbc_metadata_and_prepared_statements_match_direct",
            pgjdbc,
        ),
        ("psqlodbc_connects_and_queries_as_masked_role", psqlodbc),
    ])
}

/// A masking pgveil in session mode and one in transaction mode.
fn proxies(fx: &Fixture, name: &str) -> Result<Vec<(&'static str, Running)>> {
    let session = masking_proxy(fx, write_policy_dir(fx, &format!("{name}-session"))?)?;
    let dir = write_policy_dir(fx, &format!("{name}-txn"))?;
    let txn = support::masking::masking_proxy_with(fx, dir, |cfg| {
        cfg.pool.mode = PoolMode::Transaction;
        for t in &mut cfg.tenants {
            t.pool_mode = None;
        }
    })?;
    Ok(vec![("session", session), ("transaction", txn)])
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

/// Statements that must work as `analyst` on the extension schema (and what a row must contain).
const WORKS: &[&str] = &[
    "SELECT 1 = 1, 1 <> 2, 'a' < 'b', 'abc' LIKE 'a%', 'abc' ~ 'b', 2 IN (1, 2), 2 = ANY (ARRAY[1, 2])",
    "SELECT 1 IS DISTINCT FROM 2, NULLIF(1, 2), CASE 1 WHEN 1 THEN 'x' END, 2 BETWEEN 1 AND 3",
    "SELECT count(*) FROM payers WHERE email = 'X@EXAMPLE.COM' OR email LIKE '%@%' OR email ILIKE '%.COM'",
    "SELECT min(email), max(email) FROM payers",
    "SELECT replace(email, 'a', 'b'), split_part(email, '@', 2), strpos(email, '@'), translate(email, 'a', 'b'), \
     regexp_replace(email, 'a', 'b'), regexp_match(email, '@'), email ~ '@' FROM payers LIMIT 3",
    "SELECT gen_random_uuid() IS NOT NULL, length(digest('x', 'sha256')), length(gen_random_bytes(4)), crypt('x', gen_salt('bf', 4)) <> ''",
    "SELECT id, (quote).currency, digest FROM fx_quotes WHERE id = 1 ORDER BY id",
    "SELECT * FROM information_schema._pg_expandarray(ARRAY[1, 2])",
    "SELECT count(*) FROM acme.public.merchants",
    "SELECT email FROM acme.public.payers ORDER BY id LIMIT 1",
    "SELECT email FROM U&\"p!0061yers\" UESCAPE '!' ORDER BY id LIMIT 1",
    "SELECT email FROM public/**/./**/payers ORDER BY id LIMIT 1",
    "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname = $1 AND c.relkind = ANY (ARRAY['r', 'v'])",
];

fn extension_schema(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "ext")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            for sql in WORKS {
                let param = sql.contains("$1");
                if !param {
                    c.simple_query(sql)
                        .await
                        .with_context(|| format!("{mode} simple: {sql}"))?;
                }
                let rows = if param {
                    c.query(*sql, &[&"payers"]).await
                } else {
                    c.query(*sql, &[]).await
                }
                .with_context(|| format!("{mode} extended: {sql}"))?;
                ensure!(!rows.is_empty(), "{mode}: {sql}: no rows");
            }
            // citext values come back masked, as citext.
            let row = c
                .query_one(
                    "SELECT email, pg_typeof(email)::text FROM payers ORDER BY id LIMIT 1",
                    &[],
                )
                .await?;
            let (email, ty): (String, String) = (row.get(0), row.get(1));
            ensure!(
                email.starts_with("****@") && ty == "citext",
                "{mode}: email {email} of type {ty}"
            );
            let raw: String = fx
                .direct("acme")
                .await?
                .query_one("SELECT email::text FROM payers ORDER BY id LIMIT 1", &[])
                .await?
                .get(0);
            ensure!(
                !raw.starts_with("****"),
                "direct email should be raw: {raw}"
            );
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

const LEAKY_SETUP: &str = r#"
CREATE EXTENSION IF NOT EXISTS dblink;
SET ROLE acme_app;
CREATE FUNCTION schemas_leak(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN RAISE EXCEPTION 'leak: %', (SELECT email FROM payers ORDER BY id LIMIT 1); END $f$;
CREATE OPERATOR <<~>> (LEFTARG = text, RIGHTARG = text, FUNCTION = schemas_leak);
"#;

/// (SQL, rule the refusal names).
const REFUSED: &[(&str, &str)] = &[
    ("SELECT 'a'::text <<~>> 'b'", "denied-operator"),
    (
        "SELECT 1 FROM merchants WHERE name <<~>> 'x'",
        "denied-operator",
    ),
    ("SELECT quote === quote FROM fx_quotes", "denied-operator"),
    (
        "SELECT money_amount_eq(quote, quote) FROM fx_quotes",
        "denied-function",
    ),
    ("SELECT schemas_leak('a', 'b')", "denied-function"),
    ("SELECT dblink_get_connections()", "denied-function"),
    (
        "SELECT public.dblink_connect('dbname=acme')",
        "denied-function",
    ),
];

fn still_refused(fx: &Fixture) -> Result<()> {
    fx.superuser_sql("acme", LEAKY_SETUP)?;
    let proxy = masking_proxy(fx, write_policy_dir(fx, "refused")?)?;
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        for (sql, rule) in REFUSED {
            let e = c
                .simple_query(sql)
                .await
                .err()
                .ok_or_else(|| anyhow!("not refused: {sql}"))?;
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default();
            ensure!(
                code(&e) == "42501" && msg.contains(&format!("(rule {rule})")),
                "{sql}: {} {msg}",
                code(&e)
            );
        }
        // The same operator leaks directly (so the refusal above is what protects the data).
        let e = fx
            .direct("acme")
            .await?
            .simple_query("SELECT 'a'::text <<~>> 'b'")
            .await
            .err()
            .ok_or_else(|| anyhow!("leaky operator did not raise"))?;
        ensure!(
            e.as_db_error().is_some_and(|d| d.message().contains('@')),
            "the leaky operator should show an e-mail directly: {e}"
        );
        Ok(())
    })
}

/// A statement naming a relation created outside pgveil while its tenant's backend is slow to accept (the
/// on-demand load's connection waits at a closed gate): only that statement waits; another session on the
/// same single-threaded event loop is served meanwhile; once the load gets through, the statement is decided on the
/// new catalog (its PII column masked), not answered with 42P01.
fn on_demand_holds_one_statement(fx: &Fixture) -> Result<()> {
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], fx.env.cluster.port()));
    let gate = fx.block_on(Gate::start(upstream))?;
    let port = gate.addr.port();
    // Loop 0 is the test's multi-threaded runtime, loop 1 a thread of its own (a current-thread runtime, as
    // in production): connections go to the least loaded, ties to loop 0.
    let loops = std::sync::Arc::new(EventLoops::start(2)?);
    let opts = ServerOptions {
        loops: Some(loops.clone()),
        ..ServerOptions::default()
    };
    let dir = write_policy_dir(fx, "on-demand-gate")?;
    let proxy = support::masking::masking_proxy_opts(
        fx,
        dir,
        |cfg| {
            for t in cfg.tenants.iter_mut().filter(|t| t.id.as_str() == "globex") {
                t.host = Some("127.0.0.1".into());
                t.port = Some(port);
            }
        },
        opts,
    )?;
    let table = "made_while_backend_slow";
    let outcome = fx.block_on(async {
        // Connections 2 and 4 go to loop 1; 1 and 3 only fill loop 0.
        let _fill = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let waiting = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let _fill_too = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let other = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        ensure!(loops.loads() == [2, 2], "connections per loop: {:?}", loops.loads());
        // Session mode: both have their backends before the gate closes.
        waiting.simple_query("SELECT 1").await?;
        other.simple_query("SELECT 1").await?;
        gate.close();
        let sql = format!("SELECT card_pan FROM {table}");
        let held = tokio::spawn(async move { waiting.query_one(sql.as_str(), &[]).await });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gate.waiting() == 0 {
            ensure!(std::time::Instant::now() < deadline, "no on-demand load reached the backend");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for _ in 0..5 {
            other.simple_query("SELECT 1").await?;
        }
        ensure!(!held.is_finished(), "the statement waiting for the load was answered before it got through");
        let direct = fx.direct("globex").await?;
        direct
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int, card_pan text); INSERT INTO {table} VALUES (1, '4111111111111111')"
            ))
            .await?;
        gate.open();
        let row = held.await?.context("the held statement")?;
        let pan: String = row.get(0);
        direct.batch_execute(&format!("DROP TABLE {table}")).await?;
        Ok::<_, anyhow::Error>(pan)
    });
    gate.open();
    let pan = outcome?;
    ensure!(pan == "************1111", "card_pan {pan}");
    Ok(())
}

fn unknown_relations(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "unknown")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "globex", "analyst").await?;
            let direct = fx.direct("globex").await?;
            let via = c.simple_query("SELECT * FROM no_such_table").await.err();
            let raw = direct.simple_query("SELECT * FROM no_such_table").await.err();
            let show = |e: Option<tokio_postgres::Error>| {
                e.and_then(|e| e.as_db_error().map(|d| (d.code().code().to_owned(), d.message().to_owned())))
            };
            let (via, raw) = (show(via), show(raw));
            ensure!(via.is_some() && via == raw, "{mode}: via pgveil {via:?}, direct {raw:?}");
            // Created outside pgveil, used through it right away. (On-demand loads are rate-limited to one
            // per second per tenant, and the statement above just had one.)
            tokio::time::sleep(pgveil::policy::on_demand::INTERVAL).await;
            let table = format!("made_outside_{mode}");
            direct
                .batch_execute(&format!(
                    "CREATE TABLE {table} (id int, card_pan text); INSERT INTO {table} VALUES (1, '4111111111111111')"
                ))
                .await?;
            let rows = c
                .simple_query(&format!("SELECT count(*) FROM {table}"))
                .await
                .with_context(|| format!("{mode}: a table created outside pgveil"))?;
            ensure!(!rows.is_empty(), "{mode}: no rows");
            // Its PII column is masked (the example policy classifies `*.card_pan`).
            let sql = format!("SELECT card_pan FROM {table}");
            let row = c.query_one(sql.as_str(), &[]).await?;
            let pan: String = row.get(0);
            ensure!(pan == "************1111", "{mode}: card_pan {pan}");
            Ok(())
        })?;
    }
    Ok(())
}

fn resets_and_side_effects(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "resets")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "globex", "analyst").await?;
            // asyncpg's pool reset, psycopg/pgjdbc/Npgsql's, for a role without `listen`/`discard`-style kinds.
            c.batch_execute("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
                .await
                .with_context(|| format!("{mode}: asyncpg reset"))?;
            c.batch_execute("DISCARD ALL").await?;
            c.batch_execute("DEALLOCATE ALL").await?;
            let seq = "payers_id_seq";
            let before: i64 = fx
                .direct("globex")
                .await?
                .query_one(format!("SELECT last_value FROM {seq}").as_str(), &[])
                .await?
                .get(0);
            for sql in [
                format!("SELECT nextval('{seq}')"),
                format!("SELECT setval('{seq}', 1000000)"),
                "SELECT * FROM merchants FOR UPDATE".to_owned(),
                "SELECT * FROM merchants FOR KEY SHARE".to_owned(),
                "SELECT pg_advisory_lock(42)".to_owned(),
                "SELECT pg_try_advisory_xact_lock(42)".to_owned(),
                "SELECT pg_notify('chan', 'x')".to_owned(),
            ] {
                let e = c
                    .simple_query(&sql)
                    .await
                    .err()
                    .ok_or_else(|| anyhow!("{mode}: allowed: {sql}"))?;
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                ensure!(
                    code(&e) == "42501" && msg.contains("side-effect"),
                    "{mode}: {sql}: {msg}"
                );
                let e = c
                    .query(sql.as_str(), &[])
                    .await
                    .err()
                    .ok_or_else(|| anyhow!("{mode}: allowed (extended): {sql}"))?;
                ensure!(code(&e) == "42501", "{mode}: extended {sql}");
            }
            let after: i64 = fx
                .direct("globex")
                .await?
                .query_one(format!("SELECT last_value FROM {seq}").as_str(), &[])
                .await?
                .get(0);
            ensure!(
                before == after,
                "{mode}: sequence moved from {before} to {after}"
            );
            c.simple_query("SELECT currval('payers_id_seq') IS NULL")
                .await
                .ok();
            c.simple_query("SELECT pg_advisory_unlock(42)").await?;
            Ok(())
        })?;
    }
    Ok(())
}

fn deep_statements(fx: &Fixture) -> Result<()> {
    let proxy = masking_proxy(fx, write_policy_dir(fx, "deep")?)?;
    let concat = format!(
        "SELECT {} FROM payers ORDER BY id LIMIT 1",
        vec!["email"; 50].join(" || ")
    );
    let unions = vec!["SELECT email FROM payers"; 100].join(" UNION ALL ");
    let mut nested = "SELECT email FROM payers".to_owned();
    for _ in 0..40 {
        nested = format!("SELECT * FROM ({nested}) s");
    }
    nested.push_str(" LIMIT 1");
    let long_chain = format!("SELECT {}", vec!["1"; 3000].join(" + "));
    fx.block_on(async {
        let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        for sql in [&concat, &unions, &nested, &long_chain] {
            let msgs = c
                .simple_query(sql)
                .await
                .with_context(|| format!("deep statement of {} bytes", sql.len()))?;
            let text = format!("{msgs:?}");
            ensure!(!text.contains("zqx"), "raw value");
        }
        let row = c.query_one(concat.as_str(), &[]).await?;
        let v: String = row.get(0);
        ensure!(v.starts_with("****@"), "concatenation not masked: {v}");
        let row = c.query_one(nested.as_str(), &[]).await?;
        let v: String = row.get(0);
        ensure!(v.starts_with("****@"), "nested subqueries not masked: {v}");
        Ok(())
    })
}

fn pgbench_right_away(fx: &Fixture) -> Result<()> {
    let proxy = masking_proxy(fx, write_policy_dir(fx, "pgbench")?)?;
    let (user, password) = fx.creds("globex");
    let direct = format!(
        "host=127.0.0.1 port={} dbname=globex user={user} sslmode=disable",
        fx.env.cluster.port()
    );
    let out = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", &direct])
        .env("PGPASSWORD", &password)
        .output()?;
    ensure!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via = format!(
        "host=127.0.0.1 port={} dbname=globex user=bench sslmode=disable",
        proxy.addr.port()
    );
    let token = fx.token("bench@globex", "globex", "analyst");
    for mode in ["simple", "extended", "prepared"] {
        let out = Command::new("pgbench")
            .args(["-n", "-S", "-c", "2", "-t", "100", "-M", mode, &via])
            .env("PGPASSWORD", &token)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success()
                && text.contains("number of transactions actually processed: 200/200"),
            "pgbench -S -M {mode} through pgveil as analyst:\n{text}"
        );
    }
    Ok(())
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

/// pgjdbc probes refused today (see `pgjdbc`).
const KNOWN_GAPS: &[&str] = &[];

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

fn pgjdbc(fx: &Fixture) -> Result<()> {
    let (user, password) = fx.creds("acme");
    let direct = run_probe(
        &format!("jdbc:postgresql://127.0.0.1:{}/acme", fx.env.cluster.port()),
        &user,
        &password,
    )?;
    ensure!(direct.len() == 11, "direct probe: {direct:#?}");
    ensure!(
        !direct.iter().any(|l| l.contains(": ERROR")),
        "direct probe fails: {direct:#?}"
    );
    let mut report = Vec::new();
    for (mode, proxy) in proxies(fx, "jdbc")? {
        let before = refusals(&proxy);
        let token = fx.token("jdbc@acme", "acme", "analyst");
        let via = run_probe(
            &format!("jdbc:postgresql://127.0.0.1:{}/acme", proxy.addr.port()),
            "jdbc",
            &token,
        )?;
        let refused = refusals(&proxy) - before;
        for (v, d) in via.iter().zip(&direct) {
            if KNOWN_GAPS.iter().any(|g| v.starts_with(g)) {
                // Known gap (README, Masking): pgjdbc's type lookup for a column of a non-built-in type
                // (citext) joins two subqueries `USING (nspname)`, whose column types pgveil does not infer,
                // and the tenant's own `=` could in principle apply. When this starts to pass, drop it here.
                ensure!(v.contains("rule denied-operator"), "{mode}: {v}");
            } else if v.starts_with("masked:") {
                ensure!(
                    v.contains("email=****@") && !d.contains("email=****@"),
                    "{mode}: {v} / {d}"
                );
            } else {
                ensure!(
                    v == d,
                    "{mode}: pgjdbc differs through pgveil:\n  via    {v}\n  direct {d}"
                );
            }
        }
        report.push(format!("{mode}: {} probes, {refused} refused", via.len()));
        ensure!(
            refused <= KNOWN_GAPS.len() as u64,
            "{mode}: {refused} refusals"
        );
    }
    println!("pgjdbc as masked role analyst: {}", report.join("; "));
    Ok(())
}

fn isql(conn: &str, input: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("isql")
        .args(["-b", "-v", "-k", conn])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

const ODBC_QUERIES: &str = "SELECT 1 = 1 AS t\nSELECT count(*) AS n FROM payers WHERE email LIKE '%@%'\nSELECT email FROM payers WHERE id = 1\n";

fn psqlodbc(fx: &Fixture) -> Result<()> {
    let (user, password) = fx.creds("acme");
    let conn = |port: u16, user: &str, pwd: &str| {
        format!(
            "Driver=PostgreSQL Unicode;Server=127.0.0.1;Port={port};Database=acme;Uid={user};Pwd={pwd};SSLmode=disable"
        )
    };
    let direct = isql(&conn(fx.env.cluster.port(), &user, &password), ODBC_QUERIES)?;
    ensure!(
        !direct.contains("ERROR")
            && direct.contains("@acme-payer.example")
            && !direct.contains("****@"),
        "direct: {direct}"
    );
    for (mode, proxy) in proxies(fx, "odbc")? {
        let before = refusals(&proxy);
        let token = fx.token("odbc@acme", "acme", "analyst");
        let via = isql(&conn(proxy.addr.port(), "odbc", &token), ODBC_QUERIES)?;
        let refused = refusals(&proxy) - before;
        ensure!(
            !via.contains("ERROR") && via.contains("****@acme-payer.example") && refused == 0,
            "{mode}: psqlODBC through pgveil ({refused} refusals):\n{via}"
        );
        println!(
            "psqlODBC as masked role analyst ({mode} pool): connected, 3 queries, {refused} refused"
        );
    }
    Ok(())
}
