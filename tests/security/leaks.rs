//! No secret leaks: backend passwords, tokens and the signing key never appear in `Debug` output, error
//! strings, what clients are told, or pgveil's logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use pgveil::backend::{BackendTarget, connect::connect};
use pgveil::ids::SecretId;
use pgveil::secret::{
    BoxFuture, DbCredentials, ExposeSecret, FileSecretStore, SecretError, SecretStore, SecretString,
};
use pgveil::server::{Server, ServerOptions};
use pgveil::token::{TokenSigner, TokenVerifier};

use super::common::{expect_refused, free_port};
use crate::support::{self, Fixture};

const TENANTS: &[&str] = &["acme", "globex", "tlsco", "clearco"];

/// Every secret of the environment: backend passwords and the signing key's PEM body lines.
fn secrets(fx: &Fixture) -> Result<Vec<String>> {
    let mut out: Vec<String> = TENANTS.iter().map(|t| fx.creds(t).1).collect();
    let pem = fx.env.signing_key_pem()?;
    let pem = pem.expose_secret().to_owned();
    out.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned),
    );
    ensure!(out.len() > TENANTS.len(), "signing key has no body");
    Ok(out)
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) -> Result<()> {
    for s in secrets {
        ensure!(
            !text.contains(s.as_str()),
            "{what} reveals a secret: {text}"
        );
    }
    Ok(())
}

pub fn debug_and_errors_hide_secrets(fx: &Fixture) -> Result<()> {
    let secrets = secrets(fx)?;
    assert_clean(
        "Config Debug",
        &format!("{:?} {:#?}", fx.env.config, fx.env.config),
        &secrets,
    )?;
    assert_clean(
        "TokenSigner Debug",
        &format!("{:?} {:#?}", fx.env.signer, fx.env.signer),
        &secrets,
    )?;
    let signing = fx.env.signing_key_pem()?;
    assert_clean("SecretString Debug", &format!("{signing:?}"), &secrets)?;
    let signer = TokenSigner::from_pem(&signing, "x")?;
    assert_clean("TokenSigner Debug", &format!("{signer:?}"), &secrets)?;
    let public = fx.env.verifying_key_pem()?;
    let verifier = TokenVerifier::from_pems(&[public], "pgveil")?;
    assert_clean("TokenVerifier Debug", &format!("{verifier:?}"), &secrets)?;
    // Using the private key where a public key is expected: the error must not quote it.
    let err = TokenVerifier::from_pems(&[signing.expose_secret().to_owned()], "pgveil")
        .err()
        .context("accepted")?;
    assert_clean("TokenError", &format!("{err} {err:?}"), &secrets)?;

    let text = std::fs::read_to_string(fx.env.secrets_path())?;
    let all: serde_json::Value = serde_json::from_str(&text)?;
    for t in TENANTS {
        let id = SecretId::new(format!("tenants/{t}/db"));
        let value = SecretString::from(all[id.as_str()].to_string());
        let creds = DbCredentials::from_secret(&id, &value)?;
        assert_clean(
            "DbCredentials Debug",
            &format!("{creds:?} {creds:#?} {value:?}"),
            &secrets,
        )?;
        // A malformed secret: the error names the id, never the value.
        let broken = SecretString::from(value.expose_secret().replace("\"username\"", "\"user\""));
        let err = DbCredentials::from_secret(&id, &broken)
            .err()
            .context("malformed secret accepted")?;
        assert_clean("SecretError", &format!("{err} {err:?}"), &secrets)?;
    }

    // A secrets file with a syntax error right after a password.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("secrets.json");
    let canary = "pw-CANARY-0b9d27";
    std::fs::write(
        &bad,
        format!("{{\"tenants/acme/db\": {{\"password\": \"{canary}\", }}"),
    )?;
    let store = FileSecretStore::new(bad);
    let err = fx
        .block_on(store.fetch(&SecretId::new("tenants/acme/db")))
        .err()
        .context("accepted")?;
    ensure!(
        !format!("{err} {err:?}").contains(canary),
        "secret store error quotes the file: {err}"
    );

    // Backend connection errors: wrong password, closed port, unknown database.
    let (user, password) = fx.creds("acme");
    let target = |port: u16, dbname: &str| {
        Arc::new(BackendTarget {
            host: "127.0.0.1".into(),
            port,
            dbname: dbname.into(),
            tls: None,
        })
    };
    let creds = |pw: &str| {
        let json = serde_json::json!({"username": user, "password": pw}).to_string();
        DbCredentials::from_secret(&SecretId::new("t"), &SecretString::from(json))
    };
    let mut with_canary = secrets.clone();
    with_canary.push(canary.to_owned());
    let pg = fx.env.cluster.port();
    for (t, pw) in [
        (target(pg, "acme"), canary),
        (target(free_port()?, "acme"), &password),
        (target(pg, "nope"), &password),
    ] {
        let err = fx
            .block_on(connect(t, &creds(pw)?, &[], Duration::from_secs(10)))
            .err()
            .context("backend connection unexpectedly succeeded")?;
        assert_clean("ConnectError", &format!("{err} {err:?}"), &with_canary)?;
    }
    Ok(())
}

