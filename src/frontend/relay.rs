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

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::limits::{extended_tag, scan_frontend};
use super::retry::{self, Retry, Verdict};
use super::tally::{EndAction, Tally, ends_statement};
use super::txn::TxnCtx;
use super::versions::{StateEpochs, UNINSPECTED, may_create_state};
use crate::audit::AuditTag;
use crate::backend::BackendConn;
use crate::backend::statements::BackendStatements;
use crate::identity::Identity;
use crate::net::ClientStream;
use crate::policy::settings::reported_value_ok;
use crate::policy::{Decision, StatementPolicy};
use crate::proto::PgError;
use crate::proto::error::parse_fields;
use crate::proto::frame::{FrameError, FrameSplitter, Item, payload};
use crate::proto::TxnStatus;
use crate::proto::messages;
use crate::proto::tags::{backend as tag_b, frontend as tag_f};

/// Stop reading a side while this much is queued for the other.
const HIGH_WATER: usize = 256 * 1024;
/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;
/// Largest backend message pgveil inspects whole (ReadyForQuery, ParameterStatus, ErrorResponse).
const MAX_BACKEND_INSPECTED: usize = 16 * 1024 * 1024;

/// The DETAIL shown instead of the backend's to roles with masked columns.
const DETAIL_WITHHELD: &str =
    "pgveil: the detail of this message was withheld because it can contain unmasked column values";

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

/// Protocol state that outlives one relay run (the backend's view of the conversation).
#[derive(Debug, Clone)]
pub struct RelayState {
    /// Transaction status from the last ReadyForQuery.
    pub txn_status: TxnStatus,
    /// Query/Sync/FunctionCall messages sent whose ReadyForQuery has not arrived yet.
    pub in_flight: usize,
    /// True while a frame is only partly relayed in either direction.
    pub mid_frame: bool,
    /// Extended-protocol messages (Parse, Bind, Describe, Execute, Close, Flush) were sent since the last
    /// Sync: the backend may hold an open implicit transaction and portals, or skip everything until a Sync
    /// after an error. Such a backend must be drained before anything else runs on it.
    pub unsynced: bool,
}

impl Default for RelayState {
    fn default() -> Self {
        Self {
            txn_status: TxnStatus::Idle,
            in_flight: 0,
            mid_frame: false,
            unsynced: false,
        }
    }
}

impl RelayState {
    /// True when every response the backend owes has arrived and no frame is half relayed: after a drain of
    /// unsynced messages (see [`RelayState::unsynced`]) it can be reset and reused.
    pub fn backend_idle(&self) -> bool {
        self.in_flight == 0 && !self.mid_frame
    }
}

/// The relay for one session.
pub struct Relay<'a> {
    who: &'a Identity,
    policy: &'a dyn StatementPolicy,
    max_query_bytes: usize,
    /// Protocol state.
    pub state: RelayState,
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
    /// The backend is fresh from the pool and nothing of its answer was relayed yet: the batch can be sent
    /// again elsewhere if it dies (see [`super::retry`]).
    retry: Option<Retry>,
    /// Statement rows, durations and the exfiltration guard (sessions of a masking policy; `None`: none).
    pub tally: Option<Tally>,
    /// The audit tag of the last decision ([`Relay::decide`]).
    last_tag: Option<AuditTag>,
}

/// Longest time a session's messages are held while a schema change is reloaded; then it is ended.
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(10);
/// How often held messages are looked at again.
const HOLD_RECHECK: std::time::Duration = std::time::Duration::from_millis(5);

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        // The session ends inside the transaction of a schema change: report it anyway (fail closed: the
        // policy treats the tenant's catalog as stale until it has been reloaded).
        if self.ddl_pending {
            self.policy.schema_changed(self.who);
        }
    }
}

