//! View lineage: which columns of which relations each output column of a view (or materialized view) reads,
//! derived from its definition (`pg_get_viewdef`) parsed with the PostgreSQL parser.
//!
//! Matching references by *name* gets views wrong: a CTE or subquery column can carry another table's name
//! (`WITH c AS (SELECT full_name AS name FROM payers) SELECT c.name ...`), a set operation's output takes
//! its name from the first branch only, and a whole-row reference (`to_jsonb(p)`, `p::text`) names no column
//! at all. So references are resolved here the way PostgreSQL resolves them: through the FROM items of their
//! own query level (relations, CTEs, subqueries, joins), by position for set operations, subquery and CTE
//! column aliases; a whole-row reference reads every column of its item.
//!
//! Anything this module cannot resolve exactly (a `SubLink`, a reference to an outer query level, a function
//! in FROM, a recursive CTE, `*` in a target list, an unknown relation) makes that output column read every
//! column of every relation the view depends on: the caller then masks it at least as strictly as the
//! strictest class among the view's inputs.

use std::collections::HashMap;

use serde_json::Value;

use super::QualName;

/// A column of a relation.
type Src = (QualName, String);
/// What an expression reads: `None` when it cannot be derived exactly.
type Reads = Option<Vec<Src>>;

/// An output column of a query level.
#[derive(Clone)]
struct OutCol {
    name: Option<String>,
    reads: Reads,
}

/// A FROM item: its name and columns (`None`: columns unknown, e.g. a function).
struct Item {
    alias: String,
    cols: Option<Vec<OutCol>>,
}

/// CTEs visible at a query level, innermost last.
#[derive(Clone, Default)]
struct Scope {
    ctes: Vec<(String, Vec<OutCol>)>,
}

/// Maps each output column of a view to the relation columns it reads. `rels` are the relations the view
/// depends on (pg_depend), each with all its columns in attnum order.
pub fn view_reads(
    def: &str,
    columns: &[String],
    rels: &[(QualName, Vec<String>)],
) -> HashMap<String, Vec<Src>> {
    let inputs: Vec<Src> = rels
        .iter()
        .flat_map(|(r, cols)| cols.iter().map(move |c| (r.clone(), c.clone())))
        .collect();
    let outs = pg_query::parse(def, 0)
        .ok()
        .and_then(|p| serde_json::to_value(&p.protobuf).ok())
        .and_then(|json| {
            let stmt = json.pointer("/stmts/0/stmt/node/SelectStmt")?.clone();
            Lineage { rels }.select(&stmt, &Scope::default())
        })
        .filter(|outs| outs.len() == columns.len());
    columns
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let reads = outs
                .as_ref()
                .and_then(|o| o[i].reads.clone())
                .unwrap_or_else(|| inputs.clone());
            (name.clone(), reads)
        })
        .collect()
}

struct Lineage<'a> {
    rels: &'a [(QualName, Vec<String>)],
}

/// `(tag, body)` of a `Node` (`{"node": {"Tag": body}}`).
fn node(v: &Value) -> Option<(&str, &Value)> {
    let (t, b) = v.get("node")?.as_object()?.iter().next()?;
    Some((t.as_str(), b))
}

fn string_of(v: &Value) -> Option<&str> {
    match node(v)? {
        ("String", b) => b.get("sval")?.as_str(),
        _ => None,
    }
}

fn list<'v>(v: &'v Value, field: &str) -> &'v [Value] {
    v.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn text<'v>(v: &'v Value, field: &str) -> &'v str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

fn union(a: Reads, b: Reads) -> Reads {
    let (mut a, b) = (a?, b?);
    for s in b {
        if !a.contains(&s) {
            a.push(s);
        }
    }
    Some(a)
}

/// Renames `cols` positionally by an alias's column list (`AS t(a, b)`).
fn rename(mut cols: Vec<OutCol>, alias: Option<&Value>) -> Vec<OutCol> {
    if let Some(a) = alias {
        for (c, n) in cols.iter_mut().zip(list(a, "colnames")) {
            c.name = string_of(n).map(str::to_owned);
        }
    }
    cols
}

fn alias_of(v: &Value) -> Option<&Value> {
    v.get("alias").filter(|a| a.is_object())
}

