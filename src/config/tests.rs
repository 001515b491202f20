//! Config parsing and validation.
use super::*;
use std::time::Duration;

#[test]
fn reports_every_problem_at_once() {
    let cfg = Config::parse(
        r#"
        roles = ["analyst", "analyst", "bad role"]
        [auth]
        verifying_key_secrets = ["-----BEGIN PUBLIC KEY----- MCowBQYDK2VwAyEA"]
        [secrets]
        backend = "file"
        path = "/nonexistent/secrets.json"
        [pool]
        size = 0
        [[tenant]]
        id = "acme"
        secret = "s"
        tls = "verify-full"
        [[tenant]]
        id = "acme"
        secret = ""
        "#,
    )
    .unwrap();
    let problems = cfg.validate().unwrap_err();
    let all = problems.join("\n");
    for needle in [
        "allow_plaintext_loopback",
        "looks like an inline secret value",
        "secrets: file",
        "listed twice",
        "not a valid role name",
        "pool.size",
        "needs ca_bundle",
        "duplicate tenant id",
        "secret id is empty",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn unknown_fields_are_rejected_with_location() {
    let err = Config::parse("roles=[\"a\"]\n[auth]\nverifying_key_secrets=[]\npasword=\"x\"\n")
        .unwrap_err();
    assert!(err.contains("pasword"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

fn minimal(extra_auth: &str, secrets: &str, tenant_secret: &str) -> Config {
    Config::parse(&format!(
        "roles = [\"a\"]\n[listen]\nallow_plaintext_loopback = true\n[auth]\n{extra_auth}\n[secrets]\n{secrets}\n\
         [[tenant]]\nid = \"acme\"\nsecret = {tenant_secret:?}\n"
    ))
    .unwrap()
}

#[test]
fn inline_secret_values_are_rejected_without_echoing_them() {
    let aws = "backend = \"aws\"\nregion = \"eu-west-1\"";
    let ok = minimal(
        "verifying_key_secrets = [\"pgveil/token-verifying\"]",
        aws,
        "tenants/acme/db",
    );
    assert_eq!(ok.validate(), Ok(()));
    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:tenants/acme/db-AbCdEf";
    let ok = minimal(
        "verifying_key_secrets = [\"pgveil/token-verifying\"]",
        aws,
        arn,
    );
    assert_eq!(ok.validate(), Ok(()));
    for (auth, tenant) in [
        (
            r#"verifying_key_secrets = ["-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----"]"#,
            "t/db",
        ),
        (
            r#"verifying_key_secrets = ["k"]"#,
            r#"{"username":"u","password":"p4ssw0rd"}"#,
        ),
        (
            r#"verifying_key_secrets = ["k"]"#,
            "Xk9fQ2LmZ8pR4tW7vB1nC6yH3jD5sAe",
        ),
        (
            "verifying_key_secrets = [\"k\"]\nsigning_key_secret = \"secret value with spaces\"",
            "t/db",
        ),
    ] {
        let cfg = minimal(auth, aws, tenant);
        let all = cfg.validate().unwrap_err().join("\n");
        assert!(all.contains("inline secret value"), "{all}");
        for leak in ["MCowBQ", "p4ssw0rd", "Xk9fQ2", "spaces"] {
            assert!(!all.contains(leak), "{all}");
        }
    }
}

#[test]
fn secrets_section_is_checked() {
    let cfg = minimal(
        "verifying_key_secrets = [\"k\"]",
        "backend = \"file\"\nregion = \"x\"\ncache_ttl = \"10s\"\nrefresh_ahead = \"10s\"\nmax_stale = \"5s\"",
        "t/db",
    );
    let all = cfg.validate().unwrap_err().join("\n");
    for needle in [
        "needs path",
        "only for backend = \"aws\"",
        "refresh_ahead",
        "max_stale",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    let cfg = minimal(
        "verifying_key_secrets = [\"k\"]",
        "backend = \"aws\"\nendpoint = \"localhost:5000\"",
        "t/db",
    );
    assert!(cfg.validate().unwrap_err().join("\n").contains("http://"));
}

#[test]
fn session_caps_must_be_positive() {
    let aws = "backend = \"aws\"\nregion = \"eu-west-1\"";
    let mut c = minimal(
        "verifying_key_secrets = [\"pgveil/token-verifying\"]",
        aws,
        "tenants/acme/db",
    );
    c.listen.max_sessions_per_user = Some(0);
    c.tenants[0].max_clients = Some(0);
    let problems = c.validate().unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains("max_sessions_per_user")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("tenant acme: max_clients")),
        "{problems:?}"
    );
    c.listen.max_sessions_per_user = Some(5);
    c.tenants[0].max_clients = Some(50);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn api_control_and_token_lifetime_checks() {
    let cfg = Config::parse(
        r#"
        roles = ["a"]
        [listen]
        allow_plaintext_loopback = true
        [auth]
        verifying_key_secrets = ["pgveil/verify"]
        signing_key_secret = "pgveil/sign"
        max_token_ttl = "1d"
        [secrets]
        backend = "aws"
        [control]
        secret = "pgveil/control"
        totp_key_secret = "pgveil/totp"
        tls = "verify-full"
        [api]
        admin_key_secret = "pgveil/admin"
        token_ttl = "2d"
        insecure_no_first_factor = true
        trusted_proxies = ["10.0.0.0/8", "not-a-cidr"]
        [api.oidc]
        issuer = "https://idp.example"
        audience = "pgveil"
        jwks_url = "http://idp.example/jwks.json"
        [[tenant]]
        id = "acme"
        secret = "s"
        "#,
    )
    .unwrap();
    let all = cfg.validate().unwrap_err().join("\n");
    for needle in [
        "control: tls = \"verify-full\" needs ca_bundle",
        "api.token_ttl must not exceed auth.max_token_ttl",
        "insecure_no_first_factor is refused outside the demo",
        "api.trusted_proxies: \"not-a-cidr\"",
        "jwks_url must be an https:// URL",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(cfg.auth.max_token_ttl, Duration::from_secs(86_400));
    let default = minimal("verifying_key_secrets = [\"v\"]", "backend = \"aws\"", "s");
    assert_eq!(default.auth.max_token_ttl, Duration::from_secs(7 * 86_400));
}
