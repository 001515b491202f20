//! Backend pools, one per (tenant, role class): a masked session never reuses a backend that a privileged
//! session used, and no backend ever crosses tenants. Built on deadpool's managed pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult, Timeouts};
use parking_lot::Mutex;

use super::connect::{self, BackendConn, BackendTarget, ConnectError};
use super::health;
use crate::ids::{RoleName, TenantId};
use crate::route::Tenant;
use crate::secret::{DbCredentials, SecretError, SecretStore, SecretString};

/// Startup parameters of every backend connection. `standard_conforming_strings` is forced on so that what
/// pgveil parses is what the server parses.
const BACKEND_STARTUP: &[(&str, &str)] = &[
    ("standard_conforming_strings", "on"),
    ("client_encoding", "UTF8"),
    ("application_name", "pgveil"),
];

/// Identifies a pool: backends never move between keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Tenant.
    pub tenant: TenantId,
    /// Role class (the session's role).
    pub role_class: RoleName,
}

/// Errors creating a backend connection.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Credentials could not be fetched.
    #[error("tenant {tenant}: {source}")]
    Secret {
        /// Tenant.
        tenant: TenantId,
        /// Underlying error.
        source: SecretError,
    },
    /// Host or database unknown (neither config nor secret names it).
    #[error("tenant {0}: backend host or dbname not configured and not in the secret")]
    Incomplete(TenantId),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Creates and recycles backend connections for one pool.
pub struct Manager {
    tenant: Arc<Tenant>,
    secrets: Arc<dyn SecretStore>,
    connect_timeout: Duration,
    reset_timeout: Duration,
    /// What the last backend opened for this pool reported at startup (for logins answered without one).
    greeting: Arc<Mutex<Option<Greeting>>>,
}

/// What a pool's backends tell a new connection: the server parameters and the database they serve.
/// Transaction mode answers a login with it when no backend is free.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// ParameterStatus values at startup.
    pub params: std::collections::BTreeMap<String, String>,
    /// The database the backends are connected to.
    pub dbname: String,
}

impl Manager {
    fn target(&self, creds: &DbCredentials) -> Result<Arc<BackendTarget>, BackendError> {
        let t = &self.tenant;
        let host = t.host.clone().or_else(|| creds.host.clone());
        let dbname = t.dbname.clone().or_else(|| creds.dbname.clone());
        let (Some(host), Some(dbname)) = (host, dbname) else {
            return Err(BackendError::Incomplete(t.id.clone()));
        };
        Ok(Arc::new(BackendTarget {
            host,
            port: t.port.or(creds.port).unwrap_or(5432),
            dbname,
            tls: t.tls.clone(),
        }))
    }

    fn secret_error(&self, source: SecretError) -> BackendError {
        BackendError::Secret {
            tenant: self.tenant.id.clone(),
            source,
        }
    }

    /// Decodes a secret value and connects with it (the target may come from the secret, so a rotation that
    /// moves the database is followed too).
    async fn connect_with(&self, value: &SecretString) -> Result<BackendConn, BackendError> {
        let creds = DbCredentials::from_secret(&self.tenant.secret, value)
            .map_err(|e| self.secret_error(e))?;
        let target = self.target(&creds)?;
        Ok(connect::connect(target, &creds, BACKEND_STARTUP, self.connect_timeout).await?)
    }

    /// Connects with the cached credentials; when the backend rejects them (28P01/28000: a rotation), fetches
    /// the secret again once and retries, then, if the store is configured for it, tries the version being
    /// rotated in (`AWSPENDING`). The username may change between versions (alternating-user rotation).
    async fn connect_rotating(&self) -> Result<BackendConn, BackendError> {
        let id = &self.tenant.secret;
        let tenant = &self.tenant.id;
        let current = self
            .secrets
            .fetch(id)
            .await
            .map_err(|e| self.secret_error(e))?;
        let first = match self.connect_with(&current).await {
            Err(BackendError::Connect(e)) if e.is_auth_failure() => e,
            other => return other,
        };
        tracing::warn!(%tenant, error = %first, "backend rejected the cached credentials; re-fetching the secret");
        metrics::counter!("pgveil_backend_auth_rejected_total").increment(1);
        let fresh = self
            .secrets
            .refetch(id, &current)
            .await
            .map_err(|e| self.secret_error(e))?;
        let second = match self.connect_with(&fresh).await {
            Err(BackendError::Connect(e)) if e.is_auth_failure() => e,
            Ok(conn) => {
                tracing::info!(%tenant, "connected with re-fetched credentials (rotation)");
                return Ok(conn);
            }
            other => return other,
        };
        match self.secrets.fetch_pending(id).await {
            Ok(Some(pending)) => {
                let conn = self.connect_with(&pending).await?;
                tracing::info!(%tenant, "connected with the AWSPENDING credentials (rotation in progress)");
                Ok(conn)
            }
            Ok(None) => Err(second.into()),
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "could not read the AWSPENDING version");
                Err(second.into())
            }
        }
    }
}

