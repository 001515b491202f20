//! The session relay: one task moves frames between a client and its backend in both directions.
//!
//! Raw frames are relayed untouched (DataRow, CopyData, Bind, ... are never decoded). Only these are looked at:
//! - from the client: `Query` and `Parse` (SQL text through the [`StatementPolicy`] hook), `FunctionCall`
//!   (refused for inspected roles: it calls functions by OID, past any SQL check), `Sync`, `Terminate`, and
//!   any unknown tag (protocol violation);
//! - from the backend: `ReadyForQuery` (transaction status), `ParameterStatus` (tracked), and `ErrorResponse`
//!   while a denial is pending; with a masking policy also `CommandComplete` (schema changes are reported so
//!   the tenant's catalog snapshot is reloaded) and `ErrorResponse`/`NoticeResponse` (their DETAIL, which can
//!   print whole rows unmasked, is withheld from roles with masked columns).
//!
//! A denied statement is not answered by pgveil out of band, which would break response ordering in
//! pipelines and leave the backend's transaction state out of step with what the client saw. Instead the
//! statement is replaced by `SELECT "pgveil:<nonce>"`, which makes the backend itself fail at parse analysis
//! (aborting a transaction block exactly as a real error does); that 42703 ErrorResponse is then swapped for
//! pgveil's own error on the way back.
//!
//! Both directions are buffered with high-water marks and written in `select!` branches, so a client that
//! pipelines while the backend streams results can never deadlock the loop.
//!
//! One job per file:
//! - [`run`]: the `select!` loop over both sockets, and what a run hands to the next one when it ends;
//! - [`client`] (session mode) and [`client_txn`] (transaction mode): frames from the client;
//! - [`decide`]: the statement policy hook, and the epochs of prepared state (held while undetermined);
//! - [`backend`]: frames from the backend (watchdogs, withheld details, the tally);
//! - [`denial`]: the swap of a refused statement for a failing one, and of its error for pgveil's;
//! - [`sync`]: pipelining: requests in flight, Sync, the transaction status;
//! - [`release`]: when a transaction-mode backend can go back to its pool.

mod backend;
mod client;
mod client_txn;
mod decide;
mod denial;
#[cfg(test)]
mod hold_tests;
mod release;
mod run;
mod sync;
#[cfg(test)]
mod tests;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::retry::Retry;
use super::tally::Tally;
use super::txn::TxnCtx;
use super::versions::StateEpochs;
use crate::audit::AuditTag;
use crate::identity::Identity;
use crate::policy::StatementPolicy;
use crate::proto::PgError;

pub use sync::RelayState;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate.
    Terminate,
    /// The client closed the connection (or its socket failed).
    ClientGone,
    /// The backend closed the connection or failed; the client was told.
    BackendGone,
    /// The client broke the protocol; it was sent this FATAL error.
    ClientProtocol(PgError),
    /// pgveil is shutting down; the client was told.
    Shutdown,
    /// Transaction mode: the transaction ended (ReadyForQuery idle) with nothing pending in either
    /// direction; the backend can serve another client.
    Release,
    /// The client sent nothing for longer than its idle timeout; it was sent the FATAL error.
    IdleTimeout,
    /// The backend died before running any of the batch (see [`super::retry`]); nothing reached the client.
    /// The batch waits in the relay's buffer: the next run sends it to the backend it is given.
    Retry,
}

/// How long a client may stay silent while the backend waits for it (`None`: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleTimeouts {
    /// Outside a transaction (57P05).
    pub session: Option<std::time::Duration>,
    /// Inside a transaction (25P03).
    pub transaction: Option<std::time::Duration>,
}

impl IdleTimeouts {
    /// `listen.client_idle_timeout` and `listen.idle_transaction_timeout`.
    pub fn from_listen(listen: &crate::config::ListenConfig) -> Self {
        Self {
            session: listen.client_idle_timeout,
            transaction: listen.idle_transaction_timeout,
        }
    }
}

