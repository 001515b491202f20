//! Transaction mode: extended-protocol statements follow the client from backend to backend.
//!
//! The client's named statements (and its unnamed one) live here, per client; on a backend they exist only
//! under pgveil's names (see [`crate::backend::statements`]). Client messages are rewritten as they pass:
//! - `Parse name`: recorded for the client and sent as `Parse pgveil_ps_<n>` (preceded by a `Close` of the
//!   same server name when the backend already has that definition, so the client still gets the
//!   ParseComplete of a real parse, in order). A name the client already uses fails with 42P05.
//! - `Bind` / `Describe S`: the statement name is replaced by the server name; when the serving backend does
//!   not have the statement yet, a `Parse` is injected just before and its ParseComplete is swallowed.
//! - `Close S name`: forgotten for the client; the backend gets a `Close` of a name that never exists, which
//!   yields the CloseComplete the client expects, in order, without closing the shared server statement.
//! - Unknown names fail with 26000, as PostgreSQL would, and can never reach another client's statement.
//!
//! Responses of injected messages are matched with a FIFO of expected ParseComplete/CloseComplete. After an
//! ErrorResponse the backend skips everything up to the next Sync: expected entries of that batch are
//! dropped, and statements whose Parse was skipped or failed are forgotten for that backend.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::backend::statements::BackendStatements;
use crate::proto::PgError;
use crate::proto::messages;
use crate::proto::tags::backend::{CLOSE_COMPLETE, PARSE_COMPLETE};

/// A name that never exists on a backend (the statement prefix is refused in client SQL).
const NEVER_NAME: &[u8] = b"pgveil_ps_none";

/// One ParseComplete or CloseComplete the backend will send.
#[derive(Debug)]
struct Expect {
    /// Batch number (Syncs/Queries sent before the message).
    epoch: u64,
    /// `1` (ParseComplete) or `3` (CloseComplete).
    tag: u8,
    /// pgveil's own message: do not pass the response to the client.
    swallow: bool,
    /// The statement this Parse creates on the backend (definition, server name).
    creates: Option<(Bytes, Bytes)>,
    /// A Parse of the unnamed statement.
    unnamed: bool,
    /// The client's own Parse of this named statement: if it fails, the client does not have the name.
    client_name: Option<Vec<u8>>,
}

/// Per-client extended-protocol state for transaction mode.
#[derive(Default)]
pub struct TxnStatements {
    /// The client's named statements: name → definition (`sql\0` + parameter types).
    named: HashMap<Vec<u8>, Bytes>,
    /// The client's unnamed statement.
    unnamed: Option<Bytes>,
    /// The serving backend has the client's unnamed statement (reset at every checkout).
    unnamed_on_backend: bool,
    /// Statements used from this tick on belong to the current transaction (never evicted).
    hold_start: u64,
    expect: VecDeque<Expect>,
    sent_syncs: u64,
    recv_rfq: u64,
    /// Per-backend cache size.
    cap: usize,
}

impl TxnStatements {
    /// State for a new client; `cap` bounds each backend's statement cache.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// A backend was checked out for the next transaction.
    pub fn on_checkout(&mut self, stmts: &BackendStatements) {
        self.unnamed_on_backend = false;
        self.hold_start = stmts.tick() + 1;
        self.expect.clear();
        self.sent_syncs = 0;
        self.recv_rfq = 0;
    }

    /// A retried batch (simple `Query` messages only, nothing answered yet) moves to another backend: as
    /// [`TxnStatements::on_checkout`], but the batch's messages stay counted, so later errors of the same
    /// transaction are matched to the right batch.
    pub fn on_reroute(&mut self, stmts: &BackendStatements) {
        let sent = self.sent_syncs;
        self.on_checkout(stmts);
        self.sent_syncs = sent;
    }

    /// Nothing expected from the backend any more.
    pub fn settled(&self) -> bool {
        self.expect.is_empty()
    }

    /// Number of named statements the client has.
    pub fn named_count(&self) -> usize {
        self.named.len()
    }

    /// A Query, Sync or FunctionCall was sent (a batch ends).
    pub fn on_sync_sent(&mut self) {
        self.sent_syncs += 1;
    }

    /// A simple Query destroys the unnamed statement.
    pub fn on_query(&mut self) {
        self.unnamed = None;
        self.unnamed_on_backend = false;
    }

    /// The backend's statements were dropped by client SQL (`DEALLOCATE`, `DISCARD`).
    pub fn on_statements_dropped(&mut self, stmts: &mut BackendStatements) {
        stmts.clear();
        self.unnamed_on_backend = false;
    }

