//! The MFA test cases (helpers in main.rs).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use pgveil::api::oidc::{OidcConfig, OidcError, OidcVerifier};
use pgveil::ids::{RoleName, TenantId, UserId};
use serde_json::{Value, json};

use super::support::Fixture;
use super::*;

fn email(tag: &str) -> String {
    format!(
        "{tag}-{}@acme.example",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub fn pyotp_codes(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let api = start_api(fx, mfa_config(fx), &clock, 6432)?;
    fx.block_on(async {
        let e = email("pyotp");
        api.add_user(&e, "acme", "analyst").await?;
        let (secret, codes) = api.enrol(&e).await?;
        ensure!(codes.len() == 10, "10 recovery codes");
        // The confirming code's step is used up: the next step's code logs in.
        clock.advance(30);
        let code = pyotp(&secret, clock.secs())?;
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"code": code}))
            .await?;
        ensure!(s == 200, "login: {s} {v}");
        ensure!(v["amr"] == json!(["pwd", "otp"]), "{v}");
        ensure!(
            v["url"].as_str().unwrap().starts_with("postgresql://"),
            "{v}"
        );
        // Replay of the same code: refused.
        clock.advance(2);
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"code": code}))
            .await?;
        ensure!(
            s == 401 && v["error"]["code"] == "invalid_code",
            "replay: {s} {v}"
        );
        // Stale (3 steps old): refused.
        clock.advance(2);
        let stale = pyotp(&secret, clock.secs() - 90)?;
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"code": stale}))
            .await?;
        ensure!(
            s == 401 && v["error"]["code"] == "invalid_code",
            "stale: {s} {v}"
        );
        // Wrong: refused.
        clock.advance(4);
        let wrong = if code == "000000" { "111111" } else { "000000" };
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"code": wrong}))
            .await?;
        ensure!(s == 401, "wrong: {s} {v}");
        // The following step's code works (after the back-off).
        clock.advance(30);
        let (s, v) = api
            .user_call(
                "/v1/login",
                &e,
                json!({"code": pyotp(&secret, clock.secs())?}),
            )
            .await?;
        ensure!(s == 200, "next step: {s} {v}");
        // A user without MFA cannot skip the code once enrolled.
        let (s, v) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(s == 401 && v["error"]["code"] == "code_required", "{s} {v}");
        Ok(())
    })
}

pub fn throttling_lockout(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let api = start_api(fx, mfa_config(fx), &clock, 6432)?;
    fx.block_on(async {
        let e = email("throttle");
        api.add_user(&e, "acme", "analyst").await?;
        let (secret, _) = api.enrol(&e).await?;
        clock.advance(60);
        let bad = |c: &str| {
            if c == "000000" {
                "999999".to_owned()
            } else {
                "000000".to_owned()
            }
        };
        // Failure 1 -> wait 1 s; an immediate retry is throttled even with the right code.
        let good = pyotp(&secret, clock.secs())?;
        let (s, _) = api
            .user_call("/v1/login", &e, json!({"code": bad(&good)}))
            .await?;
        ensure!(s == 401);
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"code": good}))
            .await?;
        ensure!(
            s == 429 && v["error"]["code"] == "throttled",
            "backoff: {s} {v}"
        );
        // Failures 2..5 with exponential waits (2, 4, 8 s): the fifth locks the user out.
        for wait in [1, 2, 4, 8] {
            clock.advance(wait);
            let (s, v) = api
                .user_call("/v1/login", &e, json!({"code": bad(&good)}))
                .await?;
            ensure!(s == 401, "failure after {wait}s: {s} {v}");
        }
        clock.advance(16 + 30);
        let good = pyotp(&secret, clock.secs())?;
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"code": good}))
            .await?;
        ensure!(
            s == 429 && v["error"]["code"] == "locked_out",
            "locked: {s} {v}"
        );
        // After the 15-minute lockout, the right code is accepted again.
        clock.advance(15 * 60);
        let good = pyotp(&secret, clock.secs())?;
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"code": good}))
            .await?;
        ensure!(s == 200, "released: {s} {v}");
        Ok(())
    })
}

