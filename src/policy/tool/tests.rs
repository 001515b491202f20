//! The policy tools with saved catalogs: same explain output as the in-memory catalog, no connection and no
//! secrets file needed, one file per tenant.

use std::path::{Path, PathBuf};

use super::{Catalogs, MaskingEngine, ToolError, explain, explain_with, test};
use crate::config::Config;
use crate::ids::{RoleName, TenantId};
use crate::policy::catalog::{fixture, saved};

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// Statements covering what the catalog drives: masked tables, inheritance, views, user functions and
/// operators, system relations, unknown relations.
const STATEMENTS: &[(&str, &str)] = &[
    ("analyst", "SELECT * FROM payers"),
    (
        "analyst",
        "SELECT p.email, m.name FROM payers p, merchants m",
    ),
    ("analyst", "SELECT * FROM old_payers"),
    ("analyst", "SELECT contact FROM payer_emails"),
    ("analyst", "SELECT * FROM fn_view"),
    ("analyst", "SELECT lookup_email(1)"),
    ("analyst", "SELECT 1 === 2"),
    ("analyst", "SELECT name, country FROM merchants"),
    ("analyst", "SELECT * FROM pg_stats"),
    ("analyst", "SELECT * FROM no_such_table"),
    ("analyst", "SELECT * FROM audit.payers"),
    ("admin", "SELECT email FROM payers"),
];

#[test]
fn saved_catalog_explains_like_the_in_memory_one() {
    let engine = MaskingEngine::new(&policies()).expect("example policy");
    let tenant = TenantId::new("acme");
    let text = saved::to_json(&tenant, &fixture::catalog()).expect("json");
    let loaded = saved::from_json(&text, Path::new("acme.json")).expect("parse");
    let (mut rewrites, mut refusals, mut allows) = (0, 0, 0);
    for (role, sql) in STATEMENTS {
        let role = RoleName::new(*role);
        let mut in_memory = fixture::catalog();
        // The version is the only difference a saved catalog may make (it gets a fresh one).
        in_memory.version = loaded.catalog.version;
        let want = explain_with(&engine, in_memory, &tenant, &role, sql);
        let got = explain_with(&engine, loaded.catalog.clone(), &tenant, &role, sql);
        assert_eq!(got, want, "{sql}");
        rewrites += usize::from(want.contains("decision: rewrite"));
        refusals += usize::from(want.contains("decision: refuse"));
        allows += usize::from(want.contains("decision: allow"));
    }
    assert!(
        rewrites >= 4 && refusals >= 4 && allows >= 2,
        "{rewrites} rewrites, {refusals} refusals, {allows} allows"
    );
}

/// A config whose secrets file, TLS files and CA bundle do not exist, with the example policy.
fn offline_config(dir: &Path) -> PathBuf {
    let path = dir.join("pgveil.toml");
    let text = format!(
        r#"roles = ["analyst", "admin"]
[listen]
allow_plaintext_loopback = true
[tls]
cert = "missing/server.crt"
key = "missing/server.key"
[auth]
verifying_key_secrets = ["pgveil/token-verifying"]
[secrets]
backend = "file"
path = "missing/secrets.json"
[policy]
dir = {:?}
[[tenant]]
id = "acme"
secret = "tenants/acme/db"
[[tenant]]
id = "globex"
secret = "tenants/globex/db"
tls = "verify-full"
ca_bundle = "missing/ca.crt"
"#,
        policies()
    );
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn saved_catalogs_need_no_secrets_and_no_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = offline_config(dir.path());
    let problems = Config::load(&cfg_path)
        .expect_err("files missing")
        .to_string();
    for missing in ["secrets.json", "server.crt", "ca.crt"] {
        assert!(problems.contains(missing), "{missing}: {problems}");
    }
    let cfg = Config::load_offline(&cfg_path).expect("offline config");
    let acme = dir.path().join("acme.json");
    saved::save(&acme, &TenantId::new("acme"), &fixture::catalog()).expect("save");
    let catalogs = Catalogs::saved(std::slice::from_ref(&acme)).expect("saved");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let analyst = RoleName::new("analyst");

    let out = rt
        .block_on(explain(
            &cfg,
            &catalogs,
            &TenantId::new("acme"),
            &analyst,
            "SELECT * FROM payers",
        ))
        .expect("explain");
    assert!(out.starts_with("tenant acme, role analyst,"), "{out}");
    assert!(out.contains("decision: rewrite"), "{out}");
    assert!(out.contains("public.payers.card_pan"), "{out}");

    // A tenant without a saved catalog is an error naming the files given, never a live load.
    let e = rt
        .block_on(explain(
            &cfg,
            &catalogs,
            &TenantId::new("globex"),
            &analyst,
            "SELECT 1",
        ))
        .expect_err("no catalog of globex");
    assert!(matches!(e, ToolError::NoSavedCatalog(..)), "{e:?}");
    assert!(e.to_string().contains("acme.json (acme)"), "{e}");
    let e = rt
        .block_on(explain(
            &cfg,
            &catalogs,
            &TenantId::new("initech"),
            &analyst,
            "SELECT 1",
        ))
        .expect_err("unknown tenant");
    assert!(matches!(e, ToolError::UnknownTenant(..)), "{e:?}");

    // The example policy's test cases (all of tenant acme) run against the saved catalog.
    let (report, ok) = rt.block_on(test(&cfg, &catalogs)).expect("test");
    assert!(ok, "{report}");
    assert!(report.contains("case(s), all passed"), "{report}");

    // Two files of one tenant are ambiguous.
    let copy = dir.path().join("acme-copy.json");
    std::fs::copy(&acme, &copy).expect("copy");
    let e = Catalogs::saved(&[acme, copy]).expect_err("duplicate");
    assert!(matches!(e, ToolError::DuplicateCatalog { .. }), "{e:?}");
    assert!(e.to_string().contains("acme-copy.json"), "{e}");
}
