//! Relations read in FROM: resolved in the tenant's catalog, checked (refused names, other databases,
//! views calling functions the role may not call) and replaced by a subquery that masks their columns.

use serde_json::Value;

use super::super::Refusal;
use super::super::spans::Edit;
use super::{R, Walker, b, qual, s, unknown};
use crate::policy::catalog::{Relation, Resolved};
use crate::policy::file::Unclassified;
use crate::policy::firewall::{per_database_filter, relation_denied};
use crate::policy::functions::{MaskFn, describe, quote_ident};

/// What a relation read in FROM resolves to.
enum Read<'c> {
    /// A system relation: read as it is (`None`) or through a filter to the tenant's database.
    System(Option<String>),
    /// A tenant relation.
    User(&'c Relation),
}

impl<'a> Walker<'a> {
    pub(super) fn span(&self, rv: &Value, loc: i64) -> R<super::super::spans::RelSpan> {
        let parts = 1
            + usize::from(!s(rv, "schemaname").is_empty())
            + usize::from(!s(rv, "catalogname").is_empty());
        usize::try_from(loc)
            .ok()
            .and_then(|l| self.tokens.relation(l, parts, !b(rv, "inh")))
            .ok_or_else(|| {
                Refusal::new(
                    "unsupported",
                    "relation reference at an unexpected position",
                )
            })
    }

    /// A relation read in FROM (or `TABLE name`): substituted when it has masked columns.
    pub(super) fn range_var(&mut self, rv: &Value) -> R {
        let schema = s(rv, "schemaname");
        let name = s(rv, "relname");
        if schema.is_empty() && s(rv, "catalogname").is_empty() && self.cte_visible(name) {
            return Ok(());
        }
        let Some(sub) = self.substitute(rv)? else {
            return Ok(());
        };
        let loc = rv.get("location").and_then(|l| l.as_i64()).unwrap_or(-1);
        let span = self.span(rv, loc)?;
        let has_alias = rv.get("alias").is_some_and(|a| !a.is_null());
        let text = if span.table {
            format!("SELECT * FROM {sub} AS {}", quote_ident(name))
        } else if has_alias {
            sub
        } else {
            format!("{sub} AS {}", quote_ident(name))
        };
        self.edits.push(Edit {
            start: span.start,
            end: span.end,
            text,
        });
        Ok(())
    }

    /// Resolves a read relation and returns its masking subquery, or `None` when nothing is masked.
    pub(super) fn substitute(&mut self, rv: &Value) -> R<Option<String>> {
        let rel = match self.read_relation(rv)? {
            Read::System(filtered) => return Ok(filtered),
            Read::User(rel) => rel,
        };
        self.check_view_sources(rel)?;
        let masked = self.masked_columns(rel)?;
        if masked.is_empty() {
            return Ok(None);
        }
        self.masking_subquery(rel, &masked, b(rv, "inh")).map(Some)
    }

