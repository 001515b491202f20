//! MFA end to end: control database, HTTP API over TLS, TOTP with codes from an independent implementation
//! (Python pyotp), replay/stale/wrong codes, throttling and lockout with an injected clock, recovery codes,
//! OIDC first factor, forced 2FA through a real client, revocation of live sessions, two API instances racing
//! on one code, the CLI, and the security page in headless Chromium.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::StreamExt;
use pgveil::api::first_factor::{WebappConfig, sign_assertion};
use pgveil::api::{ApiConfig, ApiOptions, ApiServer};
use pgveil::clock::Clock;
use pgveil::config::Config;
use pgveil::control::ControlConfig;
use pgveil::ids::SecretId;
use pgveil::mfa::throttle::ThrottleConfig;
use pgveil::secret::{FileSecretStore, SecretString};
use pgveil::server::ServerOptions;
use serde_json::{Value, json};
use support::{Fixture, sqlstate};
use tokio::sync::oneshot;
use tokio_postgres::AsyncMessage;

#[path = "hardening.rs"]
mod hardening;
#[path = "cases.rs"]
mod mfa_cases;

fn main() -> std::process::ExitCode {
    support::main_with(&[
        (
            "pyotp_codes_accepted_replay_stale_wrong_refused",
            mfa_cases::pyotp_codes,
        ),
        (
            "throttling_lockout_and_release",
            mfa_cases::throttling_lockout,
        ),
        ("ip_lockout_and_release", mfa_cases::ip_lockout),
        (
            "recovery_codes_single_use_and_reenrolment",
            mfa_cases::recovery_codes,
        ),
        ("oidc_first_factor", mfa_cases::oidc_first_factor),
        ("grace_period_through_real_client", mfa_cases::grace_period),
        (
            "api_refuses_tokens_without_mfa_after_grace",
            mfa_cases::api_grace,
        ),
        (
            "revocation_stops_new_and_open_sessions",
            mfa_cases::revocation,
        ),
        (
            "two_instances_same_code_exactly_one_token",
            mfa_cases::two_instances_race,
        ),
        ("admin_api_requires_key", mfa_cases::admin_key_required),
        ("cli_login_and_user_commands", mfa_cases::cli),
        ("security_page_in_headless_chromium", mfa_cases::browser),
        (
            "burst_of_wrong_totp_codes_one_and_two_instances",
            hardening::totp_burst,
        ),
        (
            "burst_of_wrong_recovery_codes_bounded_and_memory_flat",
            hardening::recovery_burst,
        ),
        (
            "garbage_assertion_flood_then_valid_user_logs_in",
            hardening::garbage_flood,
        ),
        (
            "long_ttl_token_revoked_stays_revoked",
            hardening::long_ttl_revocation,
        ),
        ("control_database_tls_verify_full", hardening::control_tls),
        (
            "disable_enable_same_second_and_email_case",
            hardening::disable_same_second,
        ),
        (
            "api_headers_spaced_codes_and_page_back",
            hardening::api_smaller,
        ),
    ])
}

/// Secrets written once per test binary.
pub struct Keys {
    pub admin: String,
    pub webapp: String,
}

static KEYS: OnceLock<Keys> = OnceLock::new();

/// Creates the control database and its secrets once.
pub fn keys(fx: &Fixture) -> &'static Keys {
    KEYS.get_or_init(|| {
        let password = format!("ctl-{}", uuid::Uuid::new_v4().simple());
        fx.env
            .cluster
            .create_user("pgveil_ctl", &password, pgcluster::PasswordMethod::Scram)
            .expect("control user");
        fx.env
            .cluster
            .create_database("pgveil_control", "pgveil_ctl")
            .expect("control database");
        let keys = Keys {
            admin: format!("admin-{}", uuid::Uuid::new_v4().simple()),
            webapp: format!("webapp-{}", uuid::Uuid::new_v4().simple()),
        };
        let path = fx.env.secrets_path();
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["pgveil/control/db"] = json!({
            "username": "pgveil_ctl", "password": password, "host": "127.0.0.1",
            "port": fx.env.cluster.port(), "dbname": "pgveil_control"
        });
        v["pgveil/totp_key"] = json!(pgveil::mfa::crypto::SecretBox::generate_key_hex());
        v["pgveil/admin_key"] = json!(keys.admin);
        v["pgveil/webapp_key"] = json!(keys.webapp);
        std::fs::write(&path, v.to_string()).unwrap();
        keys
    })
}

/// A clock tests move by hand.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn at(secs: i64) -> Self {
        TestClock(Arc::new(AtomicI64::new(secs)))
    }
    pub fn now_real() -> Self {
        Self::at(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        )
    }
    pub fn secs(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    pub fn set(&self, secs: i64) {
        self.0.store(secs, Ordering::SeqCst)
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let c = self.0.clone();
        Arc::new(move || UNIX_EPOCH + Duration::from_secs(c.load(Ordering::SeqCst) as u64))
    }
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.secs() as u64)
    }
}

/// The fixture's config plus `[control]` and `[api]` (web-app first factor).
pub fn mfa_config(fx: &Fixture) -> Config {
    keys(fx);
    let mut cfg = fx.env.config.clone();
    cfg.listen.addr = "127.0.0.1:0".parse().unwrap();
    cfg.control = Some(ControlConfig {
        secret: SecretId::new("pgveil/control/db"),
        totp_key_secret: SecretId::new("pgveil/totp_key"),
        pool_size: 4,
        revocation_refresh: Duration::from_millis(200),
        revocation_max_stale: Duration::from_secs(120),
        tls: Default::default(),
        ca_bundle: None,
    });
    cfg.api = Some(ApiConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_key_secret: SecretId::new("pgveil/admin_key"),
        token_ttl: Duration::from_secs(8 * 3600),
        proxy_host: "127.0.0.1".into(),
        proxy_port: None,
        oidc: None,
        webapp: Some(WebappConfig {
            key_secret: SecretId::new("pgveil/webapp_key"),
            max_age: Duration::from_secs(600),
        }),
        insecure_no_first_factor: false,
        throttle: ThrottleConfig {
            ip_max_failures: 100_000,
            ..Default::default()
        },
        trusted_proxies: Vec::new(),
    });
    cfg
}

