//! The backend role: attributes (superuser, CREATEROLE, BYPASSRLS, REPLICATION, CREATEDB), membership in
//! predefined roles that reach files, programs or every table, ownership of the tenant's relations, CREATE on
//! schemas and on the database, and other databases of the same cluster it may connect to. Everything is
//! asked of PostgreSQL as the role itself (`pg_roles`, `pg_has_role`, `has_*_privilege`): what PostgreSQL
//! would let this login do, not what its name suggests.

use tokio_postgres::Client;

use super::{Finding, Severity};
use crate::ids::TenantId;

/// Predefined (or RDS) roles whose privileges go beyond the tenant's own database, with severity and why.
const POWERFUL_ROLES: &[(&str, Severity, &str)] = &[
    (
        "pg_execute_server_program",
        Severity::High,
        "runs programs on the database server (COPY ... PROGRAM)",
    ),
    (
        "pg_read_server_files",
        Severity::High,
        "reads any file the server can read",
    ),
    (
        "pg_write_server_files",
        Severity::High,
        "writes any file the server can write",
    ),
    (
        "rds_superuser",
        Severity::High,
        "is RDS's administrator role",
    ),
    (
        "pg_read_all_data",
        Severity::Medium,
        "reads every table of every database it can connect to",
    ),
    (
        "pg_write_all_data",
        Severity::Medium,
        "writes every table of every database it can connect to",
    ),
];

/// How many relation names a finding lists before "and N more".
const LISTED: usize = 8;

/// Runs the checks.
pub async fn check(
    tenant: &TenantId,
    client: &Client,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolbypassrls, r.rolreplication, \
             r.rolcreatedb, pg_catalog.current_database()::text, \
             pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'), \
             (SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relrowsecurity) \
             FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    let role: String = row.get(0);
    let (superuser, createrole, bypassrls, replication, createdb): (bool, bool, bool, bool, bool) =
        (row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    let (database, create_db, rls_tables): (String, bool, i64) =
        (row.get(6), row.get(7), row.get(8));
    let mut out = attributes(
        tenant,
        &role,
        [superuser, createrole, bypassrls, replication, createdb],
        rls_tables,
    );
    if !superuser {
        out.extend(memberships(tenant, client, &role).await?);
    }
    out.extend(owned_relations(tenant, client, &role, rls_tables).await?);
    out.extend(create_rights(tenant, client, &role, &database, create_db).await?);
    out.extend(shared_cluster(tenant, client, &role).await?);
    Ok(out)
}

/// Findings of the role's attributes: `[superuser, createrole, bypassrls, replication, createdb]`.
fn attributes(tenant: &TenantId, role: &str, attrs: [bool; 5], rls_tables: i64) -> Vec<Finding> {
    let [superuser, createrole, bypassrls, replication, createdb] = attrs;
    let mut out = Vec::new();
    let obj = format!("role {role}");
    let alter = |attr: &str| format!("ALTER ROLE {} {attr}; (as an administrator)", quote(role));
    let mut add = |sev, code, msg: String, fix: String| {
        out.push(Finding::new(sev, code, Some(tenant), obj.clone(), msg, fix))
    };
    if superuser {
        add(
            Severity::High,
            "backend-superuser",
            "the backend role is a superuser: it reads and writes every database of the cluster, files and \
             programs on the server; one statement the firewall lets through is a full compromise"
                .into(),
            format!(
                "{} and give it only the privileges the application needs on its own tables",
                alter("NOSUPERUSER")
            ),
        );
    }
    if createrole {
        add(
            Severity::High,
            "backend-createrole",
            "the backend role has CREATEROLE: it can create login roles and change other roles' passwords \
             and memberships"
                .into(),
            alter("NOCREATEROLE"),
        );
    }
    if bypassrls {
        let (sev, why) = if rls_tables > 0 {
            (
                Severity::High,
                format!(
                    "{rls_tables} relation(s) of this database have row-level security, which it ignores"
                ),
            )
        } else {
            (
                Severity::Medium,
                "no relation uses row-level security yet; any policy added later would not apply to it"
                    .to_owned(),
            )
        };
        add(
            sev,
            "backend-bypassrls",
            format!("the backend role has BYPASSRLS: {why}"),
            alter("NOBYPASSRLS"),
        );
    }
    if replication {
        add(
            Severity::High,
            "backend-replication",
            "the backend role has REPLICATION: a physical replication connection streams every database of \
             the cluster, other tenants' included"
                .into(),
            alter("NOREPLICATION"),
        );
    }
    if createdb {
        add(
            Severity::Low,
            "backend-createdb",
            "the backend role has CREATEDB: it can create databases in the cluster".into(),
            alter("NOCREATEDB"),
        );
    }
    out
}

async fn memberships(
    tenant: &TenantId,
    client: &Client,
    role: &str,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let names: Vec<&str> = POWERFUL_ROLES.iter().map(|(n, _, _)| *n).collect();
    let rows = client
        .query(
            "SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE r.rolname::text = ANY($1) \
             AND pg_catalog.pg_has_role(current_user, r.oid, 'USAGE')",
            &[&names],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        if let Some((_, sev, what)) = POWERFUL_ROLES.iter().find(|(n, _, _)| *n == name) {
            out.push(Finding::new(
                *sev,
                "backend-powerful-role",
                Some(tenant),
                format!("role {role}"),
                format!("the backend role has the privileges of {name}, which {what}"),
                format!("REVOKE {name} FROM {};", quote(role)),
            ));
        }
    }
    Ok(out)
}

async fn owned_relations(
    tenant: &TenantId,
    client: &Client,
    role: &str,
    rls_tables: i64,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    // Owner privileges are those of any role whose privileges it has (pg_has_role USAGE), as PostgreSQL
    // checks them.
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','v','m','f') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
             AND pg_catalog.pg_has_role(c.relowner, 'USAGE') ORDER BY 1, 2",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let rls = if rls_tables > 0 {
        " and row-level security does not apply to an owner unless FORCE ROW LEVEL SECURITY is set"
    } else {
        ""
    };
    Ok(vec![Finding::new(
        Severity::Medium,
        "backend-owns-relations",
        Some(tenant),
        format!("role {role}"),
        format!(
            "the backend role owns (or has the privileges of the owner of) {} relation(s): {}; an owner can \
             ALTER, DROP and TRUNCATE them and GRANT on them{rls}",
            names.len(),
            listed(&names)
        ),
        format!(
            "make another role the owner (ALTER TABLE ... OWNER TO <owner>) and GRANT {} only what the \
             application needs (SELECT, INSERT, UPDATE, DELETE)",
            quote(role)
        ),
    )])
}