    /// Client Parse whose SQL text the policy accepted as `def` (`sql\0` + parameter types).
    pub fn parse(
        &mut self,
        name: &[u8],
        def: Bytes,
        stmts: &mut BackendStatements,
        to_b: &mut BytesMut,
    ) -> Result<(), PgError> {
        if name.is_empty() {
            messages::parse_def(to_b, b"", &def);
            self.push(PARSE_COMPLETE, false, None, true);
            self.unnamed = Some(def);
            self.unnamed_on_backend = true;
            return Ok(());
        }
        if self.named.contains_key(name) {
            return Err(PgError::duplicate_prepared_statement(
                &String::from_utf8_lossy(name),
            ));
        }
        self.named.insert(name.to_vec(), def.clone());
        let server = match stmts.get(&def) {
            Some(server) => {
                // Re-parse under the same name: the client gets a real ParseComplete, in order.
                messages::close(to_b, b'S', &server);
                self.push(CLOSE_COMPLETE, true, None, false);
                server
            }
            None => self.allocate(&def, stmts, to_b),
        };
        messages::parse_def(to_b, &server, &def);
        self.push(PARSE_COMPLETE, false, Some((def, server)), false);
        if let Some(e) = self.expect.back_mut() {
            e.client_name = Some(name.to_vec());
        }
        Ok(())
    }

    /// Client Bind: the statement name is mapped (and the statement prepared on this backend if needed).
    pub fn bind(
        &mut self,
        body: &[u8],
        stmts: &mut BackendStatements,
        to_b: &mut BytesMut,
    ) -> Result<(), PgError> {
        let b = messages::decode_bind(body)
            .ok_or_else(|| PgError::protocol_violation("invalid Bind message"))?;
        let server = self.resolve(b.statement, stmts, to_b)?;
        messages::bind_renamed(to_b, b.portal, &server, b.rest);
        Ok(())
    }

    /// Client Describe.
    pub fn describe(
        &mut self,
        body: &[u8],
        stmts: &mut BackendStatements,
        to_b: &mut BytesMut,
    ) -> Result<(), PgError> {
        let (kind, name) = messages::decode_target(body)
            .ok_or_else(|| PgError::protocol_violation("invalid Describe message"))?;
        if kind == b'P' {
            messages::describe(to_b, kind, name);
            return Ok(());
        }
        let server = self.resolve(name, stmts, to_b)?;
        messages::describe(to_b, b'S', &server);
        Ok(())
    }

    /// Client Close.
    pub fn close(&mut self, body: &[u8], to_b: &mut BytesMut) -> Result<(), PgError> {
        let (kind, name) = messages::decode_target(body)
            .ok_or_else(|| PgError::protocol_violation("invalid Close message"))?;
        match (kind, name.is_empty()) {
            (b'P', _) => messages::close(to_b, kind, name),
            (_, true) => {
                self.unnamed = None;
                self.unnamed_on_backend = false;
                messages::close(to_b, b'S', b"");
            }
            (_, false) => {
                // Closing a name that does not exist is not an error in PostgreSQL either.
                self.named.remove(name);
                messages::close(to_b, b'S', NEVER_NAME);
            }
        }
        self.push(CLOSE_COMPLETE, false, None, false);
        Ok(())
    }

    /// A refused Parse of the unnamed statement: as in PostgreSQL, where a Parse of the unnamed statement
    /// first drops the previous one, the client has no unnamed statement afterwards (Bind gets 26000).
    pub fn forget_unnamed(&mut self) {
        self.unnamed = None;
        self.unnamed_on_backend = false;
    }

    /// A denial replaced a message with a Parse of the unnamed statement.
    pub fn on_denial_parse(&mut self) {
        self.push(PARSE_COMPLETE, false, None, true);
        self.unnamed_on_backend = false;
    }

    /// The server name of the client's statement `name` on this backend, preparing it first if needed.
    fn resolve(
        &mut self,
        name: &[u8],
        stmts: &mut BackendStatements,
        to_b: &mut BytesMut,
    ) -> Result<Bytes, PgError> {
        if name.is_empty() {
            if !self.unnamed_on_backend {
                let def = self
                    .unnamed
                    .clone()
                    .ok_or_else(PgError::unnamed_statement_missing)?;
                messages::parse_def(to_b, b"", &def);
                self.push(PARSE_COMPLETE, true, None, true);
                self.unnamed_on_backend = true;
            }
            return Ok(Bytes::new());
        }
        let def =
            self.named.get(name).cloned().ok_or_else(|| {
                PgError::unknown_prepared_statement(&String::from_utf8_lossy(name))
            })?;
        if let Some(server) = stmts.get(&def) {
            return Ok(server);
        }
        let server = self.allocate(&def, stmts, to_b);
        messages::parse_def(to_b, &server, &def);
        self.push(PARSE_COMPLETE, true, Some((def, server.clone())), false);
        Ok(server)
    }