impl Lineage<'_> {
    /// The output columns of a SelectStmt body; `None` when it cannot be analysed at all.
    fn select(&self, sel: &Value, outer: &Scope) -> Option<Vec<OutCol>> {
        let mut scope = outer.clone();
        if let Some(with) = sel.get("with_clause").filter(|w| w.is_object()) {
            if with.get("recursive").and_then(Value::as_bool) == Some(true) {
                return None;
            }
            for cte in list(with, "ctes") {
                let ("CommonTableExpr", c) = node(cte)? else {
                    return None;
                };
                let ("SelectStmt", q) = node(c.get("ctequery")?)? else {
                    return None;
                };
                let mut cols = self.select(q, &scope)?;
                for (col, n) in cols.iter_mut().zip(list(c, "aliascolnames")) {
                    col.name = string_of(n).map(str::to_owned);
                }
                scope.ctes.push((text(c, "ctename").to_owned(), cols));
            }
        }
        if sel.get("op").and_then(Value::as_i64).unwrap_or(1) > 1 {
            let l = self.select(sel.get("larg")?, &scope)?;
            let r = self.select(sel.get("rarg")?, &scope)?;
            if l.len() != r.len() {
                return None;
            }
            return Some(
                l.into_iter()
                    .zip(r)
                    .map(|(a, b)| OutCol {
                        name: a.name,
                        reads: union(a.reads, b.reads),
                    })
                    .collect(),
            );
        }
        let values = list(sel, "values_lists");
        if !values.is_empty() {
            return self.values(values, &scope);
        }
        let mut items = Vec::new();
        for f in list(sel, "from_clause") {
            self.add_from_item(f, &scope, &mut items);
        }
        let mut out = Vec::new();
        for t in list(sel, "target_list") {
            let ("ResTarget", rt) = node(t)? else {
                return None;
            };
            let val = rt.get("val")?;
            let name = match text(rt, "name") {
                "" => match node(val) {
                    Some(("ColumnRef", cr)) => {
                        let fields = list(cr, "fields");
                        if fields
                            .last()
                            .and_then(node)
                            .is_some_and(|(t, _)| t == "AStar")
                        {
                            return None; // `*` expands to several columns
                        }
                        fields.last().and_then(string_of).map(str::to_owned)
                    }
                    _ => None,
                },
                n => Some(n.to_owned()),
            };
            out.push(OutCol {
                name,
                reads: self.expr(val, &items),
            });
        }
        Some(out)
    }

    fn values(&self, rows: &[Value], _scope: &Scope) -> Option<Vec<OutCol>> {
        let mut out: Vec<OutCol> = Vec::new();
        for row in rows {
            let ("List", l) = node(row)? else {
                return None;
            };
            let items = list(l, "items");
            if out.is_empty() {
                out = (1..=items.len())
                    .map(|i| OutCol {
                        name: Some(format!("column{i}")),
                        reads: Some(Vec::new()),
                    })
                    .collect();
            }
            if items.len() != out.len() {
                return None;
            }
            for (c, e) in out.iter_mut().zip(items) {
                c.reads = union(c.reads.take(), self.expr(e, &[]));
            }
        }
        Some(out)
    }

    /// Adds the items a FROM entry brings into scope.
    fn add_from_item(&self, f: &Value, scope: &Scope, items: &mut Vec<Item>) {
        let opaque = |alias: Option<&Value>| Item {
            alias: alias
                .map(|a| text(a, "aliasname").to_owned())
                .unwrap_or_default(),
            cols: None,
        };
        match node(f) {
            Some(("RangeVar", rv)) => {
                let (schema, name) = (text(rv, "schemaname"), text(rv, "relname"));
                let alias = alias_of(rv);
                let cte = (schema.is_empty())
                    .then(|| scope.ctes.iter().rev().find(|(n, _)| n == name))
                    .flatten();
                let cols = match cte {
                    Some((_, cols)) => Some(cols.clone()),
                    None => self.relation(schema, name),
                };
                items.push(Item {
                    alias: alias
                        .map(|a| text(a, "aliasname"))
                        .unwrap_or(name)
                        .to_owned(),
                    cols: cols.map(|c| rename(c, alias)),
                });
            }
            Some(("RangeSubselect", rs)) => {
                let cols = rs
                    .get("subquery")
                    .and_then(node)
                    .filter(|(t, _)| *t == "SelectStmt")
                    .and_then(|(_, q)| self.select(q, scope));
                let alias = alias_of(rs);
                items.push(Item {
                    alias: alias.map(|a| text(a, "aliasname")).unwrap_or("").to_owned(),
                    cols: cols.map(|c| rename(c, alias)),
                });
            }
            Some(("JoinExpr", j)) => {
                let start = items.len();
                for side in ["larg", "rarg"] {
                    match j.get(side) {
                        Some(s) => self.add_from_item(s, scope, items),
                        None => items.push(opaque(None)),
                    }
                }
                if let Some(a) = alias_of(j) {
                    let cols: Option<Vec<OutCol>> = items[start..]
                        .iter()
                        .map(|i| i.cols.clone())
                        .collect::<Option<Vec<_>>>()
                        .map(|v| v.into_iter().flatten().collect());
                    items.push(Item {
                        alias: text(a, "aliasname").to_owned(),
                        cols: cols.map(|c| rename(c, Some(a))),
                    });
                }
                if let Some(a) = j.get("join_using_alias").filter(|a| a.is_object()) {
                    items.push(opaque(Some(a)));
                }
            }
            Some((_, body)) => items.push(opaque(alias_of(body))),
            None => items.push(opaque(None)),
        }
    }

    /// The columns of a relation the view depends on, by the name `pg_get_viewdef` printed (qualified
    /// when the relation is not visible by its bare name).
    fn relation(&self, schema: &str, name: &str) -> Option<Vec<OutCol>> {
        let mut found = self
            .rels
            .iter()
            .filter(|((s, n), _)| n == name && (schema.is_empty() || s == schema));
        let (rel, cols) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        Some(
            cols.iter()
                .map(|c| OutCol {
                    name: Some(c.clone()),
                    reads: Some(vec![(rel.clone(), c.clone())]),
                })
                .collect(),
        )
    }

    /// What an expression reads, given the FROM items of its query level.
    fn expr(&self, v: &Value, items: &[Item]) -> Reads {
        match v {
            Value::Array(a) => a
                .iter()
                .try_fold(Vec::new(), |acc, x| union(Some(acc), self.expr(x, items))),
            Value::Object(m) => {
                match node(v) {
                    Some(("SubLink", _)) => return None,
                    Some(("ColumnRef", cr)) => return column_ref(list(cr, "fields"), items),
                    _ => {}
                }
                m.values()
                    .try_fold(Vec::new(), |acc, x| union(Some(acc), self.expr(x, items)))
            }
            _ => Some(Vec::new()),
        }
    }
}

