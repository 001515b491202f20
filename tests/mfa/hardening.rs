//! Issue 14: attacks on the MFA flow and the token API (helpers in main.rs). Bursts of concurrent wrong
//! codes against one and two instances, a recovery-code burst with the process's memory measured, a flood of
//! garbage first factors, revocation of long-lived tokens, the control database over verified TLS, and the
//! smaller items (same-second re-enable, email case, spaced codes, response headers, the page's "Back").

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use pgveil::config::BackendTlsMode;
use pgveil::control::ControlDb;
use pgveil::secret::FileSecretStore;
use serde_json::{Value, json};

use super::support::Fixture;
use super::*;

fn email(tag: &str) -> String {
    format!(
        "{tag}-{}@acme.example",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Six-digit codes that match none of the steps the server accepts at `t`.
fn wrong_codes(secret: &str, t: i64, n: usize) -> Result<Vec<String>> {
    let valid = [
        pyotp(secret, t - 30)?,
        pyotp(secret, t)?,
        pyotp(secret, t + 30)?,
    ];
    let mut out = Vec::new();
    while out.len() < n {
        let c = format!("{:06}", rand::random::<u32>() % 1_000_000);
        if !valid.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Sends every body to `/v1/login` at once, alternating between the instances; returns the statuses.
async fn burst(apis: &[&Api], e: &str, bodies: Vec<Value>) -> Result<Vec<u16>> {
    let calls = bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| apis[i % apis.len()].user_call("/v1/login", e, b));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.map(|(s, _)| s))
        .collect()
}

/// The user's failure counter in the control database.
async fn failures(db: &ControlDb, e: &str) -> Result<i32> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT failures FROM auth_throttle WHERE scope = $1",
            &[&format!("user:{e}")],
        )
        .await?;
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

async fn control_db(fx: &Fixture) -> Result<ControlDb> {
    let cfg = mfa_config(fx);
    let secrets = FileSecretStore::new(fx.env.secrets_path());
    Ok(ControlDb::open(cfg.control.as_ref().context("control")?, &secrets).await?)
}

fn count(statuses: &[u16], s: u16) -> usize {
    statuses.iter().filter(|x| **x == s).count()
}

/// 50 concurrent wrong TOTP codes: with the default back-off against one instance, and with no back-off
/// (only the per-user budget) across two instances sharing the control database.
pub fn totp_burst(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let a = start_api(fx, mfa_config(fx), &clock, 6432)?;
    let mut no_backoff = mfa_config(fx);
    if let Some(api) = &mut no_backoff.api {
        api.throttle.base_backoff = Duration::ZERO;
    }
    let b1 = start_api(fx, no_backoff.clone(), &clock, 6432)?;
    let b2 = start_api(fx, no_backoff, &clock, 6432)?;
    let max = ThrottleConfig::default().user_max_failures as usize;
    fx.block_on(async {
        let db = control_db(fx).await?;
        for (round, apis) in [vec![&a], vec![&b1, &b2]].into_iter().enumerate() {
            let e = email(&format!("burst{round}"));
            apis[0].add_user(&e, "acme", "analyst").await?;
            let (secret, _) = apis[0].enrol(&e).await?;
            clock.advance(60);
            let bodies = wrong_codes(&secret, clock.secs(), 50)?
                .into_iter()
                .map(|c| json!({"code": c}))
                .collect();
            let statuses = burst(&apis, &e, bodies).await?;
            let checked = count(&statuses, 401);
            eprintln!(
                "TOTP burst of 50 against {} instance(s): {checked} checked, {} throttled",
                apis.len(),
                count(&statuses, 429)
            );
            ensure!(count(&statuses, 200) == 0, "a token: {statuses:?}");
            ensure!(
                (1..=max).contains(&checked),
                "{checked} guesses checked: {statuses:?}"
            );
            ensure!(checked + count(&statuses, 429) == 50, "{statuses:?}");
            let f = failures(&db, &e).await?;
            ensure!(f as usize == checked, "counter {f} vs {checked} checked");
            // Without back-off the budget is spent: even the right code is refused until the lockout ends.
            if round == 1 {
                ensure!(checked == max, "all {max} guesses used: {statuses:?}");
                let (s, v) = apis[1]
                    .user_call(
                        "/v1/login",
                        &e,
                        json!({"code": pyotp(&secret, clock.secs())?}),
                    )
                    .await?;
                ensure!(s == 429 && v["error"]["code"] == "locked_out", "{s} {v}");
            }
        }
        Ok(())
    })
}

/// Resident memory of this process (the API instances run in it), in MiB.
fn rss_mib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024)
}

