//! Tenants and routing: the token's `tenant` claim picks the tenant; the tenant fixes the backend target and
//! the secret holding its credentials, its session cap and what it requires of authentication (MFA).
//!
//! [`Tenant`] is the run-time form of a `[[tenant]]` section (with the pool defaults applied and the TLS
//! client config loaded); everything after authentication asks it, never the config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{BackendTlsMode, Config, PoolDefaults, PoolMode, TenantConfig};
use crate::ids::{SecretId, TenantId};
use crate::mfa::policy::MfaRequirement;
use crate::secret::DbCredentials;

/// Port of a backend when neither the config nor the secret names one.
const DEFAULT_BACKEND_PORT: u16 = 5432;

/// A tenant as the proxy uses it.
pub struct Tenant {
    /// Tenant id.
    pub id: TenantId,
    /// Secret with the backend credentials.
    pub secret: SecretId,
    /// Backend host override.
    pub host: Option<String>,
    /// Backend port override.
    pub port: Option<u16>,
    /// Backend database override.
    pub dbname: Option<String>,
    /// TLS client config towards the backend.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Pool size per role class.
    pub pool_size: usize,
    /// Pool mode.
    pub pool_mode: PoolMode,
    /// Maximum concurrent client sessions of this tenant on this instance; `None`: no cap.
    pub max_clients: Option<usize>,
    /// When the tenant went live with real data (start of the MFA grace period).
    pub live_since: Option<SystemTime>,
    /// MFA required at once, whatever `live_since` says.
    pub require_mfa: bool,
}

impl Tenant {
    /// The backend this tenant's sessions reach with `creds`: the config's overrides, else the secret's
    /// values (port 5432 by default); `None` when neither names a host or a database.
    pub fn target(&self, creds: &DbCredentials) -> Option<BackendTarget> {
        Some(BackendTarget {
            host: self.host.clone().or_else(|| creds.host.clone())?,
            port: self.port.or(creds.port).unwrap_or(DEFAULT_BACKEND_PORT),
            dbname: self.dbname.clone().or_else(|| creds.dbname.clone())?,
            tls: self.tls.clone(),
        })
    }

    /// What this tenant requires of a session's authentication at `now` (forced 2FA, grace period).
    pub fn mfa_requirement(&self, now: SystemTime) -> MfaRequirement {
        MfaRequirement::at(self.live_since, self.require_mfa, now)
    }
}

/// Where a tenant's backend lives (no credentials here: they come from the secret store per connection).
#[derive(Clone)]
pub struct BackendTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub dbname: String,
    /// TLS client config when TLS is used towards this backend.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Errors building the routing table.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A tenant's TLS settings could not be loaded.
    #[error("tenant {tenant}: {reason}")]
    Tls {
        /// Tenant.
        tenant: TenantId,
        /// What failed.
        reason: String,
    },
}

/// All tenants by id.
pub struct Router {
    tenants: HashMap<TenantId, Arc<Tenant>>,
}

impl Router {
    /// Builds the table from a validated config.
    pub fn from_config(cfg: &Config) -> Result<Router, RouteError> {
        Router::new(&cfg.tenants, &cfg.pool)
    }

    /// Builds the table from validated `[[tenant]]` sections and the `[pool]` defaults.
    pub fn new(tenants: &[TenantConfig], pool: &PoolDefaults) -> Result<Router, RouteError> {
        let mut table = HashMap::new();
        for t in tenants {
            table.insert(t.id.clone(), Arc::new(tenant(t, pool)?));
        }
        Ok(Router { tenants: table })
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &TenantId) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }
}

/// The run-time tenant of one `[[tenant]]` section.
fn tenant(t: &TenantConfig, pool: &PoolDefaults) -> Result<Tenant, RouteError> {
    let tls = match t.tls {
        BackendTlsMode::Disable => None,
        mode => Some(
            crate::tls::backend_client_config(
                t.ca_bundle.as_deref(),
                mode == BackendTlsMode::VerifyFull,
            )
            .map_err(|e| RouteError::Tls {
                tenant: t.id.clone(),
                reason: e.to_string(),
            })?,
        ),
    };
    Ok(Tenant {
        id: t.id.clone(),
        secret: t.secret.clone(),
        host: t.host.clone(),
        port: t.port,
        dbname: t.dbname.clone(),
        tls,
        pool_size: t.pool_size.unwrap_or(pool.size),
        pool_mode: t.pool_mode.unwrap_or(pool.mode),
        max_clients: t.max_clients,
        live_since: t.live_since,
        require_mfa: t.require_mfa,
    })
}
