//! Frames from the backend. Pass-through frames (DataRow, CopyData, ...) go to the client as raw bytes
//! (counted by the tally when there is one). Inspected: ReadyForQuery (the transaction status, see
//! [`super::sync`]), ParameterStatus (the lexing watchdog), ErrorResponse (denial swap, tally, withheld
//! DETAIL), NoticeResponse (withheld below NOTICE and DETAIL), CommandComplete (schema changes), and in
//! transaction mode ParseComplete/CloseComplete (answers to messages pgveil injected are dropped).

use std::collections::BTreeMap;

use bytes::BytesMut;

use super::Relay;
use super::denial::error_code;
use crate::backend::statements::BackendStatements;
use crate::frontend::tally::{EndAction, ends_statement};
use crate::policy::schema_changing_tag;
use crate::policy::settings::reported_value_ok;
use crate::proto::error::parse_fields;
use crate::proto::frame::{FrameError, FrameSplitter, Item, payload};
use crate::proto::tags::backend;
use crate::proto::{PgError, TxnStatus, messages};

/// The DETAIL shown instead of the backend's to roles with masked columns.
const DETAIL_WITHHELD: &str =
    "pgveil: the detail of this message was withheld because it can contain unmasked column values";

/// What becomes of an inspected backend frame.
enum Flow {
    /// Relayed to the client as it is.
    Relay,
    /// Dropped, or something else was queued in its place.
    Handled,
    /// The session must end (`Relay::fatal` is set): nothing more is relayed.
    Stop,
}