/// 50 concurrent wrong recovery codes for one user across two instances: at most the budget is checked and
/// no token. Then 60 concurrent wrong codes for 60 users whose codes are legacy Argon2id hashes (the
/// expensive path): bounded work, memory flat.
pub fn recovery_burst(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let a = start_api(fx, mfa_config(fx), &clock, 6432)?;
    let b = start_api(fx, mfa_config(fx), &clock, 6432)?;
    let max = ThrottleConfig::default().user_max_failures as usize;
    fx.block_on(async {
        let db = control_db(fx).await?;
        let e = email("recburst");
        a.add_user(&e, "acme", "analyst").await?;
        let (_, codes) = a.enrol(&e).await?;
        clock.advance(60);
        let alphabet = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
        let bodies = (0..50)
            .map(|_| {
                let code: String = (0..15)
                    .map(|_| alphabet[rand::random::<u32>() as usize % alphabet.len()] as char)
                    .collect();
                json!({"recovery_code": code})
            })
            .collect();
        let statuses = burst(&[&a, &b], &e, bodies).await?;
        let checked = count(&statuses, 401);
        eprintln!("recovery burst of 50 against 2 instances: {checked} checked");
        ensure!(
            count(&statuses, 200) == 0 && (1..=max).contains(&checked),
            "{statuses:?}"
        );
        // The right code still works once the back-off has passed.
        clock.advance(120);
        let (s, v) = a
            .user_call("/v1/login", &e, json!({"recovery_code": codes[0]}))
            .await?;
        ensure!(s == 200, "{s} {v}");

        // Legacy users: their codes are Argon2id hashes, as issued before MACs.
        let legacy = legacy_hash()?;
        let users: Vec<String> = (0..60).map(|i| email(&format!("legacy{i}"))).collect();
        let c = db.client().await?;
        for u in &users {
            a.add_user(u, "acme", "analyst").await?;
            let id: uuid::Uuid = c
                .query_one("SELECT id FROM users WHERE email = $1", &[u])
                .await?
                .get(0);
            for _ in 0..5 {
                c.execute(
                    "INSERT INTO recovery_codes (user_id, hash) VALUES ($1, $2)",
                    &[&id, &legacy],
                )
                .await?;
            }
        }
        let before = rss_mib()?;
        let calls = users.iter().enumerate().map(|(i, u)| {
            let api = if i % 2 == 0 { &a } else { &b };
            api.user_call(
                "/v1/recover",
                u,
                json!({"recovery_code": "ZZZZ-ZZZZ-ZZZZ-ZZZ"}),
            )
        });
        let results = futures_util::future::join_all(calls).await;
        let after = rss_mib()?;
        let statuses: Vec<u16> = results
            .into_iter()
            .map(|r| r.map(|(s, _)| s))
            .collect::<Result<_>>()?;
        eprintln!(
            "legacy recovery burst of 60: RSS {before} -> {after} MiB; {} checked, {} busy",
            count(&statuses, 401),
            count(&statuses, 503)
        );
        ensure!(
            statuses.iter().all(|s| *s == 401 || *s == 503),
            "{statuses:?}"
        );
        ensure!(
            after.saturating_sub(before) < 256,
            "memory grew from {before} to {after} MiB"
        );
        // A legacy code still works (after the back-off of the failure above).
        clock.advance(120);
        let (s, v) = a
            .user_call(
                "/v1/recover",
                &users[0],
                json!({"recovery_code": LEGACY_CODE}),
            )
            .await?;
        ensure!(s == 200, "legacy code: {s} {v}");
        Ok(())
    })
}

const LEGACY_CODE: &str = "abcd-efgh-jkmn-pqr";

fn legacy_hash() -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&[5u8; 16]).map_err(|e| anyhow!("{e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(b"ABCDEFGHJKMNPQR", &salt)
        .map_err(|e| anyhow!("{e}"))?
        .to_string())
}

/// Sends a request with curl (to set headers the helper cannot); returns status, headers, body.
async fn curl(api: &Api, path: &str, args: &[&str]) -> Result<(u16, String, String)> {
    let url = format!("{}{path}", api.base());
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&api.ca)
        .args(["-D", "-"])
        .args(args)
        .arg(&url)
        .output()
        .await
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (head, body) = text.split_once("\r\n\r\n").context("response")?;
    let status = head.split_whitespace().nth(1).context("status")?.parse()?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

async fn curl_json(api: &Api, path: &str, body: Value, xff: &str) -> Result<(u16, String, Value)> {
    let body = body.to_string();
    let xff = format!("X-Forwarded-For: {xff}");
    let (s, h, b) = curl(
        api,
        path,
        &[
            "-H",
            "content-type: application/json",
            "-H",
            &xff,
            "--data",
            &body,
        ],
    )
    .await?;
    Ok((s, h, serde_json::from_str(&b).unwrap_or(Value::String(b))))
}

