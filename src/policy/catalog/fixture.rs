//! A fixed catalog for unit tests: the demo payments schema plus a partition, an inheritance child, a view,
//! a generated column, a user function and a user operator.

use std::collections::HashMap;

use super::orderings::TypeOrdering;
use super::overloads::FunctionSig;
use super::resolve::OperatorSig;
use super::{Catalog, Column, Relation};
use crate::policy::functions::TypeFamily;

fn col(name: &str, ty: &str) -> Column {
    let (family, base) = match ty {
        "text" | "character(2)" | "character(3)" => (TypeFamily::Text, "text"),
        "bigint" | "numeric(12,2)" | "integer" => (TypeFamily::Number, "int8"),
        "date" => (TypeFamily::Date, "date"),
        "timestamp with time zone" => (TypeFamily::Timestamp, "timestamptz"),
        "inet" => (TypeFamily::Inet, "inet"),
        "jsonb" => (TypeFamily::Json, "jsonb"),
        _ => (TypeFamily::Other, ty),
    };
    Column {
        name: name.into(),
        sql_type: ty.into(),
        family,
        base: base.into(),
        generated_from: Vec::new(),
    }
}

fn rel(schema: &str, name: &str, kind: char, cols: &[(&str, &str)]) -> Relation {
    Relation {
        schema: schema.into(),
        name: name.into(),
        kind,
        columns: cols.iter().map(|(n, t)| col(n, t)).collect(),
        parents: Vec::new(),
        reads: HashMap::new(),
        calls: Vec::new(),
    }
}

/// The test catalog.
pub fn catalog() -> Catalog {
    let mut c = Catalog {
        version: 7,
        search_path: vec!["public".into()],
        server_encoding: Some("UTF8".into()),
        ..Catalog::default()
    };
    let payers = [
        ("id", "bigint"),
        ("full_name", "text"),
        ("email", "text"),
        ("phone", "text"),
        ("date_of_birth", "date"),
        ("ip_address", "inet"),
        ("address", "text"),
        ("card_pan", "text"),
    ];
    let mut rels = vec![
        rel(
            "public",
            "merchants",
            'r',
            &[
                ("id", "bigint"),
                ("name", "text"),
                ("country", "character(2)"),
            ],
        ),
        rel("public", "payers", 'r', &payers),
        rel(
            "public",
            "payments",
            'r',
            &[
                ("id", "bigint"),
                ("payer_id", "bigint"),
                ("amount", "numeric(12,2)"),
                ("card_pan", "text"),
            ],
        ),
        rel(
            "public",
            "disputes",
            'r',
            &[
                ("id", "bigint"),
                ("payment_id", "bigint"),
                ("reason", "text"),
            ],
        ),
        rel(
            "audit",
            "payers",
            'r',
            &[("id", "bigint"), ("note", "text")],
        ),
        rel(
            "public",
            "events",
            'p',
            &[("id", "bigint"), ("email", "text"), ("meta", "jsonb")],
        ),
        rel(
            "public",
            "events_2024",
            'r',
            &[("id", "bigint"), ("email", "text"), ("meta", "jsonb")],
        ),
        rel("public", "old_payers", 'r', &payers),
        rel(
            "public",
            "payer_emails",
            'v',
            &[("id", "bigint"), ("contact", "text")],
        ),
        rel(
            "public",
            "contacts",
            'r',
            &[("id", "bigint"), ("email", "text"), ("email_upper", "text")],
        ),
        rel("public", "fn_view", 'v', &[("id", "bigint"), ("x", "text")]),
        rel(
            "public",
            "wallets",
            'r',
            &[("id", "bigint"), ("balance", "money_amount")],
        ),
        rel(
            "public",
            "payer_contact",
            'v',
            &[("id", "bigint"), ("contact", "text"), ("dob", "date")],
        ),
    ];
    for r in &mut rels {
        match r.name.as_str() {
            "events_2024" => r.parents.push(("public".into(), "events".into())),
            "old_payers" if r.schema == "public" => {
                r.parents.push(("public".into(), "payers".into()))
            }
            "payer_emails" => {
                r.reads.insert(
                    "id".into(),
                    vec![(("public".into(), "payers".into()), "id".into())],
                );
                r.reads.insert(
                    "contact".into(),
                    vec![(("public".into(), "payers".into()), "email".into())],
                );
            }
            "contacts" => r.columns[2].generated_from.push("email".into()),
            "fn_view" => r.calls.push(("public".into(), "lookup_email".into())),
            "payer_contact" => {
                let payers = |c: &str| (("public".to_owned(), "payers".to_owned()), c.to_owned());
                r.reads.insert("id".into(), vec![payers("id")]);
                r.reads
                    .insert("contact".into(), vec![payers("email"), payers("phone")]);
                r.reads.insert(
                    "dob".into(),
                    vec![payers("date_of_birth"), payers("date_of_birth")],
                );
            }
            _ => {}
        }
    }
    resolution(&mut c, &rels);
    // `old_payers` is an inheritance child named so no rule matches it directly.
    for r in rels {
        c.relations.insert((r.schema.clone(), r.name.clone()), r);
    }
    for n in [
        "pg_class",
        "pg_namespace",
        "pg_attribute",
        "pg_type",
        "pg_stats",
        "pg_stat_activity",
        "pg_proc",
        "pg_database",
        "pg_stat_database",
    ] {
        c.system_relations.insert(("pg_catalog".into(), n.into()));
    }
    c.system_relations
        .insert(("information_schema".into(), "columns".into()));
    c.functions.insert(("public".into(), "lookup_email".into()));
    c.functions.insert(("public".into(), "dblink".into()));
    c.functions.insert(("public".into(), "lower".into()));
    c.functions.insert(("public".into(), "length".into()));
    c.operators.insert(("public".into(), "===".into()));
    c
}

