//! Wiring: builds the shared state from a config, accepts connections, and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::backend::Pools;
use crate::cancel::CancelRegistry;
use crate::config::{Config, SecretsConfig};
use crate::policy::{AllowAll, StatementPolicy};
use crate::proto::PgError;
use crate::route::Router;
use crate::secret::{FileSecretStore, SecretStore};
use crate::token::TokenVerifier;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Token keys could not be loaded.
    #[error("token keys: {0}")]
    Token(#[from] crate::token::TokenError),
    /// A verifying key file could not be read.
    #[error("cannot read {path}: {source}")]
    KeyFile {
        /// Path.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Routing table could not be built.
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A clock, injectable for tests of time-dependent logic.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// State shared by every session (an immutable snapshot plus the pools).
pub struct Shared {
    /// Configuration.
    pub cfg: Config,
    /// Tenants.
    pub router: Router,
    /// Backend pools.
    pub pools: Pools,
    /// Token verifier.
    pub verifier: TokenVerifier,
    /// TLS acceptor for clients.
    pub tls: Option<TlsAcceptor>,
    /// Statement hook.
    pub policy: Arc<dyn StatementPolicy>,
    /// Cancel keys.
    pub cancel: Arc<CancelRegistry>,
    /// Shutdown signal: true = drain.
    pub shutdown: watch::Receiver<bool>,
    /// Clock.
    pub clock: Clock,
    /// Connected clients.
    pub clients: AtomicUsize,
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown_tx: watch::Sender<bool>,
}

/// Options beyond the config file (for embedding and tests).
pub struct ServerOptions {
    /// Statement hook; default [`AllowAll`].
    pub policy: Arc<dyn StatementPolicy>,
    /// Secret store; default from the config.
    pub secrets: Option<Arc<dyn SecretStore>>,
    /// Clock; default the system clock.
    pub clock: Clock,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            policy: Arc::new(AllowAll),
            secrets: None,
            clock: Arc::new(SystemTime::now),
        }
    }
}

impl Server {
    /// Loads keys and TLS material and binds the listener.
    pub async fn bind(cfg: Config, opts: ServerOptions) -> Result<Server, ServerError> {
        let tls = match &cfg.tls {
            Some(t) => Some(TlsAcceptor::from(crate::tls::server_config(
                &t.cert, &t.key,
            )?)),
            None => None,
        };
        let mut pems = Vec::new();
        for path in &cfg.auth.verifying_keys {
            pems.push(
                std::fs::read_to_string(path).map_err(|source| ServerError::KeyFile {
                    path: path.clone(),
                    source,
                })?,
            );
        }
        let verifier = TokenVerifier::from_pems(&pems, &cfg.auth.issuer)?;
        let secrets: Arc<dyn SecretStore> = match opts.secrets {
            Some(s) => s,
            None => match &cfg.secrets {
                SecretsConfig::File { path } => Arc::new(FileSecretStore::new(path.clone())),
            },
        };
        let router = Router::from_config(&cfg)?;
        let pools = Pools::new(secrets, cfg.pool.checkout_timeout, cfg.pool.connect_timeout);
        let listener =
            TcpListener::bind(cfg.listen.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: cfg.listen.addr,
                    source,
                })?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            router,
            pools,
            verifier,
            tls,
            policy: opts.policy,
            cancel: Arc::new(CancelRegistry::default()),
            shutdown,
            clock: opts.clock,
            clients: AtomicUsize::new(0),
        });
        Ok(Server {
            shared,
            listener,
            shutdown_tx,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
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
        } = self;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "pgveil listening");
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
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        let n = shared.clients.fetch_add(1, Ordering::SeqCst) + 1;
                        if n > shared.cfg.listen.max_clients {
                            too_many(tcp).await;
                        } else {
                            crate::frontend::session::serve(tcp, peer, shared.clone()).await;
                        }
                        shared.clients.fetch_sub(1, Ordering::SeqCst);
                    });
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
        shared.pools.close_all();
        tracing::info!("pgveil stopped");
    }
}

async fn too_many(mut tcp: tokio::net::TcpStream) {
    let mut out = BytesMut::new();
    PgError::too_many_connections("sorry, too many clients already").encode(&mut out);
    let _ = tcp.write_all(&out).await;
}
