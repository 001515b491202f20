//! The `aws` secret backend end to end, against a real local Secrets Manager endpoint (`moto_server`): tenants'
//! credentials and the token verifying key come from it; single-flight on a cold tenant and zero GetSecretValue
//! calls at steady state (counted on the wire); cold-connect latency with a cache miss and a hit; rotation of the
//! password (simple, and the AWSPENDING flow) and of the user (alternating users) while clients are connected
//! and connecting; a store outage within and past the staleness bound, and recovery; no secret value in logs,
//! client errors or Debug output. Tests run one at a time (they share moto and the tenants' passwords).
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]
// `std::env::set_var` in main, before any other thread exists (see the SAFETY comment there).
#![allow(unsafe_code)]

mod secrets_env;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use aws_sdk_secretsmanager::Client;
use pgveil::config::{Config, SecretsConfig};
use pgveil::ids::SecretId;
use pgveil::secret::{DbCredentials, ExposeSecret};
use pgveil::server::ServerOptions;
use secrets_env::{CountingProxy, Moto, captured_logs, sdk_client, seed};
use support::{Fixture, Running, sqlstate};

fn main() -> std::process::ExitCode {
    // SAFETY: single-threaded here (before the fixture, runtime and test threads exist). Dummy credentials for
    // the local endpoint, for this process only.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_ENDPOINT_URL");
    }
    secrets_env::capture_logs();
    let code = support::main_with(&[
        (
            "single_flight_and_steady_state_fetch_count",
            single_flight_and_steady_state,
        ),
        ("cold_connect_latency_miss_vs_hit", cold_connect_latency),
        ("rotation_same_user_new_password", rotation_same_user),
        ("rotation_with_awspending", rotation_pending),
        ("rotation_alternating_users", rotation_alternating_users),
        ("store_outage_bounded_staleness_and_recovery", store_outage),
        (
            "no_secret_value_in_logs_errors_or_debug",
            no_secret_anywhere,
        ),
    ]);
    // Stop moto (statics are never dropped) and scan everything logged during the whole run.
    if let Some(st) = STATE.get() {
        drop(st.moto.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Err(e) = st.check_no_secret(&captured_logs(), "the complete log") {
            eprintln!("FAILED: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    }
    code
}

/// Shared across tests: moto, the counting proxy, the SDK client, what the secrets hold now.
struct State {
    moto: Mutex<Option<Moto>>,
    moto_port: u16,
    proxy: CountingProxy,
    client: Client,
    secrets: Mutex<BTreeMap<String, String>>,
    /// Every secret value used so far (passwords, keys, canaries): must never show up anywhere.
    values: Mutex<Vec<String>>,
}

static STATE: OnceLock<State> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn state(fx: &Fixture) -> Result<&'static State> {
    if let Some(s) = STATE.get() {
        return Ok(s);
    }
    let text = std::fs::read_to_string(fx.env.secrets_path())?;
    let file: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)?;
    let mut secrets = BTreeMap::new();
    let mut values = Vec::new();
    for (k, v) in file {
        let s = match v {
            serde_json::Value::String(s) => s,
            other => {
                values.push(other["password"].as_str().unwrap_or_default().to_owned());
                other.to_string()
            }
        };
        if k.contains("signing") {
            // The private key's base64 body.
            values.extend(
                s.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_owned),
            );
        }
        secrets.insert(k, s);
    }
    let moto = Moto::start(0)?;
    let moto_port = moto.port;
    let (proxy, client) = fx.block_on(async {
        let proxy = CountingProxy::start(moto_port).await?;
        let client = sdk_client(&moto.url()).await;
        seed(&client, &secrets).await?;
        anyhow::Ok((proxy, client))
    })?;
    let _ = STATE.set(State {
        moto: Mutex::new(Some(moto)),
        moto_port,
        proxy,
        client,
        secrets: Mutex::new(secrets),
        values: Mutex::new(values),
    });
    Ok(STATE.get().expect("just set"))
}