/// Extension ownership (citext, pgcrypto trusted; dblink not), tenant operators with signatures (`=` on the
/// tenant's composite `money_amount`, `<=` on text), casts and column types.
fn resolution(c: &mut Catalog, rels: &[Relation]) {
    let r = &mut c.resolution;
    r.database = "acme".into();
    for (s, n, e) in [
        ("public", "strpos", "citext"),
        ("public", "regexp_replace", "citext"),
        ("public", "gen_random_bytes", "pgcrypto"),
        ("public", "dblink_get_result", "dblink"),
    ] {
        r.extension_functions.insert((s.into(), n.into(), e.into()));
    }
    for (s, n, e) in [
        ("public", "<>", "citext"),
        ("public", "~~", "citext"),
        ("public", "-|-", "dblink"),
    ] {
        r.extension_operators.insert((s.into(), n.into(), e.into()));
    }
    for (op, l, rt) in [
        ("=", "money_amount", "money_amount"),
        ("<=", "text", "text"),
    ] {
        c.operators.insert(("public".into(), op.into()));
        r.operator_sigs.insert(OperatorSig {
            schema: "public".into(),
            name: op.into(),
            left: Some(l.into()),
            right: Some(rt.into()),
        });
    }
    // Overloads: the tenant's `lower(text)` shadows the built-in exactly; its `length(money_amount)`
    // overloads the built-in on its own type.
    for (schema, name, arg, cat) in [
        ("public", "lower", "text", 'S'),
        ("public", "length", "money_amount", 'C'),
        ("pg_catalog", "lower", "text", 'S'),
        ("pg_catalog", "length", "text", 'S'),
        ("pg_catalog", "length", "bytea", 'U'),
    ] {
        r.function_sigs.insert(FunctionSig {
            schema: schema.into(),
            name: name.into(),
            args: vec![arg.into()],
            categories: cat.to_string(),
            defaults: 0,
            variadic: false,
            extension: None,
        });
    }
    // The tenant's btree operator class on its own type: ORDER BY, DISTINCT, ... on it run tenant code.
    r.orderings.insert(TypeOrdering {
        type_name: "money_amount".into(),
        class: "public.money_amount_ops".into(),
        extension: None,
        operators: vec![("public".into(), "<".into()), ("public".into(), "=".into())],
        functions: vec![("public".into(), "money_amount_cmp".into())],
    });
    for (container, part) in [
        ("_money_amount", "money_amount"),
        ("wallets", "money_amount"),
    ] {
        r.type_parts.insert((container.into(), part.into()));
    }
    for (a, b) in [
        ("int4", "int8"),
        ("int4", "numeric"),
        ("int8", "numeric"),
        ("varchar", "text"),
        ("name", "text"),
    ] {
        r.implicit_casts.insert((a.into(), b.into()));
    }
    for t in ["anyelement", "record", "anyarray"] {
        r.flexible_types.insert(t.into());
    }
    for rel in rels {
        for col in &rel.columns {
            r.column_types
                .entry(col.name.clone())
                .or_default()
                .insert(col.base.clone());
        }
    }
    for (n, t) in [
        ("relname", "name"),
        ("oid", "oid"),
        ("relkind", "char"),
        ("nspname", "name"),
        ("table_name", "name"),
        ("column_name", "name"),
        ("typname", "name"),
        ("typnamespace", "oid"),
    ] {
        r.column_types.entry(n.into()).or_default().insert(t.into());
    }
}
