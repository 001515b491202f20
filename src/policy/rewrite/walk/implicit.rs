//! Comparisons PostgreSQL makes without an operator in the statement (see `catalog::orderings`):
//! `ORDER BY` (positions and output names included), `GROUP BY`, `DISTINCT [ON]`, `UNION`/`INTERSECT`/
//! `EXCEPT` without `ALL`, window `PARTITION BY`/`ORDER BY`, `agg(DISTINCT ...)`, `min`/`max`,
//! `GREATEST`/`LEAST`, and built-in operators on records or arrays containing a tenant-ordered type. On a
//! value whose type is (or contains) a type with a tenant-defined default btree/hash operator class that is
//! neither of a trusted extension nor allow-listed, they are refused (rule `implicit-operator`). A value of
//! unknown type is refused only when the statement could carry such a type at all: it reads a relation with
//! such a column, casts to such a type, has parameters or calls a tenant function.

use std::collections::BTreeSet;

use serde_json::Value;

use super::super::Refusal;
use super::{R, Walker, b, list, names, s, tagged};
use crate::policy::catalog::resolve::Operand;
use crate::policy::catalog::{Catalog, Resolved};

impl Walker<'_> {
    /// The types whose comparison would run tenant code this role may not run (computed once per walker).
    pub(super) fn compute_denied_orderings(&self) -> BTreeSet<String> {
        match self.ctx.catalog {
            Some(cat) if !cat.resolution.orderings.is_empty() => {
                cat.resolution.denied_orderings(|o| {
                    o.extension.as_deref().is_some_and(|e| self.trusted(e))
                        || (o
                            .operators
                            .iter()
                            .all(|(s, n)| self.operator_allowed(Some(s), n))
                            && o.functions
                                .iter()
                                .all(|(s, n)| s == "pg_catalog" || self.function_allowed(s, n)))
                })
            }
            _ => BTreeSet::new(),
        }
    }

    /// Whether a top-level statement could carry a value of a denied type (see the module comment).
    pub(super) fn may_carry_denied(&self, stmt: &Value) -> bool {
        match self.ctx.catalog {
            Some(cat) if !self.denied_orderings.is_empty() => {
                carries(stmt, cat, &self.denied_orderings)
            }
            _ => false,
        }
    }

    /// Refuses when comparing the values of `v` implicitly would run denied tenant code.
    pub(super) fn implicit_compare(&self, v: &Value, what: &str) -> R {
        if self.denied_orderings.is_empty() {
            return Ok(());
        }
        if matches!(tagged(v), Some(("AConst", _)) | None) {
            return Ok(());
        }
        let operand = self.operand(v);
        let denied = &self.denied_orderings;
        let hit = match &operand {
            Operand::Types(types) => types.iter().find(|t| denied.contains(*t)).cloned(),
            Operand::Unknown if self.carries_denied => Some(String::new()),
            Operand::Unknown => None,
        };
        match hit {
            None => Ok(()),
            Some(t) => Err(self.implicit_refusal(what, &t)),
        }
    }

    fn implicit_refusal(&self, what: &str, ty: &str) -> Refusal {
        let class = self
            .ctx
            .catalog
            .and_then(|c| c.resolution.ordering_of(ty))
            .map(|o| format!(" (operator class {})", o.class))
            .unwrap_or_default();
        let subject = if ty.is_empty() {
            "a value of unknown type, which could be of a type with a tenant-defined operator class,".to_owned()
        } else {
            format!("values of type {ty}{class}")
        };
        Refusal::new(
            "implicit-operator",
            format!(
                "{what} compares {subject} with tenant code that is neither of a trusted extension nor allow-listed"
            ),
        )
    }

    /// The implicit comparisons of one SELECT body (sort and group positions and output names, DISTINCT,
    /// set operations, windows). `ORDER BY` expressions are checked as `SortBy` nodes too.
    pub(super) fn select_comparisons(&self, body: &Value) -> R {
        if self.denied_orderings.is_empty() {
            return Ok(());
        }
        let targets: Vec<(&str, &Value)> = list(body, "target_list")
            .iter()
            .filter_map(|t| tagged(t).filter(|(ty, _)| *ty == "ResTarget"))
            .map(|(_, rt)| (s(rt, "name"), rt.get("val").unwrap_or(&Value::Null)))
            .collect();
        let by_reference = |item: &Value| -> Option<&Value> {
            match tagged(item)? {
                ("AConst", c) => {
                    let n = c.pointer("/val/Ival/ival").and_then(Value::as_i64)?;
                    targets
                        .get(usize::try_from(n).ok()?.checked_sub(1)?)
                        .map(|t| t.1)
                }
                ("ColumnRef", c) => match names(list(c, "fields"))?.as_slice() {
                    [one] => targets.iter().find(|(n, _)| n == one).map(|t| t.1),
                    _ => None,
                },
                _ => None,
            }
        };
        let mut checks: Vec<(&Value, &str)> = Vec::new();
        for sort in list(body, "sort_clause") {
            if let Some(("SortBy", sb)) = tagged(sort)
                && list(sb, "use_op").is_empty()
                && let Some(t) = sb.get("node").and_then(by_reference)
            {
                checks.push((t, "ORDER BY"));
            }
        }
        let mut groups = Vec::new();
        group_items(list(body, "group_clause"), &mut groups);
        for g in groups {
            checks.push((g, "GROUP BY"));
            if let Some(t) = by_reference(g) {
                checks.push((t, "GROUP BY"));
            }
        }
        if !list(body, "distinct_clause").is_empty() {
            checks.extend(targets.iter().map(|t| (t.1, "DISTINCT")));
            for d in list(body, "distinct_clause") {
                checks.push((d, "DISTINCT ON"));
            }
        }
        let set_op = body.get("op").and_then(Value::as_i64).unwrap_or(1);
        let mut arms = Vec::new();
        if set_op > 1 && !b(body, "all") {
            leaf_targets(body, &mut arms);
        }
        checks.extend(arms.into_iter().map(|t| (t, "UNION/INTERSECT/EXCEPT")));
        for w in list(body, "window_clause") {
            if let Some(("WindowDef", wd)) = tagged(w) {
                checks.extend(
                    list(wd, "partition_clause")
                        .iter()
                        .map(|p| (p, "PARTITION BY")),
                );
            }
        }
        for (v, what) in checks {
            self.implicit_compare(v, what)?;
        }
        Ok(())
    }

    /// `agg(DISTINCT x)`, `min`/`max`, and `OVER (PARTITION BY ...)` of a function call.
    pub(super) fn call_comparisons(&self, name: &str, body: &Value) -> R {
        if self.denied_orderings.is_empty() {
            return Ok(());
        }
        if b(body, "agg_distinct") || matches!(name, "min" | "max") {
            for a in list(body, "args") {
                self.implicit_compare(a, "an aggregate")?;
            }
        }
        if let Some(over) = body.get("over").filter(|o| !o.is_null()) {
            for p in list(over, "partition_clause") {
                self.implicit_compare(p, "PARTITION BY")?;
            }
        }
        Ok(())
    }

    /// `GREATEST`/`LEAST`.
    pub(super) fn min_max(&mut self, body: &Value) -> R {
        for a in list(body, "args") {
            self.implicit_compare(a, "GREATEST/LEAST")?;
        }
        self.walk(body)
    }

    /// A built-in operator on records or arrays containing a denied type compares the parts with it.
    pub(super) fn container_compare(&self, left: &Operand, right: &Operand) -> R {
        let denied = &self.denied_orderings;
        if denied.is_empty() {
            return Ok(());
        }
        let Some(cat) = self.ctx.catalog else {
            return Ok(());
        };
        let container = |o: &Operand| match o {
            Operand::Types(t) => t
                .iter()
                .find(|t| denied.contains(*t) && cat.resolution.ordering_of(t).is_none())
                .cloned(),
            Operand::Unknown => None,
        };
        match container(left).or_else(|| container(right)) {
            Some(t) => Err(self.implicit_refusal("an operator on a record or array", &t)),
            None => Ok(()),
        }
    }
}