impl State {
    fn secret_json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.secrets.lock().unwrap()[name]).expect("json secret")
    }

    /// Puts a new version (AWSCURRENT unless `stages` says otherwise); returns its version id.
    async fn put(
        &self,
        name: &str,
        value: &serde_json::Value,
        stages: Option<&str>,
    ) -> Result<String> {
        if let Some(p) = value.get("password").and_then(|p| p.as_str()) {
            self.values.lock().unwrap().push(p.to_owned());
        }
        let token = uuid::Uuid::new_v4().to_string();
        let mut req = self
            .client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.to_string());
        req = req.client_request_token(token);
        if let Some(stage) = stages {
            req = req.version_stages(stage);
        } else {
            self.secrets
                .lock()
                .unwrap()
                .insert(name.to_owned(), value.to_string());
        }
        let out = req.send().await.with_context(|| format!("put {name}"))?;
        let version = out.version_id().unwrap_or_default().to_owned();
        if stages.is_none() {
            self.one_current(name, &version).await?;
        }
        Ok(version)
    }

    /// Makes `version` the only AWSCURRENT version and checks that GetSecretValue serves it. AWS keeps a
    /// staging label on one version; moto (5.x) does not after UpdateSecretVersionStage (rotation_pending's
    /// promotion): it leaves its "default version" pointing at the old one, so the next PutSecretValue moves
    /// AWSCURRENT off that old version and leaves it on the promoted one too, and GetSecretValue(AWSCURRENT)
    /// serves the first match (the promoted, now outdated, value) -- which made the rotation tests depend on
    /// the order the test threads ran them in. The label is removed from every other version here, as AWS
    /// would have, and the result is checked, so a test never blames pgveil for the emulator's state.
    async fn one_current(&self, name: &str, version: &str) -> Result<()> {
        let listed = self
            .client
            .list_secret_version_ids()
            .secret_id(name)
            .send()
            .await
            .with_context(|| format!("list versions of {name}"))?;
        for v in listed.versions() {
            let id = v.version_id().unwrap_or_default();
            if id != version && v.version_stages().iter().any(|s| s == "AWSCURRENT") {
                self.client
                    .update_secret_version_stage()
                    .secret_id(name)
                    .version_stage("AWSCURRENT")
                    .remove_from_version_id(id)
                    .send()
                    .await
                    .with_context(|| format!("remove AWSCURRENT from an old version of {name}"))?;
            }
        }
        let served = self
            .client
            .get_secret_value()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .send()
            .await?;
        ensure!(
            served.version_id() == Some(version),
            "moto serves another AWSCURRENT version of {name} than the one just put"
        );
        Ok(())
    }

    fn check_no_secret(&self, text: &str, what: &str) -> Result<()> {
        for v in self.values.lock().unwrap().iter().filter(|v| v.len() >= 8) {
            ensure!(
                !text.contains(v.as_str()),
                "a secret value appears in {what}"
            );
        }
        Ok(())
    }
}

/// Starts pgveil with the `aws` backend pointed at moto through the counting proxy.
fn aws_server(fx: &Fixture, st: &State, edit: impl FnOnce(&mut Config)) -> Result<Running> {
    fx.start_server(
        |cfg| {
            cfg.secrets = SecretsConfig::aws(Some("us-east-1".into()), Some(st.proxy.url()));
            cfg.secrets.timeout = Duration::from_secs(3);
            cfg.pool.size = 60;
            edit(cfg);
        },
        ServerOptions::default(),
    )
}

fn password() -> String {
    format!("rot-{}", uuid::Uuid::new_v4().simple())
}

