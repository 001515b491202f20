//! psql through pgveil versus psql directly: queries, errors, catalog listings, `\copy` both ways, and a token
//! asking for another tenant's database.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use crate::support::Fixture;
use crate::{Target, client, run, run_ok, same};

/// `psql -X -A -t -c <sql>` for each statement; returns stdout.
fn psql_query(target: &Target, sqls: &[&str]) -> Result<String> {
    let mut args: Vec<String> = vec![
        "-X".into(),
        "-A".into(),
        "-t".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
    ];
    for sql in sqls {
        args.push("-c".into());
        args.push((*sql).into());
    }
    args.push(target.conninfo.clone());
    run_ok(&mut client(target, "psql", &args))
}

/// psql with its default (aligned) output for each command; returns stdout.
fn psql_pretty(target: &Target, commands: &[&str]) -> Result<String> {
    let mut args: Vec<String> = vec![
        "-X".into(),
        "-P".into(),
        "pager=off".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
    ];
    for c in commands {
        args.push("-c".into());
        args.push((*c).into());
    }
    args.push(target.conninfo.clone());
    run_ok(&mut client(target, "psql", &args))
}

const QUERIES: &[&str] = &[
    "SELECT id, full_name, email, phone, date_of_birth, ip_address, address, card_pan FROM payers ORDER BY id",
    "SELECT p.id, p.payer_id, p.amount, p.currency, p.created_at, p.status, m.name \
     FROM payments p JOIN merchants m ON m.id = p.merchant_id ORDER BY p.id",
    "SELECT d.id, d.reason, d.amount, d.status, d.opened_at, p.card_pan FROM disputes d \
     JOIN payments p ON p.id = d.payment_id ORDER BY d.id",
    "SELECT status, count(*), sum(amount), min(created_at), max(created_at) FROM payments \
     GROUP BY status ORDER BY status",
    "SELECT count(*) FROM payers; SELECT count(*) FROM disputes",
];

/// Several queries give the same output through pgveil (plain, `sslmode=require`, TLS verified against the dev
/// CA) as directly, for a SCRAM and an md5 backend.
pub fn queries_match_direct(fx: &Fixture) -> Result<()> {
    for tenant in ["acme", "globex"] {
        let direct = Target::direct(fx, tenant);
        let ways = [
            ("verify-full", Target::proxy_verified(fx, tenant, "analyst")),
            (
                "require",
                Target::proxy(fx, tenant, "analyst", "sslmode=require"),
            ),
            (
                "disable",
                Target::proxy(fx, tenant, "admin", "sslmode=disable"),
            ),
        ];
        for (i, sql) in QUERIES.iter().enumerate() {
            let want = psql_query(&direct, &[sql])?;
            ensure!(
                want.lines().count() >= 2,
                "{tenant}: direct output of {sql:?} is too short: {want:?}"
            );
            let (mode, target) = &ways[i % ways.len()];
            let got = psql_query(target, &[sql])?;
            same(&format!("{tenant}, sslmode={mode}: {sql}"), &got, &want)?;
        }
        // The payer e-mails are the tenant's own.
        let emails = psql_query(&ways[0].1, &["SELECT email FROM payers ORDER BY id"])?;
        ensure!(
            emails.lines().count() == 40,
            "{tenant}: expected 40 payers, got:\n{emails}"
        );
        ensure!(
            emails
                .lines()
                .all(|l| l.ends_with(&format!("@{tenant}-payer.example"))),
            "{tenant}: unexpected e-mails:\n{emails}"
        );
    }
    // TLS is really in use on the verified connection.
    let t = Target::proxy_verified(fx, "acme", "analyst");
    let ssl = run_ok(&mut client(
        &t,
        "psql",
        ["-X", "-c", "\\conninfo", &t.conninfo],
    ))?;
    ensure!(
        ssl.contains("SSL connection"),
        "verify-full connection without TLS? \\conninfo said:\n{ssl}"
    );
    Ok(())
}