impl managed::Manager for Manager {
    type Type = BackendConn;
    type Error = BackendError;

    async fn create(&self) -> Result<BackendConn, BackendError> {
        let mut conn = self.connect_rotating().await?;
        conn.reset_timeout = self.reset_timeout;
        tracing::debug!(tenant = %self.tenant.id, pid = conn.key.pid, "backend connection opened");
        *self.greeting.lock() = Some(Greeting {
            params: conn.params.clone(),
            dbname: conn.target.dbname.clone(),
        });
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut BackendConn, _: &Metrics) -> RecycleResult<BackendError> {
        if conn.broken {
            return Err(RecycleError::message("connection is broken"));
        }
        // Without a round trip: a backend that closed or spoke while idle is dropped here, and deadpool moves
        // on to the next idle one or opens a new one, so the client never sees it.
        if let Some(why) = health::check_idle(conn) {
            tracing::info!(tenant = %self.tenant.id, pid = conn.key.pid, reason = ?why, "idle backend is gone or unfit; discarding it");
            metrics::counter!("pgveil_pool_dead_discarded_total").increment(1);
            conn.broken = true;
            return Err(RecycleError::message(
                "backend closed or sent data while idle",
            ));
        }
        Ok(())
    }
}

/// A pool of one key.
pub type Pool = managed::Pool<Manager>;
/// A checked-out backend; dropping it returns it to its pool.
pub type PooledConn = managed::Object<Manager>;

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// No backend became free in time.
    #[error("timed out waiting for a backend connection")]
    Timeout,
    /// The backend could not be created.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The pool is closed (shutdown).
    #[error("pool closed")]
    Closed,
    /// The pool could not be built (deadpool refused its settings).
    #[error("backend pool: {0}")]
    Build(#[from] managed::BuildError),
}

/// A pool and the greeting its backends gave (once one has been opened).
type PoolEntry = (Pool, Arc<Mutex<Option<Greeting>>>);

/// All pools, created on first use.
pub struct Pools {
    secrets: Arc<dyn SecretStore>,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    reset_timeout: Duration,
    pools: Mutex<HashMap<PoolKey, PoolEntry>>,
    /// Per pool: the tenant-defined function names its backends see, and when they were read.
    functions: Mutex<HashMap<PoolKey, (std::time::Instant, FunctionNames)>>,
}

/// Lower-case names of the functions outside `pg_catalog` and `information_schema` in a pool's database.
pub type FunctionNames = Arc<std::collections::HashSet<String>>;

