//! Backend pools, one per (tenant, role class): a masked session never reuses a backend that a privileged
//! session used, and no backend ever crosses tenants. Built on deadpool's managed pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult, Timeouts};
use parking_lot::Mutex;

use super::connect::{self, BackendConn, BackendTarget, ConnectError};
use super::health;
use crate::error::{Classified, ErrorKind};
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

impl Classified for BackendError {
    fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Secret { .. } => ErrorKind::Secret,
            BackendError::Incomplete(_) => ErrorKind::Incomplete,
            BackendError::Connect(_) => ErrorKind::Connect,
        }
    }
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
        self.tenant
            .target(creds)
            .map(Arc::new)
            .ok_or_else(|| BackendError::Incomplete(self.tenant.id.clone()))
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
            metrics::counter!("pgveil_pool_dead_discarded_total", "when" => "checkout")
                .increment(1);
            conn.broken = true;
            return Err(RecycleError::message(
                "backend closed or sent data while idle",
            ));
        }
        Ok(())
    }
}

/// A pool of one key (one event loop's share of it).
pub type Pool = managed::Pool<Manager>;

/// How often a checkout waiting on its loop's share looks at the other loops' shares again.
const OTHER_LOOPS_RESCAN: Duration = Duration::from_millis(20);

/// One key's backends, split between the event loops (`crate::event_loops`): each loop checks out from its
/// own share first, so a transaction's backend is driven by the thread that drives its client. The sizes add
/// up to the tenant's `pool_size` (a pool smaller than the number of loops has fewer shares, some loops then
/// share one).
#[derive(Clone)]
struct Shares(Arc<[Pool]>);

impl Shares {
    /// Sizes of the shares of a pool of `size` backends among `loops` loops.
    fn split(size: usize, loops: usize) -> Vec<usize> {
        let n = loops.clamp(1, size.max(1));
        (0..n)
            .map(|i| size / n + usize::from(i < size % n))
            .collect()
    }

    /// The share of the calling thread's loop.
    fn home(&self) -> usize {
        crate::event_loops::current_slot() % self.0.len()
    }
}

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

impl Classified for CheckoutError {
    fn kind(&self) -> ErrorKind {
        match self {
            CheckoutError::Timeout => ErrorKind::Timeout,
            CheckoutError::Backend(b) => b.kind(),
            CheckoutError::Closed => ErrorKind::Shutdown,
            CheckoutError::Build(_) => ErrorKind::Internal,
        }
    }
}

/// Counts a failed checkout (once per `checkout`/`try_checkout` call): `result` = `timeout` or `error` as
/// always, with the failure's `kind`.
fn count_failure(e: &CheckoutError) {
    let result = match e {
        CheckoutError::Timeout => "timeout",
        _ => "error",
    };
    let kind = e.kind().as_label();
    tracing::debug!(kind, error = %e, "backend checkout failed");
    metrics::counter!("pgveil_pool_checkouts_total", "result" => result, "kind" => kind)
        .increment(1);
}

/// A pool and the greeting its backends gave (once one has been opened).
type PoolEntry = (Shares, Arc<Mutex<Option<Greeting>>>);

/// All pools, created on first use.
pub struct Pools {
    secrets: Arc<dyn SecretStore>,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    reset_timeout: Duration,
    /// Event loops sharing the pools (see [`Shares`]).
    loops: usize,
    pools: Mutex<HashMap<PoolKey, PoolEntry>>,
    /// Per pool: the tenant-defined function names its backends see, and when they were read.
    functions: Mutex<HashMap<PoolKey, (std::time::Instant, FunctionNames)>>,
}

/// Lower-case names of the functions outside `pg_catalog` and `information_schema` in a pool's database.
pub type FunctionNames = Arc<std::collections::HashSet<String>>;

