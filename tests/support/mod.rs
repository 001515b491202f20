//! Shared end-to-end fixture: one throwaway environment per test binary (PostgreSQL cluster with tenants whose
//! backends use SCRAM, md5, cleartext and TLS; certificates; token keys; secrets; config) and a running pgveil.
//! A custom harness (libtest-mimic) owns it, so the cluster is always stopped and removed at the end.
#![allow(dead_code)]

// The demo's environment, the binary's module (src/demo), compiled into each test binary.
#[path = "../../src/demo/mod.rs"]
pub mod demo;
pub mod gate;
pub mod masking;
pub mod raw;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use pgcluster::PasswordMethod;
use pgveil::config::Config;
use pgveil::server::{Server, ServerOptions, Shared};
use tokio::sync::oneshot;

use self::demo::env::{DemoEnv, EnvOptions, TenantSpec};

/// A port nothing listens on (bound on 127.0.0.1, then released): the one such helper of the test binaries.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A test: gets the fixture, fails with an error.
pub type TestFn = fn(&Fixture) -> Result<()>;

/// The environment and a default proxy (AllowAll policy, plain text from loopback allowed).
pub struct Fixture {
    // Field order is drop order: the proxy stops (on the runtime) before the runtime, then the cluster.
    /// The default proxy.
    pub proxy: Running,
    /// Runtime shared by all tests.
    pub rt: tokio::runtime::Runtime,
    /// Cluster, certs, keys, config.
    pub env: DemoEnv,
}

/// A running proxy; stops when dropped.
pub struct Running {
    /// Listen address.
    pub addr: SocketAddr,
    /// Its shared state.
    pub shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(10));
        }
    }
}

/// The tenants every test binary gets.
pub fn tenants() -> Vec<TenantSpec> {
    let t = |id: &str, user: &str, method, tls| TenantSpec {
        id: id.into(),
        db_user: user.into(),
        method,
        payers: 40,
        backend_tls: tls,
    };
    vec![
        t("acme", "acme_app", PasswordMethod::Scram, false),
        t("globex", "globex_app", PasswordMethod::Md5, false),
        t("tlsco", "tlsco_app", PasswordMethod::Scram, true),
        // The cluster's pg_hba makes `cleartext_user` authenticate with a cleartext password.
        t("clearco", "cleartext_user", PasswordMethod::Scram, false),
    ]
}

impl Fixture {
    /// Builds the environment and starts the default proxy.
    pub fn new() -> Result<Arc<Fixture>> {
        let mut opts = EnvOptions::demo("127.0.0.1:0".parse()?);
        opts.tenants = tenants();
        opts.roles = vec!["admin".into(), "analyst".into(), "tiny".into()];
        opts.pool_size = 8;
        let env = DemoEnv::create(&opts).context("creating the test environment")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let proxy = start(&rt, env.config.clone(), ServerOptions::default())?;
        Ok(Arc::new(Fixture { proxy, rt, env }))
    }

    /// Starts another proxy with a modified config and options.
    pub fn start_server(
        &self,
        edit: impl FnOnce(&mut Config),
        opts: ServerOptions,
    ) -> Result<Running> {
        let mut cfg = self.env.config.clone();
        cfg.listen.addr = "127.0.0.1:0".parse()?;
        edit(&mut cfg);
        cfg.validate().map_err(|p| anyhow!("config: {p:?}"))?;
        start(&self.rt, cfg, opts)
    }

    /// Runs a future on the shared runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A valid token (with MFA, 1 hour).
    pub fn token(&self, user: &str, tenant: &str, role: &str) -> String {
        self.env
            .mint(user, tenant, role, true, Duration::from_secs(3600))
            .expect("mint")
    }

    /// A libpq-style connection string to a proxy (plain text; loopback is allowed by the default config).
    pub fn conn_str(&self, addr: SocketAddr, db: &str, user: &str, token: &str) -> String {
        format!(
            "host={} port={} dbname={db} user={user} password={token} sslmode=disable connect_timeout=10",
            addr.ip(),
            addr.port()
        )
    }

    /// Connects with tokio-postgres through `addr` as `role` of `tenant`.
    pub async fn connect_to(
        &self,
        addr: SocketAddr,
        tenant: &str,
        role: &str,
    ) -> Result<tokio_postgres::Client> {
        let token = self.token(&format!("{role}@{tenant}"), tenant, role);
        connect(&self.conn_str(addr, tenant, "tester", &token)).await
    }

    /// Connects through the default proxy.
    pub async fn connect(&self, tenant: &str, role: &str) -> Result<tokio_postgres::Client> {
        self.connect_to(self.proxy.addr, tenant, role).await
    }

    /// The tenant's backend credentials (username, password) from the secrets file.
    pub fn creds(&self, tenant: &str) -> (String, String) {
        let text = std::fs::read_to_string(self.env.secrets_path()).expect("secrets file");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let s = &v[format!("tenants/{tenant}/db")];
        (
            s["username"].as_str().unwrap().to_owned(),
            s["password"].as_str().unwrap().to_owned(),
        )
    }

    /// A direct connection string to the tenant's database (no proxy).
    pub fn direct_str(&self, tenant: &str) -> String {
        let (user, password) = self.creds(tenant);
        format!(
            "host=127.0.0.1 port={} dbname={tenant} user={user} password={password} sslmode=disable",
            self.env.cluster.port()
        )
    }

    /// Connects directly to the tenant's database.
    pub async fn direct(&self, tenant: &str) -> Result<tokio_postgres::Client> {
        connect(&self.direct_str(tenant)).await
    }

    /// Runs SQL as the cluster superuser.
    pub fn superuser_sql(&self, db: &str, sql: &str) -> Result<String> {
        Ok(self.env.cluster.psql(db, sql)?)
    }
}

/// Connects with tokio-postgres (no TLS) and drives the connection in the background.
pub async fn connect(conn_str: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects and returns the task driving the connection; aborting it closes the client's socket abruptly.
pub async fn connect_with_handle(
    conn_str: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    let handle = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, handle))
}

/// The SQLSTATE of a tokio-postgres error, if it carries one.
pub fn sqlstate(e: &anyhow::Error) -> Option<String> {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .map(|c| c.code().to_owned())
}

fn start(rt: &tokio::runtime::Runtime, cfg: Config, opts: ServerOptions) -> Result<Running> {
    let server = rt.block_on(Server::bind(cfg, opts))?;
    let addr = server.local_addr();
    let shared = server.shared();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        server
            .run(
                async {
                    let _ = stop_rx.await;
                },
                Duration::from_secs(2),
            )
            .await;
        let _ = done_tx.send(());
    });
    Ok(Running {
        addr,
        shared,
        stop: Some(stop_tx),
        done: Some(std::sync::Mutex::new(done_rx)),
    })
}

/// Builds the fixture, runs the tests (libtest-style filtering and output), tears everything down.
pub fn main_with(tests: &[(&'static str, TestFn)]) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    if std::env::var_os("PGVEIL_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("PGVEIL_TEST_LOG").unwrap())
            .try_init();
    }
    let fixture = match Fixture::new() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fixture failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let trials = tests
        .iter()
        .map(|&(name, f)| {
            let fx = fixture.clone();
            libtest_mimic::Trial::test(name, move || f(&fx).map_err(|e| format!("{e:#}").into()))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(fixture);
    conclusion.exit_code()
}
