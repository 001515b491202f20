//! Masking against a live schema and real client libraries, through pgveil with the example policy:
//! schema changes made through pgveil reload the tenant's catalog at once (a PII column added to a table that
//! had none is never shown raw, not even before the reload); the DETAIL of backend errors, which PostgreSQL
//! fills with whole rows, is withheld from roles with masked columns; catalog introspection by real clients
//! (SQLAlchemy reflection, asyncpg and psycopg type introspection, psql's `\d` family) gives a masked role
//! exactly what a direct connection gets, and the refusal rate on it is reported. The `pgveil policy` tools save
//! a live catalog to a file and explain against it offline, with the same output as against the live database.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};
use support::Fixture;
use support::masking::{masking_proxy, write_policy_dir};
use tokio_postgres::SimpleQueryMessage;

fn main() -> std::process::ExitCode {
    support::main_with(&[
        ("schema_changes_reload_the_catalog", schema_changes),
        (
            "error_details_are_withheld_from_masked_roles",
            details_withheld,
        ),
        ("client_introspection_is_transparent", introspection),
        (
            "new_literals_are_served_from_the_normalized_plan",
            literal_plans,
        ),
        (
            "policy_check_and_explain_with_a_saved_catalog_match_live_without_connecting",
            saved_catalog_tools,
        ),
        (
            "metrics_count_decisions_without_naming_anyone",
            metrics_endpoint,
        ),
    ])
}

