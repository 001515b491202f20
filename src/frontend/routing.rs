//! The route stage: the token's tenant decides the backend (the tenant's pool, its target and credentials,
//! looked up in the [`Router`]); the client's startup settings are checked; and the startup `database` must be
//! empty, the tenant id, or the tenant's database (3D000 otherwise). When only the tenant's secret names the
//! database, that last check is made after checkout, against the target the secret resolved.

use std::sync::Arc;

use super::handshake::refuse;
use super::params::requested_settings;
use crate::identity::Identity;
use crate::net::ClientStream;
use crate::proto::PgError;
use crate::proto::startup::StartupMessage;
use crate::route::{Router, Tenant};

/// Where a session goes.
pub struct Route {
    /// The tenant (its pool mode, pool and backend target).
    pub tenant: Arc<Tenant>,
    /// The client's startup settings to apply on its backends.
    pub settings: Vec<(String, String)>,
    /// The database the client named, when it is neither empty nor the tenant id: checked against the
    /// backend's target.
    pub requested_db: Option<String>,
}

/// Routes an admitted session, or refuses it (and tells the client) and returns `None`.
pub async fn route(
    stream: &mut ClientStream,
    startup: &StartupMessage,
    who: &Identity,
    router: &Router,
) -> Option<Route> {
    // authenticate checked the tenant against the same router.
    let Some(tenant) = router.tenant(&who.tenant).cloned() else {
        refuse(
            stream,
            PgError::invalid_authorization("token's tenant is not served here"),
        )
        .await;
        return None;
    };
    let settings = match requested_settings(startup) {
        Ok(s) => s,
        Err(e) => {
            refuse(stream, e).await;
            return None;
        }
    };
    let requested_db = startup
        .get("database")
        .filter(|db| !db.is_empty() && *db != who.tenant.as_str());
    if let (Some(db), Some(own)) = (requested_db, tenant.dbname.as_deref())
        && db != own
    {
        tracing::info!(database = db, "startup database is not the tenant's");
        refuse(stream, PgError::unknown_database(db)).await;
        return None;
    }
    Some(Route {
        tenant,
        settings,
        requested_db: requested_db.map(str::to_owned),
    })
}

impl Route {
    /// Refuses a backend of another database than the one the client named (3D000); true when it may serve.
    pub async fn check_db(&self, stream: &mut ClientStream, dbname: &str) -> bool {
        match self.requested_db.as_deref() {
            Some(db) if db != dbname => {
                tracing::info!(database = db, "startup database is not the tenant's");
                refuse(stream, PgError::unknown_database(db)).await;
                false
            }
            _ => true,
        }
    }
}