/// Client IPs back off beyond their budget but are never locked out; the count restarts after a quiet
/// lockout period.
pub fn ip_lockout(fx: &Fixture) -> Result<()> {
    let cfg = mfa_config(fx);
    let secrets = pgveil::secret::FileSecretStore::new(fx.env.secrets_path());
    fx.block_on(async {
        let db = pgveil::control::ControlDb::open(cfg.control.as_ref().unwrap(), &secrets).await?;
        let t = pgveil::mfa::throttle::ThrottleConfig {
            ip_max_failures: 3,
            ..Default::default()
        };
        let ip =
            pgveil::mfa::throttle::Scope::Ip(format!("10.9.8.{}", rand::random::<u8>()).parse()?);
        let now = 1_900_000_000;
        for _ in 0..2 {
            t.fail(&db, &ip, now).await?;
            ensure!(
                t.check(&db, &ip, now).await?.is_none(),
                "no back-off within the budget"
            );
        }
        t.fail(&db, &ip, now).await?;
        let th = t.check(&db, &ip, now).await?.context("backing off")?;
        ensure!(!th.locked && th.retry_after == 1, "{th:?}");
        t.fail(&db, &ip, now + 1).await?;
        let th = t.check(&db, &ip, now + 1).await?.context("backing off")?;
        ensure!(!th.locked && th.retry_after == 2, "doubled: {th:?}");
        ensure!(t.check(&db, &ip, now + 3).await?.is_none(), "released");
        t.fail(&db, &ip, now + 1000).await?;
        ensure!(
            t.check(&db, &ip, now + 1000).await?.is_none(),
            "count restarted after a quiet lockout period"
        );
        Ok(())
    })
}

pub fn recovery_codes(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let api = start_api(fx, mfa_config(fx), &clock, 6432)?;
    fx.block_on(async {
        let e = email("recovery");
        api.add_user(&e, "acme", "analyst").await?;
        let (_, codes) = api.enrol(&e).await?;
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"recovery_code": codes[0]}))
            .await?;
        ensure!(
            s == 200 && v["amr"] == json!(["pwd", "mfa"]),
            "recovery login: {s} {v}"
        );
        clock.advance(1);
        let (s, v) = api
            .user_call("/v1/login", &e, json!({"recovery_code": codes[0]}))
            .await?;
        ensure!(
            s == 401 && v["error"]["code"] == "invalid_code",
            "reuse: {s} {v}"
        );
        clock.advance(2);
        let (s, v) = api
            .user_call("/v1/recover", &e, json!({"recovery_code": codes[1]}))
            .await?;
        ensure!(
            s == 200 && v["status"] == "enrolment_reset",
            "recover: {s} {v}"
        );
        clock.advance(1);
        let (s, _) = api
            .user_call("/v1/recover", &e, json!({"recovery_code": codes[2]}))
            .await?;
        ensure!(s == 401, "old codes are gone with the enrolment");
        // A new device: enrol again, new recovery codes, the old ones stay dead.
        clock.advance(4);
        let (secret, new_codes) = api.enrol(&e).await?;
        ensure!(new_codes.iter().all(|c| !codes.contains(c)));
        clock.advance(30);
        let (s, v) = api
            .user_call(
                "/v1/login",
                &e,
                json!({"code": pyotp(&secret, clock.secs())?}),
            )
            .await?;
        ensure!(s == 200, "login after re-enrolment: {s} {v}");
        clock.advance(1);
        let (s, _) = api
            .user_call("/v1/login", &e, json!({"recovery_code": codes[3]}))
            .await?;
        ensure!(s == 401, "pre-recovery code refused");
        Ok(())
    })
}

