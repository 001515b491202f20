//! Tests that start real throwaway clusters and log in over TCP with psql.

use std::process::Command;

use super::*;

/// Run `select <expr>` over TCP as `user` with `password`; return (success, stdout + stderr).
fn tcp_query(
    cluster: &LocalCluster,
    user: &str,
    password: &str,
    db: &str,
    sslmode: &str,
    expr: &str,
) -> (bool, String) {
    let psql = LocalCluster::bindir().expect("bindir").join("psql");
    let mut cmd = Command::new(psql);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args([
            "-X",
            "-At",
            "-h",
            cluster.host(),
            "-p",
            &cluster.port().to_string(),
            "-U",
            user,
            "-d",
            db,
        ])
        .args(["-c", &format!("select {expr}")])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", sslmode)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_owned())
}

#[test]
fn scram_md5_and_cleartext_users_log_in() {
    let cluster = LocalCluster::start(ClusterOptions::default()).expect("start cluster");
    assert_eq!(cluster.host(), "127.0.0.1");
    assert!(cluster.port() != 0 && !RESERVED_PORTS.contains(&cluster.port()));
    assert!(cluster.socket_dir().starts_with(cluster.root_dir()));

    cluster
        .create_user("scram_user", "scram-pass", PasswordMethod::Scram)
        .expect("scram user");
    cluster
        .create_user("md5_user", "md5-pass", PasswordMethod::Md5)
        .expect("md5 user");
    cluster
        .create_user("cleartext_user", "clear-pass", PasswordMethod::Scram)
        .expect("cleartext user");
    cluster
        .create_database("appdb", "scram_user")
        .expect("create db");

    for (user, pass) in [
        ("scram_user", "scram-pass"),
        ("md5_user", "md5-pass"),
        ("cleartext_user", "clear-pass"),
    ] {
        let (ok, out) = tcp_query(&cluster, user, pass, "appdb", "disable", "current_user");
        assert!(ok, "{user} could not log in: {out}");
        assert_eq!(out, user);
        let (ok, out) = tcp_query(&cluster, user, "wrong", "appdb", "disable", "1");
        assert!(!ok, "{user} logged in with a wrong password: {out}");
        assert!(out.contains("password authentication failed"), "{out}");
    }

    let storage = cluster
        .psql(
            "postgres",
            "select rolname, rolpassword like 'SCRAM-SHA-256$%', rolpassword like 'md5%' \
             from pg_authid where rolname in ('scram_user', 'md5_user') order by rolname",
        )
        .expect("query pg_authid");
    assert_eq!(storage.trim(), "md5_user|f|t\nscram_user|t|f");

    let owner = cluster
        .psql(
            "postgres",
            "select pg_get_userbyid(datdba) from pg_database where datname = 'appdb'",
        )
        .expect("query owner");
    assert_eq!(owner.trim(), "scram_user");
}

#[test]
fn names_and_passwords_are_quoted() {
    let cluster = LocalCluster::start(ClusterOptions::default()).expect("start cluster");
    let user = "o'brien \"the\" user";
    let password = "it's a \\ \"secret\"; drop role x; --";
    cluster
        .create_user(user, password, PasswordMethod::Md5)
        .expect("create user");
    cluster
        .create_database("db with 'quotes'", user)
        .expect("create db");
    let (ok, out) = tcp_query(
        &cluster,
        user,
        password,
        "db with 'quotes'",
        "disable",
        "current_user",
    );
    assert!(ok, "{out}");
    assert_eq!(out, user);
    assert!(
        cluster
            .create_user("nul\0user", "x", PasswordMethod::Scram)
            .is_err()
    );
}

#[test]
fn psql_errors_carry_stderr_and_stop_is_idempotent() {
    let mut cluster = LocalCluster::start(ClusterOptions::default()).expect("start cluster");
    let err = cluster
        .psql("postgres", "select * from no_such_table")
        .expect_err("must fail");
    let text = err.to_string();
    assert!(
        text.contains("relation \"no_such_table\" does not exist"),
        "{text}"
    );
    match err {
        ClusterError::CommandFailed { command, .. } => {
            assert!(
                !command.contains("select"),
                "the SQL must not be in the command line: {command}"
            )
        }
        other => panic!("unexpected error {other:?}"),
    }
    // Errors of statements carrying a password do not quote the statement.
    cluster
        .create_user("dup", "pw-1", PasswordMethod::Scram)
        .expect("create user");
    let err = cluster
        .create_user("dup", "pw-1", PasswordMethod::Scram)
        .expect_err("duplicate role");
    assert!(
        err.to_string().contains("already exists") && !err.to_string().contains("pw-1"),
        "{err}"
    );

    let root = cluster.root_dir().to_path_buf();
    cluster.stop();
    cluster.stop();
    assert!(cluster.psql("postgres", "select 1").is_err());
    drop(cluster);
    assert!(!root.exists(), "temp dir {} left behind", root.display());
}

#[test]
fn ssl_cluster_accepts_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate cert");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");

    let cluster = LocalCluster::start(ClusterOptions {
        ssl: Some((cert, key)),
    })
    .expect("start ssl cluster");
    cluster
        .create_user("tls_user", "tls-pass", PasswordMethod::Scram)
        .expect("user");
    let (ok, out) = tcp_query(
        &cluster,
        "tls_user",
        "tls-pass",
        "postgres",
        "require",
        "ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert!(ok, "{out}");
    assert_eq!(out, "t");
}

#[test]
fn bindir_has_server_binaries() {
    let dir = LocalCluster::bindir().expect("bindir");
    for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
        assert!(
            dir.join(tool).is_file(),
            "{} missing in {}",
            tool,
            dir.display()
        );
    }
}

#[test]
fn quoting_helpers() {
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(quote_literal("it's"), "'it''s'");
}
