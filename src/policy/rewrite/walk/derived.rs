//! Column names that may name something other than a catalog column in a statement: outputs of subqueries
//! and CTEs, aliases and their column lists, function outputs, `VALUES` columns. A column reference by such a
//! name is not typed from the catalog (its type could be anything, a tenant type included), so an operator
//! applied to it is judged as on an operand of unknown type, unless it is qualified by the alias of a catalog
//! relation in scope (`t.typtype` with `pg_type t`; see `Walker::from_scope`).

use std::collections::HashSet;

use serde_json::Value;

use super::{list, names, s, tagged};

/// Names PostgreSQL gives to unnamed output columns of expressions whose type can be anything.
const FIGURED: &[&str] = &[
    "?column?", "case", "array", "row", "coalesce", "greatest", "least", "nullif",
];

/// The derived column names of one statement.
#[derive(Debug, Default)]
pub(super) struct Derived {
    /// Column names that may name a derived column.
    columns: HashSet<String>,
}

impl Derived {
    /// Whether a column reference by `name` may refer to something other than a catalog column (when its
    /// qualifier does not name a catalog relation in scope).
    pub(super) fn is_derived(&self, name: &str) -> bool {
        self.columns.contains(name)
            || FIGURED.contains(&name)
            || name
                .strip_prefix("column")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// The derived names of a statement tree.
pub(super) fn names_of(stmt: &Value) -> Derived {
    let mut d = Derived::default();
    collect(stmt, &mut d.columns);
    d
}

fn collect(v: &Value, out: &mut HashSet<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(m) => {
            if let Some((ty, body)) = tagged(v) {
                match ty {
                    "RangeSubselect" => {
                        if let Some(q) = body.get("subquery").and_then(tagged) {
                            outputs(q.1, out);
                        }
                    }
                    "CommonTableExpr" => {
                        out.insert(s(body, "ctename").to_owned());
                        out.extend(names(list(body, "aliascolnames")).unwrap_or_default());
                        if let Some(q) = body.get("ctequery").and_then(tagged) {
                            outputs(q.1, out);
                        }
                    }
                    "RangeFunction" => {
                        // Output columns named after the function, its column definitions or OUT params.
                        function_names(body, out);
                    }
                    "ColumnDef" => {
                        out.insert(s(body, "colname").to_owned());
                    }
                    _ => {}
                }
            } else if m.contains_key("aliasname") {
                out.insert(s(v, "aliasname").to_owned());
                out.extend(names(list(v, "colnames")).unwrap_or_default());
            }
            m.values().for_each(|x| collect(x, out));
        }
        _ => {}
    }
}

/// The output column names of a subquery (every arm of a set operation): named targets, and every name an
/// unnamed target's expression could lend it.
fn outputs(select: &Value, out: &mut HashSet<String>) {
    for side in ["larg", "rarg"] {
        if let Some(arm) = select.get(side).filter(|a| !a.is_null()) {
            outputs(arm, out);
        }
    }
    for t in list(select, "target_list") {
        if let Some(("ResTarget", rt)) = tagged(t) {
            let name = s(rt, "name");
            if name.is_empty() {
                lent_names(rt.get("val").unwrap_or(&Value::Null), out);
            } else {
                out.insert(name.to_owned());
            }
        }
    }
}

/// Column, function and type names inside an expression (any of them can become an output column's name).
fn lent_names(v: &Value, out: &mut HashSet<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| lent_names(x, out)),
        Value::Object(m) => {
            if let Some((ty, body)) = tagged(v) {
                let key = match ty {
                    "ColumnRef" => "fields",
                    "FuncCall" => "funcname",
                    "TypeName" => "names",
                    _ => "",
                };
                if let Some(last) = names(list(body, key)).and_then(|n| n.last().cloned()) {
                    out.insert(last);
                }
            }
            if let Some(tn) = m.get("type_name")
                && let Some(last) = names(list(tn, "names")).and_then(|n| n.last().cloned())
            {
                out.insert(last);
            }
            m.values().for_each(|x| lent_names(x, out));
        }
        _ => {}
    }
}

fn function_names(body: &Value, out: &mut HashSet<String>) {
    let mut calls = Vec::new();
    find_calls(body, &mut calls);
    out.extend(calls);
}

fn find_calls(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| find_calls(x, out)),
        Value::Object(m) => {
            if let Some(("FuncCall", body)) = tagged(v)
                && let Some(last) = names(list(body, "funcname")).and_then(|n| n.last().cloned())
            {
                out.push(last);
            }
            m.values().for_each(|x| find_calls(x, out));
        }
        _ => {}
    }
}
