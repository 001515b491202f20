//! The resolution part of a catalog load: functions and operators with their owning extension (pg_depend
//! `deptype = 'e'`), tenant operators' argument types, implicit casts, flexible types, and
//! column types by name (system catalogs included, so introspection queries are typed too).

use super::LoadError;
use crate::policy::catalog::Catalog;
use crate::policy::catalog::orderings::TypeOrdering;
use crate::policy::catalog::overloads::FunctionSig;
use crate::policy::catalog::resolve::{OperatorSig, Resolution};

/// Runs inside the load's repeatable-read transaction.
pub(super) async fn load(
    client: &tokio_postgres::Client,
    cat: &mut Catalog,
) -> Result<(), LoadError> {
    cat.resolution.database = client
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await?
        .get(0);
    proc_owners(client, cat).await?;
    operators(client, cat).await?;
    let r = &mut cat.resolution;
    functions(client, r).await?;
    orderings(client, r).await?;
    types(client, r).await
}

/// Functions outside pg_catalog and information_schema: an extension's (by owning extension) or the tenant's own.
async fn proc_owners(client: &tokio_postgres::Client, cat: &mut Catalog) -> Result<(), LoadError> {
    let r = &mut cat.resolution;
    for row in client
        .query(
            "SELECT n.nspname::text, p.proname::text, \
             (SELECT e.extname::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e' \
              AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass LIMIT 1) \
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await?
    {
        let (schema, name, ext): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        match ext {
            Some(e) => {
                r.extension_functions.insert((schema, name, e));
            }
            None => {
                cat.functions.insert((schema, name));
            }
        }
    }
    Ok(())
}

/// Operators outside pg_catalog: an extension's, or the tenant's own with their argument types.
async fn operators(client: &tokio_postgres::Client, cat: &mut Catalog) -> Result<(), LoadError> {
    let r = &mut cat.resolution;
    for row in client
        .query(
            "SELECT n.nspname::text, o.oprname::text, \
             (SELECT e.extname::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
              WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND d.objid = o.oid AND d.deptype = 'e' \
              AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass LIMIT 1), \
             lt.typname::text, rt.typname::text \
             FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
             LEFT JOIN pg_catalog.pg_type lt ON lt.oid = o.oprleft LEFT JOIN pg_catalog.pg_type rt ON rt.oid = o.oprright \
             WHERE n.nspname <> 'pg_catalog'",
            &[],
        )
        .await?
    {
        let (schema, name, ext): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        match ext {
            Some(e) => {
                r.extension_operators.insert((schema, name, e));
            }
            None => {
                r.operator_sigs.insert(OperatorSig {
                    schema: schema.clone(),
                    name: name.clone(),
                    left: row.get(3),
                    right: row.get(4),
                });
                cat.operators.insert((schema, name));
            }
        }
    }
    Ok(())
}

/// Implicit casts, flexible (pseudo and domain) types, and column types by name.
async fn types(client: &tokio_postgres::Client, r: &mut Resolution) -> Result<(), LoadError> {
    for row in client
        .query(
            "SELECT s.typname::text, t.typname::text FROM pg_catalog.pg_cast c \
             JOIN pg_catalog.pg_type s ON s.oid = c.castsource JOIN pg_catalog.pg_type t ON t.oid = c.casttarget \
             WHERE c.castcontext = 'i'",
            &[],
        )
        .await?
    {
        r.implicit_casts.insert((row.get(0), row.get(1)));
    }
    for row in client
        .query(
            "SELECT typname::text FROM pg_catalog.pg_type WHERE typtype IN ('p', 'd')",
            &[],
        )
        .await?
    {
        r.flexible_types.insert(row.get(0));
    }
    for row in client
        .query(
            "SELECT DISTINCT a.attname::text, bt.typname::text \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f','c') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'",
            &[],
        )
        .await?
    {
        let (name, ty): (String, String) = (row.get(0), row.get(1));
        r.column_types.entry(name).or_default().insert(ty);
    }
    Ok(())
}