enum Step {
    Continue,
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
            retry: None,
            tally: None,
            last_tag: None,
        }
    }

    /// Arms the transparent retry for the next run: its backend is fresh from the pool and idle.
    pub fn arm_retry(&mut self) {
        self.retry = Some(Retry::default());
    }

    /// Client bytes, recorded for a retry while one is armed.
    fn client_bytes(
        &mut self,
        cin: &mut BytesMut,
        split: &mut FrameSplitter,
        to_b: &mut BytesMut,
        to_c: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Step {
        let before = to_b.len();
        let step = self.on_client_bytes(cin, split, to_b, to_c, stmts);
        if let Some(r) = self.retry.as_mut() {
            r.batch.extend_from_slice(&to_b[before..]);
            if r.batch.len() > retry::MAX_BATCH || split.mid_frame() {
                self.retry = None; // too large to keep, or a frame is streamed past pgveil
            }
        }
        step
    }

    /// Whether a failure of the backend now allows the retry: armed, and nothing was written yet or the
    /// failure was announced the way [`retry::first_message`] accepts.
    fn may_retry(&self, announced: bool, csplit: &FrameSplitter) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|r| (announced || !r.written) && !csplit.mid_frame())
    }

    /// Relays until the client leaves, the backend fails, or shutdown is requested and the session is idle.
    /// `client_buf` holds bytes already read from the client.
    pub async fn run(
        &mut self,
        client: &mut ClientStream,
        client_buf: &mut BytesMut,
        backend: &mut BackendConn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> RelayEnd {
        let BackendConn {
            stream,
            params,
            rbuf,
            statements,
            target,
            key,
            broken,
            ..
        } = backend;
        let (mut cr, mut cw) = client.split();
        let (mut br, mut bw) = stream.split();
        // Buffers are kept between runs (transaction mode runs once per transaction): no allocation per run.
        let mut cin = std::mem::take(client_buf);
        let mut bin = std::mem::take(rbuf);
        let (mut to_b, mut to_c) = std::mem::take(&mut self.out_bufs);
        let mut csplit = FrameSplitter::new(self.max_query_bytes);
        let mut bsplit = if self.tally.is_some() {
            FrameSplitter::counting(MAX_BACKEND_INSPECTED)
        } else {
            FrameSplitter::new(MAX_BACKEND_INSPECTED)
        };
        let (mut flush_b, mut flush_c) = (false, false);
        let mut ending: Option<RelayEnd> = None;
        let mut watch_shutdown = true;
        let idle_on = self.idle.session.is_some() || self.idle.transaction.is_some();
        let mut last_activity = tokio::time::Instant::now();

        // Bytes that arrived with the startup packet are processed before reading more.
        if let Step::End(end) =
            self.client_bytes(&mut cin, &mut csplit, &mut to_b, &mut to_c, statements)
        {
            ending = Some(end);
        }
        loop {
            if let Some(end) = ending.take() {
                // Deliver what is queued for the client (e.g. a FATAL error), then stop.
                if !to_c.is_empty() {
                    let _ = cw.write_all_buf(&mut to_c).await;
                    let _ = cw.flush().await;
                }
                let retry = self.retry.take();
                if let (RelayEnd::Retry, Some(r)) = (&end, retry) {
                    // The batch goes to the next backend as it was queued for this one.
                    to_b = r.batch;
                    *rbuf = BytesMut::new();
                } else {
                    self.state.mid_frame |= csplit.mid_frame() || bsplit.mid_frame();
                    self.state.mid_frame |= !to_b.is_empty() || !bin.is_empty();
                    *rbuf = bin;
                    to_b.clear();
                }
                to_c.clear();
                self.out_bufs = (to_b, to_c);
                *client_buf = cin;
                return end;
            }
            if *shutdown.borrow()
                && self.state.backend_idle()
                && self.state.txn_status.is_idle()
                && to_c.is_empty()
            {
                PgError::shutting_down().encode(&mut to_c);
                ending = Some(RelayEnd::Shutdown);
                continue;
            }
            // The client's turn: the backend has answered everything and nothing waits to be written.
            let idle_limit = if self.state.in_flight == 0
                && to_b.is_empty()
                && to_c.is_empty()
                && !flush_b
                && !flush_c
            {
                if self.state.txn_status.is_idle() {
                    self.idle.session
                } else {
                    self.idle.transaction
                }
            } else {
                None
            };
            let idle_deadline = idle_limit.map(|d| last_activity + d);
            cin.reserve(READ_CHUNK);
            bin.reserve(READ_CHUNK);
            tokio::select! {
                () = async {
                    match idle_deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                }, if idle_deadline.is_some() => {
                    let err = if self.state.txn_status.is_idle() {
                        PgError::idle_session_timeout()
                    } else {
                        PgError::idle_in_transaction_timeout()
                    };
                    tracing::info!(code = err.code, "client idle timeout");
                    self.state.mid_frame |= csplit.mid_frame();
                    err.encode(&mut to_c);
                    ending = Some(RelayEnd::IdleTimeout);
                },
                () = tokio::time::sleep(HOLD_RECHECK), if self.held_since.is_some() => {
                    if let Step::End(end) = self.client_bytes(&mut cin, &mut csplit, &mut to_b, &mut to_c, statements) {
                        ending = Some(end);
                    }
                },
                r = cr.read_buf(&mut cin), if to_b.len() < HIGH_WATER && self.held_since.is_none() => match r {
                    Ok(0) | Err(_) => {
                        self.state.mid_frame |= csplit.mid_frame() || !cin.is_empty();
                        ending = Some(RelayEnd::ClientGone);
                    }
                    Ok(_) => {
                        if idle_on {
                            last_activity = tokio::time::Instant::now();
                        }
                        if let Step::End(end) = self.client_bytes(&mut cin, &mut csplit, &mut to_b, &mut to_c, statements) {
                            ending = Some(end);
                        }
                    }
                },
                r = br.read_buf(&mut bin), if to_c.len() < HIGH_WATER => match r {
                    Ok(0) | Err(_) if self.may_retry(false, &csplit) => ending = Some(RelayEnd::Retry),
                    Ok(0) | Err(_) => {
                        PgError::backend_lost().encode(&mut to_c);
                        ending = Some(RelayEnd::BackendGone);
                    }
                    // Armed: nothing is relayed before the first message says whether the batch ran.
                    Ok(_) if self.retry.is_some() && retry::first_message(&bin) == Verdict::Wait => {}
                    Ok(_) if self.retry.is_some()
                        && retry::first_message(&bin) == Verdict::Retry
                        && self.may_retry(true, &csplit) => ending = Some(RelayEnd::Retry),
                    Ok(_) => {
                        self.retry = None;
                        if idle_on {
                            last_activity = tokio::time::Instant::now();
                        }
                        let r = self.on_backend_bytes(&mut bin, &mut bsplit, &mut to_c, params, statements);
                        if let Some(t) = self.tally.as_mut()
                            && std::mem::take(&mut t.cancel)
                        {
                            // The guard stopped a statement. A cancel that lands late hits whatever the backend
                            // runs then: it never serves another client (closed at the end of the session, or
                            // of the transaction in transaction mode).
                            crate::cancel::send_cancel_detached(target.clone(), *key);
                            *broken = true;
                        }
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "backend protocol error");
                            PgError::backend_lost().encode(&mut to_c);
                            ending = Some(RelayEnd::BackendGone);
                        } else if let Some(err) = self.fatal.take() {
                            err.encode(&mut to_c);
                            ending = Some(RelayEnd::BackendGone); // never reused
                        } else if self.releasable()
                            && cin.is_empty()
                            && to_b.is_empty()
                            && bin.is_empty()
                            && !csplit.mid_frame()
                            && !bsplit.mid_frame()
                        {
                            ending = Some(RelayEnd::Release);
                        }
                    }
                },
                r = pump(&mut bw, &mut to_b), if !to_b.is_empty() || flush_b => match r {
                    Ok(flushed) => {
                        flush_b = !flushed;
                        if let Some(r) = self.retry.as_mut() {
                            r.written = true;
                        }
                    }
                    Err(_) if self.may_retry(false, &csplit) => ending = Some(RelayEnd::Retry),
                    Err(_) => {
                        PgError::backend_lost().encode(&mut to_c);
                        ending = Some(RelayEnd::BackendGone);
                    }
                },
                r = pump(&mut cw, &mut to_c), if !to_c.is_empty() || flush_c => match r {
                    Ok(flushed) => flush_c = !flushed,
                    Err(_) => ending = Some(RelayEnd::ClientGone),
                },
                r = shutdown.changed(), if watch_shutdown && !*shutdown.borrow() => {
                    // The sender is gone: nobody can request a drain any more.
                    if r.is_err() {
                        watch_shutdown = false;
                    }
                }
            }
        }
    }

    fn on_client_bytes(
        &mut self,
        cin: &mut BytesMut,
        split: &mut FrameSplitter,
        to_b: &mut BytesMut,
        to_c: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Step {
        let inspects: fn(u8) -> bool = if self.txn.is_some() {
            txn_client_inspects
        } else {
            client_inspects
        };
        if !cin.is_empty() {
            if self.versioned && !split.mid_frame() {
                self.epochs.apply_leading_closes(cin);
            }
            match self.stale_state() {
                Ok(None) => self.held_since = None,
                Ok(Some(err)) => {
                    tracing::info!(
                        code = err.code,
                        "policy version changed under prepared state"
                    );
                    err.encode(to_c);
                    return Step::End(RelayEnd::ClientProtocol(err));
                }
                // A schema change is being reloaded: hold the session's messages (bounded) until it is known
                // whether its prepared statements are still current.
                Err(()) => {
                    let since = *self
                        .held_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() < MAX_HOLD {
                        return Step::Continue;
                    }
                    let err = PgError::policy_changed();
                    err.encode(to_c);
                    return Step::End(RelayEnd::ClientProtocol(err));
                }
            }
        }
        loop {
            // Refuse an unknown message type on its tag byte, as PostgreSQL does, instead of waiting for the
            // body its length announces (an SSLRequest or StartupMessage sent mid-session would otherwise
            // leave the session hanging).
            if !split.mid_frame()
                && let Some(&t) = cin.first()
                && !frontend_tag(t)
            {
                let err = invalid_frontend_tag(t);
                err.encode(to_c);
                return Step::End(RelayEnd::ClientProtocol(err));
            }
            // Frames are checked against PostgreSQL's limits from their header, before any is forwarded.
            let at_boundary = !split.mid_frame();
            if at_boundary && let Err(err) = scan_frontend(&cin[..cin.len().min(5)]) {
                err.encode(to_c);
                return Step::End(RelayEnd::ClientProtocol(err));
            }
            let item = match split.next(cin, inspects) {
                Ok(Some(item)) => item,
                Ok(None) => return Step::Continue,
                Err(e) => {
                    let err = match e {
                        FrameError::TooLarge { limit, .. } => PgError::message_too_large(limit),
                        FrameError::BadLength(_) => PgError::protocol_violation(e.to_string()),
                    };
                    err.encode(to_c);
                    return Step::End(RelayEnd::ClientProtocol(err));
                }
            };
            let frame = match item {
                Item::Forward(bytes) => {
                    if at_boundary {
                        match scan_frontend(&bytes) {
                            Ok(extended) => self.state.unsynced |= extended,
                            Err(err) => {
                                err.encode(to_c);
                                return Step::End(RelayEnd::ClientProtocol(err));
                            }
                        }
                        if let Some(t) = self.tally.as_mut() {
                            t.on_client_run(&bytes);
                        }
                    }
                    to_b.extend_from_slice(&bytes);
                    continue;
                }
                Item::Inspect(frame) => frame,
                // Only counting splitters (the backend side) produce these.
                Item::Limit | Item::Discarded => continue,
            };
            if extended_tag(frame[0]) {
                self.state.unsynced = true;
            } else if frame[0] == tag_f::SYNC {
                self.state.unsynced = false;
            }
            match self.on_client_frame(&frame, to_b, stmts) {
                Ok(Step::Continue) => {}
                Ok(end @ Step::End(_)) => return end,
                Err(err) => {
                    err.encode(to_c);
                    return Step::End(RelayEnd::ClientProtocol(err));
                }
            }
        }
    }

    fn on_client_frame(
        &mut self,
        frame: &[u8],
        to_b: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Result<Step, PgError> {
        let body = payload(frame);
        if self.txn.is_some() && frame[0] != tag_f::QUERY {
            // Translated against this backend's prepared statements: not portable to another one.
            self.retry = None;
            return self.on_client_frame_txn(frame, to_b, stmts);
        }
        match frame[0] {
            tag_f::QUERY => {
                let sql = messages::decode_query(body)
                    .ok_or_else(|| PgError::protocol_violation("invalid Query message"))?;
                self.state.in_flight += 1;
                let mut decision = self.decide(sql, None);
                if let Some(t) = self.txn.as_mut() {
                    t.stmts.on_query();
                    t.stmts.on_sync_sent();
                    let text = match &decision {
                        Decision::Allow => Some(sql),
                        Decision::Rewrite(s) => Some(s.as_bytes()),
                        Decision::Deny(_) => None,
                    };
                    if let Some(err) = text.and_then(|text| t.observe(text, stmts)) {
                        decision = Decision::Deny(err);
                    }
                }
                if let Some(t) = self.tally.as_mut() {
                    t.on_query(self.last_tag.take());
                }
                match decision {
                    Decision::Allow => to_b.extend_from_slice(frame),
                    Decision::Rewrite(text) => messages::query(to_b, &text),
                    Decision::Deny(err) => messages::query(to_b, &self.deny(err)),
                }
            }
            tag_f::PARSE => {
                let p = messages::decode_parse(body)
                    .ok_or_else(|| PgError::protocol_violation("invalid Parse message"))?;
                let decision = self.decide(p.sql, Some(p.name));
                if let Some(t) = self.tally.as_mut() {
                    t.on_parse(p.name, self.last_tag.take());
                }
                match decision {
                    Decision::Allow => to_b.extend_from_slice(frame),
                    Decision::Rewrite(text) => messages::parse(to_b, p.name, &text, p.param_types),
                    Decision::Deny(err) => messages::parse(to_b, p.name, &self.deny(err), &[0, 0]),
                }
            }
            tag_f::FUNCTION_CALL => {
                self.state.in_flight += 1;
                if let Some(t) = self.tally.as_mut() {
                    t.on_query(None);
                }
                if self.inspects() {
                    let err = PgError::feature_not_supported(
                        "fast-path function calls are not allowed through pgveil",
                    );
                    messages::query(to_b, &self.deny(err));
                } else {
                    to_b.extend_from_slice(frame);
                }
            }
            tag_f::SYNC => {
                self.state.in_flight += 1;
                if let Some(t) = self.tally.as_mut() {
                    t.on_sync();
                }
                to_b.extend_from_slice(frame);
            }
            tag_f::CLOSE => {
                self.epochs.on_close(body);
                if let Some(t) = self.tally.as_mut() {
                    t.on_close(body);
                }
                to_b.extend_from_slice(frame);
            }
            tag_f::TERMINATE => return Ok(Step::End(RelayEnd::Terminate)),
            t => return Err(invalid_frontend_tag(t)),
        }
        Ok(Step::Continue)
    }

    /// Transaction mode: every client message except Query (handled like session mode, plus observation).
    fn on_client_frame_txn(
        &mut self,
        frame: &[u8],
        to_b: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Result<Step, PgError> {
        let body = payload(frame);
        let t = self.txn.as_mut().ok_or_else(PgError::internal)?;
        let denied = match frame[0] {
            tag_f::PARSE => {
                t.unsynced = true;
                let p = messages::decode_parse(body)
                    .ok_or_else(|| PgError::protocol_violation("invalid Parse message"))?;
                let (name, param_types) = (p.name, p.param_types);
                let decision = self.decide(p.sql, Some(name));
                if let Some(t) = self.tally.as_mut() {
                    t.on_parse(name, self.last_tag.take());
                }
                let t = self.txn.as_mut().ok_or_else(PgError::internal)?;
                let sql: &[u8] = match &decision {
                    Decision::Allow => p.sql,
                    Decision::Rewrite(s) => s.as_bytes(),
                    Decision::Deny(_) => b"",
                };
                let refused = match decision {
                    Decision::Deny(e) => Some(e),
                    _ => match t.observe(sql, stmts) {
                        Some(e) => Some(e),
                        None => {
                            let mut def =
                                BytesMut::with_capacity(sql.len() + 1 + param_types.len());
                            def.extend_from_slice(sql);
                            def.extend_from_slice(&[0]);
                            def.extend_from_slice(param_types);
                            t.stmts.parse(name, def.freeze(), stmts, to_b).err()
                        }
                    },
                };
                if refused.is_some() && name.is_empty() {
                    t.stmts.forget_unnamed();
                }
                refused
            }
            tag_f::BIND => {
                t.unsynced = true;
                if let Some(tally) = self.tally.as_mut() {
                    tally.on_bind(body);
                }
                t.stmts.bind(body, stmts, to_b).err()
            }
            tag_f::DESCRIBE => {
                t.unsynced = true;
                t.stmts.describe(body, stmts, to_b).err()
            }
            tag_f::CLOSE => {
                t.unsynced = true;
                self.epochs.on_close(body);
                if let Some(tally) = self.tally.as_mut() {
                    tally.on_close(body);
                }
                t.stmts.close(body, to_b).err()
            }
            tag_f::EXECUTE | tag_f::FLUSH => {
                t.unsynced = true;
                if frame[0] == tag_f::EXECUTE
                    && let Some(tally) = self.tally.as_mut()
                {
                    tally.on_execute(body);
                }
                to_b.extend_from_slice(frame);
                None
            }
            tag_f::SYNC => {
                if let Some(tally) = self.tally.as_mut() {
                    tally.on_sync();
                }
                t.unsynced = false;
                t.stmts.on_sync_sent();
                self.state.in_flight += 1;
                to_b.extend_from_slice(frame);
                None
            }
            tag_f::FUNCTION_CALL => {
                t.stmts.on_sync_sent();
                self.state.in_flight += 1;
                if let Some(tally) = self.tally.as_mut() {
                    tally.on_query(None);
                }
                if self.inspects() {
                    let err = PgError::feature_not_supported(
                        "fast-path function calls are not allowed through pgveil",
                    );
                    messages::query(to_b, &self.deny(err));
                } else {
                    to_b.extend_from_slice(frame);
                }
                None
            }
            tag_f::TERMINATE => return Ok(Step::End(RelayEnd::Terminate)),
            t => return Err(invalid_frontend_tag(t)),
        };
        if let Some(err) = denied {
            if err.is_fatal() {
                return Err(err);
            }
            // Fails in order on the backend, in the place of the refused message.
            let sql = self.deny(err);
            messages::parse(to_b, b"", &sql, &[0, 0]);
            if let Some(t) = self.txn.as_mut() {
                t.stmts.on_denial_parse();
            }
        }
        Ok(Step::Continue)
    }

    /// Transaction mode: the backend can be released now (as far as protocol state goes).
    fn releasable(&self) -> bool {
        match &self.txn {
            Some(t) => {
                t.pinned.is_none()
                    && !t.unsynced
                    && t.stmts.settled()
                    && self.state.in_flight == 0
                    && self.state.txn_status.is_idle()
            }
            None => false,
        }
    }

    /// Whether this session's statements are checked, asked per statement (not once per session), so a policy
    /// reload that takes a role's unrestricted access away applies to its open sessions at their next statement.
    fn inspects(&self) -> bool {
        self.policy.inspects(self.who)
    }

    /// Runs the statement hook on SQL text (skipped entirely for roles that are not inspected). `parse`: the
    /// name of the statement when the text comes in a Parse message (the statement outlives it).
    fn decide(&mut self, sql: &[u8], parse: Option<&[u8]>) -> Decision {
        self.last_tag = None;
        if parse.is_none() && self.versioned {
            self.epochs.on_query();
        }
        if !self.inspects() {
            if self.versioned {
                match parse {
                    Some(name) => self.epochs.on_parse(name, UNINSPECTED),
                    None if may_create_state(sql) => self.epochs.on_lasting(UNINSPECTED),
                    None => {}
                }
            }
            return Decision::Allow;
        }
        match std::str::from_utf8(sql) {
            Ok(sql) => {
                let mut v = self.policy.check_versioned(sql, self.who);
                if self.tally.is_some() {
                    self.last_tag = v.audit.take();
                }
                if self.versioned && !matches!(v.decision, Decision::Deny(_)) {
                    match parse {
                        Some(name) => self.epochs.on_parse(name, v.epoch),
                        None if v.lasting => self.epochs.on_lasting(v.epoch),
                        None => {}
                    }
                }
                v.decision
            }
            // Fail closed: what cannot be read cannot be checked.
            Err(_) => Decision::Deny(PgError::invalid_encoding()),
        }
    }

    /// The error ending the session when it holds state (prepared statements, cursors) created under another
    /// epoch than the current one.
    /// `Err(())` while the epoch is being determined (the session's messages wait).
    fn stale_state(&self) -> Result<Option<PgError>, ()> {
        if !self.versioned {
            return Ok(None);
        }
        let mut pending = false;
        let stale = self.epochs.stale(|| {
            if !self.inspects() {
                return UNINSPECTED;
            }
            self.policy.epoch(self.who).unwrap_or_else(|| {
                pending = true;
                UNINSPECTED
            })
        });
        match (pending, stale) {
            (true, _) => Err(()),
            (false, stale) => Ok(stale.then(PgError::policy_changed)),
        }
    }

    /// Registers a denial and returns the SQL that makes the backend fail in its place.
    fn deny(&mut self, err: PgError) -> String {
        let marker = format!("pgveil:{:016x}", rand::random::<u64>());
        // Not the message: a parse error quotes the statement (literals included); the masking engine's audit
        // event carries the rule that refused it.
        tracing::info!(code = err.code, "statement refused");
        let sql = format!("SELECT \"{marker}\"");
        self.denials.push((marker, err));
        sql
    }

    fn on_backend_bytes(
        &mut self,
        bin: &mut BytesMut,
        split: &mut FrameSplitter,
        to_c: &mut BytesMut,
        params: &mut std::collections::BTreeMap<String, String>,
        stmts: &mut BackendStatements,
    ) -> Result<(), FrameError> {
        let txn = self.txn.is_some();
        let watch = self.watch_backend;
        let tallying = self.tally.is_some();
        if let Some(t) = self.tally.as_mut() {
            t.arm(split, self.policy.guard(self.who));
        }
        loop {
            let watching_errors = txn || watch || tallying || !self.denials.is_empty();
            let inspect = |t: u8| {
                matches!(t, tag_b::READY_FOR_QUERY | tag_b::PARAMETER_STATUS)
                    || (watching_errors && t == tag_b::ERROR_RESPONSE)
                    || (watch && matches!(t, tag_b::COMMAND_COMPLETE | tag_b::NOTICE_RESPONSE))
                    || (txn && matches!(t, tag_b::PARSE_COMPLETE | tag_b::CLOSE_COMPLETE))
                    || (tallying && ends_statement(t))
            };
            let frame = match split.next(bin, inspect)? {
                None => {
                    if let Some(t) = self.tally.as_mut() {
                        t.absorb(split);
                    }
                    return Ok(());
                }
                Some(Item::Forward(bytes)) => {
                    if !self.tally.as_ref().is_some_and(|t| t.swallowing()) {
                        to_c.extend_from_slice(&bytes);
                    }
                    continue;
                }
                Some(Item::Limit) => {
                    if let Some(t) = self.tally.as_mut() {
                        t.on_limit(split);
                    }
                    continue;
                }
                Some(Item::Discarded) => continue,
                Some(Item::Inspect(frame)) => frame,
            };
            let body = payload(&frame);
            if let Some(t) = self.tally.as_mut() {
                if t.swallowed(frame[0]) {
                    continue;
                }
                if ends_statement(frame[0])
                    && frame[0] != tag_b::ERROR_RESPONSE
                    && let EndAction::Replace(err) = t.on_end(frame[0], body, None, split)
                {
                    if watch && crate::policy::schema_changing_tag(body) {
                        self.ddl_pending = true;
                    }
                    err.encode(to_c);
                    continue;
                }
            }
            match frame[0] {
                tag_b::READY_FOR_QUERY => {
                    if let Some(t) = self.tally.as_mut()
                        && let Some(err) = t.on_ready(TxnStatus::from_payload(body), split)
                    {
                        self.fatal = Some(err);
                        return Ok(());
                    }
                    self.state.txn_status = TxnStatus::from_payload(body);
                    self.state.in_flight = self.state.in_flight.saturating_sub(1);
                    if self.state.in_flight == 0 {
                        // Denials still pending here were skipped by the backend after an earlier error.
                        self.denials.clear();
                    }
                    if let Some(t) = self.txn.as_mut() {
                        t.stmts.on_ready();
                    }
                    if self.ddl_pending && self.state.txn_status.is_idle() {
                        self.ddl_pending = false;
                        self.policy.schema_changed(self.who);
                    }
                }
                tag_b::COMMAND_COMPLETE if watch && crate::policy::schema_changing_tag(body) => {
                    self.ddl_pending = true;
                }
                // Messages below NOTICE echo statement text and plans (`parse <unnamed>: <rewritten SQL>`).
                tag_b::NOTICE_RESPONSE if watch && below_notice(body) && self.inspects() => continue,
                tag_b::NOTICE_RESPONSE if watch && self.withheld_detail(&frame, to_c) => continue,
                tag_b::PARSE_COMPLETE | tag_b::CLOSE_COMPLETE => {
                    if let Some(t) = self.txn.as_mut()
                        && !t.stmts.on_complete(frame[0])
                    {
                        continue; // the response to a message pgveil injected
                    }
                }
                tag_b::PARAMETER_STATUS => {
                    if let Some((name, rest)) = messages::read_cstr(body)
                        && let Some((value, _)) = messages::read_cstr(rest)
                    {
                        // Watchdog: the backend now lexes SQL differently from pgveil (an allow-listed function,
                        // a setting path the allowlist does not know): relay nothing more.
                        let (n, v) = (
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(value),
                        );
                        let server_encoding = params.get("server_encoding").map(String::as_str);
                        if !reported_value_ok(&n, &v, server_encoding) && self.inspects() {
                            tracing::warn!(parameter = %n, "backend reported a lexing setting pgveil does not parse under; ending the session");
                            self.fatal = Some(PgError::lexing_changed(&n));
                            return Ok(());
                        }
                        params.insert(
                            String::from_utf8_lossy(name).into_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        );
                    }
                }
                tag_b::ERROR_RESPONSE => {
                    if let Some(t) = self.txn.as_mut() {
                        t.stmts.on_error(stmts);
                    }
                    let denial = if self.denials.is_empty() {
                        None
                    } else {
                        self.take_denial(body)
                    };
                    if let Some(t) = self.tally.as_mut() {
                        let code = match &denial {
                            Some(e) => Some(e.code.to_owned()),
                            None => error_code(body),
                        };
                        if let EndAction::Replace(err) = t.on_end(frame[0], body, code, split) {
                            err.encode(to_c);
                            continue;
                        }
                    }
                    if let Some(err) = denial {
                        err.encode(to_c);
                        continue;
                    }
                    if watch && self.withheld_detail(&frame, to_c) {
                        continue;
                    }
                }
                _ => {}
            }
            to_c.extend_from_slice(&frame);
        }
    }

    /// Queues `frame` (an ErrorResponse or NoticeResponse) without its DETAIL when the policy withholds details
    /// from this session; returns whether it did.
    fn withheld_detail(&self, frame: &[u8], to_c: &mut BytesMut) -> bool {
        if !self.policy.withholds_details(self.who) {
            return false;
        }
        match crate::proto::error::replace_detail(frame, DETAIL_WITHHELD) {
            Some(f) => {
                to_c.extend_from_slice(&f);
                true
            }
            None => false,
        }
    }

    /// If this ErrorResponse is the backend failing on a denial marker, returns pgveil's error for it.
    fn take_denial(&mut self, body: &[u8]) -> Option<PgError> {
        let fields = parse_fields(body);
        let code = fields.iter().find(|(t, _)| *t == b'C').map(|(_, v)| *v)?;
        if code != b"42703" {
            return None;
        }
        let message = fields.iter().find(|(t, _)| *t == b'M').map(|(_, v)| *v)?;
        let message = std::str::from_utf8(message).ok()?;
        let idx = self
            .denials
            .iter()
            .position(|(marker, _)| message.contains(&format!("\"{marker}\"")))?;
        Some(self.denials.remove(idx).1)
    }
}

/// The SQLSTATE of an ErrorResponse (payload).
fn error_code(body: &[u8]) -> Option<String> {
    parse_fields(body)
        .iter()
        .find(|(t, _)| *t == b'C')
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Whether a NoticeResponse has a severity below NOTICE (`DEBUG1`-`DEBUG5`, `LOG`), by its non-localized
/// severity field (`V`, PostgreSQL 9.6+), else the localized one (`S`).
fn below_notice(body: &[u8]) -> bool {
    let fields = parse_fields(body);
    let severity = fields
        .iter()
        .find(|(t, _)| *t == b'V')
        .or_else(|| fields.iter().find(|(t, _)| *t == b'S'))
        .map(|(_, v)| *v);
    matches!(severity, Some(s) if s.starts_with(b"DEBUG") || s == b"LOG")
}

/// Message types a client may send once the session has started (PostgreSQL's `SocketBackend` list).
fn frontend_tag(t: u8) -> bool {
    matches!(
        t,
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'S' | b'H' | b'F' | b'X' | b'd' | b'c' | b'f'
    )
}

fn invalid_frontend_tag(t: u8) -> PgError {
    PgError::protocol_violation(format!(
        "invalid frontend message type {}",
        if t.is_ascii_graphic() {
            (t as char).to_string()
        } else {
            format!("0x{t:02x}")
        }
    ))
}

/// Frontend tags handed over whole: everything except the high-volume pass-through ones. Unknown tags are
/// thereby inspected too, and refused. Close is inspected: it ends a prepared statement's epoch tracking.
fn client_inspects(t: u8) -> bool {
    !matches!(t, b'B' | b'c' | b'd' | b'D' | b'E' | b'f' | b'H')
}

/// Transaction mode: every frontend tag is handed over whole except COPY data, CopyDone and CopyFail.
fn txn_client_inspects(t: u8) -> bool {
    !matches!(t, b'd' | b'c' | b'f')
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

/// Reads exactly one whole frame from a stream (used during startup), refusing lengths above `max`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<(u8, BytesMut), ReadFrameError> {
    let tag = r.read_u8().await.map_err(ReadFrameError::Io)?;
    let len = r.read_i32().await.map_err(ReadFrameError::Io)?;
    if len < 4 || len as usize - 4 > max {
        return Err(ReadFrameError::Invalid(len));
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    r.read_exact(&mut body).await.map_err(ReadFrameError::Io)?;
    Ok((tag, body))
}

/// Errors of [`read_frame`].
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// I/O failure or EOF.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// Length out of range.
    #[error("invalid message length {0}")]
    Invalid(i32),
}
