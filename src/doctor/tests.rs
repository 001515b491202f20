//! Unit tests of the checks that need no database (the live ones: `tests/doctor.rs`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::pii::{Kind, kind_of_name};
use super::{Finding, Report, Severity, pii, report, settings, transport};
use crate::config::{BackendTlsMode, Config};
use crate::ids::TenantId;
use crate::policy::catalog::fixture;
use crate::policy::file::Policy;

#[test]
fn column_names_map_to_kinds_of_personal_data() {
    for (name, kind) in [
        ("email", Some(Kind::Email)),
        ("contactEmail", Some(Kind::Email)),
        ("email_address", Some(Kind::Email)),
        ("ip_address", Some(Kind::Ip)),
        ("client_ip", Some(Kind::Ip)),
        ("card_pan", Some(Kind::Pan)),
        ("card_number", Some(Kind::Pan)),
        ("cc_no", Some(Kind::Pan)),
        ("iban", Some(Kind::Iban)),
        ("bank_account", Some(Kind::Iban)),
        ("ssn", Some(Kind::NationalId)),
        ("date_of_birth", Some(Kind::Birth)),
        ("dob", Some(Kind::Birth)),
        ("phone", Some(Kind::Phone)),
        ("mobile2", Some(Kind::Phone)),
        ("billing_address", Some(Kind::Address)),
        ("postcode", Some(Kind::Address)),
        ("full_name", Some(Kind::Name)),
        ("lastName", Some(Kind::Name)),
        ("surname", Some(Kind::Name)),
        // Not personal by name alone.
        ("name", None),
        ("merchant_name", None),
        ("id", None),
        ("card_id", None),
        ("company", None),
        ("pancake", None),
        ("description", None),
    ] {
        assert_eq!(kind_of_name(name), kind, "{name}");
    }
}

fn policy(text: &str) -> Policy {
    Policy::from_texts(&[(PathBuf::from("p.toml"), text.to_owned())]).expect("valid policy")
}

const BASE: &str = "unclassified = \"allow\"\n[classes.\"pii.email\"]\nmask = \"email\"\n\
                    [[column]]\nmatch = \"payers.email\"\nclass = \"pii.email\"\n\
                    [[column]]\nmatch = \"contacts.email\"\nclass = \"pii.email\"\n\
                    [roles.admin]\nunrestricted = true\n";

#[test]
fn unclassified_pii_is_high_when_a_masked_role_reads_it_raw() {
    let cat = fixture::catalog();
    let t = TenantId::new("acme");
    let p = policy(&format!("{BASE}[roles.analyst]\nraw = []\n"));
    let f = pii::check(&t, &cat, Some(&p));
    let objects: Vec<&str> = f.iter().map(|f| f.object.as_str()).collect();
    // Classified (directly, or through a view's lineage / a generated column): not listed.
    assert!(
        !objects.contains(&"column public.payers.email"),
        "{objects:?}"
    );
    assert!(
        !objects.contains(&"column public.payer_emails.contact"),
        "{objects:?}"
    );
    assert!(
        !objects.contains(&"column public.contacts.email_upper"),
        "{objects:?}"
    );
    // Unclassified look-alikes, by name and type.
    for o in [
        "column public.payers.phone",
        "column public.payers.full_name",
        "column public.payers.date_of_birth",
        "column public.payers.ip_address",
        "column public.payers.address",
        "column public.payers.card_pan",
        "column public.events.email",
    ] {
        assert!(objects.contains(&o), "{o} missing: {objects:?}");
    }
    assert!(!objects.iter().any(|o| o.ends_with(".id")), "{objects:?}");
    assert!(f.iter().all(|f| f.severity == Severity::High
        && f.code == "unclassified-pii"
        && f.message.contains("analyst")));
    // Masked roles get unclassified columns redacted: low.
    let p = policy(&format!(
        "{BASE}[roles.analyst]\nraw = []\nunclassified = \"mask\"\n"
    ));
    let f = pii::check(&t, &cat, Some(&p));
    assert!(!f.is_empty() && f.iter().all(|f| f.severity == Severity::Low));
}