async fn create_rights(
    tenant: &TenantId,
    client: &Client,
    role: &str,
    database: &str,
    create_db: bool,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname::text FROM pg_catalog.pg_namespace n \
             WHERE pg_catalog.has_schema_privilege(n.oid, 'CREATE') \
             AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' ORDER BY 1",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let schema: String = row.get(0);
        out.push(Finding::new(
            Severity::Medium,
            "create-on-schema",
            Some(tenant),
            format!("schema {schema}"),
            format!(
                "the backend role may CREATE in schema {schema}: functions, operators and views defined \
                 there are tenant code the firewall must refuse for masked roles (and could shadow \
                 built-ins on the search path)"
            ),
            format!(
                "REVOKE CREATE ON SCHEMA {} FROM {} (and FROM PUBLIC; a schema owner always has it: change \
                 the owner)",
                quote(&schema),
                quote(role)
            ),
        ));
    }
    if create_db {
        out.push(Finding::new(
            Severity::Medium,
            "create-on-database",
            Some(tenant),
            format!("database {database}"),
            "the backend role may CREATE schemas in its database (and so define functions and operators in \
             them)",
            format!(
                "REVOKE CREATE ON DATABASE {} FROM {} (and FROM PUBLIC; the database owner always has it: \
                 change the owner)",
                quote(database),
                quote(role)
            ),
        ));
    }
    Ok(out)
}

async fn shared_cluster(
    tenant: &TenantId,
    client: &Client,
    role: &str,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    // `postgres` and RDS's `rdsadmin` exist in every cluster; templates and databases that refuse
    // connections cannot be reached.
    let rows = client
        .query(
            "SELECT d.datname::text, pg_catalog.has_database_privilege(d.oid, 'CONNECT') \
             FROM pg_catalog.pg_database d WHERE d.datname <> pg_catalog.current_database() \
             AND NOT d.datistemplate AND d.datallowconn AND d.datname NOT IN ('postgres', 'rdsadmin') \
             ORDER BY 1",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let others: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let reachable: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let roles: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolcanlogin AND rolname <> current_user",
            &[],
        )
        .await?
        .get(0);
    let shared = format!(
        "the cluster holds {} other database(s) ({}); their names, {roles} other login role(s) and the \
         tablespaces are visible to this role through pg_database, pg_roles and pg_tablespace",
        others.len(),
        listed(&others)
    );
    Ok(vec![if reachable.is_empty() {
        Finding::new(
            Severity::Info,
            "shared-cluster",
            Some(tenant),
            "cluster",
            shared,
            "none needed; a cluster per tenant hides the other tenants' names",
        )
    } else {
        Finding::new(
            Severity::Medium,
            "shared-cluster",
            Some(tenant),
            "cluster",
            format!(
                "{shared}; the backend role may CONNECT to {}",
                listed(&reachable)
            ),
            format!(
                "REVOKE CONNECT ON DATABASE <each> FROM PUBLIC (and from {}), granting CONNECT only to each \
                 database's own roles; or one cluster per tenant",
                quote(role)
            ),
        )
    }])
}

/// The first names and a count of the rest.
fn listed(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LISTED {
        s.push_str(&format!(" and {} more", names.len() - LISTED));
    }
    s
}

/// An identifier quoted for the printed fix (always: case and keywords are kept exactly).
pub(super) fn quote(ident: &str) -> String {
    crate::policy::functions::quote_ident(ident)
}