/// The signatures of every function (built-ins included) whose name some function outside `pg_catalog` and
/// `information_schema` also has: what overload resolution by argument types needs.
async fn functions(client: &tokio_postgres::Client, r: &mut Resolution) -> Result<(), LoadError> {
    for row in client
        .query(
            "SELECT n.nspname::text, p.proname::text, \
             COALESCE((SELECT pg_catalog.array_agg(t.typname::text ORDER BY a.i) FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) \
               WITH ORDINALITY a(o, i) JOIN pg_catalog.pg_type t ON t.oid = a.o), '{}'::text[]), \
             COALESCE((SELECT pg_catalog.string_agg(t.typcategory::text, '' ORDER BY a.i) FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) \
               WITH ORDINALITY a(o, i) JOIN pg_catalog.pg_type t ON t.oid = a.o), ''), \
             p.pronargdefaults::int4, p.provariadic <> 0, \
             (SELECT e.extname::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e' \
              AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass LIMIT 1) \
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.proname IN (SELECT q.proname FROM pg_catalog.pg_proc q JOIN pg_catalog.pg_namespace m ON m.oid = q.pronamespace \
               WHERE m.nspname NOT IN ('pg_catalog', 'information_schema') AND m.nspname NOT LIKE 'pg\\_t%')",
            &[],
        )
        .await?
    {
        let args: Vec<String> = row.get(2);
        let categories: String = row.get(3);
        let defaults: i32 = row.get(4);
        if categories.chars().count() != args.len() {
            // An argument type not found (dropped concurrently): no signature, so a candidate for anything.
            continue;
        }
        r.function_sigs.insert(FunctionSig {
            schema: row.get(0),
            name: row.get(1),
            args,
            categories,
            defaults: usize::try_from(defaults).unwrap_or(0),
            variadic: row.get(5),
            extension: row.get(6),
        });
    }
    Ok(())
}

/// Default btree/hash operator classes outside `pg_catalog` with their family's operators and support
/// functions for the type, and which types contain which (records, arrays, ranges, domains).
async fn orderings(client: &tokio_postgres::Client, r: &mut Resolution) -> Result<(), LoadError> {
    for row in client
        .query(
            "SELECT t.typname::text, n.nspname::text || '.' || c.opcname::text, \
             (SELECT e.extname::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
              WHERE d.classid = 'pg_catalog.pg_opclass'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'e' \
              AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass LIMIT 1), \
             COALESCE((SELECT pg_catalog.array_agg(DISTINCT (on_.nspname::text || ' ' || o.oprname::text)) \
               FROM pg_catalog.pg_amop a JOIN pg_catalog.pg_operator o ON o.oid = a.amopopr \
               JOIN pg_catalog.pg_namespace on_ ON on_.oid = o.oprnamespace \
               WHERE a.amopfamily = c.opcfamily AND a.amoplefttype = c.opcintype), '{}'::text[]), \
             COALESCE((SELECT pg_catalog.array_agg(DISTINCT (pn.nspname::text || ' ' || p.proname::text)) \
               FROM pg_catalog.pg_amproc a JOIN pg_catalog.pg_proc p ON p.oid = a.amproc \
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
               WHERE a.amprocfamily = c.opcfamily AND a.amproclefttype = c.opcintype), '{}'::text[]) \
             FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_am am ON am.oid = c.opcmethod \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.opcnamespace JOIN pg_catalog.pg_type t ON t.oid = c.opcintype \
             WHERE c.opcdefault AND am.amname IN ('btree', 'hash') AND n.nspname <> 'pg_catalog'",
            &[],
        )
        .await?
    {
        let pairs = |v: Vec<String>| -> Vec<(String, String)> {
            v.into_iter()
                .filter_map(|p| p.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
                .collect()
        };
        r.orderings.insert(TypeOrdering {
            type_name: row.get(0),
            class: row.get(1),
            extension: row.get(2),
            operators: pairs(row.get(3)),
            functions: pairs(row.get(4)),
        });
    }
    // Only needed (and only loaded, so that temporary tables do not change the catalog) when some type
    // has a tenant operator class.
    if r.orderings.is_empty() {
        return Ok(());
    }
    for row in client
        .query(
            "SELECT c.typname::text, p.typname::text FROM pg_catalog.pg_type c \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
             JOIN pg_catalog.pg_type p ON p.oid = a.atttypid \
             WHERE c.typrelid <> 0 AND p.typnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace) \
             AND c.typnamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname LIKE 'pg\\_t%') \
             UNION SELECT c.typname::text, p.typname::text FROM pg_catalog.pg_type c JOIN pg_catalog.pg_type p \
             ON p.oid = CASE WHEN c.typelem <> 0 AND c.typlen = -1 THEN c.typelem WHEN c.typtype = 'd' THEN c.typbasetype END \
             WHERE p.typnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace) \
             AND c.typnamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname LIKE 'pg\\_t%') \
             UNION SELECT c.typname::text, p.typname::text FROM pg_catalog.pg_range g \
             JOIN pg_catalog.pg_type c ON c.oid = g.rngtypid JOIN pg_catalog.pg_type p ON p.oid = g.rngsubtype \
             WHERE p.typnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace) \
             AND c.typnamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname LIKE 'pg\\_t%')",
            &[],
        )
        .await?
    {
        r.type_parts.insert((row.get(0), row.get(1)));
    }
    Ok(())
}
