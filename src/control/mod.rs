//! The control database: pgveil's own PostgreSQL database for users, MFA enrolment, recovery codes, token
//! revocations and brute-force counters. Several pgveil instances share it; every state change that must
//! happen at most once (a TOTP step, a recovery code) is a single conditional `UPDATE ... RETURNING`.
//!
//! The schema is created and migrated by pgveil itself ([`migrate`]), under an advisory lock so instances
//! starting together do not race.

mod migrate;
pub mod tls;
pub mod users;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Deserialize;

use crate::config::BackendTlsMode;
use crate::ids::SecretId;
use crate::secret::{DbCredentials, ExposeSecret, SecretError, SecretStore};

pub use migrate::{MIGRATIONS, migrate};

/// `[control]`: where the control database is and the keys that protect what it holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Secret id of the control database credentials (RDS JSON: username, password, host, port, dbname).
    pub secret: SecretId,
    /// Secret id of the 256-bit key that encrypts TOTP secrets at rest (AES-256-GCM): 64 hex characters or
    /// standard base64 of 32 bytes.
    pub totp_key_secret: SecretId,
    /// Connections to the control database per pgveil instance.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How often each proxy reloads revocations and disabled users: the upper bound on how long a revoked
    /// token or disabled user can still open sessions on another instance (the instance that handled the
    /// revocation applies it at once).
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub revocation_refresh: Duration,
    /// If the control database cannot be read for this long, new connections are refused (fail closed).
    #[serde(default = "default_max_stale", with = "humantime_serde")]
    pub revocation_max_stale: Duration,
    /// TLS to the control database: `disable` (default; loopback or a trusted private link only),
    /// `require` (encrypted, server not authenticated) or `verify-full` (recommended: certificate and host
    /// name checked against `ca_bundle`).
    #[serde(default)]
    pub tls: BackendTlsMode,
    /// CA bundle (PEM) for `tls = "verify-full"`, e.g. the RDS CA bundle.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

fn default_pool_size() -> usize {
    8
}
fn default_refresh() -> Duration {
    Duration::from_secs(2)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(300)
}

impl ControlConfig {
    /// Adds every problem with this section to `problems` (`offline`: files need not exist).
    pub fn validate(&self, problems: &mut Vec<String>, offline: bool) {
        match (self.tls, &self.ca_bundle) {
            (BackendTlsMode::VerifyFull, None) => {
                problems.push("control: tls = \"verify-full\" needs ca_bundle".into())
            }
            (_, Some(ca)) if !offline && !ca.exists() => problems.push(format!(
                "control: ca_bundle {} does not exist",
                ca.display()
            )),
            _ => {}
        }
        if self.secret.as_str().is_empty() {
            problems.push("control.secret is empty".into());
        }
        if self.totp_key_secret.as_str().is_empty() {
            problems.push("control.totp_key_secret is empty".into());
        }
        if self.pool_size == 0 {
            problems.push("control.pool_size must be at least 1".into());
        }
        if self.revocation_refresh < Duration::from_millis(100)
            || self.revocation_refresh > Duration::from_secs(60)
        {
            problems.push("control.revocation_refresh must be between 100ms and 60s".into());
        }
        if self.revocation_max_stale < self.revocation_refresh {
            problems
                .push("control.revocation_max_stale must be at least revocation_refresh".into());
        }
    }
}

/// Errors talking to the control database. Messages never carry credentials, codes or secrets.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Credentials or keys could not be fetched.
    #[error("control database secret: {0}")]
    Secret(#[from] SecretError),
    /// No connection could be had from the pool.
    #[error("control database unavailable: {0}")]
    Pool(String),
    /// A statement failed.
    #[error("control database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A time value is out of range.
    #[error("time out of range")]
    Clock,
    /// The TLS configuration (CA bundle) could not be loaded.
    #[error("control database TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl From<deadpool_postgres::PoolError> for ControlError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ControlError::Pool(e.to_string())
    }
}

/// A pool of connections to the control database.
#[derive(Clone)]
pub struct ControlDb {
    pool: Pool,
}

impl std::fmt::Debug for ControlDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlDb")
            .field("size", &self.pool.status().max_size)
            .finish()
    }
}

impl ControlDb {
    /// Connects (lazily, through the pool) with credentials from the secret store and runs the migrations.
    pub async fn open(
        cfg: &ControlConfig,
        secrets: &dyn SecretStore,
    ) -> Result<ControlDb, ControlError> {
        let creds = DbCredentials::fetch(secrets, &cfg.secret).await?;
        let mut pg = tokio_postgres::Config::new();
        pg.user(&creds.username)
            .password(creds.password.expose_secret())
            .host(creds.host.as_deref().unwrap_or("localhost"))
            .port(creds.port.unwrap_or(5432))
            .dbname(creds.dbname.as_deref().unwrap_or("pgveil_control"))
            .application_name("pgveil-control")
            .connect_timeout(Duration::from_secs(10));
        let mcfg = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match cfg.tls {
            BackendTlsMode::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(pg, tokio_postgres::NoTls, mcfg())
            }
            mode => {
                let verify = mode == BackendTlsMode::VerifyFull;
                let client = crate::tls::backend_client_config(cfg.ca_bundle.as_deref(), verify)?;
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Manager::from_config(pg, tls::RustlsMakeConnect(client), mcfg())
            }
        };
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| ControlError::Pool(e.to_string()))?;
        let db = ControlDb { pool };
        {
            let mut client = db.client().await?;
            migrate(&mut client).await?;
        }
        Ok(db)
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, ControlError> {
        Ok(self.pool.get().await?)
    }
}

/// Seconds since the Unix epoch (the control database stores times as `bigint` seconds taken from pgveil's
/// injected clock, never from the database's `now()`, so tests can move time).
pub fn epoch(t: SystemTime) -> Result<i64, ControlError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| ControlError::Clock)?;
    i64::try_from(d.as_secs()).map_err(|_| ControlError::Clock)
}