/// A failing statement produces the same error text (stderr) and exit status through pgveil as directly.
pub fn errors_match_direct(fx: &Fixture) -> Result<()> {
    let sqls = [
        "SELECT * FROM no_such_table",
        "SELECT id FROM payers WHERE id = 'x'",
        "SELECT 1/0",
        "BEGIN; SELECT 1/0; COMMIT",
    ];
    let direct = Target::direct(fx, "globex");
    let proxy = Target::proxy(fx, "globex", "analyst", "sslmode=require");
    for sql in sqls {
        let outs: Vec<_> = [&proxy, &direct]
            .iter()
            .map(|t| {
                run(&mut client(
                    t,
                    "psql",
                    ["-X", "-A", "-t", "-c", sql, &t.conninfo],
                ))
            })
            .collect::<Result<_>>()?;
        let (p, d) = (&outs[0], &outs[1]);
        let (pe, de) = (
            String::from_utf8_lossy(&p.stderr),
            String::from_utf8_lossy(&d.stderr),
        );
        ensure!(
            de.contains("ERROR:"),
            "{sql}: expected an error directly, got {de:?}"
        );
        same(&format!("stderr of {sql}"), &pe, &de)?;
        same(
            &format!("stdout of {sql}"),
            &String::from_utf8_lossy(&p.stdout),
            &String::from_utf8_lossy(&d.stdout),
        )?;
        ensure!(
            p.status.code() == d.status.code(),
            "{sql}: exit status {} vs {} directly",
            p.status,
            d.status
        );
    }

    // A COPY FROM STDIN that the server rejects halfway (bad value on line 3 of a multi-chunk stream); the
    // session must then carry on with the next commands.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.txt");
    let mut data: String = (1..=2)
        .map(|i| format!("{i}\t{}\n", "y".repeat(20_000)))
        .collect();
    data.push_str("three\tz\n4\tw\n");
    std::fs::write(&bad, data)?;
    let cmds = [
        "CREATE TEMP TABLE copy_err (id int, v text)".to_owned(),
        format!("\\copy copy_err from {}", quoted(&bad)),
        "SELECT count(*) FROM copy_err".to_owned(),
        "SELECT count(*) FROM payers".to_owned(),
    ];
    let outs: Vec<_> = [&proxy, &direct]
        .iter()
        .map(|t| {
            let mut args = vec!["-X".to_owned(), "-A".into(), "-t".into()];
            for c in &cmds {
                args.extend(["-c".to_owned(), c.clone()]);
            }
            args.push(t.conninfo.clone());
            run(&mut client(t, "psql", &args))
        })
        .collect::<Result<_>>()?;
    let (p, d) = (&outs[0], &outs[1]);
    let (pe, de) = (
        String::from_utf8_lossy(&p.stderr),
        String::from_utf8_lossy(&d.stderr),
    );
    ensure!(
        de.contains("invalid input syntax for type integer"),
        "direct \\copy error: {de}"
    );
    same("stderr of a failing \\copy", &pe, &de)?;
    let po = String::from_utf8_lossy(&p.stdout);
    ensure!(
        po == "CREATE TABLE\n0\n40\n",
        "after a failing \\copy through pgveil: {po:?}"
    );
    same(
        "stdout after a failing \\copy",
        &po,
        &String::from_utf8_lossy(&d.stdout),
    )?;
    Ok(())
}

/// psql's catalog listings (`\d`, `\dt`, `\d+`, `\df`, `\di`, `\l`) are identical through pgveil.
pub fn describe_matches_direct(fx: &Fixture) -> Result<()> {
    let commands = [
        "\\d payers",
        "\\dt",
        "\\d+ payments",
        "\\df",
        "\\di",
        "\\dn",
        "\\l",
    ];
    let direct = psql_pretty(&Target::direct(fx, "globex"), &commands)?;
    for c in [
        "Table \"public.payers\"",
        "payments_payer_id_idx",
        "List of relations",
        "List of functions",
        "globex",
    ] {
        ensure!(direct.contains(c), "direct listing lacks {c:?}:\n{direct}");
    }
    let proxy = psql_pretty(&Target::proxy_verified(fx, "globex", "analyst"), &commands)?;
    same("psql catalog listings", &proxy, &direct)
}

