//! The exhaustive walk over a statement's parse tree (serde JSON of libpg_query's protobuf): statement kinds,
//! relation references (with CTE scoping), functions, operators and settings; collects the text edits.
// `from_*` here are about SQL's FROM clause, not conversions.
#![allow(clippy::wrong_self_convention)]

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::spans::{Edit, Tokens};
use super::{Context, Refusal};
use crate::policy::catalog::{Catalog, Relation};
use crate::policy::firewall::setting_refusal;
use crate::policy::kinds::StatementKind;

mod calls;
mod derived;
mod dml;
mod implicit;
mod overloads;
mod relation;

type R<T = ()> = Result<T, Refusal>;

/// Walk state for one SQL string.
pub struct Walker<'a> {
    sql: &'a str,
    ctx: &'a Context<'a>,
    tokens: Tokens<'a>,
    /// CTE names visible at the current point, innermost last.
    scopes: Vec<HashSet<String>>,
    edits: Vec<Edit>,
    masked: Vec<String>,
    /// A mask embedding key material was emitted in the current top-level statement.
    uses_key: bool,
    /// Depth of EXPLAIN nesting.
    in_explain: bool,
    /// Names in the current top-level statement that may name columns other than catalog columns
    /// (subquery and CTE outputs, aliases, function outputs): references by these names are not typed.
    derived_names: derived::Derived,
    /// FROM items in scope, innermost last: alias (or relation name) -> whether it is a catalog relation
    /// with its own column names (else a subquery, CTE, function, join or renamed relation).
    from_scopes: Vec<std::collections::HashMap<String, bool>>,
    /// The decision read a constant's value or covers a statement kind whose meaning constants can change
    /// (then it must not be reused for other literal values; see `template`).
    literal_sensitive: bool,
    /// Types whose implicit comparison runs tenant code this role may not run (see `implicit`).
    denied_orderings: std::collections::BTreeSet<String>,
    /// The current top-level statement could carry a value of one of those types.
    carries_denied: bool,
}

fn obj(v: &Value) -> Option<&Map<String, Value>> {
    v.as_object()
}

