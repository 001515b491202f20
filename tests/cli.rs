//! What a newcomer sees when a command fails or uses the demo's file secret store: one line per error (with the
//! hint), the full chain only when RUST_BACKTRACE asks for it, and the file-store warning once per command.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::process::{Command, Output};

fn pgveil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("pgveil runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_failed_command_prints_one_line_unless_a_backtrace_is_asked_for() {
    let o = pgveil(&["check", "--config", "/nonexistent/pgveil.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "pgveil: cannot read config file /nonexistent/pgveil.toml: No such file or directory (os error 2)\n"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["check", "--config", "/nonexistent/pgveil.toml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Caused by:"), "{}", stderr(&o));
}

#[test]
fn demo_on_a_taken_port_says_so_in_one_line_with_the_hint() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = pgveil(&["demo", "--listen", &addr, "--api-listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("pgveil: starting the proxy on {addr}"))
            && last.contains("try --listen 127.0.0.1:0")
            && last.contains("Address already in use"),
        "{err}"
    );
    assert!(
        !err.contains("Caused by") && !err.contains("NOTICE"),
        "{err}"
    );
}

#[test]
fn policy_tools_warn_about_the_file_store_once_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(
        format!("{root}/policies/payments.toml"),
        dir.path().join("policies/payments.toml"),
    )
    .unwrap();
    // Two tenants whose databases are down: the live check loads (and fails) both.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = serde_json::json!({"username": "u", "password": "p", "host": "127.0.0.1", "port": down, "dbname": "d"});
    std::fs::write(
        dir.path().join("secrets.json"),
        serde_json::json!({"t/a": secret, "t/b": secret}).to_string(),
    )
    .unwrap();
    let cfg = dir.path().join("pgveil.toml");
    std::fs::write(
        &cfg,
        "roles = [\"admin\", \"analyst\"]\n\
         [listen]\naddr = \"127.0.0.1:0\"\nallow_plaintext_loopback = true\n\
         [auth]\nverifying_key_secrets = [\"k/verifying\"]\n\
         [secrets]\nbackend = \"file\"\npath = \"secrets.json\"\n\
         [[tenant]]\nid = \"a\"\nsecret = \"t/a\"\n\
         [[tenant]]\nid = \"b\"\nsecret = \"t/b\"\n\
         [policy]\ndir = \"policies\"\n",
    )
    .unwrap();
    let o = pgveil(&["policy", "check", "--config", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(
        err.matches("secrets backend \"file\" is for the demo and tests")
            .count(),
        1,
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("tenant a") && out.contains("tenant b"),
        "both tenants were checked (each built a store before the fix): {out}"
    );
}