/// `\copy ... to` writes the same bytes through pgveil as directly (text and CSV).
pub fn copy_out_matches_direct(fx: &Fixture) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run_copy = |target: &Target, name: &str| -> Result<Vec<Vec<u8>>> {
        let a = dir.path().join(format!("{name}-payers.txt"));
        let b = dir.path().join(format!("{name}-payments.csv"));
        let out = psql_query(
            target,
            &[
                &format!("\\copy payers to {}", quoted(&a)),
                &format!(
                    "\\copy (SELECT * FROM payments ORDER BY id) to {} with (format csv, header)",
                    quoted(&b)
                ),
            ],
        )?;
        ensure!(
            out == "COPY 40\nCOPY 80\n",
            "{name}: unexpected psql output {out:?}"
        );
        Ok(vec![std::fs::read(&a)?, std::fs::read(&b)?])
    };
    let direct = run_copy(&Target::direct(fx, "acme"), "direct")?;
    let proxy = run_copy(
        &Target::proxy(fx, "acme", "analyst", "sslmode=require"),
        "proxy",
    )?;
    ensure!(
        direct[0].iter().filter(|&&b| b == b'\n').count() == 40,
        "payers copy is not 40 lines"
    );
    for (i, (p, d)) in proxy.iter().zip(&direct).enumerate() {
        same(
            &format!("\\copy file {i}"),
            &String::from_utf8_lossy(p),
            &String::from_utf8_lossy(d),
        )?;
    }
    Ok(())
}

/// `\copy ... from` a file of a few thousand rows (one value of 150 KB, one of 1 MB) through pgveil, checked
/// directly (count, lengths, SHA-256 of the contents), then copied back out through pgveil byte for byte.
pub fn copy_in_large_values(fx: &Fixture) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.txt");
    let mut text = String::new();
    let mut total_len = 0usize;
    const ROWS: usize = 3000;
    for i in 1..=ROWS {
        let body = match i {
            1234 => pattern(i, 150 * 1024),
            2345 => pattern(i, 1024 * 1024),
            _ => format!("row {i} {}", "abcdefghij".repeat(i % 40)),
        };
        total_len += body.len();
        let _ = writeln!(text, "{i}\t{body}");
    }
    std::fs::write(&input, &text)?;
    let want_sha = hex::encode(Sha256::digest(text.as_bytes()));

    let admin = Target::proxy(fx, "acme", "admin", "sslmode=require");
    psql_query(
        &admin,
        &["CREATE TABLE clients_scratch (id int PRIMARY KEY, body text NOT NULL)"],
    )?;
    let out = psql_query(
        &admin,
        &[&format!("\\copy clients_scratch from {}", quoted(&input))],
    )?;
    ensure!(
        out == format!("COPY {ROWS}\n"),
        "\\copy from: unexpected psql output {out:?}"
    );

    let check = Target::direct(fx, "acme");
    let got = psql_query(
        &check,
        &[
            "SELECT count(*) || ' ' || sum(length(body)) || ' ' || max(length(body)) || ' ' || \
           encode(sha256(convert_to(string_agg(id || E'\\t' || body || E'\\n', '' ORDER BY id), 'UTF8')), 'hex') \
           FROM clients_scratch",
        ],
    )?;
    let want = format!("{ROWS} {total_len} {} {want_sha}\n", 1024 * 1024);
    ensure!(
        got == want,
        "rows copied in through pgveil: got {got:?}, want {want:?}"
    );

    // And back out through pgveil: the 1 MB row arrives as one large CopyData frame from the backend.
    let back = dir.path().join("back.txt");
    let out = psql_query(
        &admin,
        &[&format!(
            "\\copy (SELECT * FROM clients_scratch ORDER BY id) to {}",
            quoted(&back)
        )],
    )?;
    ensure!(
        out == format!("COPY {ROWS}\n"),
        "\\copy to: unexpected psql output {out:?}"
    );
    let back = std::fs::read(&back)?;
    ensure!(
        back == text.as_bytes(),
        "copied back out: {} bytes, sha256 {}; want {} bytes, {want_sha}",
        back.len(),
        hex::encode(Sha256::digest(&back)),
        text.len()
    );
    psql_query(&admin, &["DROP TABLE clients_scratch"]).context("dropping the scratch table")?;
    Ok(())
}

