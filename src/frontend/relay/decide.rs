//! The statement policy hook on SQL text (Query, Parse), and the decision epochs of the session's prepared
//! state (DESIGN.md "Trust boundary", Versions): a session holding prepared statements or cursors made under
//! an epoch no longer in force is ended; while the current epoch is being determined (a schema change is
//! reloading), its messages are held, for [`MAX_HOLD`] at most.

use bytes::BytesMut;

use super::client::refuse_client;
use super::{Relay, Step};
use crate::frontend::versions::{UNINSPECTED, may_create_state};
use crate::policy::Decision;
use crate::proto::PgError;
use crate::proto::frame::FrameSplitter;

/// Longest time a session's messages are held while a schema change is reloaded; then it is ended.
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

impl Relay<'_> {
    /// Runs the statement hook on SQL text (skipped entirely for roles that are not inspected). `parse`: the
    /// name of the statement when the text comes in a Parse message (the statement outlives it). `None`: the
    /// policy asks to decide it again shortly (`StatementPolicy::try_check_versioned`); nothing was recorded,
    /// and the caller holds the message (see [`Relay::hold_frame`]).
    pub(super) fn decide(&mut self, sql: &[u8], parse: Option<&[u8]>) -> Option<Decision> {
        if !self.inspects() {
            self.last_tag = None;
            if self.versioned {
                match parse {
                    Some(name) => self.epochs.on_parse(name, UNINSPECTED),
                    None => {
                        self.epochs.on_query();
                        if may_create_state(sql) {
                            self.epochs.on_lasting(UNINSPECTED);
                        }
                    }
                }
            }
            return Some(Decision::Allow);
        }
        let Ok(sql) = std::str::from_utf8(sql) else {
            // Fail closed: what cannot be read cannot be checked.
            self.last_tag = None;
            if parse.is_none() && self.versioned {
                self.epochs.on_query();
            }
            return Some(Decision::Deny(PgError::invalid_encoding()));
        };
        let mut v = self.policy.try_check_versioned(sql, self.who)?;
        self.last_tag = if self.tally.is_some() {
            v.audit.take()
        } else {
            None
        };
        if self.versioned {
            if parse.is_none() {
                self.epochs.on_query();
            }
            if !matches!(v.decision, Decision::Deny(_)) {
                match parse {
                    Some(name) => self.epochs.on_parse(name, v.epoch),
                    None if v.lasting => self.epochs.on_lasting(v.epoch),
                    None => {}
                }
            }
        }
        Some(v.decision)
    }

    /// Puts `frame`, which the policy asked to decide again, back in front of the client bytes, and holds
    /// the session's client messages (backend traffic goes on) until the run loop looks again
    /// (`HOLD_RECHECK`); the policy bounds how long it asks (`policy::on_demand::WAIT`).
    pub(super) fn hold_frame(&mut self, mut frame: BytesMut, cin: &mut BytesMut) {
        // `frame` was split off the front of `cin`: put back in place without copying.
        frame.unsplit(cin.split());
        *cin = frame;
        self.deciding_later = true;
    }

    /// Before fresh client bytes are handled: `Some` ends the session (its prepared state is stale) or holds
    /// the bytes (the epoch is being determined); `None` lets them through.
    pub(super) fn epoch_gate(
        &mut self,
        cin: &BytesMut,
        split: &FrameSplitter,
        to_c: &mut BytesMut,
    ) -> Option<Step> {
        if self.versioned && !split.mid_frame() {
            self.epochs.apply_leading_closes(cin);
        }
        match self.stale_state() {
            Ok(None) => {
                self.held_since = None;
                None
            }
            Ok(Some(err)) => {
                tracing::info!(
                    code = err.code(),
                    "policy version changed under prepared state"
                );
                Some(refuse_client(err, to_c))
            }
            // A schema change is being reloaded: hold the session's messages (bounded) until it is known
            // whether its prepared statements are still current.
            Err(()) => {
                let since = *self
                    .held_since
                    .get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < MAX_HOLD {
                    return Some(Step::Continue);
                }
                Some(refuse_client(PgError::policy_changed(), to_c))
            }
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
}