    /// What a relation read in FROM is, refusing names no role may read and references outside the
    /// tenant's database.
    fn read_relation(&self, rv: &Value) -> R<Read<'a>> {
        let schema = s(rv, "schemaname");
        let name = s(rv, "relname");
        let catalog = s(rv, "catalogname");
        if relation_denied(name) {
            return Err(Refusal::new(
                "denied-relation",
                format!("relation {name} is refused for role {}", self.ctx.role),
            ));
        }
        let cat = self.catalog()?;
        if !catalog.is_empty() && !cat.is_own_database(catalog) {
            // PostgreSQL: "cross-database references are not implemented".
            return Err(Refusal {
                code: "0A000",
                rule: "unsupported",
                message: format!(
                    "cross-database references are not implemented: {catalog}.{schema}.{name}"
                ),
            });
        }
        if schema == "pg_toast" || schema.starts_with("pg_temp") {
            return Err(Refusal::new(
                "denied-relation",
                format!("relations in schema {schema} are refused"),
            ));
        }
        match cat.resolve((!schema.is_empty()).then_some(schema), name) {
            // Cluster-wide catalogs show only this tenant's database.
            Resolved::System((sch, n)) => {
                Ok(Read::System(per_database_filter(&sch, &n).map(|w| {
                    format!("(SELECT * FROM pg_catalog.{} WHERE {w})", quote_ident(&n))
                })))
            }
            Resolved::User(rel) => Ok(Read::User(rel)),
            Resolved::Unknown => Err(unknown(schema, name)),
        }
    }

    /// A view may call only functions this role may call, and read no refused system relation.
    fn check_view_sources(&self, rel: &Relation) -> R {
        for f in &rel.calls {
            if !self.function_allowed(&f.0, &f.1) && !self.builtin_function(&f.0, &f.1)? {
                return Err(Refusal::new(
                    "view-calls-function",
                    format!(
                        "{} calls function {}.{}, which is not allow-listed",
                        qual(rel),
                        f.0,
                        f.1
                    ),
                ));
            }
        }
        if rel
            .reads
            .values()
            .flatten()
            .any(|((_, n), _)| relation_denied(n))
        {
            return Err(Refusal::new(
                "denied-relation",
                format!("{} reads a refused system relation", qual(rel)),
            ));
        }
        Ok(())
    }

    /// `(SELECT col, <mask(col)> AS col, ... FROM [ONLY] schema.name)`; records the masked columns.
    fn masking_subquery(
        &mut self,
        rel: &Relation,
        masked: &[(String, MaskFn)],
        inh: bool,
    ) -> R<String> {
        let mut cols = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            let q = quote_ident(&c.name);
            match masked.iter().find(|(n, _)| n == &c.name) {
                None => cols.push(q),
                Some((_, f)) => {
                    let e = f.expression(&q, c.ty(), self.ctx.key).map_err(|e| {
                        Refusal::new("mask", format!("cannot mask {}.{}: {e}", qual(rel), c.name))
                    })?;
                    self.uses_key |= f.uses_key();
                    let d = format!("{}.{} -> {}", qual(rel), c.name, describe(f));
                    if !self.masked.contains(&d) {
                        self.masked.push(d);
                    }
                    cols.push(format!("{e} AS {q}"));
                }
            }
        }
        let only = if inh { "" } else { "ONLY " };
        Ok(format!(
            "(SELECT {} FROM {only}{}.{})",
            cols.join(", "),
            quote_ident(&rel.schema),
            quote_ident(&rel.name)
        ))
    }

    /// The masked columns of a relation for this role, with their functions.
    pub(super) fn masked_columns(&self, rel: &Relation) -> R<Vec<(String, MaskFn)>> {
        let cat = self.catalog()?;
        let p = self.ctx.policy;
        let direct = |s: &str, t: &str, c: &str| p.classify(s, t, c);
        let mut out = Vec::new();
        for c in &rel.columns {
            let classes = cat.classes(rel, &c.name, &direct);
            let hidden: Vec<&str> = classes
                .iter()
                .copied()
                .filter(|class| !p.role.raw.contains(class))
                .collect();
            let function = |class: &str| {
                p.classes.get(class).cloned().ok_or_else(|| {
                    Refusal::new(
                        "policy",
                        format!("classification {class} has no masking function"),
                    )
                })
            };
            match (classes.as_slice(), hidden.as_slice()) {
                (_, []) if !classes.is_empty() => {}
                ([_], [class]) => out.push((c.name.clone(), function(class)?)),
                // Values derived from several classes (a view's `concat(email, phone)`, a whole-row
                // reference): no one class's function fits, so the strictest: redact (NULL where a class
                // asks for NULL).
                (_, [_, ..]) => {
                    let mut f = MaskFn::Redact {
                        replacement: "[REDACTED]".into(),
                    };
                    for class in &hidden {
                        if function(class)? == MaskFn::Null {
                            f = MaskFn::Null;
                        }
                    }
                    out.push((c.name.clone(), f));
                }
                _ => match p.role.unclassified {
                    Unclassified::Allow => {}
                    Unclassified::Mask => out.push((
                        c.name.clone(),
                        MaskFn::Redact {
                            replacement: "[REDACTED]".into(),
                        },
                    )),
                    Unclassified::Deny => {
                        return Err(Refusal::new(
                            "unclassified-column",
                            format!(
                                "{}.{} is not classified and the policy denies unclassified columns",
                                qual(rel),
                                c.name
                            ),
                        ));
                    }
                },
            }
        }
        Ok(out)
    }
}
