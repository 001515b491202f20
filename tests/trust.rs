//! The masking trust boundary end to end (DESIGN.md "Trust boundary", issue 11), against real PostgreSQL, in
//! session and transaction pool mode:
//! - client encodings: every alias PostgreSQL accepts for every client-only multi-byte encoding, on every
//!   path (SET, SET LOCAL/SESSION, SET NAMES, set_config, startup parameter, `options`), and the
//!   ParameterStatus watchdog provoked through a path the allowlist does not see (an allow-listed function);
//! - echo channels: EXPLAIN EXECUTE of SQL and protocol statements, messages below NOTICE, `debug_*`
//!   settings; every response is searched for the pseudonym key in every representation;
//! - versions: prepared statements (protocol and SQL) and WITH HOLD cursors made under an old policy or
//!   catalog never return rows after the change;
//! - tenant-side session defaults (`ALTER ROLE ... SET`) checked at backend start.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures_util::StreamExt;
use pgveil::ids::TenantId;
use support::masking::{key_needles, masking_proxy_in, write_policy_dir};
use support::raw;
use support::{Fixture, Running};
use tokio::io::AsyncWriteExt;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        ("client_encoding_aliases_refused_on_every_path", encodings),
        ("startup_client_encoding_refused", startup_encodings),
        ("sql_ascii_client_encoding_still_masks", sql_ascii),
        ("lexing_watchdog_ends_the_session", watchdog),
        ("echo_channels_never_show_key_material", echo_channels),
        ("policy_change_voids_prepared_state", versions),
        ("schema_change_voids_prepared_state", schema_versions),
        (
            "tenant_session_defaults_checked_at_backend_start",
            tenant_defaults,
        ),
    ])
}

/// Every name PostgreSQL accepts for a client-only multi-byte encoding (pg_encname_tbl, and spellings its
/// canonicalization folds: case, punctuation), plus a single-byte one: only UTF8 (and SQL_ASCII on a UTF8
/// database, `sql_ascii` below) is allowed.
const BAD_ENCODINGS: &[&str] = &[
    "SJIS",
    "sjis",
    "Shift_JIS",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "Windows-932",
    "WINDOWS_932",
    "SHIFT_JIS_2004",
    "shiftjis2004",
    "BIG5",
    "win950",
    "windows950",
    "GBK",
    "win936",
    "windows936",
    "UHC",
    "win949",
    "windows949",
    "GB18030",
    "JOHAB",
    "LATIN1",
];

/// The bypass of issue 11: under SJIS the lead byte 0x81 of `Á` (C3 81) swallows the backslash, so the server
/// ends the literal one quote earlier than pgveil and runs `..., full_name, email FROM payers`.
const ENCODING_BYPASS: &str =
    "SELECT pg_catalog.length(E'Á\\') , full_name, email FROM payers --'), 1";

/// Canary-free check of the bypass: the raw data of payer 1 must not come back.
async fn raw_email_of_payer(fx: &Fixture, tenant: &str) -> Result<String> {
    let d = fx.direct(tenant).await?;
    Ok(
        d.query_one("SELECT email FROM payers ORDER BY id LIMIT 1", &[])
            .await?
            .get(0),
    )
}

/// A policy folder with `edit` applied to the example policy.
fn policy_dir(fx: &Fixture, name: &str, edit: impl Fn(&str) -> String) -> Result<PathBuf> {
    let dir = write_policy_dir(fx, name)?;
    let text = edit(support::demo::env::EXAMPLE_POLICY);
    std::fs::write(dir.join("payments.toml"), text)?;
    Ok(dir)
}

fn both_modes(
    fx: &Fixture,
    name: &str,
    edit: impl Fn(&str) -> String,
) -> Result<Vec<(&'static str, Running)>> {
    let mut out = Vec::new();
    for (mode, txn) in [("session", false), ("transaction", true)] {
        let dir = policy_dir(fx, &format!("{name}-{mode}"), &edit)?;
        out.push((mode, masking_proxy_in(fx, dir, txn)?));
    }
    Ok(out)
}