/// 60 garbage assertions from one client address (behind a trusted proxy), then a real user behind the same
/// address logs in at once; garbage beyond the budget backs off, another address is unaffected.
pub fn garbage_flood(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let mut cfg = mfa_config(fx);
    if let Some(api) = &mut cfg.api {
        api.throttle.ip_max_failures = 50;
        api.trusted_proxies = vec!["127.0.0.0/8".into()];
    }
    let api = start_api(fx, cfg, &clock, 6432)?;
    let client = format!("203.0.113.{}", 1 + rand::random::<u8>() % 200);
    fx.block_on(async {
        let e = email("flood");
        api.add_user(&e, "acme", "analyst").await?;
        let mut statuses = Vec::new();
        for i in 0..60 {
            let body = json!({"email": format!("victim{i}@acme.example"), "assertion": "v1.garbage.garbage"});
            statuses.push(curl_json(&api, "/v1/login", body, &client).await?.0);
        }
        ensure!(count(&statuses, 401) == 50, "{statuses:?}");
        ensure!(count(&statuses, 429) == 10, "back-off beyond the budget: {statuses:?}");
        let (s, _, v) = curl_json(
            &api,
            "/v1/login",
            json!({"email": e, "assertion": api.assertion(&e)}),
            &client,
        )
        .await?;
        ensure!(s == 200, "valid user behind the flooded address: {s} {v}");
        let (s, _, v) = curl_json(
            &api,
            "/v1/login",
            json!({"email": "x@acme.example", "assertion": "v1.garbage.garbage"}),
            "198.51.100.77",
        )
        .await?;
        ensure!(s == 401, "another client address: {s} {v}");
        Ok(())
    })
}

/// A 30-day token (allowed by `auth.max_token_ttl = 30d`) revoked by `jti` (never recorded: minted by the
/// CLI) stays revoked 8 days later; a token longer than the maximum is refused outright.
pub fn long_ttl_revocation(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let month = Duration::from_secs(30 * 86_400);
    let proxy = start_proxy(fx, |c| c.auth.max_token_ttl = month, &clock)?;
    let mut cfg = mfa_config(fx);
    cfg.auth.max_token_ttl = month;
    let api = start_api(fx, cfg, &clock, proxy.addr.port())?;
    let token = fx
        .env
        .mint("longlived@acme.example", "acme", "analyst", true, month)?;
    let by_token = fx
        .env
        .mint("longlived@acme.example", "acme", "analyst", true, month)?;
    let too_long = fx.env.mint(
        "longlived@acme.example",
        "acme",
        "analyst",
        true,
        month + Duration::from_secs(86_400),
    )?;
    let payload = token.split('.').nth(1).context("payload")?;
    let claims: Value = serde_json::from_slice(&base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        payload,
    )?)?;
    fx.block_on(async {
        connect_collect(fx, proxy.addr, "acme", &token).await?;
        let r = connect_collect(fx, proxy.addr, "acme", &too_long)
            .await
            .map(|_| ());
        expect_refused(r, "28P01", "invalid pgveil token")?;
        let (s, v) = api
            .call(
                "POST",
                "/v1/admin/tokens/revoke",
                Some(json!({"jti": claims["jti"]})),
                true,
            )
            .await?;
        ensure!(s == 200, "{s} {v}");
        let (s, v) = api
            .call(
                "POST",
                "/v1/admin/tokens/revoke",
                Some(json!({"token": by_token})),
                true,
            )
            .await?;
        ensure!(s == 200, "{s} {v}");
        clock.advance(8 * 86_400);
        // Several refresh periods of the proxy (200 ms) at the new time.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for t in [&token, &by_token] {
            let r = connect_collect(fx, proxy.addr, "acme", t).await.map(|_| ());
            expect_refused(r, "28000", "revoked")?;
        }
        Ok(())
    })
}

/// The control database over TLS: verify-full against the test CA works (and the session is encrypted);
/// another CA is refused.
pub fn control_tls(fx: &Fixture) -> Result<()> {
    let base = mfa_config(fx).control.context("control")?;
    let secrets = FileSecretStore::new(fx.env.secrets_path());
    let other = pgveil::tls::generate_dev_certs(&fx.env.dir().join("other-ca"), &[])?;
    fx.block_on(async {
        for (mode, ca, encrypted) in [
            (BackendTlsMode::VerifyFull, &fx.env.certs.ca_cert, true),
            (BackendTlsMode::Require, &other.ca_cert, true),
            (BackendTlsMode::Disable, &other.ca_cert, false),
        ] {
            let mut c = base.clone();
            c.tls = mode;
            c.ca_bundle = Some(ca.clone());
            let db = ControlDb::open(&c, &secrets).await?;
            let ssl: bool = db
                .client()
                .await?
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await?
                .get(0);
            ensure!(ssl == encrypted, "{mode:?}: ssl = {ssl}");
        }
        let mut c = base.clone();
        c.tls = BackendTlsMode::VerifyFull;
        c.ca_bundle = Some(other.ca_cert.clone());
        if ControlDb::open(&c, &secrets).await.is_ok() {
            bail!("verify-full accepted a server certificate from another CA");
        }
        Ok(())
    })
}

