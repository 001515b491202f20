//! `pgveil doctor` (the binary) against one throwaway cluster whose tenant databases are each set up with
//! findings: a superuser backend role, CREATEROLE, BYPASSRLS over a table with row-level security, a role
//! owning its tables and database (CREATE on schema and database), md5 and cleartext authentication, dblink
//! installed, unclassified e-mail and phone columns, a policy role with no raw class that may write, a tenant
//! without live_since, unverified TLS, an unreachable tenant; and a clean tenant (verify-full TLS, SCRAM, a
//! role owning nothing, every PII column classified) with no finding above info. Also the demo's tenants.
//! Exit codes and the JSON document are checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

// The demo's environment, the binary's module (src/demo); only part of it is used here.
#[allow(dead_code)]
#[path = "../src/demo/mod.rs"]
mod demo;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Output};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use pgcluster::{ClusterOptions, LocalCluster, PasswordMethod};
use serde_json::Value;

/// The cluster, its folder and the config naming its tenants.
struct Env {
    // Drop order: the cluster stops before its folder goes (kept only to be dropped).
    _cluster: LocalCluster,
    config: PathBuf,
    dir: tempfile::TempDir,
}

/// (tenant = database, backend role, how its password is stored, extra `[[tenant]]` lines).
const TENANTS: &[(&str, &str, PasswordMethod, &str)] = &[
    (
        "clean",
        "clean_app",
        PasswordMethod::Scram,
        "live_since = \"2020-01-01\"",
    ),
    (
        "superco",
        "superco_app",
        PasswordMethod::Scram,
        "require_mfa = true",
    ),
    (
        "roleco",
        "roleco_app",
        PasswordMethod::Scram,
        "require_mfa = true\ntls = \"require\"",
    ),
    (
        "rlsco",
        "rlsco_app",
        PasswordMethod::Scram,
        "require_mfa = true",
    ),
    ("ownerco", "ownerco_app", PasswordMethod::Md5, ""),
    // The cluster's pg_hba.conf asks `cleartext_user` for a cleartext password.
    (
        "clearco",
        "cleartext_user",
        PasswordMethod::Scram,
        "require_mfa = true",
    ),
];

const POLICY: &str = r#"
unclassified = "allow"
[classes."pii.email"]
mask = "email"
[classes."pii.phone"]
mask = "redact"
[classes."pii.name"]
mask = "redact"
[[column]]
match = "payers.email"
class = "pii.email"
[[column]]
match = "payers.phone"
class = "pii.phone"
[[column]]
match = "payers.full_name"
class = "pii.name"
[roles.admin]
unrestricted = true
[roles.analyst]
raw = []
[roles.writer]
raw = []
statements = ["read"]
[tenants.roleco.roles.writer]
statements = ["read", "update"]
"#;

/// Per-database setup run as the cluster superuser (after the role and the database exist).
fn setup_sql(db: &str) -> &'static str {
    match db {
        "clean" => {
            "CREATE EXTENSION citext;
             SET ROLE data_owner;
             CREATE TABLE payers (id bigint PRIMARY KEY, full_name text, email citext, phone text, amount numeric);
             RESET ROLE;
             GRANT USAGE ON SCHEMA public TO clean_app;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO clean_app;"
        }
        "superco" => "ALTER ROLE superco_app SUPERUSER;",
        "roleco" => "ALTER ROLE roleco_app CREATEROLE; GRANT CONNECT ON DATABASE ownerco TO roleco_app;",
        "rlsco" => {
            "ALTER ROLE rlsco_app BYPASSRLS;
             SET ROLE data_owner;
             CREATE TABLE notes (id bigint PRIMARY KEY, body text);
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
             RESET ROLE;
             GRANT USAGE ON SCHEMA public TO rlsco_app;
             GRANT SELECT ON notes TO rlsco_app;"
        }
        "ownerco" => {
            "CREATE EXTENSION dblink;
             SET ROLE ownerco_app;
             CREATE TABLE contacts (id bigint PRIMARY KEY, email text, phone text, notes text);"
        }
        _ => "",
    }
}