/// Every column of an item (a whole-row reference).
fn whole_row(item: &Item) -> Reads {
    item.cols
        .as_ref()?
        .iter()
        .try_fold(Vec::new(), |acc, c| union(Some(acc), c.reads.clone()))
}

/// Resolves a column reference as PostgreSQL does at one query level: a bare name is a column of some item
/// first, else a whole-row reference to an item of that name; `a.b` is column `b` of item `a`; `a.*` and
/// `*` are whole rows. Anything else (outer references, composite fields, ambiguity with an item whose
/// columns are unknown) is not derivable.
fn column_ref(fields: &[Value], items: &[Item]) -> Reads {
    let star = |f: &Value| node(f).is_some_and(|(t, _)| t == "AStar");
    match fields {
        [f] if star(f) => items
            .iter()
            .try_fold(Vec::new(), |acc, i| union(Some(acc), whole_row(i))),
        [f] => {
            let name = string_of(f)?;
            let mut reads: Reads = Some(Vec::new());
            let mut found = false;
            for item in items {
                for c in item.cols.as_ref()? {
                    if c.name.as_deref() == Some(name) {
                        found = true;
                        reads = union(reads, c.reads.clone());
                    }
                }
            }
            if found {
                return reads;
            }
            let mut named = items.iter().filter(|i| i.alias == name);
            match (named.next(), named.next()) {
                (Some(item), None) => whole_row(item),
                _ => None,
            }
        }
        [a, b] => {
            let alias = string_of(a)?;
            let mut named = items.iter().filter(|i| i.alias == alias);
            let item = match (named.next(), named.next()) {
                (Some(item), None) => item,
                _ => return None,
            };
            if star(b) {
                return whole_row(item);
            }
            let name = string_of(b)?;
            let mut cols = item
                .cols
                .as_ref()?
                .iter()
                .filter(|c| c.name.as_deref() == Some(name));
            match (cols.next(), cols.next()) {
                (Some(c), None) => c.reads.clone(),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels() -> Vec<(QualName, Vec<String>)> {
        let r = |n: &str, cols: &[&str]| {
            (
                ("public".to_owned(), n.to_owned()),
                cols.iter().map(|c| (*c).to_owned()).collect(),
            )
        };
        vec![
            r("payers", &["id", "full_name", "email", "phone", "address"]),
            r("merchants", &["id", "name"]),
        ]
    }

    fn reads(def: &str, cols: &[&str]) -> HashMap<String, Vec<String>> {
        let cols: Vec<String> = cols.iter().map(|c| (*c).to_owned()).collect();
        view_reads(def, &cols, &rels())
            .into_iter()
            .map(|(k, v)| {
                let mut v: Vec<String> = v
                    .into_iter()
                    .map(|((_, r), c)| format!("{r}.{c}"))
                    .collect();
                v.sort();
                (k, v)
            })
            .collect()
    }

    fn all() -> Vec<String> {
        let mut v: Vec<String> = rels()
            .into_iter()
            .flat_map(|((_, r), cols)| cols.into_iter().map(move |c| format!("{r}.{c}")))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn plain_columns_are_exact() {
        let r = reads(
            "SELECT p.id, p.email AS mail FROM payers p",
            &["id", "mail"],
        );
        assert_eq!(r["id"], ["payers.id"]);
        assert_eq!(r["mail"], ["payers.email"]);
        let r = reads("SELECT 1 AS one, id FROM merchants", &["one", "id"]);
        assert!(r["one"].is_empty());
        assert_eq!(r["id"], ["merchants.id"]);
    }

    #[test]
    fn whole_row_references_read_every_column() {
        for def in [
            "SELECT p.id, to_jsonb(p.*) AS doc FROM payers p",
            "SELECT p.id, to_jsonb(p) AS doc FROM payers p",
            "SELECT p.id, (p.*)::text AS doc FROM payers p",
            "SELECT p.id, row_to_json(p.*) AS doc FROM payers p",
        ] {
            let r = reads(def, &["id", "doc"]);
            assert_eq!(r["id"], ["payers.id"], "{def}");
            assert_eq!(r["doc"].len(), 5, "{def}: {:?}", r["doc"]);
        }
    }

    #[test]
    fn names_are_resolved_through_ctes_subqueries_and_set_operations() {
        let r = reads(
            "WITH c AS (SELECT payers.id, payers.full_name AS name FROM payers) \
             SELECT c.name, m.name AS mname FROM c JOIN merchants m ON m.id = c.id",
            &["name", "mname"],
        );
        assert_eq!(r["name"], ["payers.full_name"]);
        assert_eq!(r["mname"], ["merchants.name"]);
        let r = reads(
            "SELECT u.name FROM (SELECT merchants.name FROM merchants UNION ALL \
             SELECT payers.full_name FROM payers) u",
            &["name"],
        );
        assert_eq!(r["name"], ["merchants.name", "payers.full_name"]);
        let r = reads(
            "SELECT t.a FROM (SELECT payers.email, payers.id FROM payers) t(a, b)",
            &["a"],
        );
        assert_eq!(r["a"], ["payers.email"]);
        let r = reads(
            "SELECT concat(p.email, ' / ', p.phone, ' / ', p.address) AS contact FROM payers p",
            &["contact"],
        );
        assert_eq!(
            r["contact"],
            ["payers.address", "payers.email", "payers.phone"]
        );
    }

    #[test]
    fn what_cannot_be_derived_reads_every_input() {
        for (def, col) in [
            (
                "SELECT (SELECT m.name FROM merchants m LIMIT 1) AS x FROM payers p",
                "x",
            ),
            ("SELECT f.x FROM generate_series(1, 2) f(x)", "x"),
            (
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r",
                "n",
            ),
            ("not sql at all", "x"),
        ] {
            assert_eq!(reads(def, &[col])[col], all(), "{def}");
        }
        // A column count that does not match the view's is not trusted either.
        assert_eq!(reads("SELECT p.id FROM payers p", &["a", "b"])["a"], all());
    }
}
