//! Per-session statement tally (sessions of a masking policy): a FIFO of the statements in flight (simple
//! Query, FunctionCall, extended-protocol Execute, and Sync markers), matched in order with the backend's
//! CommandComplete / EmptyQueryResponse / PortalSuspended / ErrorResponse, which gives each statement its rows
//! and duration for the audit record; and the exfiltration guard ([`crate::exfil`]) on the DataRow/CopyData
//! messages the backend splitter counts.
//!
//! A statement over a budget: the splitter stops before the first row over it ([`Item::Limit`]); unless its end
//! is in the same backend read, the backend gets a CancelRequest (sent by the relay, which then never reuses
//! that backend for another client: a late cancel must not hit someone else's statement); the rest of its rows
//! are dropped, and its end (the 57014
//! ErrorResponse, or its CommandComplete when it finished before the cancel landed) is replaced by pgveil's
//! 53400 error. When it had finished, the backend did not fail: if its ReadyForQuery then says `I` and no
//! other statement of the same request ran, the client's view matches (the statement ran on its own and
//! ended; a data-modifying one stays committed, as the error's hint says); otherwise the session is ended
//! with a FATAL error (its transaction is rolled back with the discarded backend).
//!
//! [`Item::Limit`]: crate::proto::frame::Item::Limit

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::audit::{AuditTag, Auditor, Event, Outcome, SessionInfo};
use crate::exfil::{Budget, Limits, UserWindow};
use crate::proto::frame::FrameSplitter;
use crate::proto::messages::read_cstr;
use crate::proto::tags::backend::{
    COMMAND_COMPLETE, EMPTY_QUERY, ERROR_RESPONSE, PARAMETER_STATUS, PORTAL_SUSPENDED,
    READY_FOR_QUERY,
};
use crate::proto::tags::frontend;
use crate::proto::{PgError, TxnStatus};

/// Whether a backend message ends a statement.
pub fn ends_statement(t: u8) -> bool {
    matches!(
        t,
        COMMAND_COMPLETE | EMPTY_QUERY | PORTAL_SUSPENDED | ERROR_RESPONSE
    )
}

/// Above this many, the session's named statements and portals are forgotten (their records lose the
/// decision, nothing else).
const MAX_NAMES: usize = 4096;

enum Pending {
    /// Query or FunctionCall: ends at ReadyForQuery, each of its statements at their end message.
    Query {
        sent: Instant,
        tag: Option<AuditTag>,
    },
    /// Execute: ends at its end message (skipped by the backend after an error until Sync).
    Execute {
        sent: Instant,
        tag: Option<AuditTag>,
    },
    /// Sync: ends at ReadyForQuery.
    Sync,
}

struct Trip {
    budget: Budget,
    limits: Limits,
}

/// What the relay does with a message that ends a statement.
#[derive(Debug)]
pub enum EndAction {
    /// Relay it.
    Forward,
    /// Send this error in its place.
    Replace(PgError),
}

/// The audit side of a session.
pub struct SessionAudit {
    /// The queue.
    pub auditor: Auditor,
    /// Who.
    pub session: Arc<SessionInfo>,
}

/// The tally of one session.
pub struct Tally {
    fifo: VecDeque<Pending>,
    last_end: Option<Instant>,
    audit: SessionAudit,
    window: Arc<UserWindow>,
    limits: Option<Limits>,
    /// Rows relayed for the statement being answered.
    stmt_rows: u64,
    trip: Option<Trip>,
    /// A stopped statement had completed anyway: drop everything until ReadyForQuery.
    swallow: bool,
    /// ... and another statement ended meanwhile.
    ended_since_trip: bool,
    /// A CancelRequest must be sent for the backend (taken by the relay).
    pub cancel: bool,
    named: HashMap<Box<[u8]>, AuditTag>,
    unnamed: Option<AuditTag>,
    portals: HashMap<Box<[u8]>, AuditTag>,
    unnamed_portal: Option<AuditTag>,
}

