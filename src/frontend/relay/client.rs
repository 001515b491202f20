//! Frames from the client, session mode (transaction mode adds [`super::client_txn`]): every frame header is
//! checked against PostgreSQL's limits and known message types before anything is forwarded; pass-through
//! frames (Bind, Execute, COPY data, ...) go on as raw bytes; Query and Parse go through the statement policy
//! ([`super::decide`]); FunctionCall is refused for inspected roles.

use bytes::BytesMut;

use super::{Relay, RelayEnd, Step};
use crate::backend::statements::BackendStatements;
use crate::frontend::limits::scan_frontend;
use crate::policy::Decision;
use crate::proto::PgError;
use crate::proto::frame::{FrameError, FrameSplitter, Item, payload};
use crate::proto::messages;
use crate::proto::tags::frontend;

impl Relay<'_> {
    /// Handles the client bytes in `cin`: whole frames are checked and queued for the backend (`to_b`); a
    /// protocol violation queues a FATAL error for the client (`to_c`) and ends the session.
    pub(super) fn on_client_bytes(
        &mut self,
        cin: &mut BytesMut,
        split: &mut FrameSplitter,
        to_b: &mut BytesMut,
        to_c: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Step {
        self.deciding_later = false;
        if !cin.is_empty()
            && let Some(step) = self.epoch_gate(cin, split, to_c)
        {
            return step;
        }
        let inspects: fn(u8) -> bool = if self.txn.is_some() {
            txn_client_inspects
        } else {
            client_inspects
        };
        loop {
            let frame = match self.next_client_frame(cin, split, to_b, inspects) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Step::Continue,
                Err(err) => return refuse_client(err, to_c),
            };
            self.state.on_client_tag(frame[0]);
            match self.on_client_frame(&frame, to_b, stmts) {
                Ok(Step::Continue) => {}
                Ok(Step::Hold) => {
                    self.hold_frame(frame, cin);
                    return Step::Continue;
                }
                Ok(end @ Step::End(_)) => return end,
                Err(err) => return refuse_client(err, to_c),
            }
        }
    }

    /// The next whole frame to inspect (`None`: more bytes are needed); pass-through bytes before it are
    /// queued for the backend on the way.
    fn next_client_frame(
        &mut self,
        cin: &mut BytesMut,
        split: &mut FrameSplitter,
        to_b: &mut BytesMut,
        inspects: fn(u8) -> bool,
    ) -> Result<Option<BytesMut>, PgError> {
        loop {
            let at_boundary = !split.mid_frame();
            if at_boundary {
                // Refuse an unknown message type on its tag byte, as PostgreSQL does, instead of waiting for
                // the body its length announces (an SSLRequest or StartupMessage sent mid-session would
                // otherwise leave the session hanging).
                if let Some(&t) = cin.first()
                    && !frontend_tag(t)
                {
                    return Err(invalid_frontend_tag(t));
                }
                // Frames are checked against PostgreSQL's limits from their header, before any is forwarded.
                scan_frontend(&cin[..cin.len().min(5)])?;
            }
            match split.next(cin, inspects).map_err(frame_error)? {
                None => return Ok(None),
                Some(Item::Inspect(frame)) => return Ok(Some(frame)),
                Some(Item::Forward(bytes)) => self.forward_client(&bytes, at_boundary, to_b)?,
                // Only counting splitters (the backend side) produce these.
                Some(Item::Limit | Item::Discarded) => {}
            }
        }
    }

    /// Queues pass-through client bytes for the backend; those starting at a frame boundary are checked
    /// (lengths, extended protocol) and counted by the tally.
    fn forward_client(
        &mut self,
        bytes: &[u8],
        at_boundary: bool,
        to_b: &mut BytesMut,
    ) -> Result<(), PgError> {
        if at_boundary {
            self.state.unsynced |= scan_frontend(bytes)?;
            if let Some(t) = self.tally.as_mut() {
                t.on_client_run(bytes);
            }
        }
        to_b.extend_from_slice(bytes);
        Ok(())
    }

    /// One inspected client frame. `Err`: a protocol violation, sent to the client as FATAL.
    fn on_client_frame(
        &mut self,
        frame: &[u8],
        to_b: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Result<Step, PgError> {
        let body = payload(frame);
        if self.txn.is_some() && frame[0] != frontend::QUERY {
            // Translated against this backend's prepared statements: not portable to another one.
            self.retry = None;
            return self.on_client_frame_txn(frame, to_b, stmts);
        }
        match frame[0] {
            frontend::QUERY => return self.on_query(frame, to_b, stmts),
            frontend::PARSE => return self.on_parse(frame, to_b),
            frontend::FUNCTION_CALL => self.on_function_call(frame, to_b),
            frontend::SYNC => {
                self.state.request_sent();
                if let Some(t) = self.tally.as_mut() {
                    t.on_sync();
                }
                to_b.extend_from_slice(frame);
            }
            frontend::CLOSE => {
                self.epochs.on_close(body);
                if let Some(t) = self.tally.as_mut() {
                    t.on_close(body);
                }
                to_b.extend_from_slice(frame);
            }
            frontend::TERMINATE => return Ok(Step::End(RelayEnd::Terminate)),
            t => return Err(invalid_frontend_tag(t)),
        }
        Ok(Step::Continue)
    }

    /// A simple Query (both modes): decided, observed in transaction mode, and queued as it is, rewritten,
    /// or swapped for its denial.
    fn on_query(
        &mut self,
        frame: &[u8],
        to_b: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Result<Step, PgError> {
        let sql = messages::decode_query(payload(frame))
            .ok_or_else(|| PgError::protocol_violation("invalid Query message"))?;
        let Some(mut decision) = self.decide(sql, None) else {
            return Ok(Step::Hold);
        };
        self.state.request_sent();
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
        Ok(Step::Continue)
    }

    /// Session mode: a Parse, decided and queued as it is, rewritten, or swapped for its denial.
    fn on_parse(&mut self, frame: &[u8], to_b: &mut BytesMut) -> Result<Step, PgError> {
        let p = messages::decode_parse(payload(frame))
            .ok_or_else(|| PgError::protocol_violation("invalid Parse message"))?;
        let Some(decision) = self.decide(p.sql, Some(p.name)) else {
            return Ok(Step::Hold);
        };
        if let Some(t) = self.tally.as_mut() {
            t.on_parse(p.name, self.last_tag.take());
        }
        match decision {
            Decision::Allow => to_b.extend_from_slice(frame),
            Decision::Rewrite(text) => messages::parse(to_b, p.name, &text, p.param_types),
            Decision::Deny(err) => messages::parse(to_b, p.name, &self.deny(err), &[0, 0]),
        }
        Ok(Step::Continue)
    }

    /// A fast-path FunctionCall (both modes): it calls a function by OID, past any SQL check, so inspected
    /// roles get a denial in its place.
    pub(super) fn on_function_call(&mut self, frame: &[u8], to_b: &mut BytesMut) {
        self.state.request_sent();
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
}

/// Queues a FATAL protocol error for the client and ends the session.
pub(super) fn refuse_client(err: PgError, to_c: &mut BytesMut) -> Step {
    err.encode(to_c);
    Step::End(RelayEnd::ClientProtocol(err))
}

fn frame_error(e: FrameError) -> PgError {
    match e {
        FrameError::TooLarge { limit, .. } => PgError::message_too_large(limit),
        FrameError::BadLength(_) => PgError::protocol_violation(e.to_string()),
    }
}

/// Message types a client may send once the session has started (PostgreSQL's `SocketBackend` list).
fn frontend_tag(t: u8) -> bool {
    use frontend::*;
    matches!(
        t,
        QUERY
            | PARSE
            | BIND
            | EXECUTE
            | DESCRIBE
            | CLOSE
            | SYNC
            | FLUSH
            | FUNCTION_CALL
            | TERMINATE
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
    )
}

pub(super) fn invalid_frontend_tag(t: u8) -> PgError {
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
    use frontend::*;
    !matches!(
        t,
        BIND | COPY_DONE | COPY_DATA | DESCRIBE | EXECUTE | COPY_FAIL | FLUSH
    )
}

/// Transaction mode: every frontend tag is handed over whole except COPY data, CopyDone and CopyFail.
fn txn_client_inspects(t: u8) -> bool {
    use frontend::*;
    !matches!(t, COPY_DATA | COPY_DONE | COPY_FAIL)
}
