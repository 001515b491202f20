//! The denial swap. A refused statement is not answered out of band (that would break response ordering in
//! pipelines and the backend's transaction state): pgveil sends `SELECT "pgveil:<nonce>"` in its place, the
//! backend fails on it at parse analysis (42703, aborting a transaction block as a real error would), and that
//! ErrorResponse is swapped for pgveil's own error on the way back.

use bytes::BytesMut;

use super::Relay;
use crate::proto::PgError;
use crate::proto::error::parse_fields;
use crate::proto::messages;

impl Relay<'_> {
    /// Registers a denial and returns the SQL that makes the backend fail in its place.
    pub(super) fn deny(&mut self, err: PgError) -> String {
        let marker = format!("pgveil:{:016x}", rand::random::<u64>());
        // Not the message: a parse error quotes the statement (literals included); the masking engine's audit
        // event carries the rule that refused it.
        tracing::info!(code = err.code(), "statement refused");
        let sql = format!("SELECT \"{marker}\"");
        self.denials.push((marker, err));
        sql
    }

    /// Transaction mode: a refused extended-protocol message is replaced by an unnamed Parse of the failing
    /// statement, so the error arrives in order. A FATAL error ends the session instead (`Err`).
    pub(super) fn deny_in_place(
        &mut self,
        err: PgError,
        to_b: &mut BytesMut,
    ) -> Result<(), PgError> {
        if err.is_fatal() {
            return Err(err);
        }
        // Fails in order on the backend, in the place of the refused message.
        let sql = self.deny(err);
        messages::parse(to_b, b"", &sql, &[0, 0]);
        if let Some(t) = self.txn.as_mut() {
            t.stmts.on_denial_parse();
        }
        Ok(())
    }

    /// If this ErrorResponse is the backend failing on a denial marker, returns pgveil's error for it.
    pub(super) fn take_denial(&mut self, body: &[u8]) -> Option<PgError> {
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
pub(super) fn error_code(body: &[u8]) -> Option<String> {
    parse_fields(body)
        .iter()
        .find(|(t, _)| *t == b'C')
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}
