//! The admit stage: an authenticated client takes a place under `listen.max_clients`, and its session is
//! registered within the per-user and per-tenant caps, before any backend is touched: registered first, so a
//! revocation racing with the rest of start-up still ends it.

use tokio::sync::watch;

use super::auth::Authenticated;
use super::handshake::refuse;
use crate::error::ErrorKind;
use crate::net::ClientStream;
use crate::proto::PgError;
use crate::proto::startup::StartupMessage;
use crate::revoke::{NewSession, SessionGuard};
use crate::shared::{Shared, Slot};

/// An admitted session: its places under the caps (given up when dropped) and its revocation signal.
pub struct Admitted<'s> {
    _client: Slot<'s>,
    _registered: SessionGuard,
    /// Set when the session's token is revoked or its user disabled.
    pub killed: watch::Receiver<bool>,
    /// The session's span: every event of the session (audit included) carries who it is.
    pub span: tracing::Span,
}

/// Admits an authenticated client, or refuses it (53300) and returns `None`.
pub async fn admit<'s>(
    stream: &mut ClientStream,
    startup: &StartupMessage,
    auth: &Authenticated,
    peer: std::net::SocketAddr,
    shared: &'s Shared,
) -> Option<Admitted<'s>> {
    let Some(client) = Slot::take(&shared.clients, shared.cfg.listen.max_clients) else {
        metrics::counter!("pgveil_auth_total", "result" => ErrorKind::Refused.as_label(), "sqlstate" => "53300")
            .increment(1);
        refuse(
            stream,
            PgError::too_many_connections("sorry, too many clients already"),
        )
        .await;
        return None;
    };
    let who = &auth.identity;
    // The token's subject is the session's user; the startup packet's user name is only informational (clients
    // must send one; pgveil does not compare it). Both are on every event of the session (audit included),
    // with where it comes from.
    let startup_user = startup.get("user").unwrap_or_default();
    let span = tracing::info_span!("session", client = %peer, user = %who.user, startup_user = %startup_user, tenant = %who.tenant, role = %who.role);
    let cap = shared
        .router
        .tenant(&who.tenant)
        .and_then(|t| t.max_clients);
    let registered = match shared.sessions.register(NewSession {
        user: who.user.as_str(),
        tenant: who.tenant.as_str(),
        jti: &who.token_id,
        iat: auth.issued_at,
        max_per_user: shared.cfg.listen.max_sessions_per_user,
        max_per_tenant: cap,
    }) {
        Ok(g) => g,
        Err(e) => {
            tracing::info!(parent: &span, cap = %e, "session refused: connection cap");
            metrics::counter!("pgveil_auth_total", "result" => ErrorKind::Refused.as_label(), "sqlstate" => "53300")
                .increment(1);
            refuse(stream, PgError::too_many_connections(e.to_string())).await;
            return None;
        }
    };
    metrics::counter!("pgveil_auth_total", "result" => "ok", "sqlstate" => "").increment(1);
    Some(Admitted {
        _client: client,
        killed: registered.killed.clone(),
        _registered: registered,
        span,
    })
}