pub fn oidc_first_factor(fx: &Fixture) -> Result<()> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = fx.env.dir().join("oidc");
    std::fs::create_dir_all(&dir)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let raw = key.public_key_raw(); // 0x04 || x || y
    let b64 = |b: &[u8]| base64_url(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string())?;
    let now = 1_900_000_000i64;
    let sign = |k: &rcgen::KeyPair, claims: Value| -> Result<String> {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        Ok(jsonwebtoken::encode(
            &h,
            &claims,
            &EncodingKey::from_ec_pem(k.serialize_pem().as_bytes())?,
        )?)
    };
    let base = json!({"iss": "https://idp.example", "aud": "pgveil", "email": "oidc@acme.example",
        "email_verified": true, "iat": now, "exp": now + 300});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let cfg = OidcConfig {
        issuer: "https://idp.example".into(),
        audience: "pgveil".into(),
        jwks_file: Some(jwks_path.clone()),
        jwks_url: None,
        email_claim: "email".into(),
    };
    let t = std::time::UNIX_EPOCH + Duration::from_secs(now as u64 + 10);
    fx.block_on(async {
        let v = OidcVerifier::new(cfg.clone()).await?;
        let e = "oidc@acme.example";
        v.verify(&sign(&key, base.clone())?, e, t)
            .await
            .context("valid")?;
        let cases = [
            (
                sign(&key, with("exp", json!(now - 120)))?,
                OidcError::Expired,
                "expired",
            ),
            (
                sign(&key, with("aud", json!("other-app")))?,
                OidcError::WrongAudience,
                "aud",
            ),
            (
                sign(&key, with("iss", json!("https://evil.example")))?,
                OidcError::WrongIssuer,
                "iss",
            ),
            (
                sign(&key, with("email", json!("mallory@acme.example")))?,
                OidcError::WrongEmail,
                "email",
            ),
            (
                sign(&key, with("email_verified", json!(false)))?,
                OidcError::WrongEmail,
                "unverified",
            ),
            (
                sign(&other, base.clone())?,
                OidcError::BadSignature,
                "signature",
            ),
        ];
        for (tok, want, what) in cases {
            let got = v.verify(&tok, e, t).await;
            ensure!(got.as_ref().err() == Some(&want), "{what}: {got:?}");
        }
        // HS256 signed with the public JWK as secret, and alg none: refused.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &base,
            &EncodingKey::from_secret(jwks.to_string().as_bytes()),
        )?;
        ensure!(v.verify(&hs, e, t).await.is_err(), "HS256 refused");
        Ok::<_, anyhow::Error>(())
    })?;
    // Through the API: OIDC first factor, no TOTP yet (tenant in test mode) -> token with amr ["fed"].
    let clock = TestClock::at(now + 10);
    let mut c = mfa_config(fx);
    c.api.as_mut().unwrap().oidc = Some(cfg);
    let api = start_api(fx, c, &clock, 6432)?;
    fx.block_on(async {
        api.add_user("oidc@acme.example", "acme", "analyst")
            .await
            .ok();
        let body = json!({"email": "oidc@acme.example", "id_token": sign(&key, base.clone())?});
        let (s, v) = api.call("POST", "/v1/login", Some(body), false).await?;
        ensure!(s == 200 && v["amr"] == json!(["fed"]), "{s} {v}");
        let body = json!({"email": "oidc@acme.example", "id_token": sign(&other, base.clone())?});
        let (s, v) = api.call("POST", "/v1/login", Some(body), false).await?;
        ensure!(
            s == 401 && v["error"]["code"] == "first_factor_invalid",
            "{s} {v}"
        );
        Ok(())
    })
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn grace_period(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let live = clock.secs() - 3 * 86_400; // went live 3 days ago
    let live_str =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(live as u64))
            .to_string();
    let proxy = start_proxy(
        fx,
        |cfg| {
            // The tokens below live 30 days, beyond the default maximum lifetime.
            cfg.auth.max_token_ttl = Duration::from_secs(30 * 86_400);
            for t in &mut cfg.tenants {
                if t.id.as_str() == "acme" {
                    t.live_since = Some(pgveil::mfa::policy::parse_time(&live_str).unwrap());
                }
                if t.id.as_str() == "globex" {
                    t.require_mfa = true;
                }
            }
        },
        &clock,
    )?;
    let mint = |tenant: &str, mfa: bool| -> Result<String> {
        let amr = if mfa {
            vec!["pwd".into(), "otp".into()]
        } else {
            vec!["pwd".into()]
        };
        Ok(fx.env.signer.mint(
            &UserId::new("grace@acme.example"),
            &TenantId::new(tenant),
            &RoleName::new("analyst"),
            amr,
            Duration::from_secs(30 * 86_400),
            clock.time(),
        )?)
    };
    clock.set(live - 2 * 86_400);
    let no_mfa = mint("acme", false)?;
    let with_mfa = mint("acme", true)?;
    fx.block_on(async {
        // Before going live: a notice counting 8 days (7 days of grace after live_since).
        clock.set(live - 86_400);
        let (c, mut notices) = connect_collect(fx, proxy.addr, "acme", &no_mfa).await?;
        c.simple_query("SELECT 1").await?;
        let n = notices.try_recv().context("notice before live")?;
        ensure!(n.contains("in 8 days"), "{n}");
        // Inside the grace period, on the last day.
        clock.set(live + 6 * 86_400 + 3600);
        let (c, mut notices) = connect_collect(fx, proxy.addr, "acme", &no_mfa).await?;
        c.simple_query("SELECT 1").await?;
        let n = notices.try_recv().context("notice inside grace")?;
        ensure!(
            n.contains("in 1 day (") && n.contains("security page"),
            "{n}"
        );
        // A token with MFA gets no notice.
        let (c, mut notices) = connect_collect(fx, proxy.addr, "acme", &with_mfa).await?;
        c.simple_query("SELECT 1").await?;
        ensure!(notices.try_recv().is_err(), "no notice with MFA");
        // After: refused with 28000 telling the user to enrol; MFA tokens still work.
        clock.set(live + 7 * 86_400 + 1);
        let r = connect_collect(fx, proxy.addr, "acme", &no_mfa)
            .await
            .map(|_| ());
        expect_refused(r, "28000", "two-factor authentication is required")?;
        let (c, _) = connect_collect(fx, proxy.addr, "acme", &with_mfa).await?;
        c.simple_query("SELECT 1").await?;
        // A test-mode tenant that requires MFA anyway.
        clock.set(live - 2 * 86_400);
        let (globex_plain, globex_mfa) = (mint("globex", false)?, mint("globex", true)?);
        clock.set(live);
        let r = connect_collect(fx, proxy.addr, "globex", &globex_plain)
            .await
            .map(|_| ());
        expect_refused(r, "28000", "enrol")?;
        let (c, _) = connect_collect(fx, proxy.addr, "globex", &globex_mfa).await?;
        c.simple_query("SELECT 1").await?;
        Ok(())
    })
}

