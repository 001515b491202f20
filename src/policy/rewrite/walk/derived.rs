//! Column names that may name something other than a catalog column in a statement: outputs of subqueries
//! and CTEs, aliases and their column lists, function outputs, `VALUES` columns. A column reference by such a
//! name is not typed from the catalog alone (its type could be anything, a tenant type included), unless it
//! is qualified by the alias of a catalog relation in scope (`t.typtype` with `pg_type t`; see
//! `Walker::from_scope`). Where every definition of a derived name has a known type (a catalog column, a
//! literal, a cast, a boolean expression; subquery, CTE and `VALUES` outputs, set operations position by
//! position, column lists of subquery and CTE aliases), the name gets those types ([`Derived::types`]);
//! otherwise (function outputs, renamed relations, any other expression) it stays of unknown type.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::{b, list, names, s, tagged};
use crate::policy::catalog::Catalog;
use crate::policy::catalog::resolve::Operand;

/// Fixed-point rounds for derived names defined through each other (nested subqueries); beyond, unknown.
const ROUNDS: usize = 8;

/// Names PostgreSQL gives to unnamed output columns of expressions whose type can be anything.
const FIGURED: &[&str] = &[
    "?column?", "case", "array", "row", "coalesce", "greatest", "least", "nullif",
];

/// The derived column names of one statement.
#[derive(Debug, Default)]
pub(super) struct Derived {
    /// Column names that may name a derived column.
    columns: HashSet<String>,
    /// Types of derived names whose every definition is typed (absent or `None`: unknown).
    types: HashMap<String, Option<BTreeSet<String>>>,
}

/// What defines a derived name.
#[derive(Debug, Clone, Copy)]
enum Def<'v> {
    /// Nothing known (an alias, a function output, a renamed relation's column).
    Unknown,
    /// The output column at this position of a SELECT body (set operations and VALUES included).
    Position(&'v Value, usize),
}

impl Derived {
    /// The types of a derived name, when every definition of it is typed.
    pub(super) fn types(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.types.get(name).and_then(Option::as_ref)
    }

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

/// The derived names of a statement tree, typed against the catalog where they can be.
pub(super) fn names_of(stmt: &Value, cat: Option<&Catalog>) -> Derived {
    let mut defs = Vec::new();
    collect(stmt, &mut defs);
    let columns: HashSet<String> = defs.iter().map(|(n, _)| n.clone()).collect();
    let types = match cat {
        Some(cat) => solve(&defs, &columns, cat),
        None => HashMap::new(),
    };
    Derived { columns, types }
}

type Defs<'v> = Vec<(String, Def<'v>)>;

fn unknown_names<'v>(names: impl IntoIterator<Item = String>, out: &mut Defs<'v>) {
    out.extend(names.into_iter().map(|n| (n, Def::Unknown)));
}

fn collect<'v>(v: &'v Value, out: &mut Defs<'v>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(m) => {
            if let Some((ty, body)) = tagged(v) {
                match ty {
                    "RangeSubselect" => {
                        let query = body.get("subquery").and_then(tagged).map(|q| q.1);
                        let alias = body.get("alias").filter(|a| !a.is_null());
                        if let Some(q) = query {
                            outputs(q, out);
                            if let Some(a) = alias {
                                renamed(q, list(a, "colnames"), out);
                            }
                        }
                        if let Some(a) = alias {
                            unknown_names([s(a, "aliasname").to_owned()], out);
                        }
                        // The alias is handled here, not as a relation alias below.
                        if let Some(q) = body.get("subquery") {
                            collect(q, out);
                        }
                        return;
                    }
                    "CommonTableExpr" => {
                        unknown_names([s(body, "ctename").to_owned()], out);
                        if let Some(q) = body.get("ctequery").and_then(tagged) {
                            outputs(q.1, out);
                            renamed(q.1, list(body, "aliascolnames"), out);
                        }
                    }
                    "RangeFunction" => {
                        // Output columns named after the function, its column definitions or OUT params.
                        function_names(body, out);
                    }
                    "ColumnDef" => unknown_names([s(body, "colname").to_owned()], out),
                    _ => {}
                }
            } else if m.contains_key("aliasname") {
                unknown_names([s(v, "aliasname").to_owned()], out);
                unknown_names(names(list(v, "colnames")).unwrap_or_default(), out);
            }
            m.values().for_each(|x| collect(x, out));
        }
        _ => {}
    }
}

/// Column names given by an alias's column list, position by position.
fn renamed<'v>(select: &'v Value, colnames: &'v [Value], out: &mut Defs<'v>) {
    for (i, n) in names(colnames).unwrap_or_default().into_iter().enumerate() {
        out.push((n, Def::Position(select, i)));
    }
}

/// The output column names of a subquery (every arm of a set operation): named targets, and every name an
/// unnamed target's expression could lend it. The leftmost arm's names are typed by position (PostgreSQL
/// names a set operation's columns after it); `VALUES` columns are `column1`, `column2`, ...
fn outputs<'v>(select: &'v Value, out: &mut Defs<'v>) {
    outputs_of(select, select, out);
}

fn outputs_of<'v>(top: &'v Value, select: &'v Value, out: &mut Defs<'v>) {
    // A set operation's columns are named after its leftmost arm (the others' names name nothing).
    if let Some(l) = select.get("larg").filter(|a| !a.is_null()) {
        return outputs_of(top, l, out);
    }
    if let Some(Value::Array(rows)) = select.get("values_lists")
        && let Some(first) = rows.first().and_then(tagged).map(|r| list(r.1, "items"))
    {
        for i in 0..first.len() {
            out.push((format!("column{}", i + 1), Def::Position(top, i)));
        }
    }
    for (i, t) in list(select, "target_list").iter().enumerate() {
        let Some(("ResTarget", rt)) = tagged(t) else {
            continue;
        };
        let val = rt.get("val").unwrap_or(&Value::Null);
        let name = s(rt, "name");
        if !name.is_empty() {
            out.push((name.to_owned(), Def::Position(top, i)));
        } else if let Some(n) = figured_name(val) {
            out.push((n, Def::Position(top, i)));
        } else {
            let mut lent = HashSet::new();
            lent_names(val, &mut lent);
            unknown_names(lent, out);
        }
    }
}

