//! Connects to one tenant the way the proxy does (credentials from the secret store, the tenant's backend
//! target and TLS) and runs the live checks. Two connections: one through the backend connector, which
//! records the authentication method the server asked for (tokio-postgres does not tell), closed at once;
//! one tokio-postgres client for the catalog queries.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Finding, Severity, extensions, pii, privileges, transport};
use crate::backend::connect::{AuthMethod, connect};
use crate::config::TenantConfig;
use crate::ids::TenantId;
use crate::policy::catalog::load;
use crate::policy::file::Policy;
use crate::route::BackendTarget;
use crate::route::Tenant;
use crate::secret::{DbCredentials, SecretStore};

const APPLICATION_NAME: &str = "pgveil-doctor";

fn unreachable(tenant: &TenantId, what: impl std::fmt::Display) -> Finding {
    Finding::new(
        Severity::High,
        "unreachable",
        Some(tenant),
        "database",
        format!(
            "cannot connect with the tenant's credentials, so nothing else was checked: {what}"
        ),
        "check the secret, the backend target and TLS settings (`pgveil policy catalog` connects the same way)",
    )
}

fn check_failed(tenant: &TenantId, check: &str, e: impl std::fmt::Display) -> Finding {
    Finding::new(
        Severity::High,
        "check-failed",
        Some(tenant),
        check,
        format!("the {check} check failed, so it is not known to pass: {e}"),
        "see the error; the doctor only reads catalogs any role may read",
    )
}

/// Runs every live check of one tenant; problems connecting or querying are findings too.
pub(super) async fn check_tenant(
    cfg: &TenantConfig,
    tenant: &Tenant,
    secrets: &dyn SecretStore,
    policy: Option<&Policy>,
) -> Vec<Finding> {
    let id = &cfg.id;
    let creds = match DbCredentials::fetch(secrets, &tenant.secret).await {
        Ok(c) => c,
        Err(e) => return vec![unreachable(id, format!("credentials: {e}"))],
    };
    let Some(target) = tenant.target(&creds) else {
        return vec![unreachable(
            id,
            "neither the config nor the secret names the backend host and database",
        )];
    };
    let mut out = transport::tls_mode(id, cfg.tls, &target.host);
    let auth = match auth_method(target, &creds).await {
        Ok(a) => a,
        Err(e) => {
            out.push(unreachable(id, e));
            return out;
        }
    };
    let client = match load::connect(tenant, secrets, APPLICATION_NAME).await {
        Ok(c) => c,
        Err(e) => {
            out.push(unreachable(id, e));
            return out;
        }
    };
    match transport::auth(id, auth, cfg.tls, &client).await {
        Ok(f) => out.extend(f),
        Err(e) => out.push(check_failed(id, "authentication", e)),
    }
    match privileges::check(id, &client).await {
        Ok(f) => out.extend(f),
        Err(e) => out.push(check_failed(id, "privileges", e)),
    }
    let trusted = policy.map(|p| p.trusted_extensions());
    match extensions::check(id, &client, trusted).await {
        Ok(f) => out.extend(f),
        Err(e) => out.push(check_failed(id, "extensions", e)),
    }
    match load::query_catalog(&client).await {
        Ok(cat) => out.extend(pii::check(id, &cat, policy)),
        Err(e) => out.push(check_failed(id, "unclassified-columns", e)),
    }
    out
}

/// Opens a backend connection as the pool does, notes how the server authenticated it and closes it.
async fn auth_method(
    target: BackendTarget,
    creds: &DbCredentials,
) -> Result<AuthMethod, crate::backend::ConnectError> {
    let mut conn = connect(
        Arc::new(target),
        creds,
        &[("application_name", APPLICATION_NAME)],
        Duration::from_secs(60),
    )
    .await?;
    // Terminate, so the server logs a normal end rather than an unexpected EOF.
    let _ = conn.stream.write_all(b"X\0\0\0\x04").await;
    let _ = conn.stream.shutdown().await;
    Ok(conn.auth)
}