fn single_flight_and_steady_state(fx: &Fixture) -> Result<()> {
    let _g = serial();
    let st = state(fx)?;
    let srv = aws_server(fx, st, |_| {})?;
    fx.block_on(async {
        let before = st.proxy.count();
        let n = 16;
        let tlsco = Connector::new(fx, srv.addr, "tlsco");
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(tlsco.clone().connect())).collect();
        let mut held = Vec::new();
        for t in tasks {
            held.push(t.await??);
        }
        let cold = st.proxy.count() - before;
        println!("single-flight: {n} concurrent first connections to a cold tenant -> {cold} GetSecretValue");
        ensure!(cold == 1, "expected exactly one GetSecretValue, saw {cold}");

        let before = st.proxy.count();
        let mut conns = 0;
        for _ in 0..20 {
            let c = fx.connect_to(srv.addr, "tlsco", "admin").await?;
            c.simple_query("SELECT 1").await?;
            conns += 1;
        }
        for _ in 0..20 {
            held.push(tlsco.clone().connect().await?); // each needs a new backend connection
            conns += 1;
        }
        let steady = st.proxy.count() - before;
        println!("steady state: {steady} GetSecretValue for {conns} connections (20 new backend connections)");
        ensure!(steady == 0, "steady state made {steady} GetSecretValue calls");
        Ok(())
    })
}

/// How to open a session as admin of a tenant; cheap to clone into spawned tasks.
#[derive(Clone)]
struct Connector {
    conn_str: String,
}

impl Connector {
    fn new(fx: &Fixture, addr: SocketAddr, tenant: &str) -> Connector {
        let token = fx.token(&format!("admin@{tenant}"), tenant, "admin");
        Connector {
            conn_str: fx.conn_str(addr, tenant, "tester", &token),
        }
    }

    /// Connects and checks the session works.
    async fn connect(self) -> Result<tokio_postgres::Client> {
        let c = support::connect(&self.conn_str).await?;
        c.simple_query("SELECT count(*) FROM payers").await?;
        Ok(c)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn cold_connect_latency(fx: &Fixture) -> Result<()> {
    let _g = serial();
    let st = state(fx)?;
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let srv = aws_server(fx, st, |_| {})?;
        fx.block_on(async {
            let t = Instant::now();
            let a = Connector::new(fx, srv.addr, "acme").connect().await?;
            miss.push(t.elapsed());
            // A second client needs a second backend connection, with the credentials from the cache.
            let t = Instant::now();
            let b = Connector::new(fx, srv.addr, "acme").connect().await?;
            hit.push(t.elapsed());
            drop((a, b));
            anyhow::Ok(())
        })?;
    }
    println!(
        "cold connect (new backend connection + first query), median of 5: cache miss {:?}, cache hit {:?}",
        median(miss),
        median(hit)
    );
    Ok(())
}

/// When each connection attempt started and whether it succeeded.
type Attempts = Vec<(Instant, Result<(), String>)>;

/// New clients connecting every `every` and holding their sessions (so each needs a new backend connection),
/// recording when each attempt started and whether it succeeded.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(Attempts, Vec<tokio_postgres::Client>)>,
}

impl Load {
    fn start(who: Connector, every: Duration) -> Load {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut attempts = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = rx.changed() => break,
                    _ = tick.tick() => {
                        let started = Instant::now();
                        attempts.push((started, tokio::spawn(who.clone().connect())));
                    }
                }
            }
            let (mut results, mut clients) = (Vec::new(), Vec::new());
            for (at, t) in attempts {
                match t.await.expect("connect task") {
                    Ok(c) => {
                        clients.push(c);
                        results.push((at, Ok(())));
                    }
                    Err(e) => results.push((
                        at,
                        Err(format!("{e:#} [{}]", sqlstate(&e).unwrap_or_default())),
                    )),
                }
            }
            (results, clients)
        });
        Load { stop, task }
    }

    async fn finish(
        self,
    ) -> Result<(
        Vec<(Instant, Result<(), String>)>,
        Vec<tokio_postgres::Client>,
    )> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }
}