/// A secret store that hands out a wrong password for one secret (a rotation gone wrong).
struct WrongPassword {
    inner: FileSecretStore,
    target: SecretId,
    password: String,
}

impl SecretStore for WrongPassword {
    fn fetch<'a>(&'a self, id: &'a SecretId) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        Box::pin(async move {
            let value = self.inner.fetch(id).await?;
            if id != &self.target {
                return Ok(value);
            }
            let mut v: serde_json::Value =
                serde_json::from_str(value.expose_secret()).expect("json");
            v["password"] = self.password.clone().into();
            Ok(SecretString::from(v.to_string()))
        })
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a proxy on a current-thread runtime under a capturing subscriber (TRACE), drives successful and
/// failing sessions through it, and searches the logs and the client errors for secrets and tokens.
pub fn logs_and_client_errors_hide_secrets(fx: &Fixture) -> Result<()> {
    let mut secrets = secrets(fx)?;
    let wrong = "wrongpw-CANARY-5e1c0d".to_owned();
    secrets.push(wrong.clone());
    let globex_secret = SecretId::new("tenants/globex/db");
    let mut cfg = fx.env.config.clone();
    cfg.listen.addr = "127.0.0.1:0".parse()?;
    let mut down = cfg
        .tenants
        .iter()
        .find(|t| t.id.as_str() == "acme")
        .context("acme")?
        .clone();
    down.id = pgveil::ids::TenantId::new("downco");
    down.host = Some("127.0.0.1".into());
    down.port = Some(free_port()?);
    cfg.tenants.push(down);
    cfg.roles.push(pgveil::ids::RoleName::new("admin2"));
    let store = WrongPassword {
        inner: FileSecretStore::new(fx.env.secrets_path()),
        target: globex_secret,
        password: wrong.clone(),
    };
    let opts = ServerOptions {
        secrets: Some(Arc::new(store)),
        ..ServerOptions::default()
    };

    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut tokens: Vec<String> = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let server = Server::bind(cfg, opts).await?;
            let addr = server.local_addr();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let run = tokio::spawn(server.run(
                async {
                    let _ = stop_rx.await;
                },
                Duration::from_secs(2),
            ));
            let result: Result<()> = async {
                // Successful sessions on every backend kind (SCRAM, TLS, cleartext), with a statement each.
                for t in ["acme", "tlsco", "clearco"] {
                    let token = fx.token("leak@test", t, "admin");
                    let c = support::connect(&fx.conn_str(addr, t, "tester", &token)).await?;
                    c.simple_query("SELECT count(*) FROM payers").await?;
                    tokens.push(token);
                }
                // Refusals: garbage token, forged tenant, unknown tenant, wrong backend password, backend down.
                let garbage = "tok-CANARY-9d8c7b6a5f4e".to_owned();
                expect_refused(
                    &fx.conn_str(addr, "acme", "tester", &garbage),
                    "28P01",
                    &[&garbage],
                )
                .await?;
                tokens.push(garbage);
                let good = fx.token("leak@test", "acme", "admin2");
                let (head, sig) = good.rsplit_once('.').unwrap();
                let tampered = format!("{head}.{}{}", &sig[..sig.len() - 4], "AAAA");
                expect_refused(
                    &fx.conn_str(addr, "acme", "tester", &tampered),
                    "28P01",
                    &[&tampered],
                )
                .await?;
                tokens.push(tampered);
                let nope = fx.token("leak@test", "nope", "admin");
                expect_refused(
                    &fx.conn_str(addr, "nope", "tester", &nope),
                    "28000",
                    &[&nope],
                )
                .await?;
                tokens.push(nope);
                let globex = fx.token("leak@test", "globex", "admin");
                let r = expect_refused(
                    &fx.conn_str(addr, "globex", "tester", &globex),
                    "08006",
                    &[&wrong],
                )
                .await?;
                assert_clean("client error", &r.text, &secrets)?;
                tokens.push(globex);
                let downco = fx.token("leak@test", "downco", "admin");
                let r = expect_refused(
                    &fx.conn_str(addr, "downco", "tester", &downco),
                    "08006",
                    &[&downco],
                )
                .await?;
                assert_clean("client error", &r.text, &secrets)?;
                tokens.push(downco);
                Ok(())
            }
            .await;
            let _ = stop_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
            result
        })
    })?;

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    ensure!(
        text.contains("token refused"),
        "the log capture saw nothing; got:\n{text}"
    );
    ensure!(
        text.contains("backend"),
        "backend failures were not logged:\n{text}"
    );
    assert_clean("pgveil logs", &text, &secrets)?;
    for t in &tokens {
        let sig = t.rsplit('.').next().unwrap_or(t);
        ensure!(!text.contains(t.as_str()), "pgveil logs contain a token");
        ensure!(
            sig.len() < 16 || !text.contains(sig),
            "pgveil logs contain a token signature"
        );
    }
    Ok(())
}