impl Env {
    fn create() -> Result<Env> {
        let dir = tempfile::Builder::new()
            .prefix("pgveil-doctor-")
            .tempdir()?;
        let certs = pgveil::tls::generate_dev_certs(&dir.path().join("certs"), &[])?;
        let cluster = LocalCluster::start(ClusterOptions {
            ssl: Some((certs.server_cert.clone(), certs.server_key.clone())),
        })?;
        cluster.psql("postgres", "CREATE ROLE data_owner NOLOGIN;")?;
        let mut secrets = serde_json::Map::new();
        let mut tenants = String::new();
        // ownerco first: roleco's setup grants CONNECT on it.
        let mut order: Vec<_> = TENANTS.iter().collect();
        order.sort_by_key(|(db, ..)| *db != "ownerco");
        for (db, role, method, extra) in order {
            let password = format!("pw-{db}-{}", std::process::id());
            cluster.create_user(role, &password, *method)?;
            let owner = if *db == "ownerco" { role } else { "data_owner" };
            cluster.create_database(db, owner)?;
            // Databases of the cluster are not open to every role (each to its own and the owner).
            cluster.psql(
                "postgres",
                &format!(
                    "REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {role};"
                ),
            )?;
            cluster.psql(db, setup_sql(db))?;
            secrets.insert(
                format!("tenants/{db}/db"),
                serde_json::json!({"username": role, "password": password, "host": cluster.host(),
                                   "port": cluster.port(), "dbname": db}),
            );
            let tls = if *db == "clean" {
                format!(
                    "tls = \"verify-full\"\nca_bundle = {:?}\nhost = \"localhost\"\n",
                    certs.ca_cert
                )
            } else {
                String::new()
            };
            tenants.push_str(&format!(
                "[[tenant]]\nid = \"{db}\"\nsecret = \"tenants/{db}/db\"\n{tls}{extra}\n\n"
            ));
        }
        // A tenant whose database is down.
        let down = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        secrets.insert(
            "tenants/downco/db".into(),
            serde_json::json!({"username": "u", "password": "p", "host": "127.0.0.1", "port": down, "dbname": "downco"}),
        );
        tenants.push_str(
            "[[tenant]]\nid = \"downco\"\nsecret = \"tenants/downco/db\"\nrequire_mfa = true\n",
        );
        let secrets_path = dir.path().join("secrets.json");
        std::fs::write(&secrets_path, Value::Object(secrets).to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets_path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::create_dir(dir.path().join("policies"))?;
        std::fs::write(dir.path().join("policies/p.toml"), POLICY)?;
        let config = dir.path().join("pgveil.toml");
        std::fs::write(
            &config,
            format!(
                "roles = [\"admin\", \"analyst\", \"writer\"]\n\
                 [listen]\naddr = \"127.0.0.1:0\"\nallow_plaintext_loopback = true\n\
                 [auth]\nverifying_key_secrets = [\"k/verifying\"]\nmax_token_ttl = \"8h\"\n\
                 [secrets]\nbackend = \"file\"\npath = \"secrets.json\"\n\
                 [policy]\ndir = \"policies\"\n\n{tenants}"
            ),
        )?;
        Ok(Env {
            _cluster: cluster,
            config,
            dir,
        })
    }

    fn doctor(&self, args: &[&str]) -> Output {
        let config = self.config.to_string_lossy().into_owned();
        let mut all = vec!["doctor", "--config", config.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `doctor --json --tenant <t>`: exit code and document.
    fn json(&self, tenant: &str) -> Result<(i32, Value)> {
        let o = self.doctor(&["--json", "--tenant", tenant]);
        parse(&o)
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("pgveil runs")
}

fn parse(o: &Output) -> Result<(i32, Value)> {
    let code = o.status.code().context("killed by a signal")?;
    let v: Value = serde_json::from_slice(&o.stdout).with_context(|| {
        format!(
            "stdout is not JSON (exit {code}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })?;
    Ok((code, v))
}

/// The findings of `tenant` as (severity, code, object).
fn findings(v: &Value, tenant: &str) -> Vec<(String, String, String)> {
    v["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["tenant"] == tenant)
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (s("severity"), s("code"), s("object"))
        })
        .collect()
}

fn expect(v: &Value, tenant: &str, severity: &str, code: &str, object: &str) -> Result<()> {
    let all = findings(v, tenant);
    ensure!(
        all.iter()
            .any(|(s, c, o)| s == severity && c == code && o.contains(object)),
        "{tenant}: no {severity} {code} on {object:?} in {all:#?}"
    );
    Ok(())
}

fn clean_tenant_has_no_high_finding_and_exits_0(env: &Env) -> Result<()> {
    let (code, v) = env.json("clean")?;
    ensure!(code == 0, "exit {code}: {v:#}");
    ensure!(
        v["format"] == 1 && v["has_high"] == false && v["tenants"] == serde_json::json!(["clean"])
    );
    let all = findings(&v, "clean");
    // Other databases of the cluster exist, but this role may not connect to them: info only.
    ensure!(
        all == [(
            "info".to_owned(),
            "shared-cluster".to_owned(),
            "cluster".to_owned()
        )],
        "{all:#?}"
    );
    ensure!(
        v["findings"].as_array().map(Vec::len) == Some(1),
        "no config-wide finding expected: {v:#}"
    );
    // The listing says the same.
    let o = env.doctor(&["--tenant", "clean"]);
    let out = String::from_utf8_lossy(&o.stdout);
    ensure!(o.status.code() == Some(0), "{out}");
    ensure!(
        out.starts_with(
            "pgveil doctor: 1 tenant(s) checked (clean): 0 high, 0 medium, 0 low, 1 info\n"
        ),
        "{out}"
    );
    ensure!(
        out.contains("shared-cluster") && out.contains("fix: "),
        "{out}"
    );
    Ok(())
}

fn superuser_createrole_and_bypassrls_are_high(env: &Env) -> Result<()> {
    let (code, v) = env.json("superco")?;
    ensure!(code == 1 && v["has_high"] == true, "exit {code}");
    expect(
        &v,
        "superco",
        "high",
        "backend-superuser",
        "role superco_app",
    )?;
    // A superuser may connect to every database.
    expect(&v, "superco", "medium", "shared-cluster", "cluster")?;

    let (code, v) = env.json("roleco")?;
    ensure!(code == 1, "exit {code}");
    expect(
        &v,
        "roleco",
        "high",
        "backend-createrole",
        "role roleco_app",
    )?;
    expect(&v, "roleco", "medium", "shared-cluster", "cluster")?;
    expect(&v, "roleco", "medium", "backend-tls-unverified", "backend")?;
    expect(
        &v,
        "roleco",
        "medium",
        "masked-role-writes",
        "policy role writer",
    )?;
    let all = findings(&v, "roleco");
    ensure!(
        !all.iter()
            .any(|(_, c, _)| c == "backend-superuser" || c == "backend-owns-relations"),
        "{all:#?}"
    );

    let (code, v) = env.json("rlsco")?;
    ensure!(code == 1, "exit {code}");
    expect(&v, "rlsco", "high", "backend-bypassrls", "role rlsco_app")?;
    let msg = v["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["code"] == "backend-bypassrls")
        .and_then(|f| f["message"].as_str())
        .unwrap_or_default();
    ensure!(msg.contains("1 relation(s)"), "{msg}");
    // Only roleco's override lets `writer` write.
    ensure!(
        !findings(&v, "rlsco")
            .iter()
            .any(|(_, c, _)| c == "masked-role-writes"),
        "{v:#}"
    );
    Ok(())
}

fn owner_md5_dblink_and_unclassified_columns(env: &Env) -> Result<()> {
    let (code, v) = env.json("ownerco")?;
    ensure!(code == 1, "exit {code}");
    let t = "ownerco";
    expect(
        &v,
        t,
        "medium",
        "backend-owns-relations",
        "role ownerco_app",
    )?;
    expect(&v, t, "medium", "create-on-schema", "schema public")?;
    expect(&v, t, "medium", "create-on-database", "database ownerco")?;
    expect(&v, t, "medium", "backend-auth-md5", "role ownerco_app")?;
    expect(&v, t, "high", "untrusted-extension", "extension dblink")?;
    expect(
        &v,
        t,
        "high",
        "unclassified-pii",
        "column public.contacts.email",
    )?;
    expect(
        &v,
        t,
        "high",
        "unclassified-pii",
        "column public.contacts.phone",
    )?;
    expect(&v, t, "high", "mfa-never-required", "tenant config")?;
    expect(&v, t, "low", "backend-tls-off", "backend 127.0.0.1")?;
    let all = findings(&v, t);
    ensure!(
        !all.iter()
            .any(|(_, _, o)| o.contains("contacts.notes") || o.contains("contacts.id")),
        "{all:#?}"
    );
    ensure!(
        !all.iter()
            .any(|(_, c, _)| c == "backend-superuser" || c == "backend-createrole"),
        "{all:#?}"
    );
    Ok(())
}

fn cleartext_authentication_and_unreachable_tenant_are_high(env: &Env) -> Result<()> {
    let (code, v) = env.json("clearco")?;
    ensure!(code == 1, "exit {code}");
    expect(
        &v,
        "clearco",
        "high",
        "backend-auth-cleartext",
        "role cleartext_user",
    )?;
    let (code, v) = env.json("downco")?;
    ensure!(code == 1, "exit {code}");
    let all = findings(&v, "downco");
    ensure!(
        all.len() == 2
            && all
                .iter()
                .any(|(s, c, _)| s == "high" && c == "unreachable"),
        "{all:#?}"
    );
    Ok(())
}

fn every_tenant_at_once_and_exit_codes(env: &Env) -> Result<()> {
    let (code, v) = parse(&env.doctor(&["--json"]))?;
    ensure!(code == 1, "exit {code}");
    let tenants: Vec<&str> = v["tenants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(tenants.len() == TENANTS.len() + 1, "{tenants:?}");
    ensure!(
        v["summary"]["high"].as_u64()
            == Some(
                v["findings"]
                    .as_array()
                    .map_or(0, |f| f.iter().filter(|f| f["severity"] == "high").count()
                        as u64)
            )
    );
    // A lower threshold than the config's 8h token lifetime: a config-wide finding (tenant null).
    let (_, v) = parse(&env.doctor(&["--json", "--tenant", "clean", "--max-token-ttl", "1h"]))?;
    ensure!(
        v["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["code"] == "long-token-ttl"
                && f["tenant"].is_null()
                && f["severity"] == "medium"),
        "{v:#}"
    );
    // Usage and config errors: 2, one line on stderr.
    let o = env.doctor(&["--tenant", "nope"]);
    ensure!(o.status.code() == Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        err.lines().last() == Some("pgveil: tenant nope is not in the config"),
        "{err}"
    );
    let o = run(&["doctor", "--config", "/nonexistent/pgveil.toml"]);
    ensure!(o.status.code() == Some(2), "{o:?}");
    let o = run(&["doctor"]);
    ensure!(o.status.code() == Some(2), "clap usage error: {o:?}");
    let broken = env.dir.path().join("broken");
    std::fs::create_dir(&broken)?;
    std::fs::write(broken.join("p.toml"), "unclassified = \"sometimes\"\n")?;
    let cfg =
        std::fs::read_to_string(&env.config)?.replace("dir = \"policies\"", "dir = \"broken\"");
    let broken_cfg = env.dir.path().join("broken.toml");
    std::fs::write(&broken_cfg, cfg)?;
    let o = run(&["doctor", "--config", broken_cfg.to_str().context("path")?]);
    ensure!(o.status.code() == Some(2), "invalid policy: {o:?}");
    Ok(())
}

fn demo_tenants(_env: &Env) -> Result<()> {
    let mut opts = demo::env::EnvOptions::demo("127.0.0.1:0".parse()?);
    opts.masking = true;
    let built = demo::env::DemoEnv::create(&opts)?;
    let config = built.config_path.to_string_lossy().into_owned();
    let o = run(&["doctor", "--config", &config]);
    println!("{}", String::from_utf8_lossy(&o.stdout));
    let (code, v) = parse(&run(&["doctor", "--config", &config, "--json"]))?;
    ensure!(code == 1, "exit {code}");
    // acme's backend role authenticates with SCRAM, globex's with md5.
    expect(
        &v,
        "globex",
        "medium",
        "backend-auth-md5",
        "role globex_app",
    )?;
    ensure!(
        !findings(&v, "acme")
            .iter()
            .any(|(_, c, _)| c.starts_with("backend-auth")),
        "{v:#}"
    );
    for t in ["acme", "globex"] {
        expect(&v, t, "high", "mfa-never-required", "tenant config")?;
        expect(&v, t, "medium", "backend-owns-relations", "_app")?;
        // The example policy classifies every PII column of the demo schema.
        ensure!(
            !findings(&v, t)
                .iter()
                .any(|(_, c, _)| c == "unclassified-pii"),
            "{v:#}"
        );
    }
    Ok(())
}

type TestFn = fn(&Env) -> Result<()>;

fn main() -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let env = match Env::create() {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("fixture failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let tests: &[(&str, TestFn)] = &[
        (
            "clean_tenant_has_no_high_finding_and_exits_0",
            clean_tenant_has_no_high_finding_and_exits_0,
        ),
        (
            "superuser_createrole_and_bypassrls_are_high",
            superuser_createrole_and_bypassrls_are_high,
        ),
        (
            "owner_md5_dblink_and_unclassified_columns",
            owner_md5_dblink_and_unclassified_columns,
        ),
        (
            "cleartext_authentication_and_unreachable_tenant_are_high",
            cleartext_authentication_and_unreachable_tenant_are_high,
        ),
        (
            "every_tenant_at_once_and_exit_codes",
            every_tenant_at_once_and_exit_codes,
        ),
        ("demo_tenants", demo_tenants),
    ];
    let trials = tests
        .iter()
        .map(|&(name, f)| {
            let env = env.clone();
            libtest_mimic::Trial::test(name, move || f(&env).map_err(|e| format!("{e:#}").into()))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The trials are done and dropped: this is the last reference, so the cluster stops here.
    drop(env);
    conclusion.exit_code()
}
