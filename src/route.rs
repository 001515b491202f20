//! Tenants and routing: the token's `tenant` claim picks the tenant; the tenant fixes the backend target and
//! the secret holding its credentials.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{BackendTlsMode, Config, PoolMode};
use crate::ids::{SecretId, TenantId};

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
        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
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
            tenants.insert(
                t.id.clone(),
                Arc::new(Tenant {
                    id: t.id.clone(),
                    secret: t.secret.clone(),
                    host: t.host.clone(),
                    port: t.port,
                    dbname: t.dbname.clone(),
                    tls,
                    pool_size: t.pool_size.unwrap_or(cfg.pool.size),
                    pool_mode: t.pool_mode.unwrap_or(cfg.pool.mode),
                }),
            );
        }
        Ok(Router { tenants })
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &TenantId) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }
}