/// A tokio-postgres error with its SQLSTATE and message.
fn show(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// The SQLSTATE of a tokio-postgres error.
fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

fn encodings(fx: &Fixture) -> Result<()> {
    let secret = fx.block_on(raw_email_of_payer(fx, "acme"))?;
    // The list is real: PostgreSQL accepts every name directly.
    fx.block_on(async {
        let d = fx.direct("acme").await?;
        for name in BAD_ENCODINGS {
            d.batch_execute(&format!(
                "SET client_encoding = '{name}'; RESET client_encoding"
            ))
            .await
            .with_context(|| format!("PostgreSQL does not accept {name}"))?;
        }
        Result::<()>::Ok(())
    })?;
    for (mode, proxy) in both_modes(fx, "trust-enc", str::to_owned)? {
        fx.block_on(async {
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let mut tried = 0;
            for name in BAD_ENCODINGS {
                let attempts = [
                    format!("SET client_encoding = '{name}'"),
                    format!("SET SESSION client_encoding TO '{name}'"),
                    format!("SeT \"client_encoding\" = '{name}'"),
                    format!("SET NAMES '{name}'"),
                    format!("SELECT set_config('client_encoding', '{name}', false)"),
                    format!(
                        "SELECT pg_catalog.SET_CONFIG(U&'client\\005fencoding', '{name}', false)"
                    ),
                    format!("BEGIN; SET LOCAL client_encoding = '{name}'; SELECT 1; COMMIT"),
                ];
                for sql in &attempts {
                    tried += 1;
                    let r = c.simple_query(sql).await;
                    let _ = c.simple_query("ROLLBACK").await;
                    match r {
                        Ok(_) => bail!("{mode}: allowed: {sql}"),
                        Err(e) => ensure!(code(&e) == "42501", "{mode}: {sql}: {}", show(&e)),
                    }
                }
                // Extended protocol: the statement and a parameter value.
                for r in [
                    c.execute(format!("SET client_encoding = '{name}'").as_str(), &[])
                        .await,
                    c.execute("SELECT set_config('client_encoding', $1, false)", &[name])
                        .await,
                ] {
                    tried += 1;
                    match r {
                        Ok(_) => bail!("{mode}: extended set of {name} allowed"),
                        Err(e) => ensure!(code(&e) == "42501", "{mode}: {name}: {}", show(&e)),
                    }
                }
                let enc = dump(&c.simple_query("SHOW client_encoding").await?);
                ensure!(
                    enc == "UTF8",
                    "{mode}: client_encoding is {enc} after {name}"
                );
                for extended in [false, true] {
                    let out = if extended {
                        match c.query(ENCODING_BYPASS, &[]).await {
                            Ok(rows) => rows
                                .iter()
                                .map(|r| format!("{:?}", r.try_get::<_, i32>(0).ok()))
                                .collect::<String>(),
                            Err(e) => e.to_string(),
                        }
                    } else {
                        format!("{:?}", c.simple_query(ENCODING_BYPASS).await)
                    };
                    ensure!(!out.contains(&secret), "{mode}: bypass returned raw data");
                }
            }
            // Allowed spellings of UTF8 and going back to the default stay usable.
            for sql in [
                "SET client_encoding = 'utf-8'",
                "SET NAMES 'Unicode'",
                "SELECT set_config('client_encoding', 'UTF8', false)",
                "SET client_encoding TO DEFAULT",
                "RESET client_encoding",
                "SET standard_conforming_strings = on",
                "RESET ALL",
            ] {
                c.simple_query(sql)
                    .await
                    .with_context(|| format!("{mode}: {sql}"))?;
            }
            for sql in [
                "SET standard_conforming_strings = off",
                "SELECT set_config('standard_conforming_strings', 'off', false)",
            ] {
                match c.simple_query(sql).await {
                    Ok(_) => bail!("{mode}: allowed: {sql}"),
                    Err(e) => ensure!(code(&e) == "42501", "{mode}: {sql}: {}", show(&e)),
                }
            }
            println!(
                "{mode} mode: {tried} client_encoding attempts over {} names refused",
                BAD_ENCODINGS.len()
            );
            Ok(())
        })?;
    }
    Ok(())
}

/// A masked read with non-ASCII bytes in the statement and in the results.
const NON_ASCII_READ: &str = "SELECT full_name || ' Ñandú ☃' AS \"nombre_ñ\", email, 'Zoë' AS lit \
     FROM payers WHERE full_name <> 'Ñandú' ORDER BY id LIMIT 5";

/// One session's answers to the masked reads: rows or error, as text.
async fn masked_reads(s: &mut tokio::net::TcpStream) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for sql in [NON_ASCII_READ, ENCODING_BYPASS, "SHOW client_encoding"] {
        out.push(format!("{:?}", raw::simple_query(s, sql).await?));
    }
    Ok(out)
}

