//! The end of a client's hold on a backend, one path for session mode and transaction mode: what may still
//! run on the backend is cancelled, then the backend goes back to its pool clean, in a state pgveil has seen
//! to be idle (DESIGN.md "Trust boundary", Pools), or is closed. Every step of the clean-up runs under
//! `pool.reset_timeout` (see [`crate::backend::reset`]).

use deadpool::managed::Object;

use super::relay::{RelayEnd, RelayState};
use crate::backend::pool::PooledConn;
use crate::backend::reset::{drain_unsynced, reset, rollback};
use crate::net::ClientStream;
use crate::proto::{PgError, TxnStatus};

/// What a departed client left on its backend (all responses read).
#[derive(Debug, Clone, Copy)]
pub enum Leftover {
    /// Everything was synced; the last ReadyForQuery said this transaction status.
    Synced(TxnStatus),
    /// Extended-protocol messages after the last Sync: drain first.
    Unsynced,
}

impl Leftover {
    /// What the relay's state says was left.
    pub fn of(state: &RelayState) -> Self {
        if state.unsynced {
            Self::Unsynced
        } else {
            Self::Synced(state.txn_status)
        }
    }
}

/// How a backend is made clean for its next client.
#[derive(Debug, Clone, Copy)]
pub enum Cleanup {
    /// Session mode: drain an unsynced batch, then reset the session (`DISCARD ALL`, or `ROLLBACK` first).
    Reset,
    /// Transaction mode, a client pinned to its backend or whose transaction may have left state pgveil did
    /// not see: reset as in session mode, and forget pgveil's prepared statements and settings on it.
    ResetAndForget,
    /// Transaction mode, any other client: roll back an open transaction; settings it may have changed make
    /// the backend's settings unknown (the next client starts with `RESET ALL`). An unsynced batch is
    /// handled as [`Cleanup::ResetAndForget`].
    Rollback {
        /// The client's last transaction may have changed settings.
        settings_dirty: bool,
    },
}

/// The end of a relay's hold on `conn` (the client left, the relay ended with `end`): a statement that may
/// still run for a client that is gone is cancelled, and a backend that owes responses is closed; else it is
/// cleaned up and released.
pub async fn after_relay(conn: PooledConn, state: &RelayState, end: &RelayEnd, cleanup: Cleanup) {
    let gone = matches!(end, RelayEnd::BackendGone);
    let idle = state.backend_idle();
    // Transaction mode also cancels on a broken backend: its protocol state is unknown.
    let unknown = match cleanup {
        Cleanup::Reset => !idle,
        Cleanup::ResetAndForget | Cleanup::Rollback { .. } => !idle || conn.broken,
    };
    if unknown && !gone {
        crate::cancel::send_cancel_detached(conn.target.clone(), conn.key);
    }
    if !idle || gone {
        discard(conn);
        return;
    }
    release(conn, Leftover::of(state), cleanup).await;
}

/// Cleans `conn` up and returns it to its pool, or closes it when it is broken or the clean-up failed.
pub async fn release(mut conn: PooledConn, left: Leftover, cleanup: Cleanup) {
    if conn.broken {
        discard(conn);
        return;
    }
    let ok = match (left, cleanup) {
        (Leftover::Unsynced, Cleanup::Reset) => drain_and_reset(&mut conn).await,
        // Parses, portals and settings of the unsynced batch are unknown: drain, then reset like a pinned
        // backend (pgveil's server-side statements are forgotten with it).
        (Leftover::Unsynced, _) => {
            let ok = drain_and_reset(&mut conn).await;
            forget(&mut conn);
            ok
        }
        (Leftover::Synced(status), Cleanup::Reset) => reset(&mut conn, status.byte()).await,
        (Leftover::Synced(status), Cleanup::ResetAndForget) => {
            let ok = reset(&mut conn, status.byte()).await;
            forget(&mut conn);
            ok
        }
        (Leftover::Synced(status), Cleanup::Rollback { settings_dirty }) => {
            let ok = status.is_idle() || rollback(&mut conn).await;
            if settings_dirty {
                conn.applied = None; // unknown: the next client starts with RESET ALL
            }
            ok
        }
    };
    if !ok {
        discard(conn);
    }
    // Else dropped here: back to the pool, clean.
}

async fn drain_and_reset(conn: &mut PooledConn) -> bool {
    drain_unsynced(conn).await && reset(conn, TxnStatus::Idle.byte()).await
}

/// After a reset: pgveil's server-side statements are gone and the backend carries no client settings.
fn forget(conn: &mut PooledConn) {
    conn.statements.clear();
    conn.applied = Some(Vec::new());
}

/// Removes a backend from its pool and closes it.
pub fn discard(mut conn: PooledConn) {
    conn.broken = true;
    let _ = Object::take(conn);
}

/// A revoked token or disabled user ends the session at once: the backend held mid-flight, in an unknown
/// state, is cancelled and closed, and the client is told.
pub async fn revoked(stream: &mut ClientStream, held: Option<PooledConn>) {
    if let Some(conn) = held {
        crate::cancel::send_cancel_detached(conn.target.clone(), conn.key);
        discard(conn);
    }
    tracing::info!("session terminated: token revoked or user disabled");
    super::handshake::refuse(
        stream,
        PgError::invalid_authorization("session terminated: pgveil token revoked or user disabled"),
    )
    .await;
}
