//! Wiring: builds the shared state from a config, accepts connections, and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::audit::Auditor;
use crate::backend::Pools;
use crate::cancel::CancelRegistry;
use crate::clock::Clock;
use crate::config::Config;
use crate::control::ControlDb;
use crate::event_loops::EventLoops;
use crate::exfil::Budgets;
use crate::net::Framed;
use crate::policy::engine::MaskingEngine;
use crate::policy::{AllowAll, StatementPolicy};
use crate::proto::PgError;
use crate::revoke::{RevocationCache, SessionRegistry};
use crate::route::Router;
use crate::secret::SecretStore;
use crate::token::TokenVerifier;

pub use crate::shared::{Shared, Slot};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerStartError {
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Token keys could not be loaded.
    #[error("token keys: {0}")]
    Token(#[from] crate::token::TokenError),
    /// A verifying key could not be fetched from the secret store.
    #[error("token verifying key: {0}")]
    KeySecret(#[from] crate::secret::SecretError),
    /// Routing table could not be built.
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    /// The masking policy is invalid (pgveil never starts without a valid one when `[policy]` is set).
    #[error(transparent)]
    Policy(#[from] crate::policy::file::PolicyError),
    /// The control database could not be opened.
    #[error("control database: {0}")]
    Control(#[from] crate::control::ControlError),
    /// The audit file could not be opened (or the writer thread started).
    #[error("audit: {0}")]
    Audit(std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    loops: Option<Arc<EventLoops>>,
}

/// Options beyond the config file (for embedding and tests).
pub struct ServerOptions {
    /// Statement hook; default [`AllowAll`]. Ignored when the config has a `[policy]` section: the masking
    /// engine is the hook then.
    pub policy: Arc<dyn StatementPolicy>,
    /// Secret store, used as given (no cache added); default the config's store behind the cache.
    pub secrets: Option<Arc<dyn SecretStore>>,
    /// Running as `pgveil demo` (no warning about the `file` secret store).
    pub demo: bool,
    /// Clock; default the system clock.
    pub clock: Clock,
    /// Event loops to spread sessions over (thread per core, `crate::event_loops`); default none: every
    /// session runs on the runtime that runs [`Server::run`].
    pub loops: Option<Arc<EventLoops>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            policy: Arc::new(AllowAll),
            secrets: None,
            demo: false,
            clock: Arc::new(SystemTime::now),
            loops: None,
        }
    }
}

/// The token verifier, with the verifying keys read from the secret store.
async fn token_verifier(
    cfg: &Config,
    secrets: &dyn SecretStore,
) -> Result<TokenVerifier, ServerStartError> {
    let mut pems = Vec::new();
    for id in &cfg.auth.verifying_key_secrets {
        let pem = crate::secret::fetch_text(secrets, id).await?;
        pems.push(crate::secret::ExposeSecret::expose_secret(&pem).to_owned());
    }
    Ok(TokenVerifier::from_pems(&pems, &cfg.auth.issuer)?.with_max_ttl(cfg.auth.max_token_ttl))
}

/// The statement hook, and the masking engine when it is one.
type Hooks = (Arc<dyn StatementPolicy>, Option<Arc<MaskingEngine>>);

/// The statement hook: the masking engine (started: catalog loads, policy reloads) when `[policy]` is
/// configured, else `default`.
fn statement_policy(
    cfg: &Config,
    default: Arc<dyn StatementPolicy>,
    secrets: &Arc<dyn SecretStore>,
) -> Result<Hooks, ServerStartError> {
    let Some(pc) = &cfg.policy else {
        return Ok((default, None));
    };
    let engine = Arc::new(MaskingEngine::new(&pc.dir)?.with_cache_budget(pc.cache_bytes));
    let keys = pc
        .pseudonym_keys
        .iter()
        .map(|(t, s)| (t.clone(), s.clone()))
        .collect();
    engine.start(
        Arc::new(Router::from_config(cfg)?),
        secrets.clone(),
        keys,
        pc.catalog_refresh,
    );
    Ok((engine.clone() as Arc<dyn StatementPolicy>, Some(engine)))
}

/// The client listener and the address it is bound to (useful with port 0).
async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerStartError> {
    let bind_error = |source| ServerStartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

impl Server {
    /// Loads keys and TLS material and binds the listener.
    pub async fn bind(cfg: Config, opts: ServerOptions) -> Result<Server, ServerStartError> {
        let tls = match &cfg.tls {
            Some(t) => Some(TlsAcceptor::from(crate::tls::server_config(
                &t.cert, &t.key,
            )?)),
            None => None,
        };
        let (secrets, secret_cache): (Arc<dyn SecretStore>, _) = match opts.secrets {
            Some(s) => (s, None),
            None => {
                let cache = crate::secret::store_from_config(&cfg.secrets, opts.demo).await;
                (cache.clone(), Some(cache))
            }
        };
        let verifier = token_verifier(&cfg, &*secrets).await?;
        let router = Router::from_config(&cfg)?;
        let revocations = match &cfg.control {
            Some(c) => {
                let db = ControlDb::open(c, &*secrets).await?;
                Some(RevocationCache::load(db, c.revocation_max_stale, opts.clock.clone()).await?)
            }
            None => None,
        };
        let (policy, masking) = statement_policy(&cfg, opts.policy, &secrets)?;
        let pools = Pools::new(
            secrets.clone(),
            cfg.pool.checkout_timeout,
            cfg.pool.connect_timeout,
            cfg.pool.reset_timeout,
            opts.loops.as_ref().map_or(1, |l| l.len()),
        );
        let (listener, addr) = listen(cfg.listen.addr).await?;
        let audit = Auditor::start(&cfg.audit).map_err(ServerStartError::Audit)?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let sessions = Arc::new(SessionRegistry::default());
        if let (Some(cache), Some(c)) = (&revocations, &cfg.control) {
            cache.spawn_refresh(sessions.clone(), c.revocation_refresh, shutdown.clone());
        }
        let shared = Arc::new(Shared {
            cfg,
            router,
            pools,
            verifier,
            tls,
            secrets,
            secret_cache,
            policy,
            masking,
            cancel: Arc::new(CancelRegistry::default()),
            shutdown,
            clock: opts.clock,
            clients: AtomicUsize::new(0),
            starting: AtomicUsize::new(0),
            revocations,
            sessions,
            audit,
            budgets: Budgets::default(),
        });
        Ok(Server {
            shared,
            listener,
            addr,
            shutdown_tx,
            loops: opts.loops,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared state (for tests and metrics).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts connections until `stop` resolves, then drains: sessions end at their next idle point, and
    /// after `drain_timeout` the remaining ones are dropped.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>, drain_timeout: Duration) {
        let Server {
            shared,
            listener,
            shutdown_tx,
            loops,
            addr: _,
        } = self;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "pgveil listening");
        let idle_check = idle_check(&shared);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    dispatch(&mut tasks, loops.as_deref(), tcp, peer, shared.clone());
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(clients = shared.clients.load(Ordering::SeqCst), "draining");
        let _ = shutdown_tx.send(true);
        let drained = tokio::time::timeout(drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                "drain timeout: closing remaining sessions"
            );
            tasks.shutdown().await;
        }
        if let Some(task) = idle_check {
            task.abort();
        }
        shared.pools.close_all();
        // Every audit event of the sessions that ended is written before the process may exit.
        if !shared.audit.shutdown(Duration::from_secs(10)).await {
            tracing::warn!("audit queue not flushed within 10s at shutdown");
        }
        tracing::info!("pgveil stopped");
    }
}

/// Runs one accepted connection: on the least loaded event loop when there are several (the socket is moved
/// to that loop's reactor), else on this runtime.
fn dispatch(
    tasks: &mut tokio::task::JoinSet<()>,
    loops: Option<&EventLoops>,
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let Some(loops) = loops else {
        tasks.spawn(connection(tcp, peer, shared));
        return;
    };
    let slot = loops.pick();
    let load = loops.enter(slot);
    let Some(handle) = loops.handle(slot) else {
        tasks.spawn(async move {
            connection(tcp, peer, shared).await;
            drop(load);
        });
        return;
    };
    match tcp.into_std() {
        Ok(std) => {
            tasks.spawn_on(
                async move {
                    match TcpStream::from_std(std) {
                        Ok(tcp) => connection(tcp, peer, shared).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot move a connection to its event loop")
                        }
                    }
                    drop(load);
                },
                handle,
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot move a connection to its event loop"),
    }
}

/// One connection's life, from the startup phase's cap to its end.
async fn connection(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    metrics::counter!("pgveil_client_connections_total").increment(1);
    metrics::gauge!("pgveil_client_connections").increment(1.0);
    // The startup phase has its own cap; `max_clients` is checked once authenticated (`session::serve`).
    match Slot::take(&shared.starting, shared.cfg.listen.max_startups) {
        Some(slot) => {
            crate::frontend::stages::serve(tcp, peer, shared.clone(), slot).await;
        }
        None => {
            metrics::counter!("pgveil_auth_total", "result" => crate::error::ErrorKind::Refused.as_label(), "sqlstate" => "53300")
                .increment(1);
            too_many(tcp).await;
        }
    }
    metrics::gauge!("pgveil_client_connections").decrement(1.0);
}

/// The periodic check of idle backends (`pool.idle_check_interval`; none when it is 0).
fn idle_check(shared: &Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let every = shared.cfg.pool.idle_check_interval;
    if every.is_zero() {
        return None;
    }
    let shared = Arc::downgrade(shared);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.pools.check_idle();
        }
    }))
}

async fn too_many(mut tcp: TcpStream) {
    let err = PgError::too_many_connections("sorry, too many clients already");
    let _ = Framed::exact(&mut tcp).write_fatal(&err).await;
}