/// SQL_ASCII (what psql sends under a `C` locale): on a UTF8 database PostgreSQL converts nothing and
/// validates the bytes as UTF8, so the server lexes what pgveil parsed. Accepted as a startup parameter and
/// through `SET`, and a masked read answers exactly as under UTF8 (non-ASCII bytes included); the issue-11
/// bypass query still returns nothing raw.
fn sql_ascii(fx: &Fixture) -> Result<()> {
    let secret = fx.block_on(raw_email_of_payer(fx, "acme"))?;
    for (mode, proxy) in both_modes(fx, "trust-sqlascii", str::to_owned)? {
        fx.block_on(async {
            let token = fx.token("ascii@acme", "acme", "analyst");
            let mut utf8 = tokio::net::TcpStream::connect(proxy.addr).await?;
            raw::login(&mut utf8, "acme", &token, &[]).await?;
            let want = masked_reads(&mut utf8).await?;
            ensure!(
                want[0].starts_with("Ok("),
                "{mode}: UTF8 read failed: {}",
                want[0]
            );
            ensure!(
                want[0].contains("Ñandú ☃") && want[0].contains("Zoë"),
                "{mode}: {}",
                want[0]
            );
            for what in ["startup", "SET", "set_config"] {
                let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
                let extra: &[(&str, &str)] = match what {
                    "startup" => &[("client_encoding", "SQL_ASCII")],
                    _ => &[],
                };
                raw::login(&mut s, "acme", &token, extra)
                    .await
                    .with_context(|| format!("{mode}: login with {extra:?}"))?;
                let set = match what {
                    "SET" => Some("SET client_encoding = 'sql_ascii'"),
                    "set_config" => {
                        Some("SELECT set_config('client_encoding', 'SQL-ASCII', false)")
                    }
                    _ => None,
                };
                if let Some(sql) = set {
                    let r = raw::simple_query(&mut s, sql).await?;
                    ensure!(r.is_ok(), "{mode}: {sql} refused: {r:?}");
                }
                let got = masked_reads(&mut s).await?;
                ensure!(
                    got[2].contains("SQL_ASCII"),
                    "{mode} ({what}): client_encoding is {}",
                    got[2]
                );
                ensure!(
                    got[..2] == want[..2],
                    "{mode} ({what}): SQL_ASCII answers differ from UTF8:\n{got:?}\n{want:?}"
                );
                ensure!(
                    !got.iter().any(|g| g.contains(&secret)),
                    "{mode} ({what}): raw data under SQL_ASCII"
                );
            }
            println!(
                "{mode} mode: SQL_ASCII via startup, SET and set_config answers as UTF8 (masked)"
            );
            Ok(())
        })?;
    }
    Ok(())
}

