use std::path::PathBuf;

use super::*;

fn load(text: &str) -> Result<Policy, PolicyError> {
    Policy::from_texts(&[(PathBuf::from("p.toml"), text.to_owned())])
}

#[test]
fn example_policy_is_valid() {
    let p = Policy::load(&PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies"
    )))
    .unwrap();
    assert!(p.roles().any(|r| r.as_str() == "analyst"));
    let eff = p
        .effective(&TenantId::new("acme"), &RoleName::new("analyst"))
        .unwrap();
    assert_eq!(
        eff.classify("public", "payments", "card_pan"),
        Some("pii.pan")
    );
    assert_eq!(eff.classify("public", "payers", "email"), Some("pii.email"));
    assert_eq!(eff.classify("public", "merchants", "name"), None);
    assert!(
        p.effective(&TenantId::new("acme"), &RoleName::new("nobody"))
            .is_none()
    );
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let err = load(
        r#"
[classes."pii.email"]
mask = "emial"

[classes."pii.x"]
mask = "partial"
keep_first = 100
length = 3

[[column]]
match = "a.b.c.d"
class = "pii.email"

[[column]]
match = "payers.email"
class = "pii.unknown"

[roles.analyst]
raw = ["pii.nothing"]
statements = ["select", "drop_everything"]

[tenants.acme.roles.ghost]
raw = []
"#,
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "p.toml:2: class \"pii.email\": unknown masking function \"emial\"",
        "p.toml:5: class \"pii.x\": keep_first and keep_last must be at most 64",
        "`length` does not apply",
        "p.toml:10: column pattern \"a.b.c.d\"",
        "p.toml:14: unknown class \"pii.unknown\"",
        "raw lists unknown class \"pii.nothing\"",
        "unknown statement kind \"drop_everything\"",
        "tenant override for undefined role \"ghost\"",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn unknown_fields_and_syntax_errors_have_lines() {
    let err = load("[roles.analyst]\nraw = []\nstatments = [\"select\"]\n").unwrap_err();
    assert!(err.problems[0].starts_with("p.toml:3:"), "{err}");
    assert!(err.problems[0].contains("statments"), "{err}");
    let err = load("[classes.x\n").unwrap_err();
    assert!(err.problems[0].starts_with("p.toml:1:"), "{err}");
}

#[test]
fn injection_in_policy_text_is_rejected_or_quoted() {
    let err = load("[classes.\"a\"]\nmask = \"redact\"\nreplacement = \"x\\u0000y\"\n[roles.r]\n")
        .unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.contains("control characters")),
        "{err}"
    );
    let err = load("[classes.\"a\"]\nmask = \"jsonb\"\nkeys = [\"a}',(select 1)\"]\n[roles.r]\n")
        .unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.contains("jsonb key path")),
        "{err}"
    );
    let err = load("[classes.\"a\"]\nmask = \"generalize\"\nstep = -1\n[roles.r]\n").unwrap_err();
    assert!(!err.problems.is_empty());
}

#[test]
fn unrestricted_cannot_be_mixed() {
    let err = load("[roles.admin]\nunrestricted = true\nraw = [\"*\"]\n").unwrap_err();
    assert!(err.problems[0].contains("unrestricted"), "{err}");
}

#[test]
fn masking_options_apply_to_their_function_only() {
    let p = load(
        r#"
[classes."a"]
mask = "pan"
hide_length = true
[classes."b"]
mask = "email"
mask_domain = true
[classes."c"]
mask = "jsonb"
keys = ["email"]
case_insensitive = true
[roles.r]
raw = []
"#,
    )
    .unwrap();
    assert_eq!(p.classes["a"], MaskFn::Pan { hide_length: true });
    assert_eq!(p.classes["b"], MaskFn::Email { mask_domain: true });
    assert!(matches!(
        p.classes["c"],
        MaskFn::JsonKeys {
            case_insensitive: true,
            ..
        }
    ));
    let err = load("[classes.\"a\"]\nmask = \"partial\"\nkeep_first = 1\nhide_length = true\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`hide_length` does not apply"), "{err}");
}

#[test]
fn guards_merge_tenant_keys_over_the_roles_and_need_a_window() {
    let p = load(
        r#"
[roles.analyst]
[roles.analyst.guard]
max_rows_per_statement = 100
max_rows = 1000
window = "1h"

[roles.admin]
unrestricted = true

[tenants.globex.roles.analyst.guard]
max_rows = 10
"#,
    )
    .unwrap();
    let (acme, globex) = (TenantId::new("acme"), TenantId::new("globex"));
    let analyst = RoleName::new("analyst");
    let a = p.guard(&acme, &analyst).unwrap();
    assert_eq!(
        (a.max_rows_per_statement, a.max_rows, a.window.as_secs()),
        (Some(100), Some(1000), 3600)
    );
    let g = p.guard(&globex, &analyst).unwrap();
    assert_eq!(
        (g.max_rows_per_statement, g.max_rows),
        (Some(100), Some(10))
    );
    assert!(p.guard(&acme, &RoleName::new("admin")).is_none());
    let err = load(
        r#"
[roles.analyst]
[roles.support]
[roles.support.guard]
max_bytes = 0
[tenants.globex.roles.analyst.guard]
max_rows = 10
"#,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_bytes must be at least 1"), "{text}");
    assert!(
        text.contains("tenant \"globex\": role \"analyst\""),
        "{text}"
    );
}
