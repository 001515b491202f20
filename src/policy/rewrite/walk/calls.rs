//! Function calls and operators in a statement, judged as PostgreSQL resolves them: built-ins
//! (`pg_catalog`, `information_schema`) and objects of trusted extensions pass; tenant-defined functions are
//! refused unless allow-listed, as are tenant-defined operators wherever PostgreSQL could pick them for the
//! operand types (every operator form: plain, ANY/ALL, IN, BETWEEN, LIKE/ILIKE/SIMILAR, IS DISTINCT FROM,
//! NULLIF, `CASE x WHEN`, subquery comparisons, `ORDER BY ... USING`, `JOIN ... USING`). Functions with side
//! effects (sequences, advisory locks, notifications) need a statement kind that allows them, and
//! `set_config` of protected settings is refused.

use serde_json::Value;

use super::super::Refusal;
use super::{R, Walker, b, const_string, list, names, tagged};
use crate::policy::catalog::Catalog;
use crate::policy::catalog::resolve::Operand;
use crate::policy::firewall::{function_denied, setting_refusal};
use crate::policy::kinds::StatementKind;

/// Schemas whose functions are PostgreSQL's own.
const BUILTIN_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// The operators PostgreSQL applies for `BETWEEN` and its variants.
const BETWEEN_OPERATORS: &[&str] = &[">=", "<=", ">", "<"];