/// Startup packet paths: the `client_encoding` parameter (as `PGCLIENTENCODING` sends it), `options=-c ...`
/// and `--client-encoding=`; each a FATAL 42501 before the session starts.
fn startup_encodings(fx: &Fixture) -> Result<()> {
    for (mode, proxy) in both_modes(fx, "trust-startup", str::to_owned)? {
        fx.block_on(async {
            let token = fx.token("enc@acme", "acme", "analyst");
            for name in ["WINDOWS932", "Windows-932", "sjis", "BIG5", "win949"] {
                for extra in [
                    ("client_encoding", name.to_owned()),
                    ("options", format!("-c client_encoding={name}")),
                    ("options", format!("--client-encoding={name}")),
                ] {
                    let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
                    let params = [
                        ("user", "tester"),
                        ("database", "acme"),
                        (extra.0, extra.1.as_str()),
                    ];
                    s.write_all(&raw::startup(&params)).await?;
                    let m = raw::next_msg(&mut s).await?;
                    ensure!(
                        m.auth_code() == Some(3),
                        "{mode}: expected a password request, got {m}"
                    );
                    s.write_all(&raw::password(&token)).await?;
                    let m = raw::expect_fatal(&mut s, "42501")
                        .await
                        .with_context(|| format!("{mode}: {extra:?}"))?;
                    ensure!(m.text().contains("client_encoding"), "{mode}: {m}");
                }
            }
            // UTF8 under another spelling connects.
            let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
            raw::login(&mut s, "acme", &token, &[("client_encoding", "unicode")]).await?;
            ensure!(raw::query_value(&mut s, "SHOW client_encoding").await? == "UTF8");
            Ok(())
        })?;
    }
    Ok(())
}