/// Disable and re-enable within one second: tokens from that second stay dead, a login in that second is
/// asked to retry; emails are found whatever their case.
pub fn disable_same_second(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let proxy = start_proxy(fx, |_| {}, &clock)?;
    let api = start_api(fx, mfa_config(fx), &clock, proxy.addr.port())?;
    fx.block_on(async {
        let e = email("samesec");
        api.add_user(&e, "acme", "analyst").await?;
        let (s, v) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(s == 200, "{s} {v}");
        let token = v["token"].as_str().context("token")?.to_owned();
        connect_collect(fx, proxy.addr, "acme", &token).await?;
        for action in ["disable", "enable"] {
            let (s, v) = api
                .call("POST", &format!("/v1/admin/users/{e}/{action}"), None, true)
                .await?;
            ensure!(s == 200, "{action}: {s} {v}");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r = connect_collect(fx, proxy.addr, "acme", &token)
            .await
            .map(|_| ());
        expect_refused(r, "28000", "revoked")?;
        let (s, v) = api.user_call("/v1/login", &e, json!({})).await?;
        ensure!(s == 429, "login in the same second: {s} {v}");
        clock.advance(1);
        let upper = e.to_uppercase();
        let (s, v) = api.user_call("/v1/login", &upper, json!({})).await?;
        ensure!(s == 200 && v["user"] == json!(e), "capitals: {s} {v}");
        connect_collect(fx, proxy.addr, "acme", v["token"].as_str().unwrap_or("")).await?;
        Ok(())
    })
}

/// Spaced codes, no-store/HSTS/nosniff on token responses, singular "second", and the security page's
/// "Back" after a wrong first enrolment code.
pub fn api_smaller(fx: &Fixture) -> Result<()> {
    let clock = TestClock::now_real();
    let api = start_api(fx, mfa_config(fx), &clock, 6432)?;
    fx.block_on(async {
        let e = email("smaller");
        api.add_user(&e, "acme", "analyst").await?;
        let (secret, _) = api.enrol(&e).await?;
        clock.advance(30);
        let code = pyotp(&secret, clock.secs())?;
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        let body = json!({"email": e, "assertion": api.assertion(&e), "code": spaced});
        let (s, h, v) = curl_json(&api, "/v1/login", body, "192.0.2.1").await?;
        ensure!(s == 200, "spaced code: {s} {v}");
        for needle in [
            "cache-control: no-store",
            "strict-transport-security: max-age=",
            "x-content-type-options: nosniff",
        ] {
            ensure!(h.contains(needle), "{needle} missing: {h}");
        }
        // The page: a wrong first code returns to the enrolment step with the same secret, never to a login.
        let p = email("page");
        api.add_user(&p, "acme", "analyst").await?;
        let assertion = api.assertion(&p);
        let form = |code: &str| {
            vec![
                "--data-urlencode".to_owned(),
                format!("email={p}"),
                "--data-urlencode".to_owned(),
                format!("assertion={assertion}"),
                "--data-urlencode".to_owned(),
                format!("code={code}"),
            ]
        };
        let args = form("");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (s, _, page) = curl(&api, "/security/enroll", &args).await?;
        ensure!(s == 200, "{s} {page}");
        let secret = between(&page, "<code id=\"secret\">", "</code>")?;
        let args = form("000000");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (s, _, page) = curl(&api, "/security/confirm", &args).await?;
        ensure!(s == 401, "{s} {page}");
        ensure!(
            between(&page, "<code id=\"secret\">", "</code>")? == secret,
            "same secret"
        );
        ensure!(
            !page.contains("/security/login"),
            "no way to a token: {page}"
        );
        let args = form("000000");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (s, _, page) = curl(&api, "/security/confirm", &args).await?;
        ensure!(
            s == 429 && page.contains("Try again in 1 second."),
            "{s} {page}"
        );
        Ok(())
    })
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Result<&'a str> {
    let i = s.find(start).context("start marker")? + start.len();
    let j = s[i..].find(end).context("end marker")? + i;
    Ok(&s[i..j])
}