/// Prints and checks a rotation: no failure among attempts started at or after `updated`.
fn report(
    name: &str,
    st: &State,
    results: &[(Instant, Result<(), String>)],
    marks: &[(&str, Instant)],
) -> Result<()> {
    let mut line = format!("{name}: {} connection attempts;", results.len());
    let mut bounds: Vec<(&str, Instant)> = marks.to_vec();
    bounds.push(("end", Instant::now() + Duration::from_secs(3600)));
    let mut from = (
        "start",
        results.first().map(|r| r.0).unwrap_or_else(Instant::now),
    );
    for (label, until) in &bounds {
        let phase: Vec<_> = results
            .iter()
            .filter(|(at, _)| *at >= from.1 && at < until)
            .collect();
        let failed = phase.iter().filter(|(_, r)| r.is_err()).count();
        line += &format!(
            " [{} -> {label}] {failed} failed of {};",
            from.0,
            phase.len()
        );
        from = (label, *until);
    }
    println!("{line}");
    for (_, r) in results {
        if let Err(e) = r {
            st.check_no_secret(e, "a client error")?;
        }
    }
    Ok(())
}

fn failures_since(results: &[(Instant, Result<(), String>)], since: Instant) -> Vec<String> {
    results
        .iter()
        .filter(|(at, r)| *at >= since && r.is_err())
        .map(|(_, r)| r.clone().unwrap_err())
        .collect()
}

async fn all_work(clients: &[tokio_postgres::Client]) -> Result<()> {
    for c in clients {
        c.simple_query("SELECT count(*) FROM payers")
            .await
            .context("an existing session broke")?;
    }
    Ok(())
}

fn rotation_same_user(fx: &Fixture) -> Result<()> {
    let _g = serial();
    let st = state(fx)?;
    let srv = aws_server(fx, st, |_| {})?;
    let name = "tenants/acme/db";
    fx.block_on(async {
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(Connector::new(fx, srv.addr, "acme").connect().await?);
        }
        let load = Load::start(
            Connector::new(fx, srv.addr, "acme"),
            Duration::from_millis(40),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pw = password();
        let mut secret = st.secret_json(name);
        secret["password"] = pw.clone().into();
        st.values.lock().unwrap().push(pw.clone());
        let db_changed = Instant::now();
        fx.superuser_sql("postgres", &format!("ALTER ROLE acme_app PASSWORD '{pw}'"))?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        all_work(&held).await?;
        st.put(name, &secret, None).await?;
        let updated = Instant::now();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (results, clients) = load.finish().await?;
        report(
            "rotation (same user, DB first then secret)",
            st,
            &results,
            &[("db changed", db_changed), ("secret updated", updated)],
        )?;
        let after = failures_since(&results, updated);
        ensure!(
            after.is_empty(),
            "connections failed after the secret was updated: {after:?}"
        );
        ensure!(
            results.iter().filter(|(at, _)| *at >= updated).count() > 3,
            "too few attempts after the update"
        );
        all_work(&held).await?;
        all_work(&clients).await?;
        Ok(())
    })
}

fn rotation_pending(fx: &Fixture) -> Result<()> {
    let _g = serial();
    let st = state(fx)?;
    let srv = aws_server(fx, st, |cfg| cfg.secrets.try_pending = true)?;
    let name = "tenants/acme/db";
    fx.block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(Connector::new(fx, srv.addr, "acme").connect().await?);
        }
        let old = st.client.get_secret_value().secret_id(name).send().await?;
        let old_version = old.version_id().unwrap_or_default().to_owned();
        let load = Load::start(
            Connector::new(fx, srv.addr, "acme"),
            Duration::from_millis(40),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The AWS rotation steps: createSecret (AWSPENDING), setSecret (the database), finishSecret (promote).
        let pw = password();
        let mut secret = st.secret_json(name);
        secret["password"] = pw.clone().into();
        let new_version = st.put(name, &secret, Some("AWSPENDING")).await?;
        let db_changed = Instant::now();
        fx.superuser_sql("postgres", &format!("ALTER ROLE acme_app PASSWORD '{pw}'"))?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        all_work(&held).await?;
        st.client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .move_to_version_id(&new_version)
            .remove_from_version_id(&old_version)
            .send()
            .await?;
        st.secrets
            .lock()
            .unwrap()
            .insert(name.to_owned(), secret.to_string());
        let promoted = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (results, clients) = load.finish().await?;
        report(
            "rotation (AWSPENDING flow)",
            st,
            &results,
            &[("db changed", db_changed), ("promoted", promoted)],
        )?;
        let failed = failures_since(&results, Instant::now() - Duration::from_secs(3600));
        ensure!(
            failed.is_empty(),
            "connections failed during an AWSPENDING rotation: {failed:?}"
        );
        all_work(&held).await?;
        all_work(&clients).await?;
        anyhow::Ok(())
    })?;
    // After finishSecret, AWSCURRENT is the new version: a fresh instance that does not look at AWSPENDING
    // connects with it (moto, like other non-AWS implementations, keeps returning the old version to a
    // GetSecretValue without VersionStage; pgveil always names the stage).
    let fresh = aws_server(fx, st, |_| {})?;
    fx.block_on(async {
        let c = Connector::new(fx, fresh.addr, "acme").connect().await?;
        c.simple_query("SELECT 1").await?;
        Ok(())
    })
}