/// A function the policy allows changes client_encoding / standard_conforming_strings inside the server,
/// where no SQL check sees it: the backend reports it (ParameterStatus) and pgveil ends the session with
/// FATAL before relaying more, and discards the backend.
fn watchdog(fx: &Fixture) -> Result<()> {
    fx.superuser_sql(
        "acme",
        "CREATE OR REPLACE FUNCTION public.pgveil_flip(n text, v text) RETURNS text LANGUAGE sql \
         AS $f$ SELECT pg_catalog.set_config(n, v, false) $f$;",
    )?;
    let allow = |p: &str| {
        format!("{p}\n[tenants.acme.roles.analyst]\nallow_functions = [\"public.pgveil_flip\"]\n")
    };
    for (mode, proxy) in both_modes(fx, "trust-watchdog", allow)? {
        fx.block_on(async {
            for (name, value) in [
                ("client_encoding", "SJIS"),
                ("client_encoding", "windows949"),
                ("standard_conforming_strings", "off"),
            ] {
                let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
                let sql = format!("SELECT public.pgveil_flip('{name}', '{value}')");
                match c.simple_query(&sql).await {
                    Ok(_) => bail!("{mode}: {sql} did not end the session"),
                    Err(e) => ensure!(
                        code(&e) == "0A000" && show(&e).contains("lexing-watchdog"),
                        "{mode}: {sql}: {}",
                        show(&e)
                    ),
                }
                ensure!(
                    c.simple_query("SELECT 1").await.is_err(),
                    "{mode}: session still open"
                );
                // The backend was not returned to the pool: new sessions parse under UTF8.
                for _ in 0..3 {
                    let n = fx.connect_to(proxy.addr, "acme", "analyst").await?;
                    let rows = n
                        .simple_query("SHOW client_encoding; SHOW standard_conforming_strings")
                        .await?;
                    let vals: Vec<String> = rows
                        .iter()
                        .filter_map(|m| match m {
                            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                            _ => None,
                        })
                        .collect();
                    ensure!(vals == ["UTF8", "on"], "{mode}: a new session got {vals:?}");
                }
            }
            // Setting the value pgveil parses under is fine.
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            c.simple_query("SELECT public.pgveil_flip('client_encoding', 'UTF8')")
                .await?;
            c.simple_query("SELECT 1").await?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Collects every message text of a session: rows, errors (all fields via Display + Debug), notices.
async fn collecting(
    fx: &Fixture,
    addr: std::net::SocketAddr,
) -> Result<(tokio_postgres::Client, Arc<std::sync::Mutex<String>>)> {
    let token = fx.token("echo@acme", "acme", "analyst");
    let (client, mut conn) = tokio_postgres::connect(
        &fx.conn_str(addr, "acme", "echo", &token),
        tokio_postgres::NoTls,
    )
    .await?;
    let sink = Arc::new(std::sync::Mutex::new(String::new()));
    let s = sink.clone();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let AsyncMessage::Notice(n) = m {
                s.lock().expect("lock").push_str(&format!("NOTICE {n:?}|"));
            }
        }
    });
    Ok((client, sink))
}

fn echo_channels(fx: &Fixture) -> Result<()> {
    let needles = key_needles(fx, "acme")?;
    for (mode, proxy) in both_modes(fx, "trust-echo", str::to_owned)? {
        // The needles are what pgveil really puts into SQL for this role.
        let engine = proxy
            .shared
            .masking
            .clone()
            .ok_or_else(|| anyhow!("no engine"))?;
        let (d, _) = engine.decide(
            "SELECT id, full_name FROM payers",
            &TenantId::new("acme"),
            &pgveil::ids::RoleName::new("analyst"),
        );
        let rewritten = match d {
            pgveil::policy::Decision::Rewrite(s) => s,
            other => bail!("no rewrite: {other:?}"),
        };
        ensure!(
            needles.iter().any(|(_, n)| rewritten.contains(n.as_str())),
            "the key needles do not match pgveil's SQL"
        );
        let (out, refused) = fx.block_on(echo_attacks(fx, proxy.addr))?;
        let hits: Vec<&String> = needles
            .iter()
            .filter(|(_, n)| out.contains(n.as_str()))
            .map(|(w, _)| w)
            .collect();
        println!(
            "{mode} mode: echo attacks: {} bytes of responses searched for {} key representations, {} hits, {refused} refusals",
            out.len(),
            needles.len(),
            hits.len()
        );
        ensure!(
            hits.is_empty(),
            "{mode}: key material reached the masked role: {hits:?}"
        );
    }
    Ok(())
}

/// Runs the echo attacks; returns every response as text and how many were refused.
async fn echo_attacks(fx: &Fixture, addr: std::net::SocketAddr) -> Result<(String, usize)> {
    let (c, notices) = collecting(fx, addr).await?;
    let mut out = String::new();
    let mut refused = 0;
    // Escape format would print the pads as octal escapes: searched for too.
    c.simple_query("SET bytea_output = escape").await?;
    let stmt = c
        .prepare("SELECT id, full_name FROM payers WHERE id < 3")
        .await?;
    let sqls = vec![
        "PREPARE k AS SELECT id, full_name FROM payers WHERE id < 3".to_owned(),
        "EXPLAIN (VERBOSE, COSTS OFF) EXECUTE k".to_owned(),
        "EXPLAIN EXECUTE k".to_owned(),
        "explain (analyze, verbose) execute K".to_owned(),
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT full_name FROM payers".to_owned(),
        "SET client_min_messages = debug2".to_owned(),
        "SET SESSION client_min_messages TO 'LOG'".to_owned(),
        "SELECT set_config('client_min_messages', 'debug5', false)".to_owned(),
        "SET debug_print_plan = on".to_owned(),
        "SET debug_print_parse = on".to_owned(),
        "SELECT set_config('debug_print_rewritten', 'on', false)".to_owned(),
        "SET log_statement = 'all'".to_owned(),
        "SELECT current_query()".to_owned(),
        "SELECT query FROM pg_stat_activity".to_owned(),
        "SELECT statement FROM pg_prepared_statements".to_owned(),
        "SELECT id, full_name FROM payers WHERE id < 3".to_owned(),
        "BEGIN; DECLARE cur CURSOR FOR SELECT full_name FROM payers; SELECT statement FROM pg_cursors; COMMIT".to_owned(),
        "SELECT full_name::int FROM payers".to_owned(),
    ];
    for sql in &sqls {
        for extended in [false, true] {
            if extended && sql.contains("; ") {
                continue;
            }
            let r = if extended {
                c.query(sql.as_str(), &[]).await.map(|rows| {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "{:?}",
                                (0..r.len())
                                    .map(|i| r.try_get::<_, String>(i).ok())
                                    .collect::<Vec<_>>()
                            )
                        })
                        .collect::<String>()
                })
            } else {
                c.simple_query(sql).await.map(|m| {
                    m.iter()
                        .map(|m| match m {
                            SimpleQueryMessage::Row(r) => (0..r.len())
                                .map(|i| r.get(i).unwrap_or("").to_owned())
                                .collect::<Vec<_>>()
                                .join("|"),
                            _ => String::new(),
                        })
                        .collect::<String>()
                })
            };
            match r {
                Ok(text) => out.push_str(&text),
                Err(e) => {
                    refused += 1;
                    out.push_str(&format!("{e} {e:?} {:?}", e.as_db_error()));
                }
            }
            let _ = c.simple_query("ROLLBACK").await;
        }
    }
    // The protocol statement itself still works (its rows are masked).
    let rows = c.query(&stmt, &[]).await?;
    ensure!(rows.len() == 2, "prepared statement rows: {}", rows.len());
    tokio::time::sleep(Duration::from_millis(20)).await;
    out.push_str(&std::mem::take(&mut *notices.lock().expect("lock")));
    let (raw_out, raw_refused) = protocol_statement_explain(fx, addr).await?;
    out.push_str(&raw_out);
    Ok((out, refused + raw_refused))
}

