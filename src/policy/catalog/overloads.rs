//! Overloaded functions resolved by argument types, as PostgreSQL resolves them (typeconv-func): a
//! tenant-defined function that overloads a built-in name on the tenant's own type (`public.lower(mytype)`)
//! is a candidate for `lower(email)` only when PostgreSQL *could* pick it for the arguments' types. It is
//! ruled out when the argument count cannot match it (defaults and VARIADIC counted), when an argument of
//! known types can be neither of its parameter type nor implicitly cast to it (PostgreSQL discards such
//! candidates first), or when every argument is an untyped literal (`length('x')`) and a `pg_catalog`
//! function of that name takes a string-category type where it does not (PostgreSQL then selects the string
//! category and discards the others). Everything else (unknown argument types, named arguments, `VARIADIC`
//! calls, a function without a known signature) keeps it a candidate: fail closed.

use serde::{Deserialize, Serialize};

use super::resolve::{Operand, Resolution};

/// A function's signature (saved catalogs store it as is).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSig {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Parameter types (`typname`) in order.
    pub args: Vec<String>,
    /// Their `pg_type.typcategory` (one character each: `S` string, `N` numeric, `C` composite, ...).
    pub categories: String,
    /// `pronargdefaults`: trailing parameters that may be omitted.
    pub defaults: usize,
    /// The last parameter is VARIADIC.
    pub variadic: bool,
    /// The owning extension (`pg_depend.deptype = 'e'`), if any.
    pub extension: Option<String>,
}

/// One argument of a call, as far as the parse tree tells its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// An untyped string literal or NULL (PostgreSQL's `unknown`).
    Literal,
    /// Any other expression (`Operand::Unknown` when its type is not known).
    Expr(Operand),
}

impl FunctionSig {
    fn category(&self, i: usize) -> char {
        self.categories.chars().nth(i).unwrap_or('X')
    }

    /// Whether a call with `n` positional arguments could match the parameter count.
    fn arity_matches(&self, n: usize) -> bool {
        let total = self.args.len();
        let min = total.saturating_sub(self.defaults);
        if self.variadic {
            n + 1 >= min
        } else {
            (min..=total).contains(&n)
        }
    }
}

impl Resolution {
    /// Whether PostgreSQL could resolve a call with these positional arguments to `sig`.
    pub fn could_pick_function(&self, sig: &FunctionSig, args: &[Arg]) -> bool {
        if !sig.arity_matches(args.len()) {
            return false;
        }
        // A VARIADIC parameter's position and later ones take the element type: not modelled, kept.
        let fixed = if sig.variadic {
            sig.args.len().saturating_sub(1)
        } else {
            sig.args.len()
        };
        for (arg, param) in args.iter().zip(&sig.args).take(fixed) {
            if let Arg::Expr(Operand::Types(types)) = arg
                && !types.is_empty()
                && !types.iter().any(|t| self.coerces(t, param))
            {
                return false;
            }
        }
        !(self.literals_choose_string(sig, args, fixed))
    }

    /// Every argument an untyped literal: at a position where a `pg_catalog` function of that name (and a
    /// matching argument count) takes a string type and `sig` takes a type of another category, PostgreSQL
    /// selects the string category there and discards `sig`.
    fn literals_choose_string(&self, sig: &FunctionSig, args: &[Arg], fixed: usize) -> bool {
        if args.is_empty() || args.iter().any(|a| *a != Arg::Literal) {
            return false;
        }
        let builtins: Vec<&FunctionSig> = self
            .function_sigs
            .iter()
            .filter(|b| b.schema == "pg_catalog" && b.name == sig.name)
            .filter(|b| b.arity_matches(args.len()) && !b.variadic)
            .collect();
        (0..args.len().min(fixed)).any(|i| {
            let c = sig.category(i);
            c != 'S'
                && c != 'P'
                && !self.flexible_types.contains(&sig.args[i])
                && builtins
                    .iter()
                    .any(|b| i < b.args.len() && b.category(i) == 'S')
        })
    }

    /// The known signatures of `schema.name` owned by `extension` (`None`: the tenant's own functions).
    pub fn function_signatures<'a>(
        &'a self,
        schema: &'a str,
        name: &'a str,
        extension: Option<&'a str>,
    ) -> impl Iterator<Item = &'a FunctionSig> + 'a {
        self.function_sigs.iter().filter(move |s| {
            s.schema == schema && s.name == name && s.extension.as_deref() == extension
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(schema: &str, name: &str, args: &[(&str, char)]) -> FunctionSig {
        FunctionSig {
            schema: schema.into(),
            name: name.into(),
            args: args.iter().map(|(t, _)| (*t).to_owned()).collect(),
            categories: args.iter().map(|(_, c)| *c).collect(),
            defaults: 0,
            variadic: false,
            extension: None,
        }
    }

    #[test]
    fn a_tenant_overload_on_its_own_type_is_not_a_candidate_for_builtin_arguments() {
        let mut r = Resolution::default();
        r.implicit_casts.insert(("varchar".into(), "text".into()));
        for s in [
            sig("pg_catalog", "length", &[("text", 'S')]),
            sig("pg_catalog", "length", &[("bytea", 'U')]),
        ] {
            r.function_sigs.insert(s);
        }
        let tenant = sig("public", "length", &[("money_amount", 'C')]);
        let text = Arg::Expr(Operand::of(&["citext", "text"]));
        assert!(!r.could_pick_function(&tenant, std::slice::from_ref(&text)));
        assert!(!r.could_pick_function(&tenant, &[Arg::Literal]));
        assert!(!r.could_pick_function(&tenant, &[]));
        assert!(!r.could_pick_function(&tenant, &[Arg::Literal, Arg::Literal]));
        // Unknown types, or its own type: a candidate.
        assert!(r.could_pick_function(&tenant, &[Arg::Expr(Operand::Unknown)]));
        let own = Arg::Expr(Operand::of(&["money_amount"]));
        assert!(r.could_pick_function(&tenant, &[own]));
        // A string-category tenant type stays a candidate for a literal.
        let s_type = sig("public", "length", &[("mystring", 'S')]);
        assert!(r.could_pick_function(&s_type, &[Arg::Literal]));
        // An implicit cast to its type makes it a candidate.
        r.implicit_casts
            .insert(("text".into(), "money_amount".into()));
        assert!(r.could_pick_function(&tenant, &[text]));
        // Defaults and VARIADIC widen the argument count.
        let mut d = sig("public", "f", &[("int4", 'N'), ("int4", 'N')]);
        d.defaults = 1;
        assert!(r.could_pick_function(&d, &[Arg::Expr(Operand::Unknown)]));
        assert!(!r.could_pick_function(&d, &[]));
        d.variadic = true;
        let many = vec![Arg::Expr(Operand::Unknown); 5];
        assert!(r.could_pick_function(&d, &many));
    }
}
