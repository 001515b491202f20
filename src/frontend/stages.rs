//! A connection's life as stages, each a function whose result the next one consumes:
//!
//! accept ([`crate::server`]: the startup-phase cap) → [`handshake`] (TLS and the startup packet, or a cancel
//! request; [`super::handshake`]) → [`authenticate`] (the token; [`super::auth`]) → admit (caps, revocation
//! registration; [`super::admit`]) → route (tenant, settings, database; [`super::routing`]) → serve (session
//! mode, [`super::session`], or transaction mode, [`super::txn`], both ending through [`super::finish`]).
//!
//! Handshake and authentication run under `listen.startup_timeout` and `listen.max_startups`; serving gets
//! only a [`SessionCtx`], not the server's whole shared state.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::admit::{Admitted, admit};
use super::auth::{AuthError, Authenticated, authenticate};
use super::context::{Client, SessionCtx};
use super::handshake::{Hello, negotiate, refuse};
use super::routing::route;
use crate::config::PoolMode;
use crate::error::{Classified, ErrorKind};
use crate::net::ClientStream;
use crate::proto::PgError;
use crate::proto::messages;
use crate::proto::startup::StartupMessage;
use crate::shared::{Shared, Slot};

/// Serves one accepted TCP connection to the end. `starting` is its place under `listen.max_startups`, given
/// up once authentication ends; an authenticated session then takes one under `listen.max_clients`.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, starting: Slot<'_>) {
    let _ = tcp.set_nodelay(true);
    let timeout = shared.cfg.listen.startup_timeout;
    let started = tokio::time::timeout(timeout, start(tcp, peer, &shared)).await;
    drop(starting);
    let (mut stream, startup, auth) = match started {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            tracing::info!(client = %peer, "startup timed out");
            return;
        }
    };
    let Some(admitted) = admit(&mut stream, &startup, &auth, peer, &shared).await else {
        return;
    };
    let span = admitted.span.clone();
    route_and_serve(&mut stream, &startup, &auth, admitted, &shared)
        .instrument(span)
        .await;
}

/// Handshake and authentication (under the startup timeout).
async fn start(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(ClientStream, StartupMessage, Authenticated)> {
    let (mut stream, startup) = handshake(tcp, peer, shared).await?;
    let auth = authenticate_client(&mut stream, peer, shared).await?;
    Some((stream, startup, auth))
}

/// The handshake stage: TLS and the startup packet (a cancel request is served and ends here), the protocol
/// version, and no replication.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(ClientStream, StartupMessage)> {
    let max_packet = shared.cfg.listen.max_startup_packet;
    let hello = match negotiate(tcp, shared.tls.as_ref(), max_packet).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(client = %peer, kind = e.kind().as_label(), error = %e, "handshake ended");
            return None;
        }
    };
    let (mut stream, startup) = match hello {
        Hello::Cancel { pid, secret } => {
            shared.cancel.cancel(pid, secret).await;
            return None;
        }
        Hello::Session { stream, startup } => (stream, startup),
    };
    if startup.minor > 0 || startup.params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
        // We speak 3.0 and no protocol extensions; tell the client so it can fall back.
        let unsupported: Vec<String> = startup
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = BytesMut::new();
        messages::negotiate_protocol_version(&mut out, 0, &unsupported);
        if stream.write_all(&out).await.is_err() {
            return None;
        }
    }
    if startup
        .get("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off" && v != "no")
    {
        refuse(
            &mut stream,
            PgError::unsupported_startup("replication connections are not supported by pgveil"),
        )
        .await;
        return None;
    }
    Some((stream, startup))
}

/// The authenticate stage: the token, checked offline and against the revocation cache.
async fn authenticate_client(
    stream: &mut ClientStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<Authenticated> {
    let now = (shared.clock)();
    let revocations = shared.revocations.as_deref();
    let verifier = &shared.verifier;
    match authenticate(
        stream,
        peer,
        &shared.cfg,
        &shared.router,
        verifier,
        revocations,
        now,
    )
    .await
    {
        // Counted as "ok" once the session is admitted within its caps (`super::admit`).
        Ok(auth) => Some(auth),
        Err(e @ AuthError::Gone) => {
            metrics::counter!("pgveil_auth_total", "result" => e.kind().as_label(), "sqlstate" => "")
                .increment(1);
            None
        }
        Err(AuthError::Refused(e)) => {
            metrics::counter!("pgveil_auth_total", "result" => ErrorKind::Refused.as_label(), "sqlstate" => e.code())
                .increment(1);
            refuse(stream, e).await;
            None
        }
    }
}

/// The route stage, then serving in the tenant's pool mode (inside the session's span).
async fn route_and_serve(
    stream: &mut ClientStream,
    startup: &StartupMessage,
    auth: &Authenticated,
    admitted: Admitted<'_>,
    shared: &Shared,
) {
    let who = &auth.identity;
    let Some(route) = route(stream, startup, who, &shared.router).await else {
        return;
    };
    let ctx = SessionCtx::of(shared);
    let mut killed = admitted.killed.clone();
    let client = Client {
        who,
        notice: auth.notice.as_deref(),
        startup_user: startup.get("user").unwrap_or_default(),
    };
    match route.tenant.pool_mode {
        PoolMode::Transaction => {
            super::txn::serve(stream, &client, &route, &ctx, &mut killed).await
        }
        PoolMode::Session => {
            super::session::serve(stream, &client, &route, &ctx, &mut killed).await
        }
    }
    drop(admitted); // the session's places under the caps end with it
}
