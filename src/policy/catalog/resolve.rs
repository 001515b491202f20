//! What the firewall needs to judge functions and operators the way PostgreSQL resolves them, rather than by
//! name alone: which objects outside `pg_catalog` belong to an extension (`pg_depend.deptype = 'e'`), the
//! argument types of tenant-defined operators, the implicit casts that could carry an argument to them, and
//! the types of columns by name. With it, `SELECT 1 = 1` is not refused on a schema that defines `=` for
//! its own composite type: no `int4` can become that type, so PostgreSQL can never pick the tenant's operator.
//!
//! Types are compared by `pg_type.typname` (schema-less): two types of the same name in different schemas
//! compare equal, which only ever makes a tenant operator *more* likely to match (refused), never less.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The types an operand expression may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// Not known: an untyped string literal, a parameter, a function result, a column of a derived table...
    Unknown,
    /// One of these types (`typname`s).
    Types(BTreeSet<String>),
}

impl Operand {
    /// An operand of exactly these types.
    pub fn of(types: &[&str]) -> Operand {
        Operand::Types(types.iter().map(|t| (*t).to_owned()).collect())
    }
}

/// A tenant-defined operator's signature (`None` for the missing side of a prefix operator).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSig {
    /// Schema.
    pub schema: String,
    /// Operator name.
    pub name: String,
    /// Left argument type (`typname`).
    pub left: Option<String>,
    /// Right argument type (`typname`).
    pub right: Option<String>,
}

/// Resolution data of a tenant's catalog (saved catalogs store it as is; older files without it are read as
/// empty, which is the conservative reading: every operator signature unknown, no extension trusted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resolution {
    /// `current_database()`: three-part names may name it (as PostgreSQL accepts them).
    pub database: String,
    /// Functions outside `pg_catalog`/`information_schema` owned by an extension: (schema, name, extension).
    pub extension_functions: BTreeSet<(String, String, String)>,
    /// Operators outside `pg_catalog` owned by an extension: (schema, name, extension).
    pub extension_operators: BTreeSet<(String, String, String)>,
    /// Signatures of tenant-defined operators (those in the catalog's `operators` set). A tenant operator
    /// without a signature here could match any operands.
    pub operator_sigs: BTreeSet<OperatorSig>,
    /// Implicit casts (`pg_cast.castcontext = 'i'`) as (source, target) `typname`s.
    pub implicit_casts: BTreeSet<(String, String)>,
    /// Types any operand may be coerced to as far as this check is concerned: pseudo-types (`anyelement`,
    /// `record`, ...) and domains.
    pub flexible_types: BTreeSet<String>,
    /// Column name -> base types (`typname`, domains resolved) of every column of that name in any relation,
    /// system catalogs included.
    pub column_types: BTreeMap<String, BTreeSet<String>>,
    /// Signatures of every function whose name is also used outside `pg_catalog`/`information_schema`
    /// (overloads resolved by argument types, see [`super::overloads`]). A function without a signature
    /// here could match any arguments.
    pub function_sigs: BTreeSet<super::overloads::FunctionSig>,
    /// Default btree/hash operator classes outside `pg_catalog` (see [`super::orderings`]).
    pub orderings: BTreeSet<super::orderings::TypeOrdering>,
    /// (container, part) `typname`s: a record type and the types of its attributes, an array type and its
    /// element type, a range and its subtype, a domain and its base type, where the part is not a
    /// `pg_catalog` type (comparing the container compares the parts).
    pub type_parts: BTreeSet<(String, String)>,
}

