//! Taking a backend for a client, in both pool modes: the client-visible error for a failed checkout, and
//! the client's startup settings as one statement checked by the statement policy like any client SQL.

use super::params::set_config_statement;
use crate::backend::pool::{BackendError, CheckoutError, PooledConn};
use crate::backend::reset::run_queries;
use crate::error::Classified;
use crate::identity::Identity;
use crate::policy::{Decision, StatementPolicy};
use crate::proto::PgError;

/// The client-visible error for a failed checkout (53300 after the queue timeout).
pub fn checkout_error(e: &CheckoutError, who: &Identity) -> PgError {
    match e {
        CheckoutError::Timeout => PgError::too_many_connections(format!(
            "no free connection to the tenant database for role {} (pool exhausted)",
            who.role
        )),
        CheckoutError::Closed => PgError::shutting_down(),
        CheckoutError::Build(b) => {
            tracing::error!(kind = e.kind().as_label(), error = %b, "backend pool could not be built");
            PgError::internal()
        }
        CheckoutError::Backend(b) => {
            let kind = b.kind().as_label();
            tracing::warn!(kind, error = %b, "backend unavailable");
            metrics::counter!("pgveil_backend_errors_total", "kind" => kind).increment(1);
            match b {
                BackendError::Secret { .. } => PgError::credentials_unavailable(),
                BackendError::Incomplete(_) | BackendError::Connect(_) => {
                    PgError::backend_unavailable()
                }
            }
        }
    }
}

/// The statement applying startup settings, checked by the statement policy like any client SQL; `None`
/// when there is nothing to apply.
pub fn checked_settings_sql(
    settings: &[(&str, &str)],
    who: &Identity,
    policy: &dyn StatementPolicy,
) -> Result<Option<String>, PgError> {
    if settings.is_empty() {
        return Ok(None);
    }
    let sql = set_config_statement(settings);
    if !policy.inspects(who) {
        return Ok(Some(sql));
    }
    match policy.check(&sql, who) {
        Decision::Allow => Ok(Some(sql)),
        Decision::Rewrite(s) => Ok(Some(s)),
        Decision::Deny(e) => Err(PgError::startup_setting_refused(e.into_message())),
    }
}

/// Session mode: applies the client's startup settings on its backend in one statement (skipping values
/// already in force).
pub async fn apply_settings(
    conn: &mut PooledConn,
    settings: &[(String, String)],
    who: &Identity,
    policy: &dyn StatementPolicy,
) -> Result<(), PgError> {
    let pending: Vec<(&str, &str)> = settings
        .iter()
        .filter(|(name, value)| {
            let current = conn
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
            current != Some(value)
        })
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let Some(sql) = checked_settings_sql(&pending, who, policy)? else {
        return Ok(());
    };
    match run_queries(conn, &[sql.as_str()]).await {
        Ok((_, None)) => Ok(()),
        Ok((_, Some(err))) => Err(PgError::invalid_startup_setting(err.message)),
        Err(e) => {
            tracing::warn!(error = %e, "backend failed while applying startup settings");
            Err(PgError::backend_unavailable())
        }
    }
}
