//! `pgveil demo` as a user runs it: the binary starts, prints ready-to-paste psql commands that work, its
//! `token mint` hint works, and Ctrl-C stops everything and removes the environment. Its log, as JSON lines
//! (`PGVEIL_LOG_FORMAT=json`), has an audit record per statement of a masked role naming the user and client,
//! and never a statement's literal or a token. README's first command, `bash demo.sh`, does the same: installs
//! what is missing (nothing here), builds, and runs the demo, whose printed commands (`pgveil login` included)
//! work as pasted.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

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

/// Held by each test while its demo runs: `bash demo.sh` runs `cargo build`, which relinks target/release/pgveil
/// (built without the dev-dependencies' features) under the other test's running demo.
static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Spawns `cmd` (stdout piped) and reads its output up to the "pgveil demo ready" line.
fn start_demo(mut cmd: Command) -> (Demo, String) {
    let mut child = Demo(cmd.stdout(Stdio::piped()).spawn().expect("the demo starts"));
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
            return (child, lines.join(""));
        }
    }
}

/// The printed `PGPASSWORD='token' psql "conn"` commands (alice admin, bob and carol analysts), as
/// (token, conn) pairs.
fn psql_commands(text: &str) -> Vec<(String, String)> {
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
    commands
}

/// The current TOTP code of dana's printed secret, from an independent implementation (pyotp).
fn pyotp_now(text: &str) -> String {
    let secret = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("TOTP secret (demo only; add it to an authenticator app): ")
        })
        .expect("TOTP secret line")
        .trim()
        .to_owned();
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
    String::from_utf8(code.stdout).unwrap().trim().to_owned()
}

/// Runs the printed `PGVEIL_ASSERTION='...' pgveil login ...` line as pasted into a shell, plus `extra`.
fn printed_login(text: &str, extra: &str) -> std::process::Output {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("PGVEIL_ASSERTION='") && l.contains(" login "))
        .expect("login line");
    Command::new("bash")
        .args(["-c", &format!("{line} {extra}")])
        .stdin(Stdio::null())
        .output()
        .expect("bash runs the login line")
}

/// A variable of `pgveil login`'s `export PGHOST='...' PGPORT='...' ... PGPASSWORD='...'` line.
fn exported(out: &str, var: &str) -> String {
    out.split(&format!("{var}='"))
        .nth(1)
        .and_then(|t| t.split('\'').next())
        .unwrap_or_else(|| panic!("no {var} in the login output: {out}"))
        .to_owned()
}