pub fn api_grace(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let live = clock.secs() - 86_400;
    let mut cfg = mfa_config(fx);
    for t in &mut cfg.tenants {
        if t.id.as_str() == "acme" {
            t.live_since = Some(std::time::UNIX_EPOCH + Duration::from_secs(live as u64));
        }
    }
    let api = start_api(fx, cfg, &clock, 6432)?;
    fx.block_on(async {
        let e = email("apigrace");
        api.add_user(&e, "acme", "analyst").await?;
        let (s, v) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(
            s == 200 && v["amr"] == json!(["pwd"]) && v["mfa_deadline_days"] == 6,
            "inside grace: {s} {v}"
        );
        clock.advance(7 * 86_400);
        let (s, v) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(
            s == 403 && v["error"]["code"] == "mfa_enrolment_required",
            "after grace: {s} {v}"
        );
        // Enrolling is still possible, and then login works.
        let (secret, _) = api.enrol(&e).await?;
        clock.advance(30);
        let (s, v) = api
            .user_call(
                "/v1/login",
                &e,
                json!({"code": pyotp(&secret, clock.secs())?}),
            )
            .await?;
        ensure!(s == 200, "{s} {v}");
        Ok(())
    })
}

pub fn revocation(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let proxy = start_proxy(fx, |_| {}, &clock)?;
    let api = start_api(fx, mfa_config(fx), &clock, proxy.addr.port())?;
    fx.block_on(async {
        let e = email("revoke");
        api.add_user(&e, "acme", "analyst").await?;
        let (s, first) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(s == 200, "{s} {first}");
        let (s, second) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(s == 200, "{s} {second}");
        let tok = |v: &Value| v["token"].as_str().unwrap().to_owned();
        let (c1, _) = connect_collect(fx, proxy.addr, "acme", &tok(&first)).await?;
        let (c2, _) = connect_collect(fx, proxy.addr, "acme", &tok(&second)).await?;
        c1.simple_query("SELECT 1").await?;
        // Revoke the first token: its open session ends, new connections with it are refused, the other stays.
        let (s, v) = api
            .call(
                "POST",
                "/v1/admin/tokens/revoke",
                Some(json!({"jti": first["jti"]})),
                true,
            )
            .await?;
        ensure!(s == 200, "{s} {v}");
        wait_until_closed(&c1)
            .await
            .context("revoked token's session")?;
        let r = connect_collect(fx, proxy.addr, "acme", &tok(&first))
            .await
            .map(|_| ());
        expect_refused(r, "28000", "revoked")?;
        c2.simple_query("SELECT 1")
            .await
            .context("other token unaffected")?;
        // Disable the user: every session ends and no token of theirs works; no new token is issued.
        let (s, _) = api
            .call("POST", &format!("/v1/admin/users/{e}/disable"), None, true)
            .await?;
        ensure!(s == 200);
        wait_until_closed(&c2)
            .await
            .context("disabled user's session")?;
        let r = connect_collect(fx, proxy.addr, "acme", &tok(&second))
            .await
            .map(|_| ());
        expect_refused(r, "28000", "disabled")?;
        let (s, v) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(s == 403 && v["error"]["code"] == "user_disabled", "{s} {v}");
        Ok(())
    })
}

