//! Statements that write (INSERT, UPDATE, DELETE, MERGE) and COPY: the statement kind the role needs, and
//! the target relation, whose masked columns may not be read back (RETURNING, WHERE, ...).

use serde_json::Value;

use super::super::Refusal;
use super::super::spans::Edit;
use super::{R, Walker, b, column_refs, list, names, qual, s, unknown};
use crate::policy::catalog::Resolved;
use crate::policy::functions::quote_ident;
use crate::policy::kinds::StatementKind;

impl Walker<'_> {
    pub(super) fn dml(&mut self, ty: &str, body: &Value) -> R {
        use StatementKind as K;
        self.require(match ty {
            "InsertStmt" => K::Insert,
            "UpdateStmt" => K::Update,
            "DeleteStmt" => K::Delete,
            _ => K::Merge,
        })?;
        let pushed = self.with_clause(body.get("with_clause"))?;
        let rv = body
            .get("relation")
            .filter(|r| !r.is_null())
            .ok_or_else(|| Refusal::new("parse", "DML without target"))?;
        let scope = self.from_scope(body);
        self.from_scopes.push(scope);
        let r = self
            .dml_target(ty, rv, body)
            .and_then(|()| self.walk_fields(body, &["with_clause", "relation"]));
        self.from_scopes.pop();
        if pushed {
            self.scopes.pop();
        }
        r
    }

    /// A write target cannot be replaced by a subquery: writes are allowed, but reading a masked column of
    /// the target (in WHERE, SET expressions, RETURNING, ON CONFLICT, MERGE conditions) is refused.
    pub(super) fn dml_target(&mut self, ty: &str, rv: &Value, body: &Value) -> R {
        let cat = self.catalog()?;
        let schema = s(rv, "schemaname");
        let name = s(rv, "relname");
        let rel = match cat.resolve((!schema.is_empty()).then_some(schema), name) {
            Resolved::User(rel) => rel,
            Resolved::System(_) => {
                return self.unmaskable(StatementKind::Ddl, "writing system catalogs");
            }
            Resolved::Unknown => return Err(unknown(schema, name)),
        };
        let masked = self.masked_columns(rel)?;
        if masked.is_empty() {
            return Ok(());
        }
        if ty == "MergeStmt" {
            return Err(Refusal::new(
                "dml-masked-target",
                format!(
                    "MERGE into {} (it has masked columns) is refused",
                    qual(rel)
                ),
            ));
        }
        let alias = rv
            .get("alias")
            .and_then(|a| a.get("aliasname"))
            .and_then(|a| a.as_str())
            .unwrap_or(name);
        let mut refs = Vec::new();
        let keys: &[&str] = if ty == "InsertStmt" {
            &["on_conflict_clause", "returning_clause", "returning_list"]
        } else {
            &[
                "where_clause",
                "target_list",
                "returning_clause",
                "returning_list",
                "from_clause",
                "using_clause",
            ]
        };
        for k in keys {
            if let Some(v) = body.get(*k) {
                column_refs(v, &mut refs);
            }
        }
        for r in refs {
            let hit = match r.last() {
                None => true, // `*`
                Some(last) => {
                    masked.iter().any(|(c, _)| c == last) || (r.len() == 1 && last == alias)
                }
            };
            if hit {
                return Err(Refusal::new(
                    "dml-masked-target",
                    format!(
                        "{} reads a masked column of its target {} (in WHERE, SET, RETURNING or ON CONFLICT); refused",
                        ty.trim_end_matches("Stmt").to_ascii_uppercase(),
                        qual(rel)
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn copy(&mut self, body: &Value) -> R {
        if b(body, "is_program") || !s(body, "filename").is_empty() {
            return Err(Refusal::new(
                "copy-file",
                "COPY to or from files or programs is refused",
            ));
        }
        if b(body, "is_from") {
            self.require(StatementKind::CopyFrom)?;
            let rv = body.get("relation").filter(|r| !r.is_null());
            if let Some(rv) = rv {
                // Writing is fine; a WHERE clause on COPY FROM filters incoming rows only.
                self.relation_for_write(rv)?;
            }
            return self.walk_fields(body, &["relation"]);
        }
        self.require(StatementKind::CopyTo)?;
        if let Some(q) = body.get("query").filter(|q| !q.is_null()) {
            return self.statement(q);
        }
        let rv = body
            .get("relation")
            .filter(|r| !r.is_null())
            .ok_or_else(|| Refusal::new("parse", "COPY without source"))?;
        let Some(sub) = self.substitute(rv)? else {
            return Ok(());
        };
        let loc = rv.get("location").and_then(|l| l.as_i64()).unwrap_or(-1);
        let span = self.span(rv, loc)?;
        let end = self.tokens.paren_list_after(span.end).unwrap_or(span.end);
        let cols = match names(list(body, "attlist")) {
            Some(c) if !c.is_empty() => c
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "*".to_owned(),
        };
        self.edits.push(Edit {
            start: span.start,
            end,
            text: format!(
                "(SELECT {cols} FROM {sub} AS {})",
                quote_ident(s(rv, "relname"))
            ),
        });
        Ok(())
    }

    pub(super) fn relation_for_write(&mut self, rv: &Value) -> R {
        let cat = self.catalog()?;
        let schema = s(rv, "schemaname");
        let name = s(rv, "relname");
        match cat.resolve((!schema.is_empty()).then_some(schema), name) {
            Resolved::User(_) => Ok(()),
            Resolved::System(_) => self.unmaskable(StatementKind::Ddl, "writing system catalogs"),
            Resolved::Unknown => Err(unknown(schema, name)),
        }
    }
}
