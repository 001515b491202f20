//! Serving a session-mode client: one backend for the whole session, checked out and prepared (database
//! name, the backend guard, the client's startup settings), the greeting, the relay (with one transparent
//! retry of the session's first batch, see [`super::retry`]), and the ending shared with transaction mode
//! ([`super::finish`]).

use bytes::BytesMut;
use tokio::sync::watch;

use super::checkout::{apply_settings, checkout_error};
use super::context::{Client, SessionCtx};
use super::finish::{Cleanup, Leftover, after_relay, discard, release, revoked};
use super::greet::greet;
use super::handshake::refuse;
use super::relay::{Relay, RelayEnd};
use super::routing::Route;
use crate::backend::pool::PooledConn;
use crate::net::ClientStream;
use crate::proto::TxnStatus;

/// Serves a routed session-mode client until it leaves.
pub async fn serve(
    stream: &mut ClientStream,
    client: &Client<'_>,
    route: &Route,
    ctx: &SessionCtx<'_>,
    killed: &mut watch::Receiver<bool>,
) {
    let who = client.who;
    let Some(mut conn) = open_backend(stream, client, route, ctx).await else {
        return;
    };
    let handle = ctx.cancel.register();
    if greet(stream, &conn.params, &handle, client.notice)
        .await
        .is_err()
    {
        release(conn, Leftover::Synced(TxnStatus::Idle), Cleanup::Reset).await;
        return;
    }
    tracing::info!(transaction_mode = false, "session started");
    handle.set_backend(Some((conn.target.clone(), conn.key)));
    let mut relay = Relay::new(who, ctx.policy, ctx.max_query_bytes);
    relay.idle = ctx.idle;
    relay.tally = ctx.tally(who, client.startup_user);
    let mut shutdown = ctx.shutdown.clone();
    let mut cin = BytesMut::new();
    // The session's first batch may go to a fresh backend if this one dies before running it.
    relay.arm_retry();
    let end = loop {
        // A revoked token or disabled user ends the session at once (not at its next idle point, as a drain
        // does): the relay is dropped mid-flight and the backend is cancelled and closed.
        let end = tokio::select! {
            end = relay.run(stream, &mut cin, &mut conn, &mut shutdown) => Some(end),
            _ = killed.wait_for(|k| *k) => None,
        };
        if !matches!(end, Some(RelayEnd::Retry)) {
            break end;
        }
        tracing::info!(
            pid = conn.key.pid,
            "backend died before running the session's first batch; sending it to a fresh backend"
        );
        metrics::counter!("pgveil_backend_retries_total", "mode" => "session").increment(1);
        discard(conn);
        let Some(fresh) = open_backend(stream, client, route, ctx).await else {
            handle.set_backend(None);
            return;
        };
        conn = fresh;
        handle.set_backend(Some((conn.target.clone(), conn.key)));
    };
    handle.set_backend(None);
    drop(handle);
    let Some(end) = end else {
        revoked(stream, Some(conn)).await;
        return;
    };
    tracing::info!(end = ?end, "session ended");
    after_relay(conn, &relay.state, &end, Cleanup::Reset).await;
}

/// Checks out a backend for the client and prepares it (database name, the backend guard, the client's
/// startup settings); `None` when the client was refused (and told).
async fn open_backend(
    stream: &mut ClientStream,
    client: &Client<'_>,
    route: &Route,
    ctx: &SessionCtx<'_>,
) -> Option<PooledConn> {
    let who = client.who;
    let mut conn: PooledConn = match ctx.pools.checkout(&route.tenant, &who.role).await {
        Ok(c) => c,
        Err(e) => {
            refuse(stream, checkout_error(&e, who)).await;
            return None;
        }
    };
    if !route.check_db(stream, &conn.target.dbname).await {
        return None; // the backend was not touched: it goes back as it is
    }
    if ctx.policy.inspects(who)
        && let Err(e) = super::guard::verify_backend(&mut conn, who, ctx.policy).await
    {
        refuse(stream, e).await;
        discard(conn);
        return None;
    }
    if let Err(e) = apply_settings(&mut conn, &route.settings, who, ctx.policy).await {
        refuse(stream, e).await;
        release(conn, Leftover::Synced(TxnStatus::Idle), Cleanup::Reset).await;
        return None;
    }
    Some(conn)
}
