//! The resolution part of a catalog load: functions and operators with their owning extension (pg_depend
//! `deptype = 'e'`), tenant operators' argument types, implicit casts, flexible types, and
//! column types by name (system catalogs included, so introspection queries are typed too).

use super::LoadError;
use crate::policy::catalog::Catalog;
use crate::policy::catalog::resolve::OperatorSig;

/// Runs inside the load's repeatable-read transaction.
pub(super) async fn load(
    client: &tokio_postgres::Client,
    cat: &mut Catalog,
) -> Result<(), LoadError> {
    let r = &mut cat.resolution;
    r.database = client
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await?
        .get(0);
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