/// A running API instance.
pub struct Api {
    pub addr: SocketAddr,
    pub ca: std::path::PathBuf,
    pub admin: String,
    pub webapp: SecretString,
    pub clock: TestClock,
    _stop: oneshot::Sender<()>,
}

pub fn start_api(fx: &Fixture, cfg: Config, clock: &TestClock, proxy_port: u16) -> Result<Api> {
    let keys = keys(fx);
    let secrets = Arc::new(FileSecretStore::new(fx.env.secrets_path()));
    let server = fx.block_on(ApiServer::bind(
        cfg,
        ApiOptions {
            secrets,
            clock: clock.clock(),
            local_proxy: None,
            proxy_port,
        },
    ))?;
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    fx.rt.spawn(server.run(async {
        let _ = rx.await;
    }));
    Ok(Api {
        addr,
        ca: fx.env.certs.ca_cert.clone(),
        admin: keys.admin.clone(),
        webapp: SecretString::from(keys.webapp.clone()),
        clock: clock.clone(),
        _stop: tx,
    })
}

impl Api {
    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Sends a request; returns the status and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        admin: bool,
    ) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base());
        let (status, text) = pgveil::api::fetch::send(pgveil::api::fetch::Request {
            method,
            url: &url,
            json: body.map(|b| b.to_string()),
            bearer: admin.then_some(self.admin.as_str()),
            ca: Some(&self.ca),
        })
        .await
        .map_err(|e| anyhow!("{url}: {e}"))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A web-app assertion for `email`, valid 5 minutes from the API's clock.
    pub fn assertion(&self, email: &str) -> String {
        sign_assertion(
            &self.webapp,
            email,
            self.clock.time() + Duration::from_secs(300),
        )
    }

    pub async fn add_user(&self, email: &str, tenant: &str, role: &str) -> Result<()> {
        let (s, v) = self
            .call(
                "POST",
                "/v1/admin/users",
                Some(json!({"email": email, "tenant": tenant, "role": role})),
                true,
            )
            .await?;
        ensure!(s == 201, "create user: {s} {v}");
        Ok(())
    }

    /// POSTs `body` + email + assertion to `path`.
    pub async fn user_call(
        &self,
        path: &str,
        email: &str,
        mut body: Value,
    ) -> Result<(u16, Value)> {
        body["email"] = json!(email);
        body["assertion"] = json!(self.assertion(email));
        self.call("POST", path, Some(body), false).await
    }

    /// Enrols and confirms `email` at the current clock; returns (base32 secret, recovery codes).
    pub async fn enrol(&self, email: &str) -> Result<(String, Vec<String>)> {
        let (s, v) = self.user_call("/v1/enroll", email, json!({})).await?;
        ensure!(s == 200, "enroll: {s} {v}");
        let secret = v["secret"].as_str().context("secret")?.to_owned();
        ensure!(
            v["otpauth_uri"]
                .as_str()
                .unwrap()
                .starts_with("otpauth://totp/pgveil%3A"),
            "{v}"
        );
        let code = pyotp(&secret, self.clock.secs())?;
        let (s, v) = self
            .user_call("/v1/enroll/confirm", email, json!({"code": code}))
            .await?;
        ensure!(s == 200, "confirm: {s} {v}");
        let codes = v["recovery_codes"]
            .as_array()
            .context("codes")?
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        Ok((secret, codes))
    }
}

/// The TOTP code for `secret` at `t`, computed by Python's pyotp (an independent implementation).
pub fn pyotp(secret: &str, t: i64) -> Result<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyotp,sys; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))",
            secret,
            &t.to_string(),
        ])
        .output()
        .context("running python3 (pyotp)")?;
    ensure!(
        out.status.success(),
        "pyotp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Starts a proxy with the MFA config and an injected clock.
pub fn start_proxy(
    fx: &Fixture,
    edit: impl FnOnce(&mut Config),
    clock: &TestClock,
) -> Result<support::Running> {
    let base = mfa_config(fx);
    fx.start_server(
        |cfg| {
            *cfg = base;
            cfg.api = None;
            edit(cfg);
        },
        ServerOptions {
            clock: clock.clock(),
            ..Default::default()
        },
    )
}

/// Connects through a proxy with `token`, collecting notices.
pub async fn connect_collect(
    fx: &Fixture,
    addr: SocketAddr,
    tenant: &str,
    token: &str,
) -> Result<(
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    let (client, mut conn) = tokio_postgres::connect(
        &fx.conn_str(addr, tenant, "u", token),
        tokio_postgres::NoTls,
    )
    .await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_owned());
            }
        }
    });
    Ok((client, rx))
}

/// Expects `r` to be a refusal with SQLSTATE `code` whose message contains `needle`.
pub fn expect_refused<T>(r: Result<T>, code: &str, needle: &str) -> Result<()> {
    match r {
        Ok(_) => bail!("expected refusal {code}"),
        Err(e) => {
            let state = sqlstate(&e);
            let msg = format!("{e:#}");
            ensure!(
                state.as_deref() == Some(code),
                "expected {code}, got {state:?}: {msg}"
            );
            ensure!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
            Ok(())
        }
    }
}
