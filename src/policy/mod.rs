//! The statement hook: the one place where SQL text from a client (`Query`, `Parse`, and the `SET`s pgveil
//! issues for startup parameters) is checked before reaching a backend. The masking engine
//! ([`engine::MaskingEngine`]) implements [`StatementPolicy`]; without a `[policy]` section [`AllowAll`]
//! forwards everything unchanged.
//!
//! Modules: [`file`] (policy files), [`functions`] (masking functions), [`catalog`] (tenant catalog
//! snapshots), [`rewrite`] (parse tree walk and relation substitution), [`firewall`] (denied functions,
//! relations; settings via [`settings`]), [`settings`] (which settings and values inspected roles may set),
//! [`kinds`] (statement kinds), [`engine`] (snapshots, cache, reload), [`version`] (decision epochs).

pub mod cache;
pub mod catalog;
pub mod engine;
pub mod file;
pub mod firewall;
pub mod functions;
pub mod kinds;
pub mod lexer;
pub mod on_demand;
pub mod pattern;
pub mod rewrite;
pub mod settings;
pub mod tool;
pub mod version;

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

/// A decision with the version of the policy and catalog it was made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The decision.
    pub decision: Decision,
    /// [`StatementPolicy::epoch`] of the snapshot the decision was made with.
    pub epoch: u64,
    /// The statement creates state that outlives it (SQL `PREPARE`, `DECLARE` cursors): it must not be used
    /// once the epoch has changed.
    pub lasting: bool,
    /// What the statement's audit records say about the decision (`None`: not audited).
    pub audit: Option<crate::audit::AuditTag>,
}

/// Decides, per statement string, whether and how it may reach the backend.
pub trait StatementPolicy: Send + Sync {
    /// Whether this identity's statements must be inspected at all. `false` means every statement is forwarded
    /// unparsed (zero cost), e.g. for a role whose policy allows everything.
    fn inspects(&self, who: &Identity) -> bool;

    /// Decides on one SQL string (which may hold several statements).
    fn check(&self, sql: &str, who: &Identity) -> Decision;

    /// [`StatementPolicy::check`] with the epoch it was decided under and whether the statement creates
    /// lasting state.
    fn check_versioned(&self, sql: &str, who: &Identity) -> Versioned {
        Versioned {
            decision: self.check(sql, who),
            epoch: 0,
            lasting: false,
            audit: None,
        }
    }

    /// [`StatementPolicy::check_versioned`] for a statement its session can hold: `None` asks to decide it
    /// again a few milliseconds later (the policy is waiting for something it started, e.g. a catalog load
    /// for a relation it does not know). A session's event loop serves many sessions, so this never blocks.
    fn try_check_versioned(&self, sql: &str, who: &Identity) -> Option<Versioned> {
        Some(self.check_versioned(sql, who))
    }

    /// The exfiltration guard of `who` (`crate::exfil`), asked per statement; `None`: nothing is limited.
    fn guard(&self, _who: &Identity) -> Option<crate::exfil::Limits> {
        None
    }

    /// Whether decisions have epochs that change ([`StatementPolicy::epoch`]): relays then track under which
    /// epoch each session's prepared statements and cursors were made.
    fn versioned(&self) -> bool {
        false
    }

    /// The version of `who`'s decisions now: it changes whenever a decision for `who` could change (the
    /// role's effective policy, or the tenant's catalog). Statements prepared and cursors opened under
    /// another epoch must not return rows. `None` while it is being determined (a schema change is being
    /// reloaded): relays hold such sessions' messages until it is known.
    fn epoch(&self, _who: &Identity) -> Option<u64> {
        Some(0)
    }

    /// Whether a backend whose session resolves names in `schemas` (`current_schemas(false)`) may serve
    /// `who`: `false` when the decisions for `who` depend on the schemas (a catalog is loaded) and those
    /// differ. Asked on every checkout, so it compares in place (no copy of the expected list).
    fn schemas_match(&self, _who: &Identity, _schemas: &[String]) -> bool {
        true
    }

    /// A backend of `who`'s tenant started with session defaults that differ from what the decisions assume
    /// (e.g. the tenant changed its role's `search_path`): the assumptions must be reloaded.
    fn session_defaults_changed(&self, who: &Identity) {
        self.schema_changed(who);
    }

    /// Whether relays must report schema changes ([`StatementPolicy::schema_changed`]) and look at
    /// backend errors and notices ([`StatementPolicy::withholds_details`]). Asked once per session.
    fn watches_backend(&self) -> bool {
        false
    }

    /// The transaction of a command that can change the schema (`CREATE`/`ALTER`/`DROP ...`,
    /// `IMPORT FOREIGN SCHEMA`) in `who`'s session ended (committed or rolled back), or its session ended.
    fn schema_changed(&self, _who: &Identity) {}

    /// Whether the DETAIL of backend errors and notices must be withheld from `who` (and every other field
    /// not proven free of data, see `proto::error::replace_detail`): PostgreSQL prints row contents there
    /// (`Failing row contains (...)`, `Key (email)=(...) already exists`, `CONTEXT: JSON data, ...`), unmasked.
    fn withholds_details(&self, _who: &Identity) -> bool {
        false
    }
}

/// Whether a `CommandComplete` tag is of a command that can change what a catalog snapshot holds.
pub fn schema_changing_tag(tag: &[u8]) -> bool {
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    tag.starts_with(b"CREATE ")
        || tag.starts_with(b"ALTER ")
        || tag.starts_with(b"DROP ")
        || tag == b"IMPORT FOREIGN SCHEMA"
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

#[cfg(test)]
mod tests {
    #[test]
    fn schema_changing_tags() {
        for t in [
            "CREATE TABLE",
            "ALTER TABLE",
            "DROP VIEW",
            "CREATE FUNCTION",
            "IMPORT FOREIGN SCHEMA",
            "ALTER ROLE",
        ] {
            assert!(super::schema_changing_tag(t.as_bytes()), "{t}");
        }
        for t in [
            "SELECT 1",
            "INSERT 0 1",
            "UPDATE 3",
            "COPY 2",
            "BEGIN",
            "COMMIT",
            "SET",
            "CREATED",
        ] {
            assert!(!super::schema_changing_tag(t.as_bytes()), "{t}");
        }
    }
}