impl Tally {
    /// A tally writing to `audit`, counting window budgets in `window`.
    pub fn new(audit: SessionAudit, window: Arc<UserWindow>) -> Self {
        Self {
            fifo: VecDeque::new(),
            last_end: None,
            audit,
            window,
            limits: None,
            stmt_rows: 0,
            trip: None,
            swallow: false,
            ended_since_trip: false,
            cancel: false,
            named: HashMap::new(),
            unnamed: None,
            portals: HashMap::new(),
            unnamed_portal: None,
        }
    }

    // ------------------------------------------------------------ client side

    /// A Query (simple protocol) was sent, decided with `tag`.
    pub fn on_query(&mut self, tag: Option<AuditTag>) {
        self.fifo.push_back(Pending::Query {
            sent: Instant::now(),
            tag,
        });
    }

    /// A Sync was sent.
    pub fn on_sync(&mut self) {
        self.fifo.push_back(Pending::Sync);
    }

    /// A Parse was sent for statement `name`, decided with `tag`. A refusal is recorded now (it never runs).
    pub fn on_parse(&mut self, name: &[u8], tag: Option<AuditTag>) {
        let mut tag = tag;
        if let Some(t) = tag.as_ref().filter(|t| t.decision == "refused") {
            // Its Execute, if any, fails with it: not recorded a second time.
            self.record(
                Some(t.clone()),
                0,
                Default::default(),
                Outcome::Error,
                Some(t.code.into()),
            );
            tag = None;
        }
        if name.is_empty() {
            self.unnamed = tag;
            return;
        }
        if self.named.len() >= MAX_NAMES {
            self.named.clear();
        }
        match tag {
            Some(t) => self.named.insert(name.into(), t),
            None => self.named.remove(name),
        };
    }

    /// A Bind (payload) was sent, or its first bytes.
    pub fn on_bind(&mut self, body: &[u8]) {
        let Some((portal, rest)) = read_cstr(body) else {
            return;
        };
        let tag = read_cstr(rest).and_then(|(stmt, _)| {
            if stmt.is_empty() {
                self.unnamed.clone()
            } else {
                self.named.get(stmt).cloned()
            }
        });
        if portal.is_empty() {
            self.unnamed_portal = tag;
            return;
        }
        if self.portals.len() >= MAX_NAMES {
            self.portals.clear();
        }
        match tag {
            Some(t) => self.portals.insert(portal.into(), t),
            None => self.portals.remove(portal),
        };
    }

    /// An Execute (payload) was sent.
    pub fn on_execute(&mut self, body: &[u8]) {
        let tag = match read_cstr(body) {
            Some(([], _)) => self.unnamed_portal.clone(),
            Some((p, _)) => self.portals.get(p).cloned(),
            None => None,
        };
        self.fifo.push_back(Pending::Execute {
            sent: Instant::now(),
            tag,
        });
    }

    /// A Close (payload) was sent.
    pub fn on_close(&mut self, body: &[u8]) {
        if let Some((&kind, rest)) = body.split_first()
            && let Some((name, _)) = read_cstr(rest)
        {
            let map = if kind == b'S' {
                &mut self.named
            } else {
                &mut self.portals
            };
            map.remove(name);
        }
    }

    /// Relayed client bytes starting at a frame boundary (session mode relays Bind and Execute without
    /// inspecting them): notes the Binds and Executes among them.
    pub fn on_client_run(&mut self, bytes: &[u8]) {
        let mut off = 0;
        while off + 5 <= bytes.len() {
            let t = bytes[off];
            let len = i32::from_be_bytes([
                bytes[off + 1],
                bytes[off + 2],
                bytes[off + 3],
                bytes[off + 4],
            ]);
            let Ok(len) = usize::try_from(len) else {
                return;
            };
            let body = &bytes[(off + 5).min(bytes.len())..(off + 1 + len).min(bytes.len())];
            match t {
                frontend::BIND => self.on_bind(body),
                frontend::EXECUTE => self.on_execute(body),
                _ => {}
            }
            off += 1 + len;
        }
    }