/// The single `{"node": {"Type": body}}` of a Node, as (type, body).
fn tagged(v: &Value) -> Option<(&str, &Value)> {
    let m = v.as_object()?;
    if m.len() != 1 {
        return None;
    }
    let inner = m.get("node")?.as_object()?;
    if inner.len() != 1 {
        return None;
    }
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn s<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

fn b(v: &Value, key: &str) -> bool {
    v.get(key).and_then(|x| x.as_bool()).unwrap_or(false)
}

fn list<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v.get(key)
        .and_then(|x| x.as_array())
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// `String` node values of a name list (`funcname`, `name`, ...).
fn names(items: &[Value]) -> Option<Vec<String>> {
    items
        .iter()
        .map(|n| {
            tagged(n)
                .filter(|(t, _)| *t == "String")
                .map(|(_, b)| s(b, "sval").to_owned())
        })
        .collect()
}

/// Whether an untagged object is a RangeVar.
fn is_range_var(m: &Map<String, Value>) -> bool {
    m.contains_key("relname") && m.contains_key("relpersistence") && m.contains_key("inh")
}

/// Whether an untagged object is a SelectStmt (set-operation arms are untagged).
fn is_select(m: &Map<String, Value>) -> bool {
    m.contains_key("target_list") && m.contains_key("larg") && m.contains_key("values_lists")
}

impl<'a> Walker<'a> {
    /// A walker over `sql`.
    pub fn new(sql: &'a str, ctx: &'a Context<'a>) -> R<Walker<'a>> {
        let tokens = Tokens::scan(sql)
            .ok_or_else(|| Refusal::new("parse", "statement could not be scanned"))?;
        let mut w = Walker {
            sql,
            ctx,
            tokens,
            scopes: Vec::new(),
            edits: Vec::new(),
            masked: Vec::new(),
            uses_key: false,
            in_explain: false,
            derived_names: derived::Derived::default(),
            from_scopes: Vec::new(),
            literal_sensitive: false,
            denied_orderings: std::collections::BTreeSet::new(),
            carries_denied: false,
        };
        w.denied_orderings = w.compute_denied_orderings();
        Ok(w)
    }

    /// The edits, the masked-column descriptions, and whether the decision depends on constants' values.
    pub fn finish(self) -> (Vec<Edit>, Vec<String>, bool) {
        let _ = self.sql;
        (self.edits, self.masked, self.literal_sensitive)
    }

    /// The tenant database's encoding, from the catalog snapshot (`None` without one).
    fn server_encoding(&self) -> Option<&'a str> {
        self.ctx.catalog.and_then(|c| c.server_encoding.as_deref())
    }

    fn catalog(&self) -> R<&'a Catalog> {
        self.ctx.catalog.ok_or_else(|| {
            Refusal::new(
                "catalog",
                "the tenant's catalog is not loaded yet (or is being reloaded after a schema change); try again in a moment",
            )
        })
    }

    fn require(&self, kind: StatementKind) -> R {
        if self.ctx.policy.role.statements.contains(&kind) {
            Ok(())
        } else {
            Err(Refusal::new(
                "statement-kind",
                format!(
                    "role {} may not run {} statements",
                    self.ctx.role,
                    kind.name()
                ),
            ))
        }
    }

    /// Whether the role sees everything raw (then statements that cannot be masked are acceptable).
    fn sees_all(&self) -> bool {
        self.ctx.policy.role.sees_everything()
    }

    /// A top-level `RawStmt`.
    pub fn top_statement(&mut self, raw: &Value) -> R {
        self.uses_key = false;
        self.in_explain = false;
        let stmt = raw
            .get("stmt")
            .ok_or_else(|| Refusal::new("parse", "empty statement"))?;
        self.derived_names = if self.typing_needed() {
            derived::names_of(stmt, self.ctx.catalog)
        } else {
            derived::Derived::default()
        };
        self.carries_denied = self.may_carry_denied(stmt);
        self.statement(stmt)?;
        if self.uses_key && self.in_explain {
            return Err(Refusal::new(
                "explain-pseudonym",
                "EXPLAIN of a statement reading pseudonymized columns is refused (the plan would show key material)",
            ));
        }
        Ok(())
    }

    /// A statement node: kind check, then the walk its kind needs.
    fn statement(&mut self, node: &Value) -> R {
        let (ty, body) =
            tagged(node).ok_or_else(|| Refusal::new("parse", "unexpected statement shape"))?;
        use StatementKind as K;
        // Only plain queries and DML are planned for other literal values: elsewhere constants are setting
        // values, file names, option values, ...
        if !matches!(
            ty,
            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
        ) {
            self.literal_sensitive = true;
        }
        match ty {
            "SelectStmt" => {
                if body.get("into_clause").is_some_and(|v| !v.is_null()) {
                    return self.unmaskable(K::Ddl, "SELECT INTO");
                }
                self.require(K::Select)?;
                self.select(body)
            }
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.dml(ty, body),
            "CopyStmt" => self.copy(body),
            "ExplainStmt" => {
                self.require(K::Explain)?;
                self.in_explain = true;
                self.walk_fields(body, &["query"])?;
                let query = body.get("query").unwrap_or(&Value::Null);
                self.statement(query)?;
                // The plan of a prepared statement (SQL PREPARE or protocol Parse, by name) is the plan of its
                // rewrite, which pgveil did not decide here: it can show masking expressions and key material.
                if !self.sees_all() && tagged(query).is_some_and(|(t, _)| t == "ExecuteStmt") {
                    return Err(Refusal::new(
                        "explain-execute",
                        "EXPLAIN of a prepared statement is refused (its plan shows the rewritten statement)",
                    ));
                }
                Ok(())
            }
            "DeclareCursorStmt" => {
                self.require(K::Cursor)?;
                own_name(body, "portalname")?;
                self.statement(body.get("query").unwrap_or(&Value::Null))
            }
            "PrepareStmt" => {
                self.require(K::Prepare)?;
                own_name(body, "name")?;
                self.walk_fields(body, &["query"])?;
                self.statement(body.get("query").unwrap_or(&Value::Null))
            }
            "DeallocateStmt" if s(body, "name").is_empty() => Ok(()),
            "ExecuteStmt" | "DeallocateStmt" => {
                self.require(K::Prepare)?;
                own_name(body, "name")?;
                self.walk(body)
            }
            // Session-reset idioms only remove state: allowed whatever the role's kinds (pool resets of
            // asyncpg, psycopg, pgjdbc, node-postgres, SQLAlchemy, Npgsql).
            "ClosePortalStmt" if s(body, "portalname").is_empty() => Ok(()),
            "UnlistenStmt" if s(body, "conditionname").is_empty() => Ok(()),
            "DiscardStmt" => Ok(()),
            "FetchStmt" | "ClosePortalStmt" => {
                self.require(K::Cursor)?;
                own_name(body, "portalname")
            }
            "TransactionStmt" | "ConstraintsSetStmt" => self.require(K::Transaction),
            "VariableShowStmt" => self.require(K::Show),
            "ListenStmt" | "UnlistenStmt" | "NotifyStmt" => self.require(K::Listen),
            "VariableSetStmt" => self.set(body),
            "LockStmt" => self.unmaskable(K::Lock, "LOCK"),
            "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "CheckPointStmt"
            | "RefreshMatViewStmt" => self.unmaskable(K::Maintenance, "maintenance statements"),
            "DoStmt" => self.unmaskable(K::Do, "DO"),
            "CallStmt" => self.unmaskable(K::Call, "CALL"),
            _ => self.unmaskable(K::Ddl, "DDL"),
        }
    }

    /// Statements whose effects cannot be masked: allowed only for roles that see everything raw.
    fn unmaskable(&mut self, kind: StatementKind, what: &str) -> R {
        self.require(kind)?;
        if self.sees_all() {
            Ok(())
        } else {
            Err(Refusal::new(
                "unmaskable-statement",
                format!(
                    "{what} is refused for roles with masked columns (role {})",
                    self.ctx.role
                ),
            ))
        }
    }

    fn set(&mut self, body: &Value) -> R {
        let name = s(body, "name").to_ascii_lowercase();
        if name == "role" || name == "session_authorization" {
            return self.unmaskable(
                StatementKind::SetRole,
                "SET ROLE / SET SESSION AUTHORIZATION",
            );
        }
        // kind 1 = VAR_SET_VALUE; others (DEFAULT, CURRENT, MULTI, RESET, RESET ALL) restore server defaults.
        let kind = body.get("kind").and_then(|k| k.as_i64()).unwrap_or(0);
        if kind == 6 {
            // RESET ALL: a session-reset idiom, allowed for every role (back to the connection-start values).
            return Ok(());
        }
        self.require(StatementKind::Set)?;
        // One constant value, else `None` (refused where the value matters).
        let args = list(body, "args");
        let value = (args.len() == 1).then(|| const_string(&args[0])).flatten();
        // DEFAULT, RESET and RESET ALL go back to the connection-start values, which pgveil chose and checked.
        let is_reset = matches!(kind, 2 | 5 | 6);
        if !name.is_empty()
            && !is_reset
            && name != "transaction"
            && name != "session characteristics"
            && let Some(why) = setting_refusal(&name, value.as_deref(), self.server_encoding())
        {
            return Err(Refusal::new("protected-setting", why));
        }
        self.walk(body)
    }

    fn select(&mut self, body: &Value) -> R {
        let pushed = self.with_clause(body.get("with_clause"))?;
        let scope = self.from_scope(body);
        self.from_scopes.push(scope);
        let r = self
            .select_comparisons(body)
            .and_then(|()| self.walk_fields(body, &["with_clause"]));
        self.from_scopes.pop();
        if pushed {
            self.scopes.pop();
        }
        r
    }

    /// Walks a WITH clause's CTE bodies with PostgreSQL's scoping and pushes its names for the statement
    /// body. Returns whether a scope was pushed.
    fn with_clause(&mut self, with: Option<&Value>) -> R<bool> {
        let Some(with) = with.filter(|w| !w.is_null()) else {
            return Ok(false);
        };
        let recursive = b(with, "recursive");
        let ctes: Vec<(String, &Value)> = list(with, "ctes")
            .iter()
            .filter_map(|c| {
                tagged(c)
                    .filter(|(t, _)| *t == "CommonTableExpr")
                    .map(|(_, b)| (s(b, "ctename").to_owned(), b))
            })
            .collect();
        if ctes.len() != list(with, "ctes").len() {
            return Err(Refusal::new("unsupported", "unexpected WITH clause shape"));
        }
        let mut scope = HashSet::new();
        if recursive {
            scope.extend(ctes.iter().map(|(n, _)| n.clone()));
        }
        self.scopes.push(scope);
        for (name, cte) in &ctes {
            let query = cte.get("ctequery").unwrap_or(&Value::Null);
            self.statement(query)?;
            self.walk_fields(cte, &["ctequery"])?;
            if let Some(top) = self.scopes.last_mut() {
                top.insert(name.clone());
            }
        }
        Ok(true)
    }

    /// Whether operand types matter: the tenant has operators or functions of its own, or functions of an
    /// untrusted extension, which resolution by argument types must rule out (see `calls::column_operand`).
    fn typing_needed(&self) -> bool {
        !self.denied_orderings.is_empty()
            || self.ctx.catalog.is_some_and(|c| {
                !c.operators.is_empty()
                    || !c.functions.is_empty()
                    || c.resolution
                        .extension_functions
                        .iter()
                        .any(|(_, _, e)| !self.ctx.policy.trusted_extensions.contains(e))
            })
    }

    /// The FROM items of a SELECT or DML statement (only needed, so only computed, when operand types
    /// matter: see `typing_needed`).
    fn from_scope(&self, body: &Value) -> std::collections::HashMap<String, bool> {
        let mut scope = std::collections::HashMap::new();
        if self.typing_needed() {
            for key in ["from_clause", "using_clause", "relation"] {
                match body.get(key) {
                    Some(Value::Array(items)) => {
                        items.iter().for_each(|i| self.from_item(i, &mut scope))
                    }
                    Some(v) if v.is_object() => self.from_item(v, &mut scope),
                    _ => {}
                }
            }
        }
        scope
    }

    fn from_item(&self, v: &Value, scope: &mut std::collections::HashMap<String, bool>) {
        let (ty, body) = match tagged(v) {
            Some(t) => t,
            None if obj(v).is_some_and(is_range_var) => ("RangeVar", v),
            None => return,
        };
        let alias = body.get("alias").filter(|a| !a.is_null());
        let alias_name = alias.map(|a| s(a, "aliasname").to_owned());
        match ty {
            "RangeVar" => {
                let rel = s(body, "relname");
                let cte = s(body, "schemaname").is_empty() && self.cte_visible(rel);
                let renamed = alias.is_some_and(|a| !list(a, "colnames").is_empty());
                scope.insert(
                    alias_name.unwrap_or_else(|| rel.to_owned()),
                    !cte && !renamed,
                );
            }
            "JoinExpr" => {
                for side in ["larg", "rarg"] {
                    if let Some(x) = body.get(side) {
                        self.from_item(x, scope);
                    }
                }
                scope.extend(alias_name.map(|a| (a, false)));
            }
            "RangeTableSample" => {
                if let Some(x) = body.get("relation") {
                    self.from_item(x, scope);
                }
            }
            _ => scope.extend(alias_name.map(|a| (a, false))),
        }
    }

    /// Whether `alias` names a catalog relation (`Some(true)`) or a derived FROM item (`Some(false)`) in the
    /// innermost scope that has it.
    fn from_alias(&self, alias: &str) -> Option<bool> {
        self.from_scopes
            .iter()
            .rev()
            .find_map(|s| s.get(alias).copied())
    }

    fn cte_visible(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.contains(name))
    }

    /// Walks every field except `skip`.
    fn walk_fields(&mut self, body: &Value, skip: &[&str]) -> R {
        if let Some(m) = obj(body) {
            for (k, v) in m {
                if !skip.contains(&k.as_str()) {
                    self.walk(v)?;
                }
            }
        }
        Ok(())
    }

    /// The generic walk: every field of every node.
    fn walk(&mut self, v: &Value) -> R {
        match v {
            Value::Array(a) => a.iter().try_for_each(|x| self.walk(x)),
            Value::Object(m) => {
                if let Some((ty, body)) = tagged(v) {
                    return self.node(ty, body);
                }
                if is_range_var(m) {
                    return Err(Refusal::new(
                        "unsupported",
                        "relation reference in an unsupported position",
                    ));
                }
                if is_select(m) {
                    return self.select(v);
                }
                m.values().try_for_each(|x| self.walk(x))
            }
            _ => Ok(()),
        }
    }

    fn node(&mut self, ty: &str, body: &Value) -> R {
        match ty {
            "RangeVar" => self.range_var(body),
            "SelectStmt" => self.select(body),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.dml(ty, body),
            "FuncCall" => self.func_call(body),
            "AExpr" => self.operator(body),
            "CaseExpr" => self.case_expr(body),
            "SubLink" => self.sub_link(body),
            "SortBy" => self.sort_by(body),
            "JoinExpr" => self.join_expr(body),
            "MinMaxExpr" => self.min_max(body),
            "RangeTableSample" => {
                let rel = body.get("relation");
                if let Some((_, rv)) = rel.and_then(tagged).filter(|(t, _)| *t == "RangeVar")
                    && self.substitute(rv)?.is_some()
                {
                    return Err(Refusal::new(
                        "unsupported",
                        "TABLESAMPLE on a relation with masked columns is refused",
                    ));
                }
                self.walk_fields(body, &[])
            }
            // `FOR UPDATE OF a, b` names FROM items (aliases), not relations; row locks are writes.
            "LockingClause" => self.locking_clause(body),
            "CommonTableExpr" => Err(Refusal::new(
                "unsupported",
                "WITH clause in an unsupported position",
            )),
            t if t.ends_with("Stmt") => self.statement(&serde_json::json!({ "node": { t: body } })),
            _ => self.walk_fields(body, &[]),
        }
    }
}