impl Resolution {
    /// The extensions owning (schema, name) as a function.
    pub fn function_extensions<'a>(
        &'a self,
        schema: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.extension_functions
            .iter()
            .filter(move |(s, n, _)| s == schema && n == name)
            .map(|(_, _, e)| e.as_str())
    }

    /// Whether some extension function has this name (any schema).
    pub fn extension_function_named(&self, name: &str) -> bool {
        self.extension_functions.iter().any(|(_, n, _)| n == name)
    }

    /// Whether an operand of type `from` could be coerced implicitly to `to`.
    pub(super) fn coerces(&self, from: &str, to: &str) -> bool {
        from == to
            || self.flexible_types.contains(to)
            || self
                .implicit_casts
                .contains(&(from.to_owned(), to.to_owned()))
    }

    fn side_matches(&self, operand: &Operand, param: Option<&str>) -> bool {
        match (operand, param) {
            // A prefix operator has no left argument; keep the conservative reading either way.
            (_, None) | (Operand::Unknown, Some(_)) => true,
            (Operand::Types(types), Some(p)) => {
                types.is_empty() || types.iter().any(|t| self.coerces(t, p))
            }
        }
    }

    /// Whether PostgreSQL could resolve `left name right` to the tenant operator with this signature.
    pub fn could_pick(&self, sig: &OperatorSig, left: &Operand, right: &Operand) -> bool {
        self.side_matches(left, sig.left.as_deref())
            && self.side_matches(right, sig.right.as_deref())
    }

    /// The types of a column reference by its last name; `row_type`: the row type of a relation of that
    /// name, when the reference has one part and could be a whole-row reference (`p = p`). `Unknown` when
    /// nothing by that name is known.
    pub fn column(&self, name: &str, row_type: Option<&str>) -> Operand {
        let mut types = match self.column_types.get(name) {
            // A domain over a domain is coerced through its bases: not modelled, so not known.
            Some(t) if t.iter().any(|t| self.flexible_types.contains(t)) => {
                return Operand::Unknown;
            }
            Some(t) => t.clone(),
            None if row_type.is_none() => return Operand::Unknown,
            None => BTreeSet::new(),
        };
        types.extend(row_type.map(str::to_owned));
        Operand::Types(types)
    }
}

/// The trusted-extension default: PostgreSQL contrib and common extensions whose objects neither execute
/// SQL from strings, nor touch files, the network or other databases, nor change server state (README,
/// "Masking"). `dblink`, `postgres_fdw`, `file_fdw`, `adminpack`, `pg_stat_statements`, `lo`, `pageinspect`,
/// `pg_buffercache`, `pgrowlocks`, `pgstattuple`, `pg_visibility`, `amcheck`, `pg_prewarm`, `tablefunc`
/// (`crosstab` runs SQL strings) and every procedural language are never in it.
pub const DEFAULT_TRUSTED_EXTENSIONS: &[&str] = &[
    "citext",
    "pgcrypto",
    "uuid-ossp",
    "hstore",
    "pg_trgm",
    "ltree",
    "cube",
    "earthdistance",
    "isn",
    "intarray",
    "unaccent",
    "fuzzystrmatch",
    "btree_gin",
    "btree_gist",
    "seg",
    "tsm_system_rows",
    "tsm_system_time",
    "postgis",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Operand {
        Operand::of(v)
    }

    #[test]
    fn a_tenant_operator_on_its_own_type_is_not_a_candidate_for_builtin_operands() {
        let mut r = Resolution::default();
        r.implicit_casts.insert(("int4".into(), "int8".into()));
        let sig = OperatorSig {
            schema: "public".into(),
            name: "=".into(),
            left: Some("money_amount".into()),
            right: Some("money_amount".into()),
        };
        assert!(!r.could_pick(&sig, &set(&["int4"]), &set(&["int4"])));
        assert!(!r.could_pick(&sig, &set(&["name"]), &Operand::Unknown));
        assert!(r.could_pick(&sig, &Operand::Unknown, &Operand::Unknown));
        assert!(r.could_pick(&sig, &set(&["money_amount"]), &Operand::Unknown));
        r.column_types.insert(
            "quote".into(),
            ["money_amount".to_owned()].into_iter().collect(),
        );
        let quote = r.column("quote", None);
        assert!(r.could_pick(&sig, &quote, &quote));
        r.column_types
            .insert("wallets".into(), ["int8".to_owned()].into_iter().collect());
        assert!(!r.could_pick(&sig, &r.column("wallets", None), &Operand::Unknown));
        let row = r.column("wallets", Some("money_amount"));
        assert!(r.could_pick(&sig, &row, &row));
        r.implicit_casts
            .insert(("int4".into(), "money_amount".into()));
        assert!(r.could_pick(&sig, &set(&["int4"]), &set(&["int4"])));
        let any = OperatorSig {
            left: Some("anyelement".into()),
            ..sig
        };
        r.flexible_types.insert("anyelement".into());
        assert!(r.could_pick(&any, &set(&["text"]), &set(&["money_amount"])));
    }
}
