//! Which function PostgreSQL could call for a `FuncCall` node: a tenant function (or one of an untrusted
//! extension) that overloads the name counts only when it could be picked for the call's argument types
//! (see `catalog::overloads`). `lower(email)` passes on a schema with `public.lower(money_amount)`;
//! `lower(quote)` on a `money_amount` column does not.

use serde_json::Value;

use super::{R, Walker, b, list, tagged};
use crate::policy::catalog::overloads::Arg;

impl Walker<'_> {
    /// The call's positional arguments, or `None` when PostgreSQL resolves it in a way not modelled here
    /// (named arguments, an explicit `VARIADIC`): then every candidate of the name counts.
    pub(super) fn call_args(&self, body: &Value) -> Option<Vec<Arg>> {
        if b(body, "func_variadic") {
            return None;
        }
        list(body, "args")
            .iter()
            .map(|a| match tagged(a) {
                Some(("NamedArgExpr", _)) => None,
                Some(("AConst", c)) if untyped(c) => Some(Arg::Literal),
                _ => Some(Arg::Expr(self.operand(a))),
            })
            .collect()
    }

    /// Whether one of the functions `(schema, name, extension)` (extension `None`: the tenant's own) could
    /// be picked for this call.
    fn any_candidate<'c>(
        &self,
        body: &Value,
        mut candidates: impl Iterator<Item = (&'c str, &'c str, Option<&'c str>)>,
    ) -> R<bool> {
        let cat = self.catalog()?;
        let args = self.call_args(body);
        Ok(candidates.any(|(schema, name, ext)| {
            let Some(args) = &args else {
                return true;
            };
            let mut sigs = cat
                .resolution
                .function_signatures(schema, name, ext)
                .peekable();
            // No signature known (an older saved catalog): could match anything.
            sigs.peek().is_none() || sigs.any(|s| cat.resolution.could_pick_function(s, args))
        }))
    }

    /// Whether an unqualified call could resolve to a tenant function (not allow-listed by its schema) or
    /// one of an untrusted extension.
    pub(super) fn unqualified_could_be_user(&self, name: &str, body: &Value) -> R<bool> {
        let cat = self.catalog()?;
        let tenant = cat
            .functions
            .iter()
            .filter(|(s, n)| n == name && !self.function_allowed(s, n))
            .map(|(s, n)| (s.as_str(), n.as_str(), None));
        let untrusted = cat
            .resolution
            .extension_functions
            .iter()
            .filter(|(_, n, e)| n == name && !self.trusted(e))
            .map(|(s, n, e)| (s.as_str(), n.as_str(), Some(e.as_str())));
        self.any_candidate(body, tenant.chain(untrusted))
    }

    /// Whether a call qualified with a schema outside the built-in ones can only resolve to functions of
    /// trusted extensions: one exists by that name there, and no tenant or untrusted one could be picked.
    pub(super) fn qualified_trusted(&self, schema: &str, name: &str, body: &Value) -> R<bool> {
        let cat = self.catalog()?;
        let owners: Vec<&str> = cat.resolution.function_extensions(schema, name).collect();
        if !owners.iter().any(|e| self.trusted(e)) {
            return Ok(false);
        }
        let tenant = cat
            .functions
            .iter()
            .filter(|(s, n)| s == schema && n == name)
            .map(|(s, n)| (s.as_str(), n.as_str(), None));
        let untrusted = cat
            .resolution
            .extension_functions
            .iter()
            .filter(|(s, n, e)| s == schema && n == name && !self.trusted(e))
            .map(|(s, n, e)| (s.as_str(), n.as_str(), Some(e.as_str())));
        Ok(!self.any_candidate(body, tenant.chain(untrusted))?)
    }
}

/// An untyped string literal or NULL (`AConst` without a number, boolean or bit-string value).
fn untyped(c: &Value) -> bool {
    match c.get("val").and_then(|v| v.as_object()) {
        None => b(c, "isnull"),
        Some(m) => m.contains_key("Sval"),
    }
}