/// Startup settings sent by libpq (`PGOPTIONS` with escaped spaces and commas, `PGAPPNAME`,
/// `PGCLIENTENCODING`) take effect through pgveil as directly, and a later session on the same pool sees
/// none of them.
pub fn startup_settings_match_direct(fx: &Fixture) -> Result<()> {
    const OPTIONS: &str = concat!(
        r"-c statement_timeout=7min -c search_path=public,pg_catalog --work-mem=8MB ",
        r"-c DateStyle=German,\ DMY -c TimeZone=Asia/Kolkata"
    );
    let show = [
        "SELECT current_setting('application_name'), current_setting('statement_timeout'), \
         current_setting('search_path'), current_setting('DateStyle'), current_setting('TimeZone'), \
         current_setting('client_encoding'), current_setting('work_mem')",
        "SELECT timestamptz '2024-02-29 23:30:00+00', date '2024-02-29'",
        // Unqualified: needs `public` on the search path.
        "SELECT count(*) FROM payers",
    ];
    let with_settings = |t: &Target| -> Result<String> {
        let mut args: Vec<String> = vec!["-X".into(), "-A".into(), "-t".into()];
        for sql in show {
            args.extend(["-c".to_owned(), sql.to_owned()]);
        }
        args.push(t.conninfo.clone());
        let out = run(client(t, "psql", &args)
            .env("PGOPTIONS", OPTIONS)
            .env("PGAPPNAME", "clients app")
            .env("PGCLIENTENCODING", "LATIN1"))?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    let direct = Target::direct(fx, "globex");
    let proxy = Target::proxy(fx, "globex", "tiny", "sslmode=require");
    let want = with_settings(&direct)?;
    ensure!(
        want.starts_with(
            "clients app|7min|public,pg_catalog|German, DMY|Asia/Kolkata|LATIN1|8MB\n"
        ),
        "settings not applied directly: {want:?}"
    );
    ensure!(
        want.ends_with("\n40\n"),
        "direct: unqualified query failed: {want:?}"
    );
    same("startup settings", &with_settings(&proxy)?, &want)?;
    // Next sessions (same tenant and role, so most likely the same pooled backend) start from the defaults.
    for _ in 0..3 {
        let plain = psql_query(&proxy, &show)?;
        same(
            "settings of a later session",
            &plain,
            &psql_query(&direct, &show)?,
        )?;
    }
    Ok(())
}

/// A token for acme asking for database `globex` is refused with "does not exist" and shows no globex rows;
/// the same token with its own database works.
pub fn cross_tenant_database_refused(fx: &Fixture) -> Result<()> {
    let sql = "SELECT email FROM payers ORDER BY id";
    for extra in ["sslmode=disable", "sslmode=require"] {
        let wrong = Target::proxy_db(fx, "acme", "admin", "globex", extra);
        let out = run(&mut client(
            &wrong,
            "psql",
            ["-X", "-A", "-t", "-c", sql, &wrong.conninfo],
        ))?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        ensure!(
            !out.status.success(),
            "acme token with dbname=globex succeeded:\n{stdout}"
        );
        ensure!(
            stderr.contains("does not exist"),
            "{extra}: unexpected error: {stderr}"
        );
        ensure!(
            !stdout.contains("globex-payer") && !stderr.contains("globex-payer"),
            "globex rows leaked:\n{stdout}\n{stderr}"
        );
        ensure!(
            stdout.trim().is_empty(),
            "{extra}: unexpected output: {stdout}"
        );
    }
    // Control: the same kind of connection to acme's own database shows acme's rows.
    let right = Target::proxy_db(fx, "acme", "admin", "acme", "sslmode=disable");
    let rows = psql_query(&right, &[sql])?;
    ensure!(
        rows.contains("acme-payer") && !rows.contains("globex-payer"),
        "unexpected acme rows:\n{rows}"
    );
    Ok(())
}

/// A psql single-quoted file name.
fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "''"))
}

/// `len` bytes of text that are not one repeated character, so a misplaced chunk would be noticed.
fn pattern(seed: usize, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut n = 0usize;
    while s.len() < len {
        let _ = write!(s, "{seed}:{n} ");
        n += 1;
    }
    s.truncate(len);
    s
}