fn rotation_alternating_users(fx: &Fixture) -> Result<()> {
    let _g = serial();
    let st = state(fx)?;
    let srv = aws_server(fx, st, |_| {})?;
    let name = "tenants/globex/db";
    fx.block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(Connector::new(fx, srv.addr, "globex").connect().await?);
        }
        let load = Load::start(Connector::new(fx, srv.addr, "globex"), Duration::from_millis(40));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The clone user, with the same rights (AWS "alternating users" strategy).
        let pw_b = password();
        st.values.lock().unwrap().push(pw_b.clone());
        fx.superuser_sql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5'; CREATE ROLE globex_app_b LOGIN PASSWORD '{pw_b}' IN ROLE globex_app;"
            ),
        )?;
        let mut secret = st.secret_json(name);
        secret["username"] = "globex_app_b".into();
        secret["password"] = pw_b.clone().into();
        st.put(name, &secret, None).await?;
        let swapped = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The next rotation changes the now-inactive user's password: cached credentials stop working.
        let pw_a = password();
        st.values.lock().unwrap().push(pw_a.clone());
        fx.superuser_sql("postgres", &format!("SET password_encryption = 'md5'; ALTER ROLE globex_app PASSWORD '{pw_a}'"))?;
        let old_invalid = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (results, clients) = load.finish().await?;
        report("rotation (alternating users)", st, &results, &[("secret swapped", swapped), ("old user changed", old_invalid)])?;
        let after = failures_since(&results, swapped);
        ensure!(after.is_empty(), "connections failed after the secret was updated: {after:?}");
        let fresh = Connector::new(fx, srv.addr, "globex").connect().await?;
        let user: String = fresh.query_one("SELECT current_user::text", &[]).await?.get(0);
        ensure!(user == "globex_app_b", "new connection runs as {user}");
        let user: String = held[0].query_one("SELECT current_user::text", &[]).await?.get(0);
        ensure!(user == "globex_app", "existing session runs as {user}");
        all_work(&held).await?;
        all_work(&clients).await?;
        Ok(())
    })
}