    // ------------------------------------------------------------ backend side

    /// Before splitting a batch of backend bytes: the guard in force and the allowance it leaves.
    pub fn arm(&mut self, split: &mut FrameSplitter, limits: Option<Limits>) {
        self.limits = limits;
        self.rearm(split);
    }

    fn rearm(&mut self, split: &mut FrameSplitter) {
        split.discarding = self.trip.is_some();
        let (rows, bytes) = match &self.limits {
            None => (u64::MAX, u64::MAX),
            Some(l) => {
                let stmt = l
                    .max_rows_per_statement
                    .map_or(u64::MAX, |m| m.saturating_sub(self.stmt_rows));
                let (wr, wb) = if l.max_rows.is_some() || l.max_bytes.is_some() {
                    self.window.remaining(l, tokio::time::Instant::now())
                } else {
                    (u64::MAX, u64::MAX)
                };
                (stmt.min(wr), wb)
            }
        };
        split.rows_left = rows;
        split.bytes_left = bytes;
    }

    /// Takes the splitter's counts into the statement's and the user's window.
    pub fn absorb(&mut self, split: &mut FrameSplitter) {
        let (rows, bytes) = split.take_counts();
        self.stmt_rows += rows;
        if let Some(l) = &self.limits
            && (l.max_rows.is_some() || l.max_bytes.is_some())
        {
            self.window
                .consume(l, rows, bytes, tokio::time::Instant::now());
        }
    }

    /// The splitter stopped before a row over the allowance: stop the statement.
    pub fn on_limit(&mut self, split: &mut FrameSplitter) {
        self.absorb(split);
        split.discarding = true;
        let Some(l) = self.limits else {
            return; // unreachable: without limits the allowance is unlimited
        };
        let budget = if l
            .max_rows_per_statement
            .is_some_and(|m| self.stmt_rows >= m)
        {
            Budget::StatementRows
        } else if self.window.remaining(&l, tokio::time::Instant::now()).0 == 0 {
            Budget::WindowRows
        } else {
            Budget::WindowBytes
        };
        let (limit, window) = budget.limit(&l);
        tracing::info!(
            budget = budget.name(),
            limit,
            "exfiltration guard: statement stopped"
        );
        metrics::counter!("pgveil_guard_trips_total", "budget" => budget.name()).increment(1);
        self.audit.auditor.record(Event::GuardTrip {
            session: self.audit.session.clone(),
            at: SystemTime::now(),
            budget: budget.name(),
            limit,
            window,
            tag: self.front_tag(),
        });
        self.trip = Some(Trip { budget, limits: l });
        self.cancel = true;
    }

    /// Whether a backend message must be dropped (a stopped statement had completed: everything until its
    /// ReadyForQuery belongs to what the client was told failed).
    pub fn swallowed(&mut self, t: u8) -> bool {
        // ParameterStatus (sent before ReadyForQuery) is session state, tracked and relayed as always.
        if !self.swallow || t == READY_FOR_QUERY || t == PARAMETER_STATUS {
            return false;
        }
        if ends_statement(t) {
            self.ended_since_trip = true;
        }
        true
    }

    /// Whether Forward runs are dropped now.
    pub fn swallowing(&self) -> bool {
        self.swallow
    }