/// The relay for one session.
pub struct Relay<'a> {
    who: &'a Identity,
    policy: &'a dyn StatementPolicy,
    max_query_bytes: usize,
    /// Protocol state.
    pub state: RelayState,
    /// Refused statements whose failing stand-ins are on their way (see [`denial`]).
    denials: Vec<(String, PgError)>,
    /// Transaction-mode state (`None` in session mode).
    pub txn: Option<TxnCtx>,
    /// Idle limits for the client.
    pub idle: IdleTimeouts,
    /// Output buffers (to backend, to client), kept between runs.
    out_bufs: (BytesMut, BytesMut),
    /// The policy wants schema-changing commands reported and errors/notices shown to it.
    watch_backend: bool,
    /// A schema-changing command completed and its transaction has not ended yet.
    ddl_pending: bool,
    /// The policy versions its decisions (`StatementPolicy::versioned`): track under which epoch this
    /// session's prepared statements and cursors were made, and end the session when that epoch has passed.
    versioned: bool,
    /// Epochs of the session's live prepared statements and cursors.
    epochs: StateEpochs,
    /// Set by the ParameterStatus watchdog: end the session (FATAL, backend discarded).
    fatal: Option<PgError>,
    /// Client messages are held while the epoch of its prepared state is being determined, since then.
    held_since: Option<tokio::time::Instant>,
    /// The policy asked to decide the first client message again shortly (it is back in front of the
    /// client bytes); client messages are held until then ([`decide`]).
    deciding_later: bool,
    /// The backend is fresh from the pool and nothing of its answer was relayed yet: the batch can be sent
    /// again elsewhere if it dies (see [`super::retry`]).
    retry: Option<Retry>,
    /// Statement rows, durations and the exfiltration guard (sessions of a masking policy; `None`: none).
    pub tally: Option<Tally>,
    /// The audit tag of the last decision ([`Relay::decide`]).
    last_tag: Option<AuditTag>,
}

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        // The session ends inside the transaction of a schema change: report it anyway (fail closed: the
        // policy treats the tenant's catalog as stale until it has been reloaded).
        if self.ddl_pending {
            self.policy.schema_changed(self.who);
        }
    }
}

/// What the relay does after a piece of work.
enum Step {
    Continue,
    /// The message just read waits: the policy asked to decide it again shortly.
    Hold,
    End(RelayEnd),
}

impl<'a> Relay<'a> {
    /// A relay for `who`, checking statements with `policy`.
    pub fn new(who: &'a Identity, policy: &'a dyn StatementPolicy, max_query_bytes: usize) -> Self {
        Self {
            who,
            policy,
            max_query_bytes,
            state: RelayState::default(),
            denials: Vec::new(),
            txn: None,
            // Allocated on first use, then kept: an idle client that never sent anything costs little.
            out_bufs: (BytesMut::new(), BytesMut::new()),
            watch_backend: policy.watches_backend(),
            idle: IdleTimeouts::default(),
            ddl_pending: false,
            versioned: policy.versioned(),
            epochs: StateEpochs::default(),
            fatal: None,
            held_since: None,
            deciding_later: false,
            retry: None,
            tally: None,
            last_tag: None,
        }
    }

    /// Arms the transparent retry for the next run: its backend is fresh from the pool and idle.
    pub fn arm_retry(&mut self) {
        self.retry = Some(Retry::default());
    }

    /// Whether this session's statements are checked, asked per statement (not once per session), so a policy
    /// reload that takes a role's unrestricted access away applies to its open sessions at their next statement.
    fn inspects(&self) -> bool {
        self.policy.inspects(self.who)
    }
}

/// One write when `buf` has data, else a flush; returns whether it flushed. Cancel-safe: a write consumes
/// nothing or a prefix of `buf`, and an interrupted flush loses nothing.
async fn pump<W: AsyncWrite + Unpin>(w: &mut W, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.is_empty() {
        w.flush().await?;
        return Ok(true);
    }
    if w.write_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(false)
}