/// The name PostgreSQL gives an unnamed output that is a column reference (or a cast of one).
fn figured_name(val: &Value) -> Option<String> {
    match tagged(val)? {
        ("ColumnRef", c) => names(list(c, "fields"))?.last().cloned(),
        ("TypeCast", c) => match tagged(c.get("arg")?)? {
            ("ColumnRef", r) => names(list(r, "fields"))?.last().cloned(),
            _ => None,
        },
        _ => None,
    }
}

/// Types every derived name by a fixed point over its definitions (names defined through each other).
fn solve(
    defs: &Defs<'_>,
    columns: &HashSet<String>,
    cat: &Catalog,
) -> HashMap<String, Option<BTreeSet<String>>> {
    let mut types: HashMap<String, Option<BTreeSet<String>>> = columns
        .iter()
        .map(|n| (n.clone(), Some(BTreeSet::new())))
        .collect();
    for _ in 0..ROUNDS {
        let mut next: HashMap<String, Option<BTreeSet<String>>> = HashMap::new();
        for (name, def) in defs {
            let t = Typer { cat, types: &types }.def(*def);
            let entry = next
                .entry(name.clone())
                .or_insert_with(|| Some(BTreeSet::new()));
            match (entry.as_mut(), t) {
                (Some(all), Some(t)) => all.extend(t),
                _ => *entry = None,
            }
        }
        if next == types {
            return types;
        }
        types = next;
    }
    HashMap::new()
}

/// Types of expressions in derived definitions (`None`: unknown).
struct Typer<'a> {
    cat: &'a Catalog,
    types: &'a HashMap<String, Option<BTreeSet<String>>>,
}

impl Typer<'_> {
    fn def(&self, d: Def<'_>) -> Option<BTreeSet<String>> {
        match d {
            Def::Unknown => None,
            Def::Position(select, i) => self.position(select, i),
        }
    }

    fn position(&self, select: &Value, i: usize) -> Option<BTreeSet<String>> {
        if let Some(l) = select.get("larg").filter(|a| !a.is_null()) {
            let mut t = self.position(l, i)?;
            t.extend(self.position(select.get("rarg")?, i)?);
            return Some(t);
        }
        if let Some(Value::Array(rows)) = select.get("values_lists")
            && !rows.is_empty()
        {
            // Untyped literals take the other rows' common type, or text when all are untyped.
            let mut all = BTreeSet::new();
            for row in rows {
                let item = list(tagged(row)?.1, "items").get(i)?;
                match self.expr(item, false) {
                    Some(t) => all.extend(t),
                    None if literal(item) => {}
                    None => return None,
                }
            }
            if all.is_empty() {
                all.insert("text".to_owned());
            }
            return Some(all);
        }
        let targets = list(select, "target_list");
        if targets.iter().any(has_star) {
            return None;
        }
        let (_, rt) = tagged(targets.get(i)?)?;
        self.expr(rt.get("val")?, true)
    }

    /// `output`: an untyped literal is a subquery output (then text).
    fn expr(&self, v: &Value, output: bool) -> Option<BTreeSet<String>> {
        if literal(v) {
            return output.then(|| ["text".to_owned()].into_iter().collect());
        }
        let (ty, body) = tagged(v)?;
        let known = |o: Operand| match o {
            Operand::Types(t) => Some(t),
            Operand::Unknown => None,
        };
        match ty {
            "AConst" => known(super::calls::const_operand(body)),
            "TypeCast" => known(super::calls::cast_operand(body, Some(self.cat))),
            "BoolExpr" | "NullTest" | "BooleanTest" => Some(["bool".to_owned()].into()),
            "ColumnRef" => {
                let fields = names(list(body, "fields"))?;
                let name = fields.last()?;
                let row = (fields.len() == 1)
                    .then_some(name.as_str())
                    .filter(|n| self.cat.relations.keys().any(|(_, r)| r == n));
                let catalog = self.cat.resolution.column(name, row);
                match self.types.get(name.as_str()) {
                    None => known(catalog),
                    Some(None) => None,
                    Some(Some(derived)) => {
                        let mut t = derived.clone();
                        if self.cat.resolution.column_types.contains_key(name.as_str())
                            || row.is_some()
                        {
                            t.extend(known(catalog)?);
                        }
                        Some(t)
                    }
                }
            }
            _ => None,
        }
    }
}

/// An untyped string literal or NULL.
fn literal(v: &Value) -> bool {
    match tagged(v) {
        Some(("AConst", c)) => match c.get("val").and_then(|x| x.as_object()) {
            None => b(c, "isnull"),
            Some(m) => m.contains_key("Sval"),
        },
        _ => false,
    }
}

/// A `*` target (its columns are not listed, so positions after it are not known).
fn has_star(t: &Value) -> bool {
    let Some(("ResTarget", rt)) = tagged(t) else {
        return false;
    };
    match rt.get("val").and_then(tagged) {
        Some(("ColumnRef", c)) => list(c, "fields")
            .iter()
            .any(|f| tagged(f).is_some_and(|(t, _)| t == "AStar")),
        _ => false,
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

fn function_names(body: &Value, out: &mut Defs<'_>) {
    let mut calls = Vec::new();
    find_calls(body, &mut calls);
    unknown_names(calls, out);
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