    /// A message ending a statement (`t`, its payload, the SQLSTATE of an error as the client would see it).
    pub fn on_end(
        &mut self,
        t: u8,
        body: &[u8],
        code: Option<String>,
        split: &mut FrameSplitter,
    ) -> EndAction {
        self.absorb(split);
        let now = Instant::now();
        let outcome = match t {
            ERROR_RESPONSE => Outcome::Error,
            PORTAL_SUSPENDED => Outcome::Suspended,
            _ => Outcome::Complete,
        };
        let trip = self.trip.take();
        let (code, outcome) = match &trip {
            Some(_) => (Some("53400".to_owned()), Outcome::Error),
            None => (code, outcome),
        };
        // A stopped statement's rows are those the client got, not the tag of a result it did not get.
        let rows = if t == COMMAND_COMPLETE && trip.is_none() {
            tag_rows(body).unwrap_or(self.stmt_rows)
        } else {
            self.stmt_rows
        };
        let started = |sent: Instant, last: Option<Instant>| last.map_or(sent, |l| l.max(sent));
        match self.fifo.front() {
            Some(Pending::Query { sent, tag }) => {
                let d = now.saturating_duration_since(started(*sent, self.last_end));
                let tag = tag.clone();
                self.record(tag, rows, d, outcome, code);
            }
            Some(Pending::Execute { sent, tag }) => {
                let d = now.saturating_duration_since(started(*sent, self.last_end));
                let tag = tag.clone();
                self.fifo.pop_front();
                if t == ERROR_RESPONSE {
                    // The backend skips the batch's other Executes until Sync.
                    while matches!(self.fifo.front(), Some(Pending::Execute { .. })) {
                        self.fifo.pop_front();
                    }
                }
                self.record(tag, rows, d, outcome, code);
            }
            // An error of Parse/Bind/Describe, or of the session: no statement ran.
            Some(Pending::Sync) | None => {}
        }
        self.last_end = Some(now);
        self.stmt_rows = 0;
        let action = match trip {
            None => EndAction::Forward,
            Some(Trip { budget, limits }) => {
                // Ended within the batch it was stopped in: no cancel is needed, and none must be sent (it
                // would land on the session's next statement).
                self.cancel = false;
                let (limit, window) = budget.limit(&limits);
                let mut err = PgError::guard_exceeded(budget.name(), limit, window);
                if t != ERROR_RESPONSE {
                    // It completed before the cancel landed: the backend did not fail.
                    self.swallow = true;
                    self.ended_since_trip = false;
                    err = err.with_hint(
                        "The statement had completed before it could be cancelled; if it changed data, the \
                         change stands unless its transaction is rolled back.",
                    );
                }
                EndAction::Replace(err)
            }
        };
        self.rearm(split);
        action
    }

    /// ReadyForQuery with transaction `status`: ends the request; `Some(error)` when the session must end.
    pub fn on_ready(&mut self, status: TxnStatus, split: &mut FrameSplitter) -> Option<PgError> {
        while let Some(p) = self.fifo.pop_front() {
            if matches!(p, Pending::Query { .. } | Pending::Sync) {
                break;
            }
        }
        let mut fatal = None;
        if std::mem::take(&mut self.swallow) && (!status.is_idle() || self.ended_since_trip) {
            fatal = Some(PgError::guard_session_ended());
        }
        if self.trip.take().is_some() {
            // Stopped without an end message of its own (cannot happen in the protocol): fail closed.
            fatal = Some(PgError::guard_session_ended());
        }
        self.stmt_rows = 0;
        self.rearm(split);
        fatal
    }

    fn front_tag(&self) -> Option<AuditTag> {
        match self.fifo.front() {
            Some(Pending::Query { tag, .. } | Pending::Execute { tag, .. }) => tag.clone(),
            _ => None,
        }
    }

    /// Queues the audit record of a statement of an audited (inspected) role: one with a decision.
    fn record(
        &self,
        tag: Option<AuditTag>,
        rows: u64,
        duration: std::time::Duration,
        outcome: Outcome,
        code: Option<String>,
    ) {
        if tag.is_none() {
            return;
        }
        self.audit.auditor.record(Event::Statement {
            session: self.audit.session.clone(),
            at: SystemTime::now(),
            tag,
            rows,
            duration,
            outcome,
            code,
        });
    }
}

/// The row count of a CommandComplete tag (`SELECT 5`, `INSERT 0 5`, `COPY 5`, ...), when it has one.
pub fn tag_rows(body: &[u8]) -> Option<u64> {
    let text = body.strip_suffix(b"\0").unwrap_or(body);
    let text = std::str::from_utf8(text).ok()?;
    let (command, _) = text.split_once(' ')?;
    if !matches!(
        command,
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE"
    ) {
        return None;
    }
    text.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests;