/// Polls (every 100 ms, up to 10 s) until the session is terminated by the proxy.
async fn wait_until_closed(c: &tokio_postgres::Client) -> Result<()> {
    for _ in 0..100 {
        if c.simple_query("SELECT 1").await.is_err() || c.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("session still open")
}

pub fn two_instances_race(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let a = start_api(fx, mfa_config(fx), &clock, 6432)?;
    let b = start_api(fx, mfa_config(fx), &clock, 6432)?;
    fx.block_on(async {
        for round in 0..3 {
            let e = email(&format!("race{round}"));
            a.add_user(&e, "acme", "analyst").await?;
            let (secret, _) = a.enrol(&e).await?;
            clock.advance(30);
            let code = pyotp(&secret, clock.secs())?;
            let body = json!({"code": code});
            let (ra, rb) = tokio::join!(
                a.user_call("/v1/login", &e, body.clone()),
                b.user_call("/v1/login", &e, body)
            );
            let statuses = [ra?.0, rb?.0];
            ensure!(
                statuses.iter().filter(|s| **s == 200).count() == 1,
                "round {round}: {statuses:?}"
            );
            // The loser is refused as a replay (401) or, while the winner's guess is still reserved, as
            // throttled (429).
            ensure!(
                statuses.contains(&401) || statuses.contains(&429),
                "round {round}: {statuses:?}"
            );
        }
        Ok(())
    })
}

pub fn admin_key_required(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let mut api = start_api(fx, mfa_config(fx), &clock, 6432)?;
    fx.block_on(async {
        let (s, _) = api.call("GET", "/v1/admin/users", None, true).await?;
        ensure!(s == 200);
        api.admin = "wrong".into();
        let (s, v) = api.call("GET", "/v1/admin/users", None, true).await?;
        ensure!(
            s == 401 && v["error"]["code"] == "admin_unauthorized",
            "{s} {v}"
        );
        let (s, _) = api.call("GET", "/v1/admin/users", None, false).await?;
        ensure!(s == 401);
        Ok(())
    })
}

pub fn cli(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let proxy = start_proxy(fx, |_| {}, &clock)?;
    let api = start_api(fx, mfa_config(fx), &clock, proxy.addr.port())?;
    let bin = env!("CARGO_BIN_EXE_pgveil");
    let e = email("cli");
    let home = fx.env.dir().join("cli-home");
    std::fs::create_dir_all(&home)?;
    let run = |args: &[&str], stdin: &str| -> Result<String> {
        use std::io::Write;
        let mut child = std::process::Command::new(bin)
            .args(args)
            .env("PGVEIL_ADMIN_KEY", &api.admin)
            .env("HOME", &home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let base = api.base();
    let ca = api.ca.display().to_string();
    run(
        &[
            "user", "add", &e, "--tenant", "acme", "--role", "analyst", "--api", &base, "--ca", &ca,
        ],
        "",
    )?;
    let (secret, _) = fx.block_on(api.enrol(&e))?;
    let listed = run(
        &[
            "user", "list", "--tenant", "acme", "--api", &base, "--ca", &ca,
        ],
        "",
    )?;
    ensure!(
        listed
            .lines()
            .any(|l| l.starts_with(&e) && l.contains(" yes ")),
        "{listed}"
    );
    // `pgveil login` asks for the code on stdin (the API's clock is real time here).
    clock.advance(30);
    let code = pyotp(&secret, clock.secs())?;
    let assertion = api.assertion(&e);
    let out = run(
        &[
            "login",
            "--api",
            &base,
            "--ca",
            &ca,
            "--email",
            &e,
            "--assertion",
            &assertion,
            "--pgpass",
        ],
        &format!("{code}\n"),
    )?;
    let url = out.lines().next().context("url")?;
    ensure!(
        url.starts_with("postgresql://") && out.contains("export PGHOST="),
        "{out}"
    );
    let pgpass = std::fs::read_to_string(home.join(".pgpass"))?;
    ensure!(pgpass.starts_with("127.0.0.1:"), "{pgpass}");
    fx.block_on(async {
        let (client, conn) = tokio_postgres::connect(
            &url.replace("sslmode=require", "sslmode=disable"),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        let n: i64 = client
            .query_one("SELECT count(*) FROM payers", &[])
            .await?
            .get(0);
        ensure!(n > 0);
        Ok::<_, anyhow::Error>(())
    })?;
    run(&["user", "disable", &e, "--api", &base, "--ca", &ca], "")?;
    Ok(())
}

pub fn browser(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let proxy = start_proxy(fx, |_| {}, &clock)?;
    let api = start_api(fx, mfa_config(fx), &clock, proxy.addr.port())?;
    let e = email("browser");
    fx.block_on(api.add_user(&e, "acme", "analyst"))?;
    let url = format!(
        "{}/security?email={}&assertion={}",
        api.base(),
        urlencoding_encode(&e),
        urlencoding_encode(&api.assertion(&e))
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // PGVEIL_UPDATE_SCREENSHOT=1 refreshes the README's screenshot; otherwise it goes to the test folder.
    let shot = if std::env::var_os("PGVEIL_UPDATE_SCREENSHOT").is_some() {
        root.join("docs").join("security-page.png")
    } else {
        fx.env.dir().join("security-page.png")
    };
    let out = std::process::Command::new("node")
        .arg(root.join("tests/browser/security_page.mjs"))
        .arg(&url)
        .arg(&shot)
        .env("PGVEIL_SERVER_CERT", &fx.env.certs.server_cert)
        .env("PGVEIL_CLOCK", clock.secs().to_string())
        .current_dir(root.join("tests/browser"))
        .output()
        .context(
            "running node (install Node.js and `npm install` in tests/browser; tests/run.sh does)",
        )?;
    ensure!(
        out.status.success(),
        "browser script: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or(b"{}"),
    )?;
    ensure!(v["recovery_codes"].as_u64() == Some(10), "{v}");
    let token = v["token"].as_str().context("token from the page")?;
    fx.block_on(async {
        let (c, _) = connect_collect(fx, proxy.addr, "acme", token).await?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM payers", &[])
            .await?
            .get(0);
        ensure!(n > 0);
        Ok(())
    })
}

fn urlencoding_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
