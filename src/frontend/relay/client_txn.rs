//! Frames from the client in transaction mode, except Query ([`super::client`]): extended-protocol messages
//! are translated against the serving backend's prepared statements ([`crate::frontend::prepared`]), SQL is
//! observed for state that pins the client ([`crate::frontend::txn::TxnCtx::observe`]), and a refused message
//! is replaced in place by a failing Parse ([`super::denial`]).

use bytes::{Bytes, BytesMut};

use super::{Relay, RelayEnd, Step};
use crate::backend::statements::BackendStatements;
use crate::policy::Decision;
use crate::proto::PgError;
use crate::proto::frame::payload;
use crate::proto::messages;
use crate::proto::tags::frontend;

impl Relay<'_> {
    /// Transaction mode: every client message except Query (handled like session mode, plus observation).
    pub(super) fn on_client_frame_txn(
        &mut self,
        frame: &[u8],
        to_b: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Result<Step, PgError> {
        let body = payload(frame);
        let t = self.txn.as_mut().ok_or_else(PgError::internal)?;
        let refused = match frame[0] {
            frontend::PARSE => {
                t.unsynced = true;
                match self.txn_parse(body, to_b, stmts)? {
                    Some(refused) => refused,
                    None => return Ok(Step::Hold),
                }
            }
            frontend::BIND => {
                t.unsynced = true;
                if let Some(tally) = self.tally.as_mut() {
                    tally.on_bind(body);
                }
                t.stmts.bind(body, stmts, to_b).err()
            }
            frontend::DESCRIBE => {
                t.unsynced = true;
                t.stmts.describe(body, stmts, to_b).err()
            }
            frontend::CLOSE => {
                t.unsynced = true;
                self.epochs.on_close(body);
                if let Some(tally) = self.tally.as_mut() {
                    tally.on_close(body);
                }
                t.stmts.close(body, to_b).err()
            }
            frontend::EXECUTE | frontend::FLUSH => {
                t.unsynced = true;
                if frame[0] == frontend::EXECUTE
                    && let Some(tally) = self.tally.as_mut()
                {
                    tally.on_execute(body);
                }
                to_b.extend_from_slice(frame);
                None
            }
            frontend::SYNC => {
                if let Some(tally) = self.tally.as_mut() {
                    tally.on_sync();
                }
                t.unsynced = false;
                t.stmts.on_sync_sent();
                self.state.request_sent();
                to_b.extend_from_slice(frame);
                None
            }
            frontend::FUNCTION_CALL => {
                t.stmts.on_sync_sent();
                self.on_function_call(frame, to_b);
                None
            }
            frontend::TERMINATE => return Ok(Step::End(RelayEnd::Terminate)),
            t => return Err(super::client::invalid_frontend_tag(t)),
        };
        if let Some(err) = refused {
            self.deny_in_place(err, to_b)?;
        }
        Ok(Step::Continue)
    }

    /// A Parse in transaction mode: decided, observed, and prepared through the client's statement table.
    /// Returns the error to fail in its place when it is refused (`Some(Some(_))`), or `None` when the
    /// policy asked to decide it again shortly (nothing was done: the caller holds the message).
    fn txn_parse(
        &mut self,
        body: &[u8],
        to_b: &mut BytesMut,
        stmts: &mut BackendStatements,
    ) -> Result<Option<Option<PgError>>, PgError> {
        let p = messages::decode_parse(body)
            .ok_or_else(|| PgError::protocol_violation("invalid Parse message"))?;
        let (name, param_types) = (p.name, p.param_types);
        let Some(decision) = self.decide(p.sql, Some(name)) else {
            return Ok(None);
        };
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
                None => t
                    .stmts
                    .parse(name, definition(sql, param_types), stmts, to_b)
                    .err(),
            },
        };
        if refused.is_some() && name.is_empty() {
            t.stmts.forget_unnamed();
        }
        Ok(Some(refused))
    }
}

/// A statement's definition as the client's statement table keeps it: the SQL, a NUL, the parameter types.
fn definition(sql: &[u8], param_types: &[u8]) -> Bytes {
    let mut def = BytesMut::with_capacity(sql.len() + 1 + param_types.len());
    def.extend_from_slice(sql);
    def.extend_from_slice(&[0]);
    def.extend_from_slice(param_types);
    def.freeze()
}
