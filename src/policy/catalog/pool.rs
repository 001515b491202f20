//! One deadpool-postgres pool per tenant for catalog loads, so a reload after a schema change costs the catalog
//! queries only, not a new connection and authentication. A pool is rebuilt when the tenant's backend target or
//! credentials (from the secret store, rotation included) change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use tokio_postgres::tls::MakeTlsConnect;

use super::Catalog;
use super::load::{LoadError, RustlsConnect, query_catalog};
use crate::ids::TenantId;
use crate::route::Tenant;
use crate::secret::{DbCredentials, ExposeSecret, SecretStore};

/// What a pool was built for; a different target means a new pool.
#[derive(PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    dbname: String,
    username: String,
    /// SHA-256 of the password (the password itself is not kept here).
    password_digest: Vec<u8>,
}

/// Pools of catalog connections, one per tenant (at most one connection each).
#[derive(Default)]
pub struct CatalogPools {
    pools: Mutex<HashMap<TenantId, (Arc<Target>, Pool)>>,
}

impl CatalogPools {
    /// Drops `tenant`'s pooled connection: the next load connects anew and so sees the session defaults the
    /// tenant set since (`ALTER ROLE ... SET search_path`), which an open connection keeps from its start.
    pub fn forget(&self, tenant: &TenantId) {
        self.pools.lock().remove(tenant);
    }

    /// Loads `tenant`'s catalog over its pooled connection (opened on first use).
    pub async fn load(
        &self,
        tenant: &Tenant,
        secrets: &dyn SecretStore,
        timeout: Duration,
    ) -> Result<Catalog, LoadError> {
        tokio::time::timeout(timeout, self.load_inner(tenant, secrets, timeout))
            .await
            .map_err(|_| LoadError::Timeout)?
    }

    async fn load_inner(
        &self,
        tenant: &Tenant,
        secrets: &dyn SecretStore,
        timeout: Duration,
    ) -> Result<Catalog, LoadError> {
        let creds = DbCredentials::fetch(secrets, &tenant.secret).await?;
        let backend = tenant.target(&creds).ok_or(LoadError::Incomplete)?;
        let target = Target {
            host: backend.host,
            port: backend.port,
            dbname: backend.dbname,
            username: creds.username.clone(),
            password_digest: ring::digest::digest(
                &ring::digest::SHA256,
                creds.password.expose_secret().as_bytes(),
            )
            .as_ref()
            .to_vec(),
        };
        let existing = self
            .pools
            .lock()
            .get(&tenant.id)
            .filter(|(t, _)| **t == target)
            .map(|(_, p)| p.clone());
        let pool = match existing {
            Some(p) => p,
            None => {
                let p = build(tenant, &creds, &target, timeout)?;
                self.pools
                    .lock()
                    .insert(tenant.id.clone(), (Arc::new(target), p.clone()));
                p
            }
        };
        let client = pool.get().await.map_err(pool_error)?;
        match query_catalog(&client).await {
            Ok(c) => Ok(c),
            Err(e) => {
                // The connection may be inside the failed transaction: never reuse it.
                let _ = deadpool_postgres::Object::take(client);
                Err(e)
            }
        }
    }
}

fn build(
    tenant: &Tenant,
    creds: &DbCredentials,
    target: &Target,
    timeout: Duration,
) -> Result<Pool, LoadError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(&creds.username)
        .password(creds.password.expose_secret())
        .host(&target.host)
        .port(target.port)
        .dbname(&target.dbname)
        .application_name("pgveil-catalog")
        .options("-c standard_conforming_strings=on")
        .connect_timeout(timeout);
    let mgr_cfg = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match &tenant.tls {
        None => Manager::from_config(cfg, tokio_postgres::NoTls, mgr_cfg),
        Some(tls) => {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            Manager::from_config(cfg, MakeRustls(tls.clone()), mgr_cfg)
        }
    };
    Pool::builder(mgr)
        .max_size(1)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| LoadError::Pool(e.to_string()))
}

fn pool_error(e: deadpool_postgres::PoolError) -> LoadError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => LoadError::Connect(e),
        deadpool_postgres::PoolError::Timeout(_) => LoadError::Timeout,
        other => LoadError::Pool(other.to_string()),
    }
}

/// Makes a [`RustlsConnect`] for the host being connected to.
#[derive(Clone)]
struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeTlsConnect<tokio_postgres::Socket> for MakeRustls {
    type Stream =
        <RustlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Stream;
    type TlsConnect = RustlsConnect;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, std::io::Error> {
        Ok(RustlsConnect(self.0.clone(), domain.to_owned()))
    }
}
