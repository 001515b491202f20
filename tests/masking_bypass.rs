//! Masking correctness against a second round of outside attacks (issue 19), through pgveil with the example
//! policy plus a few classes of its own, in session and transaction pool mode and over the simple and the
//! extended protocol:
//! - view lineage by position: whole-row references, names shadowed by CTEs/subqueries/set operations,
//!   columns reading several classes;
//! - masking functions that give the same output whatever the session sets (TimeZone, DateStyle, ...);
//! - error fields other than severity/SQLSTATE/message/position withheld (CONTEXT quoting a JSON document);
//! - masking functions that keep little: jsonb keys at any depth, any case, inside arrays; `partial` on short
//!   values; `pan` without its length; `email` without its domain;
//! - pgveil's own statement names unreachable through `U&"..."` escapes;
//! - other tenants' databases invisible in pg_database/pg_stat_database, their sizes refused.
//!
//! The payer row 900001 holds canary values; no output of a masked role may contain any of them.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::sync::Mutex;

use anyhow::{Result, anyhow, bail, ensure};
use pgveil::config::PoolMode;
use support::masking::{masking_proxy_with, write_policy_dir};
use support::{Fixture, Running};
use tokio_postgres::{Client, SimpleQueryMessage};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        ("view_lineage_is_derived_by_position", view_lineage),
        ("masking_ignores_session_settings", session_settings),
        ("error_fields_quoting_data_are_withheld", error_fields),
        ("masking_functions_keep_little", functions_keep_little),
        (
            "own_statement_names_are_unreachable_through_escapes",
            own_names,
        ),
        ("other_tenants_databases_are_hidden", other_tenants),
    ])
}

/// Raw values of payer 900001 (and the documents below); none may reach a masked role. (The e-mail domain is
/// not one: the example policy's `email` mask keeps it on purpose.)
const CANARIES: &[&str] = &[
    "Canaryname",
    "zelda.canary",
    "999-555",
    "Canarystreet",
    "1980-06-15",
    "192.0.2.77",
    "4111999988887777",
];

const SETUP: &str = r#"
SET ROLE acme_app;
INSERT INTO payers (id, full_name, email, phone, date_of_birth, ip_address, address, card_pan) VALUES
  (900001, 'Zelda Canaryname', 'zelda.canary@canary-home.example', '+1-999-555-0177', '1980-06-15',
   '192.0.2.77', '77 Canarystreet', '4111999988887777');
CREATE VIEW lin_whole AS SELECT p.id, to_jsonb(p) AS doc, p::text AS txt, row_to_json(p.*)::text AS js FROM payers p;
CREATE VIEW lin_shadow AS WITH c AS (SELECT id, full_name AS name FROM payers)
  SELECT c.id, c.name, m.name AS mname FROM c LEFT JOIN merchants m ON m.id = c.id;
CREATE VIEW lin_union AS SELECT u.name FROM (SELECT name FROM merchants UNION ALL SELECT full_name FROM payers) u;
CREATE VIEW lin_concat AS SELECT id, concat(email, ' / ', phone, ' / ', address) AS contact FROM payers;
CREATE MATERIALIZED VIEW lin_mat AS SELECT id, concat(email, ' / ', phone) AS contact FROM payers;
CREATE TABLE fx_docs (id int PRIMARY KEY, doc jsonb, at timestamptz, born date, at_key timestamptz,
  amount float8, blob bytea, span interval, code text, pan text, mail text);