fn qual(rel: &Relation) -> String {
    format!("{}.{}", rel.schema, rel.name)
}

/// A relation the snapshot does not have: PostgreSQL's 42P01 (the snapshot is current, or a schema change
/// would have marked it stale and the statement would have been refused as `catalog`).
fn unknown(schema: &str, name: &str) -> Refusal {
    let n = if schema.is_empty() {
        name.to_owned()
    } else {
        format!("{schema}.{name}")
    };
    Refusal::undefined_table(n)
}

/// A string constant (`'x'`, or `'x'::type`).
fn const_string(v: &Value) -> Option<String> {
    let (ty, body) = tagged(v)?;
    match ty {
        "AConst" => body
            .pointer("/val/Sval/sval")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        "TypeCast" => const_string(body.get("arg")?),
        _ => None,
    }
}

/// Every ColumnRef under `v`, as its name parts (`*` ends a reference as an empty list).
fn column_refs(v: &Value, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| column_refs(x, out)),
        Value::Object(m) => {
            if let Some(("ColumnRef", body)) = tagged(v) {
                match names(list(body, "fields")) {
                    Some(n) => out.push(n),
                    None => out.push(Vec::new()),
                }
                return;
            }
            m.values().for_each(|x| column_refs(x, out));
        }
        _ => {}
    }
}

/// The prefix of the statement names pgveil prepares on backends in transaction mode
/// (`backend::statements::NAME_PREFIX`; a unit test keeps the two equal).
pub(crate) const OWN_NAME_PREFIX: &str = "pgveil_ps_";

/// Refuses a prepared statement or cursor name (as the parser decoded it: `U&"..."` escapes, quoting and case
/// folding applied) that starts with pgveil's own prefix: another client's statement could run under it.
fn own_name(body: &Value, field: &str) -> R {
    let name = s(body, field);
    let reserved = name
        .as_bytes()
        .get(..OWN_NAME_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(OWN_NAME_PREFIX.as_bytes()));
    if reserved {
        return Err(Refusal::new(
            "reserved-name",
            "names starting with pgveil_ps_ belong to pgveil's own prepared statements",
        ));
    }
    Ok(())
}