/// A protocol-prepared statement with a known name, EXPLAINed by that name over the simple protocol (as
/// issue 11 did with `PREPARE`d ones); every message of the exchange, as text.
async fn protocol_statement_explain(
    fx: &Fixture,
    addr: std::net::SocketAddr,
) -> Result<(String, usize)> {
    let token = fx.token("raw@acme", "acme", "analyst");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    raw::login(&mut s, "acme", &token, &[]).await?;
    let mut parse = b"pstmt\0SELECT id, full_name FROM payers WHERE id < 3\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    s.write_all(&raw::message(b'P', &parse)).await?;
    s.write_all(&raw::message(b'S', &[])).await?;
    let mut out = String::new();
    let mut refused = 0;
    let mut exchange = |m: &raw::Msg, out: &mut String| {
        if m.tag == b'E' {
            refused += 1;
        }
        out.push_str(&String::from_utf8_lossy(&m.body));
        out.push('|');
    };
    loop {
        let m = raw::next_msg(&mut s).await?;
        ensure!(m.tag != b'E', "Parse of a plain SELECT failed: {m}");
        exchange(&m, &mut out);
        if m.tag == b'Z' {
            break;
        }
    }
    for sql in [
        "EXPLAIN (VERBOSE, COSTS OFF) EXECUTE pstmt",
        "EXPLAIN (VERBOSE, COSTS OFF) EXECUTE \"pstmt\"",
        "EXPLAIN (ANALYZE, VERBOSE) EXECUTE PSTMT",
    ] {
        s.write_all(&raw::query(sql)).await?;
        loop {
            let m = raw::next_msg(&mut s).await?;
            exchange(&m, &mut out);
            if m.tag == b'Z' {
                break;
            }
        }
    }
    ensure!(
        refused == 3,
        "EXPLAIN of a protocol statement not refused: {refused} refusals"
    );
    Ok((out, refused))
}

/// The example policy with `raw` for the analyst.
fn analyst_raw(policy: &str, raw: &str) -> String {
    let from = "[roles.analyst]\nraw = []";
    assert!(policy.contains(from), "example policy layout changed");
    policy.replacen(from, &format!("[roles.analyst]\nraw = {raw}"), 1)
}