#[test]
fn demo_runs_prints_working_commands_and_cleans_up() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgveil"));
    cmd.args([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ])
    .env("PGVEIL_LOG_FORMAT", "json")
    .stderr(log.reopen().expect("log file"));
    let (mut child, text) = start_demo(cmd);
    let commands = psql_commands(&text);
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
    let login = |extra: &str| printed_login(&text, extra);
    let code = pyotp_now(&text);
    let logged_in = login(&format!("--code {code}"));
    assert!(
        logged_in.status.success(),
        "login: {}",
        String::from_utf8_lossy(&logged_in.stderr)
    );
    let out = String::from_utf8(logged_in.stdout).unwrap();
    let exported = |var: &str| exported(&out, var);
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
    let r = login(&format!("--recovery --code {recovery}"));
    assert!(
        r.status.success(),
        "recovery code refused: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        !login(&format!("--recovery --code {recovery}"))
            .status
            .success(),
        "a recovery code worked twice"
    );

    // The TOTP code again is a replay: refused (after the recovery codes: a failure starts a back-off).
    assert!(
        !login(&format!("--code {code}")).status.success(),
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

/// README's first command, `bash demo.sh`, with the flags for free ports, run from the repository root as a
/// user would: installs nothing here (everything is present), builds (nothing to do), and runs the demo. Its
/// printed commands work as pasted: admin sees raw PII, the analyst masked; dana logs in through the printed
/// `pgveil login` line with a pyotp code. Ctrl-C (SIGINT) stops the proxy, the API and the PostgreSQL
/// cluster and removes the environment.
#[test]
fn readme_demo_command_runs_the_demo_and_cleans_up() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let root = env!("CARGO_MANIFEST_DIR");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut cmd = Command::new("bash");
    cmd.args([
        "demo.sh",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ])
    .current_dir(root)
    .stderr(log.reopen().expect("log file"));
    // A user's shell, not cargo's test environment (CARGO_PKG_*, CARGO_BIN_EXE_*, ...).
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("CARGO_") && k != "CARGO_HOME")
        {
            cmd.env_remove(k);
        }
    }
    let (mut child, text) = start_demo(cmd);
    let commands = psql_commands(&text);
    let sql = "SELECT email FROM payers ORDER BY id LIMIT 3";
    let (alice, bob) = (&commands[0], &commands[1]);
    let raw = psql(&alice.1, &alice.0, sql);
    let masked = psql(&bob.1, &bob.0, sql);
    for o in [&raw, &masked] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (raw, masked) = (
        String::from_utf8_lossy(&raw.stdout).to_string(),
        String::from_utf8_lossy(&masked.stdout).to_string(),
    );
    assert!(
        raw.lines().count() == 3
            && raw
                .lines()
                .all(|l| l.contains('@') && !l.starts_with("****@")),
        "admin sees: {raw}"
    );
    assert!(
        masked.lines().count() == 3 && masked.lines().all(|l| l.starts_with("****@")),
        "analyst sees: {masked}"
    );

    // dana: the printed login line, pasted into a shell where `pgveil` is not on PATH, with a pyotp code.
    let code = pyotp_now(&text);
    let login = printed_login(&text, &format!("--code {code}"));
    assert!(
        login.status.success(),
        "login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    let out = String::from_utf8(login.stdout).unwrap();
    let (token, port) = (exported(&out, "PGPASSWORD"), exported(&out, "PGPORT"));
    let o = psql(
        &format!("host=localhost port={port} dbname=acme user=dana sslmode=require"),
        &token,
        "SELECT card_pan FROM payers ORDER BY id LIMIT 1",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("************"),
        "dana sees: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    // What Ctrl-C must stop: the environment folder, and the PostgreSQL cluster named in its secrets file.
    let dir = text
        .split("Environment (config, keys, certs, secrets): ")
        .nth(1)
        .and_then(|t| t.lines().next())
        .expect("environment line")
        .trim()
        .to_owned();
    let backend_ports = backend_ports(std::path::Path::new(&dir));
    assert!(!backend_ports.is_empty(), "no backend port in {dir}");
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    let stderr = std::fs::read_to_string(log.path()).expect("log");
    assert!(status.success(), "demo exit status {status}:\n{stderr}");
    assert!(
        stderr.contains("pgveil demo: stopped and cleaned up"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("NOTICE") && !stderr.contains("bootstrap: installing"),
        "the demo's log should be quiet here:\n{stderr}"
    );
    assert!(
        !std::path::Path::new(&dir).exists(),
        "environment {dir} was not removed"
    );
    let o = psql(&alice.1, &alice.0, "SELECT 1");
    assert!(!o.status.success(), "proxy still answering after Ctrl-C");
    for port in backend_ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the demo's PostgreSQL (port {port}) still runs after Ctrl-C"
        );
    }
}

/// The backend ports in the demo environment's secrets file (RDS JSON values with a "port").
fn backend_ports(dir: &std::path::Path) -> Vec<u16> {
    let mut ports = Vec::new();
    for entry in std::fs::read_dir(dir).expect("environment folder") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(&path).unwrap_or_default(),
            )
            && let Some(map) = v.as_object()
        {
            ports.extend(
                map.values()
                    .filter_map(|s| s["port"].as_u64())
                    .map(|p| p as u16),
            );
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}