impl Walker<'_> {
    pub(super) fn function_allowed(&self, schema: &str, name: &str) -> bool {
        let a = &self.ctx.policy.role.allow_functions;
        a.contains(&format!("{schema}.{name}")) || a.contains(name)
    }

    pub(super) fn operator_allowed(&self, schema: Option<&str>, op: &str) -> bool {
        let a = &self.ctx.policy.role.allow_operators;
        a.contains(op) || schema.is_some_and(|s| a.contains(&format!("{s}.{op}")))
    }

    pub(super) fn trusted(&self, extension: &str) -> bool {
        self.ctx.policy.trusted_extensions.contains(extension)
    }

    /// Whether `schema.name` is a function PostgreSQL ships or one only trusted extensions define.
    pub(super) fn builtin_function(&self, schema: &str, name: &str) -> R<bool> {
        if BUILTIN_SCHEMAS.contains(&schema) {
            return Ok(true);
        }
        let cat = self.catalog()?;
        if cat
            .functions
            .contains(&(schema.to_owned(), name.to_owned()))
        {
            return Ok(false);
        }
        let mut owners = cat.resolution.function_extensions(schema, name).peekable();
        Ok(owners.peek().is_some() && owners.all(|e| self.trusted(e)))
    }

    pub(super) fn func_call(&mut self, body: &Value) -> R {
        let parts = names(list(body, "funcname"))
            .ok_or_else(|| Refusal::new("parse", "unexpected function name"))?;
        let (schema, name) = match parts.as_slice() {
            [n] => (None, n.as_str()),
            [s, n] => (Some(s.as_str()), n.as_str()),
            [db, s, n] if self.catalog()?.is_own_database(db) => (Some(s.as_str()), n.as_str()),
            _ => {
                return Err(Refusal::new(
                    "denied-function",
                    "three-part function names are refused unless the first part is the tenant's database",
                ));
            }
        };
        let allowed = self.function_allowed(schema.unwrap_or("pg_catalog"), name);
        match schema {
            Some(s) if BUILTIN_SCHEMAS.contains(&s) => {}
            Some(other) => {
                if !allowed && !self.qualified_trusted(other, name, body)? {
                    return Err(Refusal::new(
                        "denied-function",
                        format!(
                            "function {other}.{name} is neither built in nor of a trusted extension, and not allow-listed"
                        ),
                    ));
                }
            }
            None => {
                if !allowed && self.unqualified_could_be_user(name, body)? {
                    return Err(Refusal::new(
                        "denied-function",
                        format!(
                            "function {name} could resolve to a user-defined function that is not allow-listed"
                        ),
                    ));
                }
            }
        }
        if function_denied(name) && !allowed {
            return Err(Refusal::new(
                "denied-function",
                format!("function {name} is refused"),
            ));
        }
        self.side_effects(name, allowed)?;
        self.call_comparisons(name, body)?;
        if name == "set_config" {
            self.literal_sensitive = true;
            let arg = list(body, "args").first().and_then(const_string);
            let value = list(body, "args").get(1).and_then(const_string);
            match arg {
                None => {
                    return Err(Refusal::new(
                        "protected-setting",
                        "set_config needs a constant setting name",
                    ));
                }
                Some(n) => {
                    if let Some(why) = setting_refusal(&n, value.as_deref(), self.server_encoding())
                    {
                        return Err(Refusal::new("protected-setting", why));
                    }
                }
            }
        }
        self.walk(body)
    }

    /// Whether the role may write (then row locks, sequence changes and advisory locks are its business).
    fn writes(&self) -> bool {
        use StatementKind as K;
        let s = &self.ctx.policy.role.statements;
        [
            K::Insert,
            K::Update,
            K::Delete,
            K::Merge,
            K::CopyFrom,
            K::Lock,
        ]
        .iter()
        .any(|k| s.contains(k))
    }

    /// Read-only roles have no side effects: sequence changes, advisory locks and notifications are
    /// writes. (`pg_advisory_unlock*` only release: allowed, like the other session-reset idioms.)
    fn side_effects(&self, name: &str, allowed: bool) -> R {
        if allowed {
            return Ok(());
        }
        let what = match name {
            "nextval" | "setval" => "changing a sequence",
            "pg_notify"
                if !self
                    .ctx
                    .policy
                    .role
                    .statements
                    .contains(&StatementKind::Listen) =>
            {
                return Err(Refusal::new(
                    "side-effect",
                    format!(
                        "pg_notify() is a notification; role {} may not run listen statements",
                        self.ctx.role
                    ),
                ));
            }
            n if n.starts_with("pg_advisory_lock")
                || n.starts_with("pg_advisory_xact_lock")
                || n.starts_with("pg_try_advisory_") =>
            {
                "taking an advisory lock"
            }
            _ => return Ok(()),
        };
        if self.writes() {
            return Ok(());
        }
        Err(Refusal::new(
            "side-effect",
            format!(
                "{name}() is refused: {what} is a write and role {} is read-only",
                self.ctx.role
            ),
        ))
    }

    /// `SELECT ... FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE` takes row locks: a write.
    pub(super) fn locking_clause(&mut self, body: &Value) -> R {
        if !self.writes() {
            return Err(Refusal::new(
                "side-effect",
                format!(
                    "row locks (FOR UPDATE/SHARE) are writes and role {} is read-only",
                    self.ctx.role
                ),
            ));
        }
        self.walk_fields(body, &["locked_rels"])
    }

    /// Refuses if `parts` (an operator name, maybe schema-qualified) could resolve, for these operand
    /// types, to a tenant-defined operator or one of an untrusted extension that is not allow-listed.
    fn check_operator(&self, parts: &[String], left: &Operand, right: &Operand) -> R {
        let (schema, op) = match parts {
            [op] => (None, op.as_str()),
            [s, op] => (Some(s.as_str()), op.as_str()),
            _ => return Err(Refusal::new("parse", "unexpected operator name")),
        };
        if schema == Some("pg_catalog") {
            return self.container_compare(left, right);
        }
        if self.operator_allowed(schema, op) {
            return Ok(());
        }
        let cat = self.catalog()?;
        let refuse = || {
            let shown = schema.map_or_else(|| op.to_owned(), |s| format!("{s}.{op}"));
            Err(Refusal::new(
                "denied-operator",
                format!(
                    "operator {shown} could resolve to a user-defined operator that is not allow-listed"
                ),
            ))
        };
        if let Some(s) = schema {
            // Qualified outside pg_catalog: only an operator known to belong to trusted extensions.
            let mut owners = cat
                .resolution
                .extension_operators
                .iter()
                .filter(|(es, n, _)| es == s && n == op)
                .peekable();
            let trusted = owners.peek().is_some() && owners.all(|(_, _, e)| self.trusted(e));
            if !trusted || cat.operators.contains(&(s.to_owned(), op.to_owned())) {
                return refuse();
            }
            return Ok(());
        }
        let untrusted_ext = cat
            .resolution
            .extension_operators
            .iter()
            .any(|(_, n, e)| n == op && !self.trusted(e));
        let tenant = cat.operators.iter().any(|(s, n)| {
            n == op && !self.operator_allowed(Some(s.as_str()), op) && {
                let mut sigs = cat
                    .resolution
                    .operator_sigs
                    .iter()
                    .filter(|g| &g.schema == s && g.name == op)
                    .peekable();
                // No signature known (an older saved catalog): could match anything.
                sigs.peek().is_none() || sigs.any(|g| cat.resolution.could_pick(g, left, right))
            }
        });
        if untrusted_ext || tenant {
            return refuse();
        }
        self.container_compare(left, right)
    }

    /// Every operator form of `A_Expr`.
    pub(super) fn operator(&mut self, body: &Value) -> R {
        let parts = names(list(body, "name")).unwrap_or_default();
        let kind = body.get("kind").and_then(|k| k.as_i64()).unwrap_or(0);
        let null = Value::Null;
        let lexpr = body.get("lexpr").unwrap_or(&null);
        let rexpr = body.get("rexpr").unwrap_or(&null);
        let left = self.operand(lexpr);
        match kind {
            // AEXPR_OP_ANY, AEXPR_OP_ALL: the right side is an array.
            2 | 3 => self.check_operator(&parts, &left, &self.element_operand(rexpr))?,
            // AEXPR_IN: `x IN (a, b)` is `x = a OR x = b` (or `<>`).
            7 => {
                for item in in_list(rexpr) {
                    self.check_operator(&parts, &left, &self.operand(item))?;
                }
            }
            // AEXPR_BETWEEN and its NOT/SYMMETRIC variants.
            11..=14 => {
                for bound in in_list(rexpr) {
                    let right = self.operand(bound);
                    for op in BETWEEN_OPERATORS {
                        self.check_operator(&[(*op).to_owned()], &left, &right)?;
                    }
                }
            }
            _ => self.check_operator(&parts, &left, &self.operand(rexpr))?,
        }
        self.walk(body)
    }

    /// `CASE x WHEN v ...` compares with `=`.
    pub(super) fn case_expr(&mut self, body: &Value) -> R {
        if let Some(arg) = body.get("arg").filter(|a| !a.is_null()) {
            let left = self.operand(arg);
            for w in list(body, "args") {
                if let Some(("CaseWhen", when)) = tagged(w) {
                    let right = self.operand(when.get("expr").unwrap_or(&Value::Null));
                    self.check_operator(&["=".to_owned()], &left, &right)?;
                }
            }
        }
        self.walk(body)
    }

    /// `x op ANY/ALL (SELECT ...)`, `x IN (SELECT ...)`, row comparisons with a subquery.
    pub(super) fn sub_link(&mut self, body: &Value) -> R {
        let ty = body
            .get("sub_link_type")
            .and_then(|k| k.as_i64())
            .unwrap_or(0);
        // ALL_SUBLINK, ANY_SUBLINK, ROWCOMPARE_SUBLINK.
        if matches!(ty, 2..=4) {
            let op = names(list(body, "oper_name"))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| vec!["=".to_owned()]);
            let left = self.operand(body.get("testexpr").unwrap_or(&Value::Null));
            self.check_operator(&op, &left, &Operand::Unknown)?;
        }
        self.walk(body)
    }

    /// `ORDER BY x USING op`.
    pub(super) fn sort_by(&mut self, body: &Value) -> R {
        let node = body.get("node").unwrap_or(&Value::Null);
        if let Some(op) = names(list(body, "use_op")).filter(|n| !n.is_empty()) {
            let t = self.operand(node);
            self.check_operator(&op, &t, &t)?;
        } else {
            self.implicit_compare(node, "ORDER BY")?;
        }
        self.walk(body)
    }

    /// `JOIN ... USING (c)` compares the two `c` with `=`; NATURAL JOIN compares columns we do not list.
    pub(super) fn join_expr(&mut self, body: &Value) -> R {
        let eq = ["=".to_owned()];
        if b(body, "is_natural") {
            self.check_operator(&eq, &Operand::Unknown, &Operand::Unknown)?;
        }
        let null = Value::Null;
        for c in names(list(body, "using_clause")).unwrap_or_default() {
            let left = self.using_side(body.get("larg").unwrap_or(&null), &c);
            let right = self.using_side(body.get("rarg").unwrap_or(&null), &c);
            self.check_operator(&eq, &left, &right)?;
        }
        self.walk(body)
    }

    /// A column reference by its name parts (one part: it could also name a relation's whole row).
    fn column_operand(&self, fields: &[String]) -> Operand {
        let Some(name) = fields.last() else {
            return Operand::Unknown;
        };
        let qualifier = fields.len().checked_sub(2).map(|i| fields[i].as_str());
        let item = qualifier.and_then(|q| self.from_alias(q));
        let typed = match item {
            Some(real) => real,
            None => !self.derived_names.is_derived(name),
        };
        let Some(cat) = self.ctx.catalog else {
            return Operand::Unknown;
        };
        let is_relation = |(_, n): &(String, String)| n == name;
        let row = fields.len() == 1
            && (cat.relations.keys().any(is_relation)
                || cat.system_relations.iter().any(is_relation));
        let catalog = || cat.resolution.column(name, row.then_some(name.as_str()));
        if typed {
            return catalog();
        }
        // A derived name: the types of its definitions, and of the catalog column it may also name
        // (unless qualified by a derived FROM item).
        match self.derived_names.types(name) {
            Some(derived) if item == Some(false) => Operand::Types(derived.clone()),
            Some(derived) if !row && !cat.resolution.column_types.contains_key(name) => {
                Operand::Types(derived.clone())
            }
            Some(derived) => match catalog() {
                Operand::Types(mut t) => {
                    t.extend(derived.iter().cloned());
                    Operand::Types(t)
                }
                Operand::Unknown => Operand::Unknown,
            },
            None => Operand::Unknown,
        }
    }

    /// The types of column `c` of one side of a `JOIN ... USING (c)`.
    fn using_side(&self, side: &Value, c: &str) -> Operand {
        let Some(cat) = self.ctx.catalog else {
            return Operand::Unknown;
        };
        let derived = || {
            self.derived_names
                .types(c)
                .map_or(Operand::Unknown, |t| Operand::Types(t.clone()))
        };
        match tagged(side) {
            Some(("RangeVar", rv)) => {
                let renamed = rv
                    .get("alias")
                    .is_some_and(|a| !a.is_null() && !list(a, "colnames").is_empty());
                let rel = super::s(rv, "relname");
                if super::s(rv, "schemaname").is_empty() && self.cte_visible(rel) {
                    derived()
                } else if renamed {
                    Operand::Unknown
                } else {
                    cat.resolution.column(c, None)
                }
            }
            Some(("RangeSubselect", _)) => derived(),
            Some(("JoinExpr", j)) => {
                let null = Value::Null;
                match (
                    self.using_side(j.get("larg").unwrap_or(&null), c),
                    self.using_side(j.get("rarg").unwrap_or(&null), c),
                ) {
                    (Operand::Types(mut a), Operand::Types(b)) => {
                        a.extend(b);
                        Operand::Types(a)
                    }
                    _ => Operand::Unknown,
                }
            }
            _ => Operand::Unknown,
        }
    }

    /// The types an expression may have, where the parse tree and the catalog tell them.
    pub(super) fn operand(&self, v: &Value) -> Operand {
        let Some((ty, body)) = tagged(v) else {
            return Operand::Unknown;
        };
        match ty {
            "AConst" => const_operand(body),
            "TypeCast" => cast_operand(body, self.ctx.catalog),
            "ColumnRef" => match names(list(body, "fields")) {
                Some(f) if !f.is_empty() => self.column_operand(&f),
                _ => Operand::Unknown,
            },
            "BoolExpr" | "NullTest" | "BooleanTest" => Operand::of(&["bool"]),
            _ => Operand::Unknown,
        }
    }

    /// The element types of an array operand (`ARRAY[...]`, or an array-typed column or cast).
    fn element_operand(&self, v: &Value) -> Operand {
        if let Some(("AArrayExpr", body)) = tagged(v) {
            let mut all = std::collections::BTreeSet::new();
            for e in list(body, "elements") {
                match self.operand(e) {
                    Operand::Types(types) => all.extend(types),
                    _ => return Operand::Unknown,
                }
            }
            return Operand::Types(all);
        }
        match self.operand(v) {
            Operand::Types(types) if types.iter().all(|t| t.starts_with('_')) => {
                Operand::Types(types.iter().map(|t| t[1..].to_owned()).collect())
            }
            _ => Operand::Unknown,
        }
    }
}

