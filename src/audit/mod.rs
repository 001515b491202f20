//! Audit records, written off the hot path: sessions hand small events to a bounded queue ([`Auditor`]) and
//! never wait; one writer thread ([`writer`]) formats them and writes them to the process log (target
//! `pgveil::audit`, the same JSON fields as a tracing event of the session span) or to a file (`[audit] file`)
//! that is reopened on SIGHUP (log rotation: `mv` the file, then SIGHUP).
//!
//! A full queue drops the event and counts it (`pgveil_audit_dropped_total`); [`Auditor::shutdown`] writes
//! everything queued before it and flushes, so a clean shutdown loses nothing.
//!
//! Events never carry SQL text, literals or row values: a statement is known by its fingerprint, its decision,
//! the rule that refused it and the masked columns; a completion by its row count and duration.

pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::ids::{RoleName, TenantId, UserId};

pub use crate::config::AuditConfig;

/// What the masking engine decided for one SQL string, for its audit records (cheap to clone: two `Arc`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTag {
    /// Fingerprint of the statement with its literals removed (never its text).
    pub fingerprint: Arc<str>,
    /// `allowed`, `rewritten` or `refused`.
    pub decision: &'static str,
    /// SQLSTATE of a refusal (empty otherwise).
    pub code: &'static str,
    /// The rule that refused (empty otherwise).
    pub rule: &'static str,
    /// Masked columns (`schema.table.column -> function`).
    pub masked: Arc<[String]>,
}

impl AuditTag {
    /// Emits this decision as a tracing event now (target `pgveil::audit`), for callers outside a session's
    /// relay (startup settings, tools, tests).
    pub fn log(&self, tenant: &TenantId, role: &RoleName) {
        let (decision, code, rule) = (self.decision, self.code, self.rule);
        tracing::info!(target: "pgveil::audit", %tenant, %role, fingerprint = %self.fingerprint, decision, code, rule, masked = ?self.masked, "statement");
    }
}

/// Who a session is, for its audit records (built once per session).
#[derive(Debug)]
pub struct SessionInfo {
    /// Client address.
    pub client: String,
    /// The token's subject.
    pub user: UserId,
    /// The user name of the startup packet (informational).
    pub startup_user: String,
    /// Tenant.
    pub tenant: TenantId,
    /// Role.
    pub role: RoleName,
}

/// How a statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// CommandComplete (or EmptyQueryResponse).
    Complete,
    /// PortalSuspended: an Execute's row limit was reached.
    Suspended,
    /// ErrorResponse (pgveil's refusals and guard trips included).
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Suspended => "suspended",
            Outcome::Error => "error",
        }
    }
}

/// One audit record.
#[derive(Debug)]
pub enum Event {
    /// A statement finished.
    Statement {
        /// The session.
        session: Arc<SessionInfo>,
        /// When it finished.
        at: SystemTime,
        /// The decision on its SQL, when pgveil decided one (simple protocol; extended protocol when the
        /// portal's statement was parsed in this session).
        tag: Option<AuditTag>,
        /// Rows: the CommandComplete tag's count when it has one, else the DataRow/CopyData messages relayed.
        rows: u64,
        /// From its first message sent to the backend (or the previous statement's end, when later) to its end.
        duration: Duration,
        /// How it ended.
        outcome: Outcome,
        /// SQLSTATE of its error, if it ended with one.
        code: Option<String>,
    },
    /// The exfiltration guard stopped a statement.
    GuardTrip {
        /// The session.
        session: Arc<SessionInfo>,
        /// When.
        at: SystemTime,
        /// The budget (`max_rows_per_statement`, `max_rows`, `max_bytes`).
        budget: &'static str,
        /// Its configured value.
        limit: u64,
        /// The window of a window budget.
        window: Option<Duration>,
        /// The statement's decision, when known.
        tag: Option<AuditTag>,
    },
}

enum Msg {
    Event(Event),
    /// Reopen the file (the flag is set too, in case the queue is full).
    Reopen,
    /// Write and flush everything before this, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The sessions' handle on the audit queue (cheap to clone).
#[derive(Clone)]
pub struct Auditor {
    tx: SyncSender<Msg>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl Auditor {
    /// Starts the writer thread for `cfg` (the file is opened first: an unwritable file fails here).
    pub fn start(cfg: &AuditConfig) -> std::io::Result<Auditor> {
        let sink = match &cfg.file {
            Some(path) => writer::Sink::file(path.clone())?,
            None => writer::Sink::Log,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue.max(1));
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("pgveil-audit".into())
            .spawn(move || writer::run(rx, sink, flag))?;
        Ok(Auditor {
            tx,
            reopen,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A handle whose queue nobody reads yet (tests).
    #[cfg(test)]
    fn detached(queue: usize) -> (Auditor, std::sync::mpsc::Receiver<Msg>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue);
        let a = Auditor {
            tx,
            reopen: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (a, rx)
    }

    /// A handle whose events a test reads back.
    #[cfg(test)]
    pub(crate) fn collecting() -> (Auditor, Collector) {
        let (a, rx) = Auditor::detached(1 << 16);
        (a, Collector(rx))
    }

    /// Queues an event without waiting; a full queue drops it (counted).
    pub fn record(&self, event: Event) {
        match self.tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("pgveil_audit_dropped_total").increment(1);
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen its file (SIGHUP), without waiting.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let _ = self.tx.try_send(Msg::Reopen);
    }

    /// Waits (at most `timeout`) until every event queued before this call is written and flushed; whether it
    /// was. Blocks the calling thread: call it from a blocking context (see [`Auditor::shutdown`]).
    pub fn flush_blocking(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        // `send` could wait forever on a stuck writer: retry `try_send` until the deadline instead.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        ack_rx.recv_timeout(left).is_ok()
    }

    /// [`Auditor::flush_blocking`] from async code (on a blocking thread).
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.flush_blocking(timeout))
            .await
            .unwrap_or(false)
    }
}

/// The events queued on a [`Auditor::collecting`] handle.
#[cfg(test)]
pub(crate) struct Collector(std::sync::mpsc::Receiver<Msg>);

#[cfg(test)]
impl Collector {
    /// The events queued since the last call.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.0
            .try_iter()
            .filter_map(|m| match m {
                Msg::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