/// After a policy reload that tightens the analyst, statements and cursors from before never return rows:
/// the session ends (FATAL 0A000, rule policy-version) at its next message. A session without such state
/// continues and sees the new policy.
fn versions(fx: &Fixture) -> Result<()> {
    for (mode, txn) in [("session", false), ("transaction", true)] {
        let dir = policy_dir(fx, &format!("trust-versions-{mode}"), |p| {
            analyst_raw(p, "[\"pii.email\"]")
        })?;
        let proxy = masking_proxy_in(fx, dir.clone(), txn)?;
        let engine = proxy
            .shared
            .masking
            .clone()
            .ok_or_else(|| anyhow!("no engine"))?;
        let q = "SELECT email FROM payers WHERE id = 1";
        fx.block_on(async {
            let raw_email = raw_email_of_payer(fx, "acme").await?;
            // A: protocol Parse; B: SQL PREPARE; C: WITH HOLD cursor; D: only simple statements.
            let a = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let stmt = a.prepare(q).await?;
            let seen: String = a.query_one(&stmt, &[]).await?.get(0);
            ensure!(seen == raw_email, "{mode}: before the change email is raw");
            let b = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            b.batch_execute(&format!("PREPARE p AS {q}")).await?;
            let c = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            c.batch_execute("BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT email FROM payers ORDER BY id; COMMIT")
                .await?;
            let first = c.simple_query("FETCH 1 FROM cur").await?;
            ensure!(rows_contain(&first, &raw_email), "{mode}: cursor raw before");
            let d = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            d.simple_query(q).await?;

            std::fs::write(dir.join("payments.toml"), support::demo::env::EXAMPLE_POLICY)?;
            engine.reload().map_err(|e| anyhow!("reload: {e}"))?;

            let outcomes = [
                ("protocol statement", a.query(&stmt, &[]).await.map(|r| format!("{} rows", r.len()))),
                ("SQL PREPARE", b.simple_query("EXECUTE p").await.map(|r| dump(&r))),
                ("WITH HOLD cursor", c.simple_query("FETCH 5 FROM cur").await.map(|r| dump(&r))),
            ];
            for (what, r) in outcomes {
                match r {
                    Ok(rows) => bail!("{mode}: {what} returned rows after the policy change: {rows}"),
                    Err(e) => ensure!(
                        code(&e) == "0A000" && show(&e).contains("policy-version"),
                        "{mode}: {what}: {}", show(&e)
                    ),
                }
            }
            let now = d.simple_query(q).await?;
            ensure!(!rows_contain(&now, &raw_email) && rows_contain(&now, "****@"), "{mode}: D sees {}", dump(&now));
            // New sessions prepare under the new policy.
            let e = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let masked: String = e.query_one(q, &[]).await?.get(0);
            ensure!(masked.starts_with("****@"), "{mode}: new session got {masked}");
            Ok(())
        })?;
        println!("{mode} mode: prepared state voided after a policy reload");
    }
    Ok(())
}

