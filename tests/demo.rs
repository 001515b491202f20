//! `pgveil demo` as a user runs it: the binary starts, prints ready-to-paste psql commands that work, its
//! `token mint` hint works, and Ctrl-C stops everything and removes the environment. Its log, as JSON lines
//! (`PGVEIL_LOG_FORMAT=json`), has an audit record per statement of a masked role naming the user and client,
//! and never a statement's literal or a token.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn psql(conn: &str, token: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-A", "-t", "-c", sql, conn])
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs")
}

/// The demo process; stopped with SIGINT (so it removes its environment) if the test fails before it does.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn demo_runs_prints_working_commands_and_cleans_up() {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = Demo(
        Command::new(env!("CARGO_BIN_EXE_pgveil"))
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .env("PGVEIL_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("pgveil demo starts"),
    );
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("demo exited before it was ready:\n{}", lines.join(""));
        }
        let ready = line.contains("pgveil demo ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let text = lines.join("");
    // Each "PGPASSWORD='token' psql "conn"" line must work as printed.
    let commands: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("PGPASSWORD='")?;
            let (token, rest) = l.split_once("' psql \"")?;
            Some((token.to_owned(), rest.trim_end_matches('"').to_owned()))
        })
        .collect();
    assert_eq!(
        commands.len(),
        3,
        "expected three psql commands in:\n{text}"
    );
    for (token, conn) in &commands {
        let o = psql(
            conn,
            token,
            "SELECT current_database(), count(*) FROM payers",
        );
        assert!(
            o.status.success(),
            "{conn}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let db = conn
            .split("dbname=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with(&format!("{db}|")),
            "{conn}"
        );
    }
    // dana is enrolled in TOTP: `pgveil login` as printed, with a code from an independent implementation
    // (pyotp), gives a token that reaches acme masked; a recovery code works once.
    let secret = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("TOTP secret (demo only; add it to an authenticator app): ")
        })
        .expect("TOTP secret line")
        .trim()
        .to_owned();
    let login_line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("PGVEIL_ASSERTION='"))
        .expect("login line");
    let (assertion, args) = login_line
        .strip_prefix("PGVEIL_ASSERTION='")
        .and_then(|l| l.split_once("' pgveil login "))
        .expect("login line format");
    let login = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pgveil"))
            .arg("login")
            .args(args.split_whitespace())
            .args(extra)
            .env("PGVEIL_ASSERTION", assertion)
            .stdin(Stdio::null())
            .output()
            .expect("pgveil login runs")
    };
    let code = Command::new("python3")
        .args([
            "-c",
            "import pyotp, sys; print(pyotp.TOTP(sys.argv[1]).now())",
            &secret,
        ])
        .output()
        .expect("python3 with pyotp");
    assert!(
        code.status.success(),
        "{}",
        String::from_utf8_lossy(&code.stderr)
    );
    let code = String::from_utf8(code.stdout).unwrap().trim().to_owned();
    let logged_in = login(&["--code", &code]);
    assert!(
        logged_in.status.success(),
        "login: {}",
        String::from_utf8_lossy(&logged_in.stderr)
    );
    let out = String::from_utf8(logged_in.stdout).unwrap();
    // `export PGHOST='...' PGPORT='...' ... PGPASSWORD='...'`
    let exported = |var: &str| {
        out.split(&format!("{var}='"))
            .nth(1)
            .and_then(|t| t.split('\'').next())
            .unwrap_or_else(|| panic!("no {var} in the login output: {out}"))
            .to_owned()
    };
    let (token, port) = (exported("PGPASSWORD"), exported("PGPORT"));
    let dana_conn = format!("host=localhost port={port} dbname=acme user=dana sslmode=require");
    let o = psql(
        &dana_conn,
        &token,
        "SELECT email, card_pan FROM payers ORDER BY id LIMIT 3",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        rows.lines().count() == 3
            && rows
                .lines()
                .all(|l| l.starts_with("****@") && l.contains("|************")),
        "dana sees: {rows}"
    );
    let recovery = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Recovery codes (each works once instead of a code): ")
        })
        .expect("recovery codes line")
        .split_whitespace()
        .next()
        .expect("a recovery code")
        .to_owned();
    let r = login(&["--recovery", "--code", &recovery]);
    assert!(
        r.status.success(),
        "recovery code refused: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        !login(&["--recovery", "--code", &recovery]).status.success(),
        "a recovery code worked twice"
    );

    // The TOTP code again is a replay: refused (after the recovery codes: a failure starts a back-off).
    assert!(
        !login(&["--code", &code]).status.success(),
        "a TOTP code was accepted twice"
    );

    // bob (analyst, masked) runs a statement with a literal: audited by fingerprint, never by its text.
    let canary = "audit-canary-4711@example.org";
    let (token, conn) = &commands[1];
    let o = psql(
        conn,
        token,
        &format!("SELECT count(*) FROM payers WHERE email = '{canary}'"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Cross-tenant: acme's token asking for globex is refused.
    let (token, conn) = &commands[1];
    let o = psql(
        &conn.replace("dbname=acme", "dbname=globex"),
        token,
        "SELECT email FROM payers",
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("database \"globex\" does not exist"));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("globex-payer"));
    // The printed `token mint` command mints a token that works.
    let mint = text
        .lines()
        .find(|l| l.contains("pgveil token mint --config"))
        .expect("mint hint");
    let config = mint
        .split("--config ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let minted = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args([
            "token", "mint", "--config", config, "--user", "dave", "--tenant", "globex", "--role",
            "analyst", "--ttl", "5m",
        ])
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let conn = commands[2].1.clone();
    let o = psql(&conn, &token, "SELECT count(*) FROM payers");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dir = text
        .split("Environment (config, keys, certs, secrets): ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim();
    assert!(std::path::Path::new(dir).exists());
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "demo exit status {status}");
    assert!(
        !std::path::Path::new(dir).exists(),
        "environment {dir} was not removed"
    );
    let o = psql(&commands[0].1, &commands[0].0, "SELECT 1");
    assert!(!o.status.success(), "proxy still answering after Ctrl-C");

    let text = std::fs::read_to_string(log.path()).expect("log");
    let mut audited = Vec::new();
    // The demo's own progress messages are plain lines ("pgveil demo: ..."); pgveil's log events are JSON.
    for line in text
        .lines()
        .filter(|l| !l.starts_with("pgveil demo:") && !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["target"] == "pgveil::audit" {
            audited.push(v);
        }
    }
    let bob = audited
        .iter()
        .filter(|v| v["span"]["user"] == "bob@acme.example")
        .collect::<Vec<_>>();
    assert!(
        bob.len() >= 2,
        "expected bob's statements in the audit records:\n{text}"
    );
    for v in &bob {
        let f = &v["fields"];
        assert!(
            v["span"]["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{v}"
        );
        assert!(
            f["tenant"] == "acme" && f["role"] == "analyst" && f["decision"].is_string(),
            "{v}"
        );
        assert!(
            f["fingerprint"].as_str().is_some_and(|s| s.len() == 16),
            "{v}"
        );
    }
    assert!(!text.contains(canary), "a literal reached the log");
    for (token, _) in &commands {
        assert!(!text.contains(token.as_str()), "a token reached the log");
    }
}
