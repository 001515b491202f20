//! The control database: pgveil's own PostgreSQL database for users, MFA enrolment, recovery codes, token
//! revocations and brute-force counters. Several pgveil instances share it; every state change that must
//! happen at most once (a TOTP step, a recovery code) is a single conditional `UPDATE ... RETURNING`.
//!
//! The schema is created and migrated by pgveil itself ([`migrate`]), under an advisory lock so instances
//! starting together do not race.

mod migrate;
pub mod tls;
pub mod users;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::config::BackendTlsMode;
use crate::secret::{DbCredentials, ExposeSecret, SecretError, SecretStore};

pub use crate::config::ControlConfig;
pub use migrate::{MIGRATIONS, migrate};

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