/// The types of a number or boolean constant (`Unknown` for strings, bit strings and NULL).
pub(super) fn const_operand(body: &Value) -> Operand {
    match body
        .get("val")
        .and_then(|v| v.as_object())
        .and_then(|m| m.keys().next())
    {
        Some(k) if k == "Ival" => Operand::of(&["int4", "int8", "numeric"]),
        Some(k) if k == "Fval" => Operand::of(&["numeric"]),
        Some(k) if k == "Boolval" => Operand::of(&["bool"]),
        _ => Operand::Unknown,
    }
}

/// The type a cast gives (`Unknown` for domains and pseudo-types, or without a catalog).
pub(super) fn cast_operand(body: &Value, cat: Option<&Catalog>) -> Operand {
    let tn = body.get("type_name").unwrap_or(&Value::Null);
    let Some(last) = names(list(tn, "names")).and_then(|n| n.last().cloned()) else {
        return Operand::Unknown;
    };
    let name = if list(tn, "array_bounds").is_empty() {
        last
    } else {
        format!("_{last}")
    };
    match cat {
        Some(cat) if !cat.resolution.flexible_types.contains(&name) => {
            Operand::of(&[name.as_str()])
        }
        _ => Operand::Unknown,
    }
}

/// The items of `IN (...)` / `BETWEEN a AND b` (a `List` node), or the expression itself.
fn in_list(v: &Value) -> Vec<&Value> {
    match tagged(v) {
        Some(("List", l)) => list(l, "items").iter().collect(),
        _ => vec![v],
    }
}