/// A schema change reported through pgveil (DDL by an unrestricted role) changes the catalog version: the
/// masked session's prepared statement from before is not used.
fn schema_versions(fx: &Fixture) -> Result<()> {
    for (mode, txn) in [("session", false), ("transaction", true)] {
        let dir = policy_dir(fx, &format!("trust-schema-{mode}"), str::to_owned)?;
        let proxy = masking_proxy_in(fx, dir, txn)?;
        fx.block_on(async {
            let a = fx.connect_to(proxy.addr, "acme", "analyst").await?;
            let stmt = a.prepare("SELECT id FROM payers WHERE id = 1").await?;
            a.query(&stmt, &[]).await?;
            let admin = fx.connect_to(proxy.addr, "acme", "admin").await?;
            admin
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS trust_{mode}; CREATE TABLE trust_{mode} (x int)"
                ))
                .await?;
            match a.query(&stmt, &[]).await {
                Ok(r) => bail!("{mode}: {} rows after the schema change", r.len()),
                Err(e) => ensure!(code(&e) == "0A000", "{mode}: {}", show(&e)),
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn rows_contain(msgs: &[SimpleQueryMessage], needle: &str) -> bool {
    dump(msgs).contains(needle)
}

fn dump(msgs: &[SimpleQueryMessage]) -> String {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Session defaults the tenant's DBA sets for pgveil's database role: `client_encoding` is overridden by
/// pgveil's startup packet (and checked); `client_min_messages` below NOTICE and a `search_path` other than
/// the catalog snapshot's make pgveil refuse the backend (FATAL 08006, rule backend-settings).
fn tenant_defaults(fx: &Fixture) -> Result<()> {
    let (user, _) = fx.creds("globex");
    let alter = |sql: &str| fx.superuser_sql("globex", &format!("ALTER ROLE {user} {sql}"));
    // current_schemas() lists only schemas the role may use.
    fx.superuser_sql(
        "globex",
        &format!("CREATE SCHEMA IF NOT EXISTS evil; GRANT USAGE ON SCHEMA evil TO {user}"),
    )?;
    let result = (|| -> Result<()> {
        for (mode, txn) in [("session", false), ("transaction", true)] {
            // client_encoding from the role: pgveil's startup value wins; the session parses under UTF8.
            alter("SET client_encoding = 'SJIS'")?;
            let dir = policy_dir(fx, &format!("trust-defaults-{mode}"), str::to_owned)?;
            let proxy = masking_proxy_in(fx, dir, txn)?;
            fx.block_on(async {
                let c = fx.connect_to(proxy.addr, "globex", "analyst").await?;
                let enc = dump(&c.simple_query("SHOW client_encoding").await?);
                ensure!(enc == "UTF8", "{mode}: {enc}");
                Ok(())
            })?;
            alter("RESET client_encoding")?;
            drop(proxy);

            // client_min_messages below NOTICE: every Parse would echo the rewritten statement.
            alter("SET client_min_messages = 'debug2'")?;
            let dir = policy_dir(fx, &format!("trust-defaults2-{mode}"), str::to_owned)?;
            let proxy = masking_proxy_in(fx, dir, txn)?;
            let r = fx.block_on(async {
                let c = fx.connect_to(proxy.addr, "globex", "analyst").await?;
                c.simple_query("SELECT 1").await?;
                Ok::<_, anyhow::Error>(())
            });
            alter("RESET client_min_messages")?;
            match r {
                Ok(()) => bail!(
                    "{mode}: a backend with client_min_messages = debug2 served the masked role"
                ),
                Err(e) => ensure!(
                    support::sqlstate(&e).as_deref() == Some("08006")
                        && format!("{e:#}").contains("client_min_messages"),
                    "{mode}: {e:#}"
                ),
            }
            drop(proxy);

            // search_path changed after the catalog was loaded: a new backend resolves names elsewhere.
            let dir = policy_dir(fx, &format!("trust-defaults3-{mode}"), str::to_owned)?;
            let proxy = masking_proxy_in(fx, dir, txn)?;
            let engine = proxy
                .shared
                .masking
                .clone()
                .ok_or_else(|| anyhow!("no engine"))?;
            fx.block_on(async {
                // Session mode: hold one backend so that the next session needs a new one.
                let held = fx.connect_to(proxy.addr, "globex", "analyst").await?;
                held.simple_query("BEGIN").await?;
                alter("SET search_path = evil, public")?;
                let r = async {
                    let c = fx.connect_to(proxy.addr, "globex", "analyst").await?;
                    c.simple_query("SELECT count(*) FROM payers").await?;
                    Ok::<_, anyhow::Error>(())
                }
                .await;
                match r {
                    Ok(()) => {
                        bail!("{mode}: a backend with another search_path served the masked role")
                    }
                    Err(e) => ensure!(
                        support::sqlstate(&e).as_deref() == Some("08006")
                            && format!("{e:#}").contains("search_path"),
                        "{mode}: {e:#}"
                    ),
                }
                held.simple_query("COMMIT").await?;
                drop(held);
                // The catalog is reloaded with the new search path; backends that match it serve again.
                let mut ok = false;
                for _ in 0..20 {
                    let cat = engine
                        .tenant(&TenantId::new("globex"))
                        .map(|t| t.catalog.search_path.clone());
                    if cat.as_deref() == Some(&["evil".to_owned(), "public".to_owned()][..])
                        && !engine.is_stale(&TenantId::new("globex"))
                    {
                        let attempt = async {
                            let c = fx.connect_to(proxy.addr, "globex", "analyst").await?;
                            c.simple_query("SELECT count(*) FROM payers").await?;
                            Ok::<_, anyhow::Error>(())
                        };
                        if attempt.await.is_ok() {
                            ok = true;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ensure!(
                    ok,
                    "{mode}: no session after the catalog followed the new search path"
                );
                Ok(())
            })?;
            alter("RESET search_path")?;
        }
        Ok(())
    })();
    let _ = alter("RESET ALL");
    result
}