/// Every value of every row of a simple query, joined.
fn rows_text(msgs: &[SimpleQueryMessage]) -> String {
    let mut out = String::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            for i in 0..r.len() {
                out.push_str(r.get(i).unwrap_or("NULL"));
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

/// The (SQLSTATE, message) of a server error.
fn db_error(e: &tokio_postgres::Error) -> Option<(String, String)> {
    e.as_db_error()
        .map(|d| (d.code().code().to_owned(), d.message().to_owned()))
}

/// Runs `sql` as the masked client until `done` accepts its rows; in between, only pgveil's refusal for a
/// catalog being reloaded (or 42P01 for a relation not yet in the snapshot) is accepted, and `check` runs on every result (e.g. "no raw PAN").
async fn until_reloaded(
    client: &tokio_postgres::Client,
    sql: &str,
    check: impl Fn(&str) -> Result<()>,
    done: impl Fn(&str) -> bool,
) -> Result<(String, usize)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refusals = 0;
    loop {
        match client.simple_query(sql).await {
            Ok(msgs) => {
                let text = rows_text(&msgs);
                check(&text)?;
                if done(&text) {
                    return Ok((text, refusals));
                }
            }
            Err(e) => {
                let (code, msg) = db_error(&e).ok_or_else(|| anyhow!("{e:#}"))?;
                ensure!(
                    // A relation the snapshot does not have yet: PostgreSQL's 42P01 (after one on-demand
                    // load, rate-limited per tenant).
                    (code == "42501" && msg.contains("catalog")) || code == "42P01",
                    "unexpected error for {sql:?}: {code} {msg}"
                );
                refusals += 1;
            }
        }
        if Instant::now() > deadline {
            bail!("the catalog was not reloaded within 20 s (catalog timer: 1 h)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn schema_changes(fx: &Fixture) -> Result<()> {
    let dir = write_policy_dir(fx, "policies-ddl")?;
    let proxy = masking_proxy(fx, dir)?;
    let engine = proxy
        .shared
        .masking
        .clone()
        .ok_or_else(|| anyhow!("no engine"))?;
    let changes = || engine.stats.schema_changes.load(Ordering::Relaxed);
    fx.block_on(async {
        let admin = fx.connect_to(proxy.addr, "globex", "admin").await?;
        let analyst = fx.connect_to(proxy.addr, "globex", "analyst").await?;
        let before = changes();

        // A new table is usable by the masked role without waiting for the one-hour timer.
        admin
            .batch_execute(
                "CREATE TABLE ddl_probe (id int PRIMARY KEY, note text); INSERT INTO ddl_probe VALUES (1, 'plain')",
            )
            .await?;
        ensure!(changes() > before, "CREATE TABLE was not reported");
        let (text, _) =
            until_reloaded(&analyst, "SELECT note FROM ddl_probe", |_| Ok(()), |t| {
                t.contains("plain")
            })
            .await?;
        ensure!(text == "plain|\n", "{text}");

        // A PII column (`*.card_pan`) added to a table without masked columns: before the reload the stale
        // catalog would pass the table through unrewritten, so statements are refused until it is reloaded.
        let raw_pan = "4999777766665555";
        admin
            .batch_execute(&format!(
                "ALTER TABLE ddl_probe ADD COLUMN card_pan text DEFAULT '{raw_pan}'"
            ))
            .await?;
        let no_raw = |t: &str| -> Result<()> {
            ensure!(
                !t.contains("49997777"),
                "raw PAN shown after ALTER TABLE: {t}"
            );
            Ok(())
        };
        let altered = Instant::now();
        let (text, refusals) = until_reloaded(&analyst, "SELECT * FROM ddl_probe", no_raw, |t| {
            t.contains("5555")
        })
        .await?;
        ensure!(text.contains("************5555"), "{text}");
        println!(
            "first statement after ALTER TABLE: {refusals} refusal(s) while the catalog reloaded; masked result after {:.1} ms",
            altered.elapsed().as_secs_f64() * 1e3
        );

        // DDL inside a transaction is reported when the transaction ends (here: rolled back).
        let n = changes();
        admin
            .batch_execute("BEGIN; ALTER TABLE ddl_probe ADD COLUMN email text; ROLLBACK")
            .await?;
        ensure!(changes() > n, "rolled-back DDL was not reported");
        until_reloaded(&analyst, "SELECT id FROM ddl_probe", |_| Ok(()), |t| {
            t == "1|\n"
        })
        .await?;

        // A session that ends inside the transaction of a schema change reports it too.
        let n = changes();
        {
            let quitter = fx.connect_to(proxy.addr, "globex", "admin").await?;
            quitter
                .batch_execute("BEGIN; CREATE TABLE ddl_orphan (x int)")
                .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while changes() == n {
            ensure!(
                Instant::now() < deadline,
                "a session that ended mid-DDL did not report it"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Dropping the table: the masked role gets a clean refusal, and the session stays usable.
        admin.batch_execute("DROP TABLE ddl_probe").await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let e = analyst
                .simple_query("SELECT * FROM ddl_probe")
                .await
                .expect_err("dropped table");
            let (code, msg) = db_error(&e).ok_or_else(|| anyhow!("{e:#}"))?;
            // While reloading: 42501 (rule catalog); then PostgreSQL's own 42P01.
            if code == "42P01" {
                ensure!(msg == "relation \"ddl_probe\" does not exist", "{msg}");
                break;
            }
            ensure!(code == "42501", "{code} {msg}");
            ensure!(Instant::now() < deadline, "not reloaded after DROP: {msg}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let one = rows_text(&analyst.simple_query("SELECT 1 AS one").await?);
        ensure!(one == "1|\n", "{one}");
        Ok(())
    })
}

/// A NOT NULL violation makes PostgreSQL print the whole failing row in DETAIL, unmasked PAN and all.
fn details_withheld(fx: &Fixture) -> Result<()> {
    let dir = write_policy_dir(fx, "policies-details")?;
    let proxy = masking_proxy(fx, dir)?;
    fx.superuser_sql(
        "acme",
        "UPDATE payers SET card_pan = '4999111122223333' WHERE id = 7",
    )?;
    let sql = "UPDATE payers SET full_name = NULL WHERE id = 7";
    fx.block_on(async {
        // `support` may update payers and sees e-mail and phone raw, but not the PAN.
        let support = fx.connect_to(proxy.addr, "acme", "support").await?;
        let e = support.batch_execute(sql).await.expect_err("NOT NULL");
        let d = e.as_db_error().ok_or_else(|| anyhow!("{e:#}"))?;
        ensure!(d.code().code() == "23502", "{d:?}");
        let detail = d.detail().unwrap_or("");
        ensure!(
            !detail.contains("49991111") && detail.contains("withheld"),
            "DETAIL reached a masked role: {detail}"
        );
        let one = rows_text(&support.simple_query("SELECT 1").await?);
        ensure!(one == "1|\n", "session not usable after the error: {one}");

        // The unrestricted role gets PostgreSQL's DETAIL (so the check above can fail).
        let admin = fx.connect_to(proxy.addr, "acme", "admin").await?;
        let e = admin.batch_execute(sql).await.expect_err("NOT NULL");
        let detail = e
            .as_db_error()
            .and_then(|d| d.detail())
            .unwrap_or("")
            .to_owned();
        ensure!(
            detail.contains("4999111122223333"),
            "admin's DETAIL: {detail}"
        );
        Ok(())
    })
}

/// Objects whose use makes clients introspect types (enum, domain, composite, range, arrays of them), a view
/// and a comment. Created before the proxy starts, as the tenant's application user.
const INTRO_SETUP: &str = r#"
SET ROLE acme_app;
CREATE TYPE intro_state AS ENUM ('open', 'won', 'lost');
CREATE DOMAIN intro_amount AS numeric(12,2) CHECK (VALUE >= 0);
CREATE TYPE intro_addr AS (city text, zip text);
CREATE TYPE intro_period AS RANGE (subtype = date);
CREATE TABLE intro_cases (
  id int PRIMARY KEY, state intro_state NOT NULL, states intro_state[], amount intro_amount,
  addr intro_addr, addrs intro_addr[], period intro_period,
  merchant_id bigint REFERENCES merchants (id), UNIQUE (merchant_id, id), CHECK (id > 0));
CREATE INDEX intro_cases_state_idx ON intro_cases (state) WHERE amount > 0;
COMMENT ON TABLE intro_cases IS 'introspection probe';
INSERT INTO intro_cases VALUES
  (1, 'open', '{open,won}', 12.5, ROW('Paris', '75001'), ARRAY[ROW('Lyon', '69001')::intro_addr], '[2026-01-01,2026-02-01)', 1),
  (2, 'lost', '{}', 0, NULL, NULL, 'empty', NULL);
CREATE VIEW intro_view AS SELECT id, state FROM intro_cases;
"#;

/// Runs tests/py/introspect.py for `client` and returns its JSON output.
fn run_client(client: &str, conninfo: &str, password: &str) -> Result<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/introspect.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(client)
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()?;
    ensure!(
        out.status.success(),
        "{client} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// psql's describe commands; returns stdout and stderr.
fn psql(conninfo: &str, password: &str) -> Result<String> {
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo).arg("-X").arg("-q");
    for c in [
        "\\d intro_cases",
        "\\d+ payers",
        "\\dt",
        "\\dv",
        "\\di",
        "\\ds",
        "\\dT+",
        "\\dD",
        "\\df",
        "\\dn",
    ] {
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

fn introspection(fx: &Fixture) -> Result<()> {
    fx.superuser_sql("acme", INTRO_SETUP)?;
    let proxy = masking_proxy(fx, write_policy_dir(fx, "policies-intro")?)?;
    let engine = proxy
        .shared
        .masking
        .clone()
        .ok_or_else(|| anyhow!("no engine"))?;
    let decided = || {
        let s = &engine.stats;
        s.hits.load(Ordering::Relaxed)
            + s.misses.load(Ordering::Relaxed)
            + s.plan_hits.load(Ordering::Relaxed)
    };
    let refused = || engine.stats.refused.load(Ordering::Relaxed);
    let token = fx.token("intro@acme", "acme", "analyst");
    let masked = format!(
        "host=127.0.0.1 port={} dbname=acme user=intro sslmode=disable",
        proxy.addr.port()
    );
    let (user, password) = fx.creds("acme");
    let direct = format!(
        "host=127.0.0.1 port={} dbname=acme user={user} sslmode=disable",
        fx.env.cluster.port()
    );
    let mut report = Vec::new();
    let (mut total, mut total_refused) = (0, 0);
    for client in ["sqlalchemy", "asyncpg", "psycopg", "psql"] {
        let (d0, r0) = (decided(), refused());
        let (via, raw) = if client == "psql" {
            let via = psql(&masked, &token)?;
            let raw = psql(&direct, &password)?;
            ensure!(!raw.contains("ERROR"), "psql direct: {raw}");
            (
                serde_json::Value::String(via),
                serde_json::Value::String(raw),
            )
        } else {
            let via = run_client(client, &masked, &token)?;
            let raw = run_client(client, &direct, &password)?;
            (via, raw)
        };
        // Each client really looked at the probe objects (so equal outputs mean something).
        let marker = match client {
            "sqlalchemy" => "introspection probe",
            "asyncpg" => "Lyon",
            "psycopg" => "'won'",
            _ => "intro_cases_state_idx",
        };
        ensure!(
            raw.to_string().contains(marker),
            "{client} output lacks {marker}: {raw:#}"
        );
        let (n, r) = (decided() - d0, refused() - r0);
        ensure!(n > 0, "{client}: no statement reached the masking engine");
        ensure!(
            !raw.to_string().contains("ERROR"),
            "{client} fails even directly: {raw:#}"
        );
        if via != raw {
            let (a, b) = (via.as_object(), raw.as_object());
            let diff: Vec<String> = match (a, b) {
                (Some(a), Some(b)) => a
                    .iter()
                    .filter(|(k, v)| b.get(*k) != Some(v))
                    .map(|(k, v)| {
                        format!(
                            "{k}: via pgveil {v} / direct {}",
                            b.get(k).unwrap_or(&serde_json::Value::Null)
                        )
                    })
                    .collect(),
                _ => vec![format!("via pgveil:\n{via}\ndirect:\n{raw}")],
            };
            bail!(
                "{client} introspection differs through pgveil:\n{}",
                diff.join("\n")
            );
        }
        total += n;
        total_refused += r;
        report.push(format!("{client} {n} statements, {r} refused"));
    }
    println!(
        "introspection as masked role analyst: {} — total {total} statements, {total_refused} refused ({:.1}%)",
        report.join("; "),
        100.0 * total_refused as f64 / total as f64
    );
    ensure!(total_refused == 0, "introspection statements were refused");
    Ok(())
}

/// Runs the real `pgveil` binary.
fn pgveil(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .env("PGVEIL_LOG", "warn")
        .output()?)
}

fn stdout_of(args: &[&str]) -> Result<String> {
    let o = pgveil(args)?;
    ensure!(
        o.status.success(),
        "pgveil {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8(o.stdout)?)
}

fn stderr_of_failure(args: &[&str]) -> Result<String> {
    let o = pgveil(args)?;
    ensure!(!o.status.success(), "pgveil {args:?} succeeded");
    Ok(String::from_utf8_lossy(&o.stderr).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

/// `pgveil policy catalog` saves acme's live catalog (schema only: no credentials, keys or rows); with a config
/// whose secrets file does not exist, `policy explain --catalog` and `policy test --catalog` work and explain
/// prints exactly what live explain printed, while the same commands without `--catalog` cannot even start.
fn saved_catalog_tools(fx: &Fixture) -> Result<()> {
    let dir = write_policy_dir(fx, "policies-tools")?;
    std::fs::write(
        dir.join("payments.tests.toml"),
        support::demo::env::EXAMPLE_POLICY_TESTS,
    )?;
    let base = std::fs::read_to_string(&fx.env.config_path)?;
    let live_text = format!("{base}\n[policy]\ndir = {dir:?}\n");
    let live = fx.env.dir().join("tools-live.toml");
    std::fs::write(&live, &live_text)?;
    let secrets = fx.env.secrets_path();
    let missing = fx.env.dir().join("no-such-secrets.json");
    let offline_text = live_text.replace(&format!("{secrets:?}"), &format!("{missing:?}"));
    ensure!(
        offline_text != live_text,
        "secrets path not found in the config"
    );
    let offline = fx.env.dir().join("tools-offline.toml");
    std::fs::write(&offline, &offline_text)?;
    let (live, offline) = (path_str(&live)?, path_str(&offline)?);
    let file = fx.env.dir().join("acme.catalog.json");
    let file = path_str(&file)?;

    let summary = stdout_of(&[
        "policy", "catalog", "--config", live, "--tenant", "acme", "--out", file,
    ])?;
    ensure!(summary.contains("catalog written to"), "{summary}");
    let text = std::fs::read_to_string(file)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    ensure!(v["format"] == 1 && v["tenant"] == "acme", "{text}");
    ensure!(
        v["relations"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "payers")),
        "no payers in the saved catalog"
    );
    // Schema metadata only: no credentials, no key material, no rows.
    let (_, password) = fx.creds("acme");
    let secrets_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&secrets)?)?;
    let key = secrets_json["tenants/acme/pseudonym"]
        .as_str()
        .ok_or_else(|| anyhow!("no pseudonym key"))?
        .to_owned();
    let email = fx
        .superuser_sql("acme", "SELECT email FROM payers ORDER BY id LIMIT 1")?
        .trim()
        .to_owned();
    ensure!(email.contains('@'), "{email}");
    for (what, s) in [
        ("password", &password),
        ("pseudonym key", &key),
        ("row", &email),
    ] {
        ensure!(
            !text.contains(s.as_str()),
            "the saved catalog holds a {what}"
        );
    }

    // `policy check`: live, every reachable tenant's unclassified columns; offline, the same list for the
    // tenant of the saved file and "not available" for the others.
    let live_check = stdout_of(&["policy", "check", "--config", live])?;
    let acme_block = |report: &str| -> Result<String> {
        let start = report
            .find("tenant acme:")
            .ok_or_else(|| anyhow!("no acme section in\n{report}"))?;
        let rest = &report[start..];
        let end = rest[1..].find("\ntenant ").map_or(rest.len(), |i| i + 2);
        Ok(rest[..end].to_owned())
    };
    let acme = acme_block(&live_check)?;
    ensure!(
        live_check.contains("policy ok")
            && acme.contains("  public.merchants: id, name")
            && acme.contains("  public.payers: id\n")
            && !acme.contains("card_pan"),
        "{live_check}"
    );
    ensure!(live_check.contains("tenant globex: "), "{live_check}");
    let offline_check = stdout_of(&["policy", "check", "--config", offline, "--catalog", file])?;
    ensure!(
        acme_block(&offline_check)? == acme,
        "saved\n{offline_check}\nlive\n{live_check}"
    );
    ensure!(
        offline_check.contains("tenant globex: catalog not available"),
        "{offline_check}"
    );

    // Without --catalog the offline config is refused: it cannot reach any database.
    let e = stderr_of_failure(&[
        "policy", "explain", "--config", offline, "--tenant", "acme", "--role", "analyst",
        "SELECT 1",
    ])?;
    ensure!(e.contains("no-such-secrets.json"), "{e}");
    let e = stderr_of_failure(&["policy", "test", "--config", offline])?;
    ensure!(e.contains("no-such-secrets.json"), "{e}");

    let (mut rewrites, mut refusals) = (0, 0);
    for (role, sql) in [
        ("analyst", "SELECT * FROM payers"),
        (
            "analyst",
            "SELECT p.email, m.name FROM payers p JOIN payments x ON x.payer_id = p.id JOIN merchants m ON m.id = x.merchant_id",
        ),
        ("analyst", "SELECT most_common_vals FROM pg_stats"),
        ("analyst", "SELECT name FROM merchants"),
        ("support", "SELECT * FROM payers"),
        ("admin", "SELECT email FROM payers"),
    ] {
        let args = ["--tenant", "acme", "--role", role, sql];
        let want = stdout_of(&[&["policy", "explain", "--config", live][..], &args].concat())?;
        let got = stdout_of(
            &[
                &["policy", "explain", "--config", offline, "--catalog", file][..],
                &args,
            ]
            .concat(),
        )?;
        ensure!(got == want, "{sql}: saved\n{got}\nlive\n{want}");
        rewrites += usize::from(want.contains("decision: rewrite"));
        refusals += usize::from(want.contains("decision: refuse"));
    }
    ensure!(
        rewrites >= 3 && refusals >= 1,
        "{rewrites} rewrites, {refusals} refusals"
    );

    let report = stdout_of(&["policy", "test", "--config", offline, "--catalog", file])?;
    ensure!(report.contains("case(s), all passed"), "{report}");

    // The file is acme's: explaining for globex with it is refused rather than guessed.
    let e = stderr_of_failure(&[
        "policy",
        "explain",
        "--config",
        offline,
        "--catalog",
        file,
        "--tenant",
        "globex",
        "--role",
        "analyst",
        "SELECT 1",
    ])?;
    ensure!(e.contains("no saved catalog"), "{e}");
    Ok(())
}

/// Simple-protocol statements that differ only in literals: after the first, each is answered from the
/// literal-normalized plan, with its own literals (right rows) and masked values.
fn literal_plans(fx: &Fixture) -> Result<()> {
    let proxy = masking_proxy(fx, write_policy_dir(fx, "policies-plans")?)?;
    let engine = proxy
        .shared
        .masking
        .clone()
        .ok_or_else(|| anyhow!("no engine"))?;
    let hits = || engine.stats.plan_hits.load(Ordering::Relaxed);
    fx.block_on(async {
        let analyst = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        let direct = fx.direct("acme").await?;
        let before = hits();
        for id in 1..=20 {
            let sql = format!(
                "SELECT x.id, p.email, x.card_pan, x.amount FROM payments x JOIN payers p ON p.id = x.payer_id \
                 WHERE x.id = {id} AND p.full_name <> 'x''y'"
            );
            let masked = rows_text(&analyst.simple_query(&sql).await?);
            let raw = rows_text(&direct.simple_query(&sql).await?);
            let (m, r): (Vec<&str>, Vec<&str>) = (masked.split('|').collect(), raw.split('|').collect());
            ensure!(m.len() == 5 && r.len() == 5, "{masked} / {raw}");
            ensure!(m[0] == id.to_string() && m[0] == r[0], "wrong row for id {id}: {masked}");
            let domain = r[1].split('@').nth(1).unwrap_or("");
            ensure!(
                m[1] == format!("****@{domain}") && m[1] != r[1],
                "email for id {id}: {} (raw {})",
                m[1],
                r[1]
            );
            ensure!(m[2].starts_with("************") && m[2] != r[2], "pan: {}", m[2]);
            ensure!(m[3] == r[3], "unmasked column differs: {masked} / {raw}");
        }
        let served = hits() - before;
        ensure!(served >= 19, "only {served} of 19 statements came from the plan");
        Ok(())
    })
}

/// One scrape of `/metrics` (plain HTTP/1.1 over a TCP stream): (series -> value), and the whole text.
async fn scrape(
    addr: std::net::SocketAddr,
) -> Result<(std::collections::HashMap<String, f64>, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP body: {raw}"))?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    let mut out = std::collections::HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if let Some((series, value)) = line.rsplit_once(' ') {
            out.insert(series.to_owned(), value.parse::<f64>().unwrap_or(f64::NAN));
        }
    }
    Ok((out, body.to_owned()))
}

/// `/metrics` counts connections, authentications, statements by decision, cache results and checkouts, with
/// labels of fixed values only: no tenant, role, user, SQL text or secret appears in it.
fn metrics_endpoint(fx: &Fixture) -> Result<()> {
    // The recorder first: the proxy's catalog loads at start are counted too.
    let (addr, stop_tx, serving, before) = fx.block_on(async {
        let server = pgveil::telemetry::MetricsServer::bind(&pgveil::telemetry::MetricsConfig {
            addr: "127.0.0.1:0".parse()?,
        })
        .await?;
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        let (before, _) = scrape(addr).await?;
        anyhow::Ok((addr, stop_tx, serving, before))
    })?;
    let proxy = masking_proxy(fx, write_policy_dir(fx, "policies-metrics")?)?;
    fx.block_on(async {
        let sql = "SELECT email FROM payers WHERE id = 3";
        let analyst = fx.connect_to(proxy.addr, "acme", "analyst").await?;
        for _ in 0..3 {
            analyst.simple_query(sql).await?;
        }
        analyst
            .simple_query("SELECT email FROM payers WHERE id = 4")
            .await?;
        let refused = analyst
            .simple_query("SELECT most_common_vals FROM pg_stats")
            .await
            .expect_err("pg_stats is denied");
        ensure!(
            db_error(&refused).is_some_and(|(c, _)| c == "42501"),
            "{refused:#}"
        );
        let bad = fx.conn_str(proxy.addr, "acme", "tester", "not-a-token");
        ensure!(support::connect(&bad).await.is_err(), "a bad token got in");
        drop(analyst);

        let (after, text) = scrape(addr).await?;
        let delta = |series: &str| {
            after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
        };
        for (series, at_least) in [
            ("pgveil_client_connections_total", 2.0),
            ("pgveil_auth_total{result=\"ok\",sqlstate=\"\"}", 1.0),
            (
                "pgveil_auth_total{result=\"refused\",sqlstate=\"28P01\"}",
                1.0,
            ),
            ("pgveil_statements_total{decision=\"rewritten\"}", 4.0),
            ("pgveil_statements_total{decision=\"refused\"}", 1.0),
            ("pgveil_rewrite_cache_total{result=\"hit\"}", 2.0),
            ("pgveil_rewrite_cache_total{result=\"plan\"}", 1.0),
            ("pgveil_pool_checkouts_total{result=\"immediate\"}", 1.0),
        ] {
            ensure!(
                delta(series) >= at_least,
                "{series}: {} -> {} (want +{at_least})\n{text}",
                before.get(series).copied().unwrap_or(0.0),
                after.get(series).copied().unwrap_or(0.0)
            );
        }
        ensure!(
            delta("pgveil_catalog_loads_total{result=\"ok\"}") >= 3.0,
            "the proxy's catalog loads (acme, globex, tlsco) not counted\n{text}"
        );
        let (_, password) = fx.creds("acme");
        for secretish in [
            "acme",
            "analyst",
            "tester",
            "payers",
            "pg_stats",
            "not-a-token",
            &password,
        ] {
            ensure!(!text.contains(secretish), "/metrics holds {secretish:?}");
        }
        let _ = stop_tx.send(());
        serving.await?;
        Ok(())
    })
}