INSERT INTO fx_docs VALUES
  (1, '{"Email": "zelda.canary@canary-home.example", "payer": {"contact": {"eMail": "zelda.canary@canary-home.example"}},
        "cards": [{"card": {"number": "4111999988887777"}}], "keep": "visible"}',
   '2024-01-01 03:30:00+00', '1980-06-15', '2024-03-04 05:06:07.123456+00', 1.0 / 3, '\x0102ff',
   '1 mon 2 days 03:04:05', 'AB12CD', '4111999988887777123', 'zelda.canary@canary-home.example'),
  (2, '[{"email": "zelda.canary@canary-home.example"}, 5, "text"]', NULL, NULL, NULL, NULL, NULL, NULL,
   'ABCDEFGHIJ', '4111 9999 888', NULL),
  (3, '"scalar"', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE fx_raw (id int PRIMARY KEY, doc json);
INSERT INTO fx_raw VALUES (1, '{"payer_email": "zelda.canary@canary-home.example", "x": "\u0000"}');
"#;

const POLICY: &str = r#"
[classes."fx.doc"]
mask = "jsonb"
keys = ["email", "card.number"]
case_insensitive = true

[classes."fx.when"]
mask = "generalize"
to = "year"

[classes."fx.key"]
mask = "pseudonym"

[classes."fx.code"]
mask = "partial"
keep_first = 2
keep_last = 3

[classes."fx.pan"]
mask = "pan"
hide_length = true

[classes."fx.mail"]
mask = "email"
mask_domain = true

[[column]]
match = "fx_docs.doc"
class = "fx.doc"
[[column]]
match = "fx_raw.doc"
class = "fx.doc"
[[column]]
match = "fx_docs.at"
class = "fx.when"
[[column]]
match = "fx_docs.born"
class = "fx.when"
[[column]]
match = "fx_docs.at_key"
class = "fx.key"
[[column]]
match = "fx_docs.amount"
class = "fx.key"
[[column]]
match = "fx_docs.blob"
class = "fx.key"
[[column]]
match = "fx_docs.span"
class = "fx.key"
[[column]]
match = "fx_docs.code"
class = "fx.code"
[[column]]
match = "fx_docs.pan"
class = "fx.pan"
[[column]]
match = "fx_docs.mail"
class = "fx.mail"
"#;

static SETUP_DONE: Mutex<bool> = Mutex::new(false);

/// Creates the objects once (before any proxy loads the catalog).
fn setup(fx: &Fixture) -> Result<()> {
    let mut done = SETUP_DONE.lock().map_err(|_| anyhow!("setup poisoned"))?;
    if !*done {
        fx.superuser_sql("acme", SETUP)?;
        *done = true;
    }
    Ok(())
}

/// The two masking proxies (session mode, transaction mode), each with the example policy plus [`POLICY`].
fn proxies(fx: &Fixture, name: &str) -> Result<Vec<(&'static str, Running)>> {
    setup(fx)?;
    let mut out = Vec::new();
    for (label, mode) in [
        ("session", PoolMode::Session),
        ("transaction", PoolMode::Transaction),
    ] {
        let dir = write_policy_dir(fx, &format!("policies-{name}-{label}"))?;
        std::fs::write(dir.join("bypass.toml"), POLICY)?;
        let proxy = masking_proxy_with(fx, dir, |cfg| {
            cfg.pool.mode = mode;
            for t in &mut cfg.tenants {
                t.pool_mode = None;
            }
        })?;
        out.push((label, proxy));
    }
    Ok(out)
}

/// Every value of every row (text), `|`-separated, one line per row.
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

/// Runs a query whose columns are all text over the simple and the extended protocol; both must agree.
async fn both(c: &Client, sql: &str) -> Result<String> {
    let simple = rows_text(
        &c.simple_query(sql)
            .await
            .map_err(|e| anyhow!("{sql}: {e:?}"))?,
    );
    let mut extended = String::new();
    for row in c
        .query(sql, &[])
        .await
        .map_err(|e| anyhow!("{sql}: {e:?}"))?
    {
        for i in 0..row.len() {
            let v: Option<String> = row.try_get(i)?;
            extended.push_str(v.as_deref().unwrap_or("NULL"));
            extended.push('|');
        }
        extended.push('\n');
    }
    ensure!(
        simple == extended,
        "{sql}: simple {simple:?} vs extended {extended:?}"
    );
    Ok(simple)
}

/// The errors of `sql` over both protocols.
async fn both_err(c: &Client, sql: &str) -> Result<Vec<tokio_postgres::error::DbError>> {
    let mut out = Vec::new();
    let simple = c.simple_query(sql).await.err();
    let extended = c.query(sql, &[]).await.err();
    for e in [simple, extended] {
        let e = e.ok_or_else(|| anyhow!("{sql}: no error"))?;
        out.push(
            e.as_db_error()
                .cloned()
                .ok_or_else(|| anyhow!("{sql}: {e:#}"))?,
        );
    }
    Ok(out)
}

fn no_canary(what: &str, text: &str) -> Result<()> {
    for c in CANARIES {
        if text.to_lowercase().contains(&c.to_lowercase()) {
            bail!("{what}: canary {c} reached the masked role: {text}");
        }
    }
    Ok(())
}

fn view_lineage(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "lineage")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            for sql in [
                "SELECT id::text, doc::text, txt, js FROM lin_whole WHERE id = 900001",
                "SELECT name, mname FROM lin_shadow WHERE id = 900001",
                "SELECT name FROM lin_union",
                "SELECT contact FROM lin_concat WHERE id = 900001",
                "SELECT contact FROM lin_mat WHERE id = 900001",
                "SELECT l.txt FROM lin_whole l JOIN lin_concat c USING (id) WHERE c.contact IS NOT NULL",
            ] {
                let out = both(&c, sql).await?;
                ensure!(!out.is_empty(), "{mode}: {sql}: no rows");
                no_canary(&format!("{mode}: {sql}"), &out)?;
            }
            // Several classes in one column: redacted (not the e-mail mask, which kept the text after `@`).
            let contact = both(&c, "SELECT contact FROM lin_concat WHERE id = 900001").await?;
            ensure!(contact == "[REDACTED]|\n", "{mode}: {contact}");
            // Lineage is exact where it can be: the merchants' names stay raw, the payers' id too.
            let direct = fx.direct("acme").await?;
            let name: String = direct
                .query_one("SELECT name FROM merchants WHERE id = 1", &[])
                .await?
                .get(0);
            let via = both(&c, "SELECT mname FROM lin_shadow WHERE id = 1").await?;
            ensure!(via == format!("{name}|\n"), "{mode}: {via} vs {name}");
            let id = both(&c, "SELECT id::text FROM lin_whole WHERE id = 900001").await?;
            ensure!(id == "900001|\n", "{mode}: {id}");
            // The unrestricted role reads the canaries through the same views (the checks above can fail).
            let admin = fx.connect_to(proxy.addr, "acme", "admin").await?;
            let raw = both(&admin, "SELECT contact FROM lin_concat WHERE id = 900001").await?;
            ensure!(raw.contains("zelda.canary"), "{mode}: admin {raw}");
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

/// The masked columns of fx_docs, formatted by the query itself so that only the masked values can vary.
const SETTINGS_QUERY: &str = "SELECT id::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
    to_char(born, 'YYYY-MM-DD'), at_key::text, amount::text, blob::text, span::text FROM fx_docs ORDER BY id";

fn session_settings(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "settings")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let base = both(&c, SETTINGS_QUERY).await?;
            let first = base.lines().next().unwrap_or("");
            ensure!(
                first.starts_with("1|2024-01-01 00:00:00|1980-01-01|"),
                "{mode}: generalized in UTC: {first}"
            );
            for set in [
                "SET TimeZone = 'America/Los_Angeles'",
                "SET TimeZone = 'Asia/Kolkata'",
                "SET TIME ZONE INTERVAL '+14:45' HOUR TO MINUTE",
                "SET DateStyle = 'SQL, DMY'",
                "SET DateStyle = 'German'",
                "SET IntervalStyle = 'sql_standard'",
                "SET IntervalStyle = 'iso_8601'",
                "SET extra_float_digits = -10",
                "SET extra_float_digits = 3",
                "SET bytea_output = 'escape'",
                "SET lc_time = 'C'",
                "SET lc_numeric = 'C'",
                "SET lc_monetary = 'C'",
            ] {
                let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
                c.batch_execute(set)
                    .await
                    .map_err(|e| anyhow!("{mode}: {set}: {e:?}"))?;
                let out = both(&c, SETTINGS_QUERY).await?;
                ensure!(
                    out == base,
                    "{mode}: masked output changed after {set}:\n{out}\nvs\n{base}"
                );
            }
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

fn error_fields(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "errors")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            // The json -> jsonb cast inside the masking expression fails on `\u0000`; PostgreSQL's CONTEXT
            // quotes the document up to there: `JSON data, line 1: {"payer_email": "<raw>...`.
            for sql in [
                "SELECT doc::text FROM fx_raw",
                "SELECT xmlparse(document p.email)::text FROM payers p WHERE p.id = 900001",
                "SELECT p.email::int::text FROM payers p WHERE p.id = 900001",
            ] {
                for e in both_err(&c, sql).await? {
                    let fields = format!(
                        "{} | {:?} | {:?} | {:?} | {:?} | {:?}",
                        e.message(),
                        e.detail(),
                        e.hint(),
                        e.where_(),
                        e.position(),
                        e.routine()
                    );
                    no_canary(&format!("{mode}: {sql}"), &fields)?;
                    ensure!(
                        e.where_().is_none()
                            && !matches!(
                                e.position(),
                                Some(tokio_postgres::error::ErrorPosition::Internal { .. })
                            ),
                        "{mode}: {sql}: {fields}"
                    );
                }
            }
            let e = both_err(&c, "SELECT doc::text FROM fx_raw").await?;
            ensure!(
                e[0].code().code() == "22P05" && e[0].message().contains("Unicode escape"),
                "{mode}: PostgreSQL's code and message are kept: {:?}",
                e[0]
            );
            let one = both(&c, "SELECT 1::text").await?;
            ensure!(one == "1|\n", "{mode}: session not usable: {one}");
            // The unrestricted role gets PostgreSQL's CONTEXT, canary and all.
            let admin = fx.connect_to(proxy.addr, "acme", "admin").await?;
            let e = both_err(&admin, "SELECT doc::jsonb::text FROM fx_raw").await?;
            ensure!(
                e[0].where_().is_some_and(|w| w.contains("zelda.canary")),
                "{mode}: admin's CONTEXT: {:?}",
                e[0]
            );
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

fn functions_keep_little(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "functions")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let out = both(
                &c,
                "SELECT id::text, doc::text, code, pan, mail FROM fx_docs ORDER BY id",
            )
            .await?;
            no_canary(mode, &out)?;
            let rows: Vec<&str> = out.lines().collect();
            ensure!(rows.len() == 3, "{mode}: {out}");
            let doc1: serde_json::Value =
                serde_json::from_str(rows[0].split('|').nth(1).unwrap_or(""))?;
            ensure!(
                doc1["Email"] == "****"
                    && doc1["payer"]["contact"]["eMail"] == "****"
                    && doc1["cards"][0]["card"]["number"] == "****"
                    && doc1["keep"] == "visible",
                "{mode}: {doc1}"
            );
            ensure!(
                rows[0].ends_with("|****|************7123|****@****|"),
                "{mode}: short partial fully masked, PAN length hidden, domain masked: {}",
                rows[0]
            );
            ensure!(
                rows[1]
                    == "2|[{\"email\": \"****\"}, 5, \"text\"]|AB****HIJ|****************|NULL|",
                "{mode}: top-level array read and masked: {}",
                rows[1]
            );
            ensure!(
                rows[2] == "3|\"scalar\"|NULL|NULL|NULL|",
                "{mode}: {}",
                rows[2]
            );
            // The default e-mail mask keeps a domain, but only a domain.
            let mail = both(&c, "SELECT email FROM payers WHERE id = 900001").await?;
            ensure!(mail == "****@canary-home.example|\n", "{mode}: {mail}");
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

fn own_names(fx: &Fixture) -> Result<()> {
    let names = [
        "EXECUTE U&\"pgveil\\005fps\\005f1\"",
        "EXPLAIN (VERBOSE) EXECUTE U&\"pgveil\\005fps\\005f1\"",
        "EXECUTE U&\"pgveil!005fps!+00005f2\" UESCAPE '!'",
        "DEALLOCATE U&\"pgveil\\005fps\\005f1\"",
        "EXECUTE \"pgveil_ps_1\"",
    ];
    let inspected_only = [
        "PREPARE U&\"pgveil\\005fps\\005f9\" AS SELECT 1",
        "DECLARE U&\"pgveil\\005fps\\005f1\" CURSOR FOR SELECT 1",
        "FETCH U&\"pgveil\\005fps\\005f1\"",
        "CLOSE U&\"pgveil\\005fps\\005f1\"",
    ];
    for (mode, proxy) in proxies(fx, "names")? {
        fx.block_on(async {
            // Another client's named statements exist on the backends (pgveil_ps_<n> in transaction mode).
            let victim = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let st = victim.prepare("SELECT 'victim-literal'::text").await?;
            victim.query(&st, &[]).await?;
            let mut roles = vec!["analyst"];
            if mode == "transaction" {
                roles.push("admin");
            }
            for role in roles {
                let c = fx.connect_to(proxy.addr, "acme", role).await?;
                let list: Vec<&str> = if role == "analyst" {
                    names.iter().chain(&inspected_only).copied().collect()
                } else {
                    names.to_vec()
                };
                for sql in list {
                    for e in both_err(&c, sql).await? {
                        ensure!(
                            e.code().code() == "42501",
                            "{mode}/{role}: {sql}: {} {}",
                            e.code().code(),
                            e.message()
                        );
                        ensure!(
                            !e.message().contains("victim-literal"),
                            "{mode}/{role}: {e:?}"
                        );
                    }
                }
                let one = both(&c, "SELECT 1::text").await?;
                ensure!(one == "1|\n", "{mode}/{role}: session not usable: {one}");
            }
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

fn other_tenants(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in proxies(fx, "tenants")? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            for (sql, want) in [
                ("SELECT string_agg(datname, ',' ORDER BY datname)::text FROM pg_database", "acme|\n"),
                (
                    "SELECT count(*)::text FROM pg_catalog.pg_stat_database WHERE datname IS DISTINCT FROM current_database()",
                    "0|\n",
                ),
                (
                    "SELECT count(*)::text FROM pg_stat_database_conflicts WHERE datname <> current_database()",
                    "0|\n",
                ),
                ("SELECT datname::text FROM (TABLE pg_database) d", "acme|\n"),
            ] {
                let out = both(&c, sql).await?;
                ensure!(out == want, "{mode}: {sql}: {out}");
            }
            for sql in [
                "SELECT pg_database_size('globex')::text",
                "SELECT pg_catalog.pg_stat_get_db_xact_commit(oid)::text FROM pg_database",
            ] {
                for e in both_err(&c, sql).await? {
                    ensure!(e.code().code() == "42501", "{mode}: {sql}: {e:?}");
                }
            }
            // Unrestricted roles see what the backend user sees (documented).
            let admin = fx.connect_to(proxy.addr, "acme", "admin").await?;
            let all = both(&admin, "SELECT count(*)::text FROM pg_database WHERE datname = 'globex'").await?;
            ensure!(all == "1|\n", "{mode}: admin: {all}");
            Ok::<_, anyhow::Error>(())
        })?;
        // psql's `\l` lists the tenant's own database only.
        let token = fx.token("l@acme", "acme", "analyst");
        let out = std::process::Command::new("psql")
            .arg(fx.conn_str(proxy.addr, "acme", "l", &token))
            .args(["-X", "-q", "-c", "\\l"])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            text.contains("acme") && !text.contains("globex") && !text.contains("ERROR"),
            "{mode}: \\l: {text}"
        );
    }
    Ok(())
}
