//! The statement hook: the one place where SQL text from a client (`Query`, `Parse`, and the `SET`s pgveil
//! issues for startup parameters) is checked before reaching a backend. The masking engine
//! ([`engine::MaskingEngine`]) implements [`StatementPolicy`]; without a `[policy]` section [`AllowAll`]
//! forwards everything unchanged.
//!
//! Modules: [`file`] (policy files), [`functions`] (masking functions), [`catalog`] (tenant catalog
//! snapshots), [`rewrite`] (parse tree walk and relation substitution), [`firewall`] (denied functions,
//! relations and settings), [`kinds`] (statement kinds), [`engine`] (snapshots, cache, reload).

pub mod catalog;
pub mod engine;
pub mod file;
pub mod firewall;
pub mod functions;
pub mod kinds;
pub mod pattern;
pub mod rewrite;
pub mod tool;

use crate::identity::Identity;
use crate::proto::PgError;

/// What to do with one SQL string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward unchanged.
    Allow,
    /// Forward this text instead.
    Rewrite(String),
    /// Refuse with this error; the session stays usable.
    Deny(PgError),
}

/// Decides, per statement string, whether and how it may reach the backend.
pub trait StatementPolicy: Send + Sync {
    /// Whether this identity's statements must be inspected at all. `false` means every statement is forwarded
    /// unparsed (zero cost), e.g. for a role whose policy allows everything.
    fn inspects(&self, who: &Identity) -> bool;

    /// Decides on one SQL string (which may hold several statements).
    fn check(&self, sql: &str, who: &Identity) -> Decision;
}

/// Forwards everything. The default until a masking policy is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl StatementPolicy for AllowAll {
    fn inspects(&self, _: &Identity) -> bool {
        false
    }
    fn check(&self, _: &str, _: &Identity) -> Decision {
        Decision::Allow
    }
}