impl Pools {
    /// An empty set of pools, for `loops` event loops (1 = one pool per key; see [`Shares`]).
    pub fn new(
        secrets: Arc<dyn SecretStore>,
        checkout_timeout: Duration,
        connect_timeout: Duration,
        reset_timeout: Duration,
        loops: usize,
    ) -> Self {
        Self {
            secrets,
            checkout_timeout,
            connect_timeout,
            reset_timeout,
            loops: loops.max(1),
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

    fn shares(&self, tenant: &Arc<Tenant>, role_class: &RoleName) -> Result<Shares, CheckoutError> {
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
        let mut shares = Vec::new();
        for size in Shares::split(tenant.pool_size, self.loops) {
            let manager = Manager {
                tenant: tenant.clone(),
                secrets: self.secrets.clone(),
                connect_timeout: self.connect_timeout,
                reset_timeout: self.reset_timeout,
                greeting: greeting.clone(),
            };
            // LIFO: the most recently used backends stay hot (CPU caches, plan caches, pgveil's statement
            // cache); idle ones are the ones left alone.
            shares.push(
                Pool::builder(manager)
                    .max_size(size)
                    .queue_mode(deadpool::managed::QueueMode::Lifo)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()?,
            );
        }
        let entry = (Shares(shares.into()), greeting);
        pools.insert(key, entry.clone());
        Ok(entry)
    }

    /// A backend for (tenant, role class) if one is free or can be opened now (no waiting in the queue):
    /// from this event loop's share first, then from another loop's.
    pub async fn try_checkout(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Result<Option<PooledConn>, CheckoutError> {
        let got = self.try_free(tenant, role_class).await;
        if let Err(e) = &got {
            count_failure(e);
        }
        got
    }

    /// [`Pools::try_checkout`] without the failure count.
    async fn try_free(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Result<Option<PooledConn>, CheckoutError> {
        let shares = self.shares(tenant, role_class)?;
        let home = shares.home();
        if let Some(conn) = self.immediate(&shares.0[home]).await? {
            metrics::counter!("pgveil_pool_checkouts_total", "result" => "immediate").increment(1);
            return Ok(Some(conn));
        }
        self.free_in_other_loops(&shares, home).await
    }

    /// A backend from another loop's share, when one is free (its socket stays registered with that loop:
    /// this transaction pays the cross-thread wake-ups the shares otherwise avoid).
    async fn free_in_other_loops(
        &self,
        shares: &Shares,
        home: usize,
    ) -> Result<Option<PooledConn>, CheckoutError> {
        let n = shares.0.len();
        for i in 1..n {
            if let Some(conn) = self.immediate(&shares.0[(home + i) % n]).await? {
                metrics::counter!("pgveil_pool_checkouts_total", "result" => "other_loop")
                    .increment(1);
                return Ok(Some(conn));
            }
        }
        Ok(None)
    }

    /// A free backend of `pool`, or a new one when it has room; no waiting and, for a free one, no timer.
    /// Recycling is a flag check and one non-blocking read, so it needs no timeout.
    async fn immediate(&self, pool: &Pool) -> Result<Option<PooledConn>, CheckoutError> {
        let immediate = Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(self.connect_timeout),
            recycle: None,
        };
        match pool.timeout_get(&immediate).await {
            Ok(conn) => Ok(Some(conn)),
            Err(managed::PoolError::Timeout(_)) => Ok(None),
            Err(managed::PoolError::Backend(b)) => Err(CheckoutError::Backend(b)),
            Err(_) => Err(CheckoutError::Closed),
        }
    }

    /// Checks out a backend for (tenant, role class), waiting at most the configured checkout timeout.
    /// With several event loops, the wait is on this loop's share, in slices between which the other
    /// loops' shares are looked at again (a backend freed there must not sit idle while this loop waits).
    pub async fn checkout(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Result<PooledConn, CheckoutError> {
        if let Some(conn) = self.try_checkout(tenant, role_class).await? {
            return Ok(conn);
        }
        let started = std::time::Instant::now();
        let got = self.wait_for(tenant, role_class).await;
        match &got {
            Ok(_) => {
                metrics::counter!("pgveil_pool_checkouts_total", "result" => "waited").increment(1)
            }
            Err(e) => count_failure(e),
        }
        metrics::histogram!("pgveil_pool_wait_seconds").record(started.elapsed().as_secs_f64());
        got
    }

    /// The waiting part of [`Pools::checkout`], up to the checkout timeout.
    async fn wait_for(
        &self,
        tenant: &Arc<Tenant>,
        role_class: &RoleName,
    ) -> Result<PooledConn, CheckoutError> {
        let shares = self.shares(tenant, role_class)?;
        let home = shares.home();
        let deadline = std::time::Instant::now() + self.checkout_timeout;
        loop {
            let now = std::time::Instant::now();
            let mut wait = deadline.saturating_duration_since(now);
            if shares.0.len() > 1 {
                wait = wait.min(OTHER_LOOPS_RESCAN);
            }
            let timeouts = Timeouts {
                wait: Some(wait),
                create: Some(self.connect_timeout),
                recycle: None,
            };
            match shares.0[home].timeout_get(&timeouts).await {
                Ok(conn) => return Ok(conn),
                Err(managed::PoolError::Timeout(_)) => {}
                Err(managed::PoolError::Backend(b)) => return Err(CheckoutError::Backend(b)),
                Err(_) => return Err(CheckoutError::Closed),
            }
            match self.free_in_other_loops(&shares, home).await? {
                Some(conn) => return Ok(conn),
                None if std::time::Instant::now() >= deadline => {
                    return Err(CheckoutError::Timeout);
                }
                None => {}
            }
        }
    }

    /// The periodic check of idle backends (`pool.idle_check_interval`, like PgBouncer's
    /// `server_check_delay` but without a round trip): every idle backend of every pool whose socket is
    /// closed or holds anything ([`health::peek_idle`]) is removed from its pool and closed, so the pool
    /// does not count it and a restart's dead backends do not linger. Returns how many were removed.
    pub fn check_idle(&self) -> usize {
        let pools: Vec<(PoolKey, Pool)> = self
            .pools
            .lock()
            .iter()
            .flat_map(|(k, (shares, _))| shares.0.iter().map(|p| (k.clone(), p.clone())))
            .collect();
        let mut removed = 0;
        for (key, pool) in pools {
            let gone = pool.retain(|conn, _| match health::peek_idle(conn) {
                None => true,
                Some(why) => {
                    tracing::info!(tenant = %key.tenant, pid = conn.key.pid, reason = ?why, "idle backend is gone or unfit (periodic check); discarding it");
                    false
                }
            });
            removed += gone.removed.len();
        }
        if removed > 0 {
            metrics::counter!("pgveil_pool_dead_discarded_total", "when" => "periodic")
                .increment(removed as u64);
        }
        removed
    }

    /// Closes every pool (shutdown): idle connections are dropped, waiting checkouts fail.
    pub fn close_all(&self) {
        for (shares, _) in self.pools.lock().values() {
            for pool in shares.0.iter() {
                pool.close();
            }
        }
    }

    /// (size, available) per pool, for metrics and tests.
    pub fn status(&self) -> Vec<(PoolKey, usize, usize)> {
        self.pools
            .lock()
            .iter()
            .map(|(k, (shares, _))| {
                let (size, available) = shares.0.iter().fold((0, 0), |(n, a), p| {
                    let s = p.status();
                    (n + s.size, a + s.available)
                });
                (k.clone(), size, available)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_errors_are_classified() {
        let kind = |e: CheckoutError| e.kind().as_label();
        assert_eq!(kind(CheckoutError::Timeout), "timeout");
        assert_eq!(kind(CheckoutError::Closed), "shutdown");
        assert_eq!(
            kind(CheckoutError::Build(
                managed::BuildError::NoRuntimeSpecified
            )),
            "internal"
        );
        let incomplete = BackendError::Incomplete(TenantId::new("acme"));
        assert_eq!(kind(CheckoutError::Backend(incomplete)), "incomplete");
    }

    #[test]
    fn shares_add_up_to_the_pool_size() {
        assert_eq!(Shares::split(16, 1), vec![16]);
        assert_eq!(Shares::split(16, 2), vec![8, 8]);
        assert_eq!(Shares::split(5, 2), vec![3, 2]);
        assert_eq!(Shares::split(2, 4), vec![1, 1]);
        assert_eq!(Shares::split(1, 8), vec![1]);
        for size in 1..40 {
            for loops in 1..9 {
                let s = Shares::split(size, loops);
                assert_eq!(s.iter().sum::<usize>(), size);
                assert!(s.iter().all(|&n| n > 0));
            }
        }
    }
}