    /// Takes a server name for `def`, closing an evicted statement if the cache is full.
    fn allocate(
        &mut self,
        def: &Bytes,
        stmts: &mut BackendStatements,
        to_b: &mut BytesMut,
    ) -> Bytes {
        let (server, evicted) = stmts.insert(def.clone(), self.cap, self.hold_start);
        if let Some(old) = evicted {
            messages::close(to_b, b'S', &old);
            self.push(CLOSE_COMPLETE, true, None, false);
        }
        server
    }

    fn push(&mut self, tag: u8, swallow: bool, creates: Option<(Bytes, Bytes)>, unnamed: bool) {
        self.expect.push_back(Expect {
            epoch: self.sent_syncs,
            tag,
            swallow,
            creates,
            unnamed,
            client_name: None,
        });
    }

    /// ParseComplete or CloseComplete from the backend: whether to pass it to the client.
    pub fn on_complete(&mut self, tag: u8) -> bool {
        match self.expect.pop_front() {
            Some(e) if e.tag == tag => !e.swallow,
            other => {
                tracing::warn!(tag = %char::from(tag), expected = ?other.map(|e| e.tag), "unexpected completion from backend");
                true
            }
        }
    }

    /// ErrorResponse from the backend: the rest of the current batch is skipped by the server.
    pub fn on_error(&mut self, stmts: &mut BackendStatements) {
        let epoch = self.recv_rfq;
        let mut unnamed_lost = false;
        self.expect.retain(|e| {
            if e.epoch != epoch {
                return true;
            }
            if let Some((def, name)) = &e.creates {
                stmts.remove(def, name);
                if let Some(client_name) = &e.client_name
                    && self.named.get(client_name) == Some(def)
                {
                    self.named.remove(client_name);
                }
            }
            unnamed_lost |= e.unnamed;
            false
        });
        if unnamed_lost {
            self.unnamed_on_backend = false;
        }
    }

    /// ReadyForQuery from the backend.
    pub fn on_ready(&mut self) {
        self.recv_rfq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(sql: &str) -> Bytes {
        let mut v = sql.as_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0]);
        Bytes::from(v)
    }

    fn tags(buf: &BytesMut) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < buf.len() {
            out.push(buf[i]);
            i += 1 + i32::from_be_bytes(buf[i + 1..i + 5].try_into().unwrap()) as usize;
        }
        out
    }

    #[test]
    fn named_statement_follows_client_to_new_backend() {
        let mut c = TxnStatements::new(10);
        let (mut b1, mut b2) = (BackendStatements::default(), BackendStatements::default());
        let mut out = BytesMut::new();
        c.on_checkout(&b1);
        c.parse(b"s1", def("select 1"), &mut b1, &mut out).unwrap();
        assert_eq!(tags(&out), b"P");
        assert!(c.on_complete(b'1'));
        // Second backend: Bind injects a Parse whose ParseComplete is swallowed.
        out.clear();
        c.on_checkout(&b2);
        let mut bind = BytesMut::new();
        messages::bind_renamed(&mut bind, b"", b"s1", &[0, 0, 0, 0, 0, 0]);
        c.bind(&bind[5..], &mut b2, &mut out).unwrap();
        assert_eq!(tags(&out), b"PB");
        assert!(!c.on_complete(b'1'));
        assert!(c.settled());
        // Unknown names and duplicates fail like PostgreSQL.
        let mut bind = BytesMut::new();
        messages::bind_renamed(&mut bind, b"", b"nope", &[0, 0, 0, 0, 0, 0]);
        assert_eq!(
            c.bind(&bind[5..], &mut b2, &mut out).unwrap_err().code(),
            "26000"
        );
        assert_eq!(
            c.parse(b"s1", def("select 2"), &mut b2, &mut out)
                .unwrap_err()
                .code(),
            "42P05"
        );
        // Close is answered by the backend without closing the shared statement.
        out.clear();
        c.close(b"Ss1\0", &mut out).unwrap();
        assert_eq!(tags(&out), b"C");
        assert!(c.on_complete(b'3'));
        assert_eq!(b2.len(), 1);
    }

    #[test]
    fn error_forgets_statements_of_the_failed_batch() {
        let mut c = TxnStatements::new(10);
        let mut b = BackendStatements::default();
        let mut out = BytesMut::new();
        c.on_checkout(&b);
        c.parse(b"bad", def("select nope"), &mut b, &mut out)
            .unwrap();
        c.on_sync_sent();
        c.on_error(&mut b);
        c.on_ready();
        assert!(b.is_empty() && c.settled());
    }
}
