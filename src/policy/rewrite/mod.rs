//! SQL rewrite by relation substitution, decided on the whole parse tree of the PostgreSQL parser
//! (libpg_query). Every reference to a relation with masked columns becomes
//! `(SELECT id, <mask(email)> AS email, ... FROM schema.table) AS alias`, spliced into the original text at the
//! parser's token positions; every other byte is left untouched. The walk visits every field of every node
//! (the protobuf tree serialized with serde); a relation reference in a position it does not handle is refused.

mod spans;
pub(crate) mod stack;
mod template;
mod walk;

pub use template::{Normalized, Template, may_have_comment, normalize, without_comments};

#[cfg(test)]
mod resolution_tests;
#[cfg(test)]
mod tests;

use crate::ids::RoleName;
use crate::proto::PgError;

use super::catalog::Catalog;
use super::file::Effective;
use super::functions::PseudonymKey;

/// A refusal: which rule refused and why (shown to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE: 42501, 0A000, 42601 or 42P01 (then `message` is the relation's name as written).
    pub code: &'static str,
    /// Rule name, e.g. `statement-kind`, `denied-function`.
    pub rule: &'static str,
    /// Detail.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: "42501",
            rule,
            message: message.into(),
        }
    }

    /// 42P01 for a relation that does not exist in the tenant's database (`name` as written).
    pub(crate) fn undefined_table(name: String) -> Self {
        Self {
            code: "42P01",
            rule: "unknown-relation",
            message: name,
        }
    }

    /// The client-facing error.
    pub fn to_pg_error(&self) -> PgError {
        if self.code == "42P01" {
            return PgError::undefined_table(&self.message);
        }
        let message = format!("pgveil: {} (rule {})", self.message, self.rule);
        match self.code {
            "42601" => PgError::syntax_error(message),
            "0A000" => PgError::feature_not_supported(message),
            _ => PgError::insufficient_privilege(message),
        }
    }
}

/// The result of checking one SQL string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward unchanged.
    Allow,
    /// Forward this text; `masked` lists `schema.table.column -> function` for explain/audit.
    Rewrite {
        /// New SQL text.
        sql: String,
        /// Masked columns.
        masked: Vec<String>,
    },
    /// Refuse.
    Refuse(Refusal),
}

/// What a check needs.
pub struct Context<'a> {
    /// The effective policy of the session's (tenant, role).
    pub policy: &'a Effective<'a>,
    /// The tenant's catalog, when loaded.
    pub catalog: Option<&'a Catalog>,
    /// The tenant's pseudonym key, when loaded.
    pub key: Option<&'a PseudonymKey>,
    /// The role (for messages).
    pub role: &'a RoleName,
}

/// Checks and rewrites one SQL string (which may hold several statements).
pub fn rewrite(sql: &str, ctx: &Context<'_>) -> Outcome {
    check(sql, ctx).outcome
}

/// A decision with what planning it for other literals needs.
pub struct Checked {
    /// The decision.
    pub outcome: Outcome,
    /// A [`Template`] of the rewrite for statements that differ only in literal values, when the decision
    /// did not depend on any literal's value.
    pub template: Option<(Normalized, Template)>,
}

/// [`rewrite`], also planning the decision for other literal values where that is sound.
pub fn check(sql: &str, ctx: &Context<'_>) -> Checked {
    let mut edits = Vec::new();
    let mut literal_sensitive = true;
    let outcome = stack::deep_enough(sql, || decide(sql, ctx, &mut edits, &mut literal_sensitive))
        .unwrap_or_else(|| {
            Outcome::Refuse(Refusal::new(
                "parse",
                "no stack could be reserved to decide this long statement; try again",
            ))
        });
    let template = match &outcome {
        Outcome::Allow | Outcome::Rewrite { .. } if !literal_sensitive => {
            normalize(sql).and_then(|n| Template::build(sql, &n, &edits).map(|t| (n, t)))
        }
        _ => None,
    };
    Checked { outcome, template }
}

fn decide(
    sql: &str,
    ctx: &Context<'_>,
    edits_out: &mut Vec<spans::Edit>,
    literal_sensitive: &mut bool,
) -> Outcome {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Refuse(Refusal {
                code: "42601",
                rule: "parse",
                message: format!("statement could not be parsed: {}", parse_message(&e)),
            });
        }
    };
    let tree = match serde_json::to_value(&parsed.protobuf) {
        Ok(t) => t,
        Err(_) => {
            return Outcome::Refuse(Refusal::new(
                "parse",
                "statement tree could not be inspected",
            ));
        }
    };
    let mut w = match walk::Walker::new(sql, ctx) {
        Ok(w) => w,
        Err(r) => return Outcome::Refuse(r),
    };
    let stmts = tree
        .get("stmts")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    for raw in &stmts {
        if let Err(r) = w.top_statement(raw) {
            return Outcome::Refuse(r);
        }
    }
    let (edits, masked, sensitive) = w.finish();
    *literal_sensitive = sensitive;
    if edits.is_empty() {
        return Outcome::Allow;
    }
    edits_out.clone_from(&edits);
    let out = match spans::apply(sql, edits) {
        Some(s) => s,
        None => return Outcome::Refuse(Refusal::new("rewrite", "overlapping rewrites")),
    };
    // Defence in depth: the rewritten text must scan cleanly into as many top-level statements as the
    // original. (A full re-parse would cost about 0.5 µs per byte of the much longer rewritten text.)
    match (
        spans::top_level_statements(sql),
        spans::top_level_statements(&out),
    ) {
        (Some(a), Some(b)) if a == b => Outcome::Rewrite { sql: out, masked },
        _ => Outcome::Refuse(Refusal::new(
            "rewrite",
            "the rewritten statement did not verify",
        )),
    }
}

/// libpg_query's message without position details.
fn parse_message(e: &pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m.clone(),
        other => other.to_string(),
    }
}