fn store_outage(fx: &Fixture) -> Result<()> {
    let _g = serial();
    let st = state(fx)?;
    let srv = aws_server(fx, st, |cfg| {
        cfg.secrets.cache_ttl = Duration::from_secs(1);
        cfg.secrets.refresh_ahead = Duration::from_millis(500);
        cfg.secrets.max_stale = Duration::from_secs(3);
        cfg.secrets.retry_after = Duration::from_millis(250);
        cfg.secrets.timeout = Duration::from_secs(2);
    })?;
    fx.block_on(async {
        let s1 = Connector::new(fx, srv.addr, "clearco").connect().await?;
        drop(st.moto.lock().unwrap().take()); // moto stopped
        let stopped = Instant::now();
        s1.simple_query("SELECT 1").await.context("session broke when the store went down")?;
        let mut held = vec![Connector::new(fx, srv.addr, "clearco").connect().await.context("new connection within the bound")?];
        let mut failure = None;
        while stopped.elapsed() < Duration::from_secs(30) {
            match Connector::new(fx, srv.addr, "clearco").connect().await {
                Ok(c) => held.push(c),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let e = failure.ok_or_else(|| anyhow!("new connections still succeed 30 s into the outage"))?;
        let shown = format!("{e:#}");
        println!(
            "outage: {} new connections succeeded on the cached value, then refused after {:?}: {shown}",
            held.len(),
            stopped.elapsed()
        );
        ensure!(sqlstate(&e).as_deref() == Some("08006"), "{shown}");
        ensure!(shown.contains("credentials are unavailable"), "{shown}");
        ensure!(!shown.contains("tenants/"), "secret id shown to the client: {shown}");
        s1.simple_query("SELECT 1").await.context("session broke past the staleness bound")?;
        all_work(&held).await?;

        let moto = Moto::start(st.moto_port)?;
        let secrets = st.secrets.lock().unwrap().clone();
        seed(&st.client, &secrets).await?;
        *st.moto.lock().unwrap() = Some(moto);
        let restarted = Instant::now();
        let recovered = loop {
            match Connector::new(fx, srv.addr, "clearco").connect().await {
                Ok(c) => break c,
                Err(e) if restarted.elapsed() > Duration::from_secs(30) => return Err(e.context("no recovery")),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        println!("outage: recovered {:?} after moto restarted, without restarting pgveil", restarted.elapsed());
        recovered.simple_query("SELECT 1").await?;
        s1.simple_query("SELECT 1").await?;
        Ok(())
    })
}

fn no_secret_anywhere(fx: &Fixture) -> Result<()> {
    let _g = serial();
    let st = state(fx)?;
    let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
    st.values.lock().unwrap().push(canary.clone());
    let broken = serde_json::json!({"username": "u", "passwd": canary, "host": "127.0.0.1"});
    fx.block_on(
        st.client
            .create_secret()
            .name("tenants/broken/db")
            .secret_string(broken.to_string())
            .send(),
    )?;
    st.secrets
        .lock()
        .unwrap()
        .insert("tenants/broken/db".into(), broken.to_string());
    let srv = aws_server(fx, st, |cfg| {
        let mut t = cfg.tenants[0].clone();
        t.id = pgveil::ids::TenantId::new("broken");
        t.secret = SecretId::new("tenants/broken/db");
        cfg.tenants.push(t);
    })?;
    fx.block_on(async {
        let e = Connector::new(fx, srv.addr, "broken")
            .connect()
            .await
            .err()
            .ok_or_else(|| anyhow!("malformed secret accepted"))?;
        let shown = format!("{e:#} {e:?}");
        ensure!(sqlstate(&e).as_deref() == Some("08006"), "{shown}");
        st.check_no_secret(&shown, "the client error")?;
        // Debug output of what the store returns.
        let acme = SecretId::new("tenants/acme/db");
        let value = srv.shared.secrets.fetch(&acme).await?;
        let creds = DbCredentials::from_secret(&acme, &value)?;
        let dbg = format!("{value:?} {creds:?} {:?}", srv.shared.cfg);
        ensure!(creds.password.expose_secret().len() > 8);
        ensure!(
            !dbg.contains(creds.password.expose_secret()),
            "password in Debug output: {dbg}"
        );
        st.check_no_secret(&dbg, "Debug output")?;
        let err = DbCredentials::fetch(&*srv.shared.secrets, &SecretId::new("tenants/broken/db"))
            .await
            .unwrap_err();
        st.check_no_secret(&format!("{err} {err:?}"), "the secret error")?;
        anyhow::Ok(())
    })?;
    let logs = captured_logs();
    ensure!(
        logs.contains("malformed"),
        "the malformed secret was not logged"
    );
    ensure!(
        logs.len() > 10_000,
        "log capture looks empty ({} bytes)",
        logs.len()
    );
    st.check_no_secret(&logs, "the logs")?;
    println!(
        "log scan: {} bytes of trace-level logs, no secret value",
        logs.len()
    );
    Ok(())
}
