//! Comparisons PostgreSQL makes implicitly: `ORDER BY`, `GROUP BY`, `DISTINCT`, `UNION`/`INTERSECT`/
//! `EXCEPT`, `count(DISTINCT ...)`, window `PARTITION BY`/`ORDER BY` and `GREATEST`/`LEAST` compare values
//! with the default btree (or hash) operator class of their type, and records, arrays and ranges compare
//! their parts the same way. When a tenant has given its own type a default operator class, those
//! comparisons run the tenant's code (its support functions and operators) on masked values as on others:
//! like a tenant function, they are refused unless the class belongs to a trusted extension or its
//! operators and functions are allow-listed.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::resolve::Resolution;

/// A default btree/hash operator class outside `pg_catalog` (saved catalogs store it as is).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeOrdering {
    /// The type it orders (`typname`).
    pub type_name: String,
    /// `schema.name` of the operator class.
    pub class: String,
    /// The owning extension (`pg_depend.deptype = 'e'`), if any.
    pub extension: Option<String>,
    /// Its family's operators for the type, as (schema, name).
    pub operators: Vec<(String, String)>,
    /// Its family's support functions for the type, as (schema, name).
    pub functions: Vec<(String, String)>,
}

impl Resolution {
    /// The types whose comparison runs code of an operator class that `allowed` does not accept, and every
    /// type containing one (records, arrays, ranges, domains; by `typname`).
    pub fn denied_orderings(&self, allowed: impl Fn(&TypeOrdering) -> bool) -> BTreeSet<String> {
        let mut denied: BTreeSet<String> = self
            .orderings
            .iter()
            .filter(|o| !allowed(o))
            .map(|o| o.type_name.clone())
            .collect();
        if denied.is_empty() {
            return denied;
        }
        loop {
            let more: Vec<String> = self
                .type_parts
                .iter()
                .filter(|(container, part)| denied.contains(part) && !denied.contains(container))
                .map(|(container, _)| container.clone())
                .collect();
            if more.is_empty() {
                return denied;
            }
            denied.extend(more);
        }
    }

    /// The denied orderings of a type among `types`, for the refusal's message.
    pub fn ordering_of(&self, ty: &str) -> Option<&TypeOrdering> {
        self.orderings.iter().find(|o| o.type_name == ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_of_a_denied_type_are_denied() {
        let mut r = Resolution::default();
        r.orderings.insert(TypeOrdering {
            type_name: "money_amount".into(),
            class: "public.money_amount_ops".into(),
            extension: None,
            operators: vec![("public".into(), "<".into())],
            functions: vec![("public".into(), "money_amount_cmp".into())],
        });
        for (c, p) in [
            ("_money_amount", "money_amount"),
            ("fx_quotes", "money_amount"),
            ("_fx_quotes", "fx_quotes"),
            ("other", "text"),
        ] {
            r.type_parts.insert((c.into(), p.into()));
        }
        let d = r.denied_orderings(|_| false);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            ["_fx_quotes", "_money_amount", "fx_quotes", "money_amount"]
        );
        assert!(r.denied_orderings(|o| o.extension.is_none()).is_empty());
    }
}
