//! Serving a transaction-mode client after its route is known: its login, then one backend per transaction
//! (checked out when the client's next message arrives, released at the ReadyForQuery that ends the
//! transaction with nothing pending), and the ending shared with session mode ([`crate::frontend::finish`]).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::{TxnCtx, capture_settings, ensure_settings, login};
use crate::backend::Pools;
use crate::backend::pool::PooledConn;
use crate::cancel::CancelHandle;
use crate::frontend::checkout::checkout_error;
use crate::frontend::context::{Client, SessionCtx};
use crate::frontend::finish::{Cleanup, after_relay, discard, revoked};
use crate::frontend::greet::greet;
use crate::frontend::handshake::refuse;
use crate::frontend::relay::{Relay, RelayEnd};
use crate::frontend::routing::Route;
use crate::frontend::verify;
use crate::identity::Identity;
use crate::ids::RoleName;
use crate::net::ClientStream;
use crate::proto::PgError;
use crate::proto::tags::frontend;
use crate::route::Tenant;

/// Serves a routed transaction-mode client until it leaves.
pub async fn serve(
    stream: &mut ClientStream,
    client: &Client<'_>,
    route: &Route,
    ctx: &SessionCtx<'_>,
    killed: &mut watch::Receiver<bool>,
) {
    let who = client.who;
    let Some((txn, params)) = login(stream, who, ctx, route).await else {
        return;
    };
    let handle = ctx.cancel.register();
    if greet(stream, &params, &handle, client.notice)
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(transaction_mode = true, "session started");
    let mut relay = Relay::new(who, ctx.policy, ctx.max_query_bytes);
    relay.txn = Some(txn);
    relay.tally = ctx.tally(who, client.startup_user);
    relay.idle = ctx.idle;
    let session = Session {
        who,
        ctx,
        tenant: &route.tenant,
    };
    session.transactions(stream, relay, &handle, killed).await;
}

/// What serving the client's transactions needs.
struct Session<'a, 's> {
    who: &'a Identity,
    ctx: &'a SessionCtx<'s>,
    tenant: &'a Arc<Tenant>,
}

impl Session<'_, '_> {
    /// One transaction after the other, until the client leaves.
    async fn transactions(
        &self,
        stream: &mut ClientStream,
        mut relay: Relay<'_>,
        handle: &CancelHandle,
        killed: &mut watch::Receiver<bool>,
    ) {
        let mut shutdown = self.ctx.shutdown.clone();
        let mut held: Option<PooledConn> = None;
        let mut cin = BytesMut::new();
        loop {
            let conn = match held.as_mut() {
                Some(conn) => conn,
                None => {
                    let next =
                        self.next_transaction(stream, &mut cin, &mut relay, &mut shutdown, killed);
                    let Some(conn) = next.await else {
                        return;
                    };
                    held.insert(conn)
                }
            };
            handle.set_backend(Some((conn.target.clone(), conn.key)));
            // A revoked token or disabled user ends the session at once: the relay is dropped mid-flight and
            // the backend, whose state is then unknown, is cancelled and closed.
            let end = tokio::select! {
                end = relay.run(stream, &mut cin, conn, &mut shutdown) => Some(end),
                _ = killed.wait_for(|k| *k) => None,
            };
            handle.set_backend(None);
            let Some(end) = end else {
                revoked(stream, held.take()).await;
                return;
            };
            if !self.after_run(stream, &mut relay, &mut held, end).await {
                return;
            }
        }
    }

    /// Waits for the client's next transaction and checks out a backend for it; `None` when the session
    /// ends (the client was told why, if it is still there).
    async fn next_transaction(
        &self,
        stream: &mut ClientStream,
        cin: &mut BytesMut,
        relay: &mut Relay<'_>,
        shutdown: &mut watch::Receiver<bool>,
        killed: &mut watch::Receiver<bool>,
    ) -> Option<PooledConn> {
        let Some(txn) = relay.txn.as_mut() else {
            internal_error(stream, None).await;
            return None;
        };
        let error =
            match wait_for_client(stream, cin, shutdown, killed, self.ctx.idle.session).await {
                Idle::Data => None,
                Idle::TimedOut => {
                    tracing::info!(code = "57P05", "client idle timeout");
                    Some(PgError::idle_session_timeout())
                }
                Idle::Gone => return None,
                Idle::Killed => {
                    revoked(stream, None).await;
                    return None;
                }
                Idle::Shutdown => Some(PgError::shutting_down()),
            };
        if let Some(err) = error {
            crate::frontend::handshake::refuse(stream, err).await;
            return None;
        }
        if cin[0] == frontend::TERMINATE {
            return None;
        }
        let conn = self.check_out(stream, txn, false).await?;
        relay.arm_retry();
        Some(conn)
    }

    /// After a relay run ended with `end`: retry the batch on a fresh backend, release the backend, or end
    /// the session. Returns whether the session goes on.
    async fn after_run(
        &self,
        stream: &mut ClientStream,
        relay: &mut Relay<'_>,
        held: &mut Option<PooledConn>,
        end: RelayEnd,
    ) -> bool {
        let Some(txn) = relay.txn.as_mut() else {
            internal_error(stream, held.take()).await;
            return false;
        };
        match end {
            RelayEnd::Retry => {
                tracing::info!(
                    pid = held.as_ref().map(|c| c.key.pid),
                    "backend died before running the batch; sending it to a fresh backend"
                );
                metrics::counter!("pgveil_backend_retries_total", "mode" => "transaction")
                    .increment(1);
                if let Some(conn) = held.take() {
                    discard(conn);
                }
                let Some(conn) = self.check_out(stream, txn, true).await else {
                    return false;
                };
                *held = Some(conn); // not armed again: one retry per batch
            }
            RelayEnd::Release => release_after_transaction(txn, held).await,
            end => {
                tracing::info!(end = ?end, pinned = txn.pinned, "session ended");
                let how = cleanup(txn);
                if let Some(conn) = held.take() {
                    after_relay(conn, &relay.state, &end, how).await;
                }
                return false;
            }
        }
        true
    }

