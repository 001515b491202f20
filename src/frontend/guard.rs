//! The backend guard: before a backend serves an inspected role, pgveil checks that the backend's session is
//! the one its decisions assume, instead of trusting its own startup packet. The tenant's DBA can set session
//! defaults pgveil does not control (`ALTER ROLE acme_app SET search_path ...`, `ALTER DATABASE ... SET
//! client_min_messages ...`); an allow-listed function can change settings mid-session.
//!
//! Checked at every checkout (session mode: once per session; transaction mode: per transaction):
//! - the reported `client_encoding` is `UTF8` and `standard_conforming_strings` is `on` (ParameterStatus, no
//!   round trip; the relay's watchdog checks the same values while relaying);
//! - read once per backend connection (one query): `client_min_messages` is not below NOTICE (lower levels
//!   echo statement text), and `current_schemas(false)` equals the search path of the catalog snapshot the
//!   decisions resolve names in. On a mismatch the tenant's catalog is reloaded (it may be the snapshot that
//!   is out of date).
//!
//! A backend that fails is discarded (never returned to a pool) and the client gets a FATAL error.

use crate::backend::pool::PooledConn;
use crate::backend::reset::query_rows;
use crate::identity::Identity;
use crate::policy::StatementPolicy;
use crate::policy::settings::{refusal, reported_value_ok};
use crate::proto::{PgError, TxnStatus};

/// `client_min_messages` (ordinality 0) and the schemas of `current_schemas(false)` (ordinality 1..), in order.
const DEFAULTS_QUERY: &str = "SELECT 0::int8 AS n, pg_catalog.current_setting('client_min_messages') AS v \
     UNION ALL SELECT u.n, u.s FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) \
     WITH ORDINALITY AS u(s, n) ORDER BY 1";

/// Checks `conn` for an inspected `who`; on failure the connection is marked broken (the caller discards it).
pub async fn verify_backend(
    conn: &mut PooledConn,
    who: &Identity,
    policy: &dyn StatementPolicy,
) -> Result<(), PgError> {
    let server_encoding = conn.params.get("server_encoding").map(String::as_str);
    let bad = conn
        .params
        .iter()
        .find(|(n, v)| !reported_value_ok(n, v, server_encoding))
        .map(|(n, _)| n.clone());
    if let Some(name) = bad {
        conn.broken = true;
        return Err(PgError::lexing_changed(&name));
    }
    // Read once per backend, then only borrowed on later checkouts.
    let defaults = match conn.defaults.take() {
        Some(d) => d,
        None => read_defaults(conn).await?,
    };
    let refused = defaults_refusal(&defaults, who, policy);
    conn.defaults = Some(defaults);
    if let Some(err) = refused {
        conn.broken = true;
        return Err(err);
    }
    Ok(())
}

/// The refusal of a backend whose session defaults (`client_min_messages`, search path) differ from what
/// `who`'s decisions assume.
fn defaults_refusal(
    (messages, schemas): &(String, Vec<String>),
    who: &Identity,
    policy: &dyn StatementPolicy,
) -> Option<PgError> {
    if refusal("client_min_messages", Some(messages), None).is_some() {
        tracing::warn!(tenant = %who.tenant, "backend session default client_min_messages is below NOTICE; backend refused");
        return Some(PgError::backend_refused("client_min_messages"));
    }
    if !policy.schemas_match(who, schemas) {
        tracing::warn!(tenant = %who.tenant, "backend search path differs from the catalog snapshot; backend refused, catalog reload requested");
        policy.session_defaults_changed(who);
        return Some(PgError::backend_refused("search_path"));
    }
    None
}

async fn read_defaults(conn: &mut PooledConn) -> Result<(String, Vec<String>), PgError> {
    let refused = |conn: &mut PooledConn| {
        conn.broken = true;
        PgError::backend_unavailable()
    };
    let rows = match query_rows(conn, DEFAULTS_QUERY).await {
        Ok((status, None, rows)) if TxnStatus::from_byte(status).is_idle() => rows,
        other => {
            tracing::warn!(
                ok = other.is_ok(),
                "reading backend session defaults failed"
            );
            return Err(refused(conn));
        }
    };
    let mut values = rows.into_iter().map(|r| r.into_iter().nth(1).flatten());
    let Some(Some(messages)) = values.next() else {
        return Err(refused(conn));
    };
    let schemas: Option<Vec<String>> = values.collect();
    match schemas {
        Some(schemas) => Ok((messages, schemas)),
        None => Err(refused(conn)),
    }
}
