//! The audit writer thread: formats queued events and writes them to the process log or to a file, flushing
//! whenever the queue runs empty.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use std::time::SystemTime;

use serde::Serialize;

use super::{AuditTag, Event, Msg, SessionInfo};

/// Where records go.
pub enum Sink {
    /// The process log (tracing, target `pgveil::audit`): JSON lines with `PGVEIL_LOG_FORMAT=json`.
    Log,
    /// JSON lines appended to a file.
    File {
        /// Its path (reopened on SIGHUP).
        path: PathBuf,
        /// The open file.
        out: BufWriter<File>,
    },
}

fn open(path: &PathBuf) -> std::io::Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    Ok(BufWriter::with_capacity(64 * 1024, f))
}

impl Sink {
    /// A file sink (the file is opened now).
    pub fn file(path: PathBuf) -> std::io::Result<Sink> {
        let out = open(&path)?;
        Ok(Sink::File { path, out })
    }

    fn write(&mut self, event: &Event) {
        match self {
            Sink::Log => log(event),
            Sink::File { out, .. } => {
                if let Err(e) = write_record(out, event) {
                    tracing::warn!(error = %e, "audit file write failed");
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Sink::File { out, .. } = self
            && let Err(e) = out.flush()
        {
            tracing::warn!(error = %e, "audit file flush failed");
        }
    }

    /// Reopens the file by its path (after a rotation moved it away); keeps the old one if that fails.
    fn reopen(&mut self) {
        if let Sink::File { path, out } = self {
            let _ = out.flush();
            match open(path) {
                Ok(new) => {
                    *out = new;
                    tracing::info!(path = %path.display(), "audit file reopened");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "audit file reopen failed; still writing to the old file")
                }
            }
        }
    }
}

/// After draining the queue the writer rests this long before waiting on it again: while it rests, queueing an
/// event wakes no thread (no futex call, no context switch per event on the relay's side).
const REST: std::time::Duration = std::time::Duration::from_millis(5);

/// The thread's loop: until every [`super::Auditor`] is gone.
pub(super) fn run(rx: Receiver<Msg>, mut sink: Sink, reopen: Arc<AtomicBool>) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            if reopen.swap(false, Ordering::AcqRel) {
                sink.reopen();
            }
            match msg {
                Msg::Event(e) => sink.write(&e),
                Msg::Reopen => {}
                Msg::Flush(ack) => {
                    sink.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        sink.flush();
        std::thread::sleep(REST);
    }
    sink.flush();
}

fn session(e: &Event) -> &SessionInfo {
    match e {
        Event::Statement { session, .. } | Event::GuardTrip { session, .. } => session,
    }
}

fn tag_fields(tag: Option<&AuditTag>) -> (&str, &'static str, &'static str, &'static str, String) {
    match tag {
        Some(t) => (
            &t.fingerprint,
            t.decision,
            t.code,
            t.rule,
            format!("{:?}", t.masked),
        ),
        None => ("", "", "", "", String::new()),
    }
}

/// Emits the event through tracing, inside a `session` span like the session's own events.
fn log(e: &Event) {
    let s = session(e);
    let span = tracing::info_span!(target: "pgveil::audit", "session", client = %s.client, user = %s.user, startup_user = %s.startup_user, tenant = %s.tenant, role = %s.role);
    let _entered = span.enter();
    let (tenant, role) = (&s.tenant, &s.role);
    match e {
        Event::Statement {
            tag,
            rows,
            duration,
            outcome,
            code: error,
            ..
        } => {
            let (fingerprint, decision, code, rule, masked) = tag_fields(tag.as_ref());
            let duration_us = duration.as_micros() as u64;
            let (outcome, error) = (outcome.as_str(), error.as_deref().unwrap_or(""));
            tracing::info!(target: "pgveil::audit", %tenant, %role, fingerprint, decision, code, rule, masked, rows, duration_us, outcome, error, "statement");
        }
        Event::GuardTrip {
            budget,
            limit,
            window,
            tag,
            ..
        } => {
            let (fingerprint, ..) = tag_fields(tag.as_ref());
            let window = window.map(|w| humantime::format_duration(w).to_string());
            let window = window.as_deref().unwrap_or("");
            tracing::warn!(target: "pgveil::audit", %tenant, %role, fingerprint, budget, limit, window, "exfiltration guard tripped");
        }
    }
}

/// One event's JSON line, serialized straight from borrowed fields (no intermediate JSON tree): the shape of
/// a tracing JSON event in the session span, keys in the order `serde_json::Value` printed them (sorted).
pub(super) fn write_record(out: &mut impl Write, e: &Event) -> std::io::Result<()> {
    let s = session(e);
    let span = SpanRecord {
        client: &s.client,
        name: "session",
        role: s.role.as_str(),
        startup_user: &s.startup_user,
        tenant: s.tenant.as_str(),
        user: s.user.as_str(),
    };
    let (at, level, fields) = match e {
        Event::Statement {
            at,
            tag,
            rows,
            duration,
            outcome,
            code: error,
            ..
        } => {
            let t = tag.as_ref();
            let fields = Fields::Statement(StatementFields {
                code: t.map_or("", |t| t.code),
                decision: t.map_or("", |t| t.decision),
                duration_us: duration.as_micros() as u64,
                error: error.as_deref().unwrap_or(""),
                fingerprint: t.map_or("", |t| &t.fingerprint),
                masked: Masked(t.map(|t| &t.masked[..])),
                message: "statement",
                outcome: outcome.as_str(),
                role: s.role.as_str(),
                rows: *rows,
                rule: t.map_or("", |t| t.rule),
                tenant: s.tenant.as_str(),
            });
            (at, "INFO", fields)
        }
        Event::GuardTrip {
            at,
            budget,
            limit,
            window,
            tag,
            ..
        } => {
            let fields = Fields::Guard(GuardFields {
                budget,
                fingerprint: tag.as_ref().map_or("", |t| &t.fingerprint),
                limit: *limit,
                message: "exfiltration guard tripped",
                role: s.role.as_str(),
                tenant: s.tenant.as_str(),
                window: window
                    .map(|w| humantime::format_duration(w).to_string())
                    .unwrap_or_default(),
            });
            (at, "WARN", fields)
        }
    };
    let record = Record {
        fields,
        level,
        span: &span,
        spans: [&span],
        target: "pgveil::audit",
        timestamp: Timestamp(*at),
    };
    serde_json::to_writer(&mut *out, &record)?;
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct Record<'a> {
    fields: Fields<'a>,
    level: &'static str,
    span: &'a SpanRecord<'a>,
    spans: [&'a SpanRecord<'a>; 1],
    target: &'static str,
    timestamp: Timestamp,
}

#[derive(Serialize)]
struct SpanRecord<'a> {
    client: &'a str,
    name: &'static str,
    role: &'a str,
    startup_user: &'a str,
    tenant: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Fields<'a> {
    Statement(StatementFields<'a>),
    Guard(GuardFields<'a>),
}

#[derive(Serialize)]
struct StatementFields<'a> {
    code: &'a str,
    decision: &'a str,
    duration_us: u64,
    error: &'a str,
    fingerprint: &'a str,
    masked: Masked<'a>,
    message: &'static str,
    outcome: &'static str,
    role: &'a str,
    rows: u64,
    rule: &'a str,
    tenant: &'a str,
}

#[derive(Serialize)]
struct GuardFields<'a> {
    budget: &'a str,
    fingerprint: &'a str,
    limit: u64,
    message: &'static str,
    role: &'a str,
    tenant: &'a str,
    window: String,
}

/// The masked columns as one string, as the log prints them (`["a -> b"]`; empty without a tag).
struct Masked<'a>(Option<&'a [String]>);

impl Serialize for Masked<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(list) => ser.collect_str(&format_args!("{list:?}")),
            None => ser.serialize_str(""),
        }
    }
}

/// RFC 3339 with microseconds, written without an intermediate string.
struct Timestamp(SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}
