//! The audit writer thread: formats queued events and writes them to the process log or to a file, flushing
//! whenever the queue runs empty.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use serde_json::{Value, json};

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
                let mut line = record(event).to_string();
                line.push('\n');
                if let Err(e) = out.write_all(line.as_bytes()) {
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

/// The JSON line of a file record: the shape of a tracing JSON event in the session span.
fn record(e: &Event) -> Value {
    let s = session(e);
    let span = json!({
        "client": s.client, "user": s.user.as_str(), "startup_user": s.startup_user,
        "tenant": s.tenant.as_str(), "role": s.role.as_str(), "name": "session",
    });
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
            let (fingerprint, decision, code, rule, masked) = tag_fields(tag.as_ref());
            let fields = json!({
                "message": "statement", "tenant": s.tenant.as_str(), "role": s.role.as_str(),
                "fingerprint": fingerprint, "decision": decision, "code": code, "rule": rule, "masked": masked,
                "rows": rows, "duration_us": duration.as_micros() as u64, "outcome": outcome.as_str(),
                "error": error.as_deref().unwrap_or(""),
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
            let (fingerprint, ..) = tag_fields(tag.as_ref());
            let fields = json!({
                "message": "exfiltration guard tripped", "tenant": s.tenant.as_str(), "role": s.role.as_str(),
                "fingerprint": fingerprint, "budget": budget, "limit": limit,
                "window": window.map(|w| humantime::format_duration(w).to_string()).unwrap_or_default(),
            });
            (at, "WARN", fields)
        }
    };
    json!({
        "timestamp": humantime::format_rfc3339_micros(*at).to_string(),
        "level": level,
        "fields": fields,
        "target": "pgveil::audit",
        "span": span.clone(),
        "spans": [span],
    })
}