impl Relay<'_> {
    /// Handles the backend bytes in `bin`, queueing what the client gets in `to_c`.
    pub(super) fn on_backend_bytes(
        &mut self,
        bin: &mut BytesMut,
        split: &mut FrameSplitter,
        to_c: &mut BytesMut,
        params: &mut BTreeMap<String, String>,
        stmts: &mut BackendStatements,
    ) -> Result<(), FrameError> {
        let (txn, watch, tallying) = (self.txn.is_some(), self.watch_backend, self.tally.is_some());
        if let Some(t) = self.tally.as_mut() {
            t.arm(split, self.policy.guard(self.who));
        }
        loop {
            let errors = txn || watch || tallying || !self.denials.is_empty();
            let inspect = |t: u8| {
                matches!(t, backend::READY_FOR_QUERY | backend::PARAMETER_STATUS)
                    || (errors && t == backend::ERROR_RESPONSE)
                    || (watch && matches!(t, backend::COMMAND_COMPLETE | backend::NOTICE_RESPONSE))
                    || (txn && matches!(t, backend::PARSE_COMPLETE | backend::CLOSE_COMPLETE))
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
            match self.on_backend_frame(&frame, split, to_c, params, stmts) {
                Flow::Relay => to_c.extend_from_slice(&frame),
                Flow::Handled => {}
                Flow::Stop => return Ok(()),
            }
        }
    }

    fn on_backend_frame(
        &mut self,
        frame: &[u8],
        split: &mut FrameSplitter,
        to_c: &mut BytesMut,
        params: &mut BTreeMap<String, String>,
        stmts: &mut BackendStatements,
    ) -> Flow {
        let (t, body) = (frame[0], payload(frame));
        let watch = self.watch_backend;
        if let Some(flow) = self.tally_frame(t, body, split, to_c) {
            return flow;
        }
        match t {
            backend::READY_FOR_QUERY => self.on_ready(body, split),
            backend::COMMAND_COMPLETE if watch && schema_changing_tag(body) => {
                self.ddl_pending = true;
                Flow::Relay
            }
            // Messages below NOTICE echo statement text and plans (`parse <unnamed>: <rewritten SQL>`).
            backend::NOTICE_RESPONSE if watch && below_notice(body) && self.inspects() => {
                Flow::Handled
            }
            backend::NOTICE_RESPONSE if watch && self.withheld_detail(frame, to_c) => Flow::Handled,
            backend::PARSE_COMPLETE | backend::CLOSE_COMPLETE => {
                // Dropped when it answers a message pgveil injected.
                let injected = self
                    .txn
                    .as_mut()
                    .is_some_and(|txn| !txn.stmts.on_complete(t));
                if injected { Flow::Handled } else { Flow::Relay }
            }
            backend::PARAMETER_STATUS => self.on_parameter_status(body, params),
            backend::ERROR_RESPONSE => self.on_error_response(frame, split, to_c, stmts),
            _ => Flow::Relay,
        }
    }

    /// The tally's look at an inspected frame: `Some` when it swallowed the frame (rows of a statement the
    /// guard stopped) or replaced a statement's end by the guard's error.
    fn tally_frame(
        &mut self,
        t: u8,
        body: &[u8],
        split: &mut FrameSplitter,
        to_c: &mut BytesMut,
    ) -> Option<Flow> {
        let tally = self.tally.as_mut()?;
        if tally.swallowed(t) {
            return Some(Flow::Handled);
        }
        if ends_statement(t)
            && t != backend::ERROR_RESPONSE
            && let EndAction::Replace(err) = tally.on_end(t, body, None, split)
        {
            if self.watch_backend && schema_changing_tag(body) {
                self.ddl_pending = true;
            }
            err.encode(to_c);
            return Some(Flow::Handled);
        }
        None
    }

    fn on_ready(&mut self, body: &[u8], split: &mut FrameSplitter) -> Flow {
        let status = TxnStatus::from_payload(body);
        if let Some(t) = self.tally.as_mut()
            && let Some(err) = t.on_ready(status, split)
        {
            self.fatal = Some(err);
            return Flow::Stop;
        }
        if self.state.ready(status) {
            // Denials still pending here were skipped by the backend after an earlier error.
            self.denials.clear();
        }
        if let Some(t) = self.txn.as_mut() {
            t.stmts.on_ready();
        }
        if self.ddl_pending && status.is_idle() {
            self.ddl_pending = false;
            self.policy.schema_changed(self.who);
        }
        Flow::Relay
    }

    /// ParameterStatus: tracked, and watched: a backend that now lexes SQL differently from pgveil (an
    /// allow-listed function, a setting path the allowlist does not know) ends an inspected session.
    fn on_parameter_status(&mut self, body: &[u8], params: &mut BTreeMap<String, String>) -> Flow {
        let Some((name, rest)) = messages::read_cstr(body) else {
            return Flow::Relay;
        };
        let Some((value, _)) = messages::read_cstr(rest) else {
            return Flow::Relay;
        };
        let (n, v) = (
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value),
        );
        let server_encoding = params.get("server_encoding").map(String::as_str);
        if !reported_value_ok(&n, &v, server_encoding) && self.inspects() {
            tracing::warn!(parameter = %n, "backend reported a lexing setting pgveil does not parse under; ending the session");
            self.fatal = Some(PgError::lexing_changed(&n));
            return Flow::Stop;
        }
        params.insert(n.into_owned(), v.into_owned());
        Flow::Relay
    }

    /// ErrorResponse: the statement tables learn of it (transaction mode), a denial's error is swapped for
    /// pgveil's, the tally ends the statement, and the DETAIL is withheld where the policy says so.
    fn on_error_response(
        &mut self,
        frame: &[u8],
        split: &mut FrameSplitter,
        to_c: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Flow {
        let body = payload(frame);
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
                Some(e) => Some(e.code().to_owned()),
                None => error_code(body),
            };
            if let EndAction::Replace(err) = t.on_end(frame[0], body, code, split) {
                err.encode(to_c);
                return Flow::Handled;
            }
        }
        if let Some(err) = denial {
            err.encode(to_c);
            return Flow::Handled;
        }
        if self.watch_backend && self.withheld_detail(frame, to_c) {
            return Flow::Handled;
        }
        Flow::Relay
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