impl Pools {
    /// An empty set of pools.
    pub fn new(
        secrets: Arc<dyn SecretStore>,
        checkout_timeout: Duration,
        connect_timeout: Duration,
        reset_timeout: Duration,
    ) -> Self {
        Self {
            secrets,
            checkout_timeout,
            connect_timeout,
            reset_timeout,
            pools: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// The function names last read for (tenant, role class), with when they were read.
    pub fn functions(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Option<(std::time::Instant, FunctionNames)> {
        let key = PoolKey {
            tenant: tenant.id.clone(),
            role_class: role_class.clone(),
        };
        let map = self.functions.lock();
        map.get(&key).cloned()
    }

    /// Records the function names just read for (tenant, role class).
    pub fn set_functions(&self, tenant: &Arc<Tenant>, role_class: &RoleName, names: FunctionNames) {
        let key = PoolKey {
            tenant: tenant.id.clone(),
            role_class: role_class.clone(),
        };
        let mut map = self.functions.lock();
        map.insert(key, (std::time::Instant::now(), names));
    }

    /// The greeting of (tenant, role class)'s backends, once one has been opened.
    pub fn greeting(&self, tenant: &Arc<Tenant>, role_class: &RoleName) -> Option<Greeting> {
        let greeting = self.entry(tenant, role_class).ok()?.1;
        greeting.lock().clone()
    }

    fn pool(&self, tenant: &Arc<Tenant>, role_class: &RoleName) -> Result<Pool, CheckoutError> {
        Ok(self.entry(tenant, role_class)?.0)
    }

    fn entry(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Result<PoolEntry, CheckoutError> {
        let key = PoolKey {
            tenant: tenant.id.clone(),
            role_class: role_class.clone(),
        };
        let mut pools = self.pools.lock();
        if let Some(entry) = pools.get(&key) {
            return Ok(entry.clone());
        }
        let greeting = Arc::new(Mutex::new(None));
        let manager = Manager {
            tenant: tenant.clone(),
            secrets: self.secrets.clone(),
            connect_timeout: self.connect_timeout,
            reset_timeout: self.reset_timeout,
            greeting: greeting.clone(),
        };
        // LIFO: the most recently used backends stay hot (CPU caches, plan caches, pgveil's statement
        // cache); idle ones are the ones left alone.
        let pool = Pool::builder(manager)
            .max_size(tenant.pool_size)
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()?;
        pools.insert(key, (pool.clone(), greeting.clone()));
        Ok((pool, greeting))
    }

    /// A backend for (tenant, role class) if one is free or can be opened now (no waiting in the queue).
    pub async fn try_checkout(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Result<Option<PooledConn>, CheckoutError> {
        let pool = self.pool(tenant, role_class)?;
        // Fast path (every transaction in transaction mode): a free backend, no timers. Recycling is a flag
        // check and one non-blocking read, so it needs no timeout.
        let immediate = Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(self.connect_timeout),
            recycle: None,
        };
        match pool.timeout_get(&immediate).await {
            Ok(conn) => {
                metrics::counter!("pgveil_pool_checkouts_total", "result" => "immediate")
                    .increment(1);
                Ok(Some(conn))
            }
            Err(managed::PoolError::Timeout(_)) => Ok(None),
            Err(managed::PoolError::Backend(b)) => {
                metrics::counter!("pgveil_pool_checkouts_total", "result" => "error").increment(1);
                Err(CheckoutError::Backend(b))
            }
            Err(_) => Err(CheckoutError::Closed),
        }
    }

    /// Checks out a backend for (tenant, role class), waiting at most the configured checkout timeout.
    pub async fn checkout(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Result<PooledConn, CheckoutError> {
        if let Some(conn) = self.try_checkout(tenant, role_class).await? {
            return Ok(conn);
        }
        let pool = self.pool(tenant, role_class)?;
        let timeouts = Timeouts {
            wait: Some(self.checkout_timeout),
            create: Some(self.connect_timeout),
            recycle: None,
        };
        let started = std::time::Instant::now();
        let got = pool.timeout_get(&timeouts).await.map_err(|e| match e {
            managed::PoolError::Timeout(_) => CheckoutError::Timeout,
            managed::PoolError::Backend(b) => CheckoutError::Backend(b),
            _ => CheckoutError::Closed,
        });
        let result = match &got {
            Ok(_) => "waited",
            Err(CheckoutError::Timeout) => "timeout",
            Err(_) => "error",
        };
        metrics::counter!("pgveil_pool_checkouts_total", "result" => result).increment(1);
        metrics::histogram!("pgveil_pool_wait_seconds").record(started.elapsed().as_secs_f64());
        got
    }

    /// Closes every pool (shutdown): idle connections are dropped, waiting checkouts fail.
    pub fn close_all(&self) {
        for (pool, _) in self.pools.lock().values() {
            pool.close();
        }
    }

    /// (size, available) per pool, for metrics and tests.
    pub fn status(&self) -> Vec<(PoolKey, usize, usize)> {
        self.pools
            .lock()
            .iter()
            .map(|(k, (p, _))| {
                let s = p.status();
                (k.clone(), s.size, s.available)
            })
            .collect()
    }
}