/// The expressions of a GROUP BY clause (grouping sets flattened).
fn group_items<'v>(items: &'v [Value], out: &mut Vec<&'v Value>) {
    for g in items {
        match tagged(g) {
            Some(("GroupingSet", gs)) => group_items(list(gs, "content"), out),
            Some(("RowExpr", r)) => group_items(list(r, "args"), out),
            Some(_) => out.push(g),
            None => {}
        }
    }
}

/// The output expressions of every leaf arm of a set operation.
fn leaf_targets<'v>(select: &'v Value, out: &mut Vec<&'v Value>) {
    let l = select.get("larg").filter(|a| !a.is_null());
    let r = select.get("rarg").filter(|a| !a.is_null());
    if let (Some(l), Some(r)) = (l, r) {
        leaf_targets(l, out);
        leaf_targets(r, out);
        return;
    }
    for t in list(select, "target_list") {
        if let Some(("ResTarget", rt)) = tagged(t) {
            out.extend(rt.get("val"));
        }
    }
    for row in select
        .get("values_lists")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(("List", l)) = tagged(row) {
            out.extend(list(l, "items"));
        }
    }
}

/// Whether a statement reads a relation with a column (or row type) of a denied type, casts to one, has
/// parameters or calls a tenant function.
fn carries(v: &Value, cat: &Catalog, denied: &BTreeSet<String>) -> bool {
    match v {
        Value::Array(a) => a.iter().any(|x| carries(x, cat, denied)),
        Value::Object(m) => {
            if let Some((ty, body)) = tagged(v) {
                let hit = match ty {
                    "ParamRef" => true,
                    "TypeCast" => matches!(super::calls::cast_operand(body, Some(cat)),
                        Operand::Types(t) if t.iter().any(|t| denied.contains(t))),
                    "FuncCall" => names(list(body, "funcname"))
                        .and_then(|n| n.last().cloned())
                        .is_some_and(|n| cat.user_function_named(&n)),
                    _ => false,
                };
                if hit {
                    return true;
                }
            }
            if m.contains_key("relname") && m.contains_key("inh") {
                let schema = s(v, "schemaname");
                if let Resolved::User(rel) =
                    cat.resolve((!schema.is_empty()).then_some(schema), s(v, "relname"))
                    && (denied.contains(&rel.name)
                        || rel.columns.iter().any(|c| denied.contains(&c.base)))
                {
                    return true;
                }
            }
            m.values().any(|x| carries(x, cat, denied))
        }
        _ => false,
    }
}