    /// Checks out a backend for the client's next transaction and makes it the client's (settings, function
    /// names, the backend guard, prepared statements); `None` when the client was refused (and told).
    async fn check_out(
        &self,
        stream: &mut ClientStream,
        txn: &mut TxnCtx,
        retry: bool,
    ) -> Option<PooledConn> {
        let (who, ctx) = (self.who, self.ctx);
        let mut conn = match ctx.pools.checkout(self.tenant, &who.role).await {
            Ok(c) => c,
            Err(e) => {
                refuse(stream, checkout_error(&e, who)).await;
                return None;
            }
        };
        let refused = if let Err(e) = ensure_settings(&mut conn, txn).await {
            Some(e)
        } else if !refresh_functions(&mut conn, txn, ctx.pools, self.tenant, &who.role).await {
            Some(PgError::backend_unavailable())
        } else if ctx.policy.inspects(who) {
            crate::frontend::guard::verify_backend(&mut conn, who, ctx.policy)
                .await
                .err()
        } else {
            None
        };
        if let Some(e) = refused {
            refuse(stream, e).await;
            discard(conn);
            return None;
        }
        if retry {
            txn.stmts.on_reroute(&conn.statements);
        } else {
            txn.stmts.on_checkout(&conn.statements);
        }
        Some(conn)
    }
}

/// The transaction ended with nothing pending: settings it may have changed are read back, then the backend
/// goes back to the pool (kept when the client is pinned, closed when broken).
async fn release_after_transaction(txn: &mut TxnCtx, held: &mut Option<PooledConn>) {
    let Some(conn) = held.as_mut() else {
        return;
    };
    if txn.settings_dirty || txn.verify {
        capture_settings(conn, txn).await;
    }
    if conn.broken {
        if let Some(conn) = held.take() {
            discard(conn);
        }
    } else if txn.pinned.is_none() {
        *held = None; // back to the pool
    }
}

/// Gives the client the pool's tenant-defined function names, reading them on `conn` when they are older than
/// [`verify::FUNCTIONS_MAX_AGE`] or the client defined a function; false when reading failed.
async fn refresh_functions(
    conn: &mut PooledConn,
    txn: &mut TxnCtx,
    pools: &Pools,
    tenant: &Arc<Tenant>,
    role: &RoleName,
) -> bool {
    let known = pools
        .functions(tenant, role)
        .filter(|(at, _)| !txn.functions_stale && at.elapsed() < verify::FUNCTIONS_MAX_AGE);
    if let Some((_, names)) = known {
        txn.functions = Some(names);
        return true;
    }
    let Some(names) = verify::load_functions(conn).await else {
        return false;
    };
    pools.set_functions(tenant, role, names.clone());
    txn.functions = Some(names);
    txn.functions_stale = false;
    true
}

/// How the wait for the client's next transaction ended.
enum Idle {
    Data,
    Gone,
    Shutdown,
    /// The session's token was revoked or its user disabled.
    Killed,
    /// The client sent nothing for `listen.client_idle_timeout`.
    TimedOut,
}

async fn wait_for_client(
    stream: &mut ClientStream,
    cin: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
    killed: &mut watch::Receiver<bool>,
    idle_timeout: Option<std::time::Duration>,
) -> Idle {
    let mut watching = true;
    let deadline = idle_timeout.map(|d| tokio::time::Instant::now() + d);
    loop {
        if *killed.borrow() {
            return Idle::Killed;
        }
        if *shutdown.borrow() {
            return Idle::Shutdown;
        }
        cin.reserve(8 * 1024);
        tokio::select! {
            r = stream.read_buf(cin) => return match r {
                Ok(0) | Err(_) => Idle::Gone,
                Ok(_) => Idle::Data,
            },
            r = shutdown.changed(), if watching => if r.is_err() { watching = false },
            r = killed.wait_for(|k| *k) => {
                drop(r);
                return Idle::Killed;
            }
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if deadline.is_some() => return Idle::TimedOut,
        }
    }
}

/// How the backend of a client that left is cleaned up: reset when the client was pinned or its transaction
/// may have left state pgveil did not see, else rolled back (see [`Cleanup`]).
fn cleanup(txn: &TxnCtx) -> Cleanup {
    if txn.pinned.is_some() || txn.verify {
        Cleanup::ResetAndForget
    } else {
        Cleanup::Rollback {
            settings_dirty: txn.settings_dirty,
        }
    }
}

/// Ends a session whose relay lost its transaction-mode state (a bug; never expected): FATAL XX000, and the
/// held backend, in an unknown state, is discarded.
async fn internal_error(stream: &mut ClientStream, held: Option<PooledConn>) {
    tracing::error!("transaction-mode session without its state");
    if let Some(conn) = held {
        discard(conn);
    }
    refuse(stream, PgError::internal()).await;
}