#[test]
fn tls_modes_and_hosts() {
    let t = TenantId::new("t");
    let codes = |m, h| -> Vec<(Severity, &'static str)> {
        transport::tls_mode(&t, m, h)
            .into_iter()
            .map(|f| (f.severity, f.code))
            .collect()
    };
    assert!(codes(BackendTlsMode::VerifyFull, "db.example").is_empty());
    assert_eq!(
        codes(BackendTlsMode::Require, "db.example"),
        [(Severity::Medium, "backend-tls-unverified")]
    );
    assert_eq!(
        codes(BackendTlsMode::Disable, "db.example"),
        [(Severity::High, "backend-tls-off")]
    );
    for local in ["127.0.0.1", "localhost", "::1", "[::1]"] {
        assert_eq!(
            codes(BackendTlsMode::Disable, local),
            [(Severity::Low, "backend-tls-off")],
            "{local}"
        );
    }
}

fn config(extra_tenant: &str, auth: &str) -> Config {
    Config::parse(&format!(
        "roles = [\"analyst\"]\n[auth]\nverifying_key_secrets = [\"k\"]\n{auth}\n\
         [secrets]\nbackend = \"file\"\npath = \"s.json\"\n[[tenant]]\nid = \"t\"\nsecret = \"t/db\"\n{extra_tenant}\n"
    ))
    .expect("valid config")
}

#[test]
fn mfa_requirement_and_token_lifetimes() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let codes = |cfg: &Config| -> Vec<(Severity, &'static str)> {
        settings::tenant_checks(&cfg.tenants[0], None, now)
            .into_iter()
            .map(|f| (f.severity, f.code))
            .collect()
    };
    assert_eq!(
        codes(&config("", "")),
        [(Severity::High, "mfa-never-required")]
    );
    assert!(codes(&config("require_mfa = true", "")).is_empty());
    assert!(codes(&config("live_since = \"2020-01-01\"", "")).is_empty());
    assert_eq!(
        codes(&config("live_since = \"2027-01-14\"", "")),
        [(Severity::Info, "mfa-grace-period")]
    );
    let day = Duration::from_secs(24 * 3600);
    // The default auth.max_token_ttl is 7 days.
    let f = settings::config_checks(&config("", ""), day);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].severity, f[0].code, f[0].object.as_str()),
        (Severity::Medium, "long-token-ttl", "auth.max_token_ttl")
    );
    assert!(settings::config_checks(&config("", "max_token_ttl = \"8h\""), day).is_empty());
}

#[test]
fn masked_roles_that_write_are_reported_per_tenant() {
    let cfg = config("", "");
    let now = SystemTime::now();
    let p = policy(&format!(
        "{BASE}[roles.analyst]\nraw = []\nstatements = [\"select\", \"update\"]\n\
         [roles.support]\nraw = [\"pii.email\"]\nstatements = [\"read\", \"write\"]\n\
         [roles.reader]\nraw = []\n\
         [tenants.other.roles.reader]\nstatements = [\"read\", \"insert\"]\n"
    ));
    let f: Vec<Finding> = settings::tenant_checks(&cfg.tenants[0], Some(&p), now)
        .into_iter()
        .filter(|f| f.code == "masked-role-writes")
        .collect();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].object, "policy role analyst");
    assert!(f[0].message.contains("update"), "{}", f[0].message);
    let mut other = cfg.tenants[0].clone();
    other.id = TenantId::new("other");
    let f: Vec<String> = settings::tenant_checks(&other, Some(&p), now)
        .into_iter()
        .filter(|f| f.code == "masked-role-writes")
        .map(|f| f.object)
        .collect();
    assert_eq!(f, ["policy role analyst", "policy role reader"]);
}

#[test]
fn json_document_is_stable() {
    let r = Report {
        tenants: vec![TenantId::new("t")],
        findings: vec![
            Finding::new(
                Severity::High,
                "x",
                Some(&TenantId::new("t")),
                "o",
                "m",
                "f",
            ),
            Finding::new(Severity::Low, "y", None, "o2", "m2", "f2"),
        ],
    };
    let v: serde_json::Value = serde_json::from_str(&report::json(&r)).expect("json");
    assert_eq!(v["format"], 1);
    assert_eq!(v["has_high"], true);
    assert_eq!(v["summary"]["high"], 1);
    assert_eq!(v["summary"]["low"], 1);
    assert_eq!(v["summary"]["medium"], 0);
    assert_eq!(v["findings"][0]["severity"], "high");
    assert_eq!(v["findings"][0]["tenant"], "t");
    assert_eq!(v["findings"][1]["tenant"], serde_json::Value::Null);
    assert_eq!(v["findings"][1]["fix"], "f2");
    let t = report::table(&r);
    assert!(
        t.starts_with("pgveil doctor: 1 tenant(s) checked (t): 1 high, 0 medium, 1 low, 0 info\n"),
        "{t}"
    );
    assert!(t.contains("fix: f2"), "{t}");
}
