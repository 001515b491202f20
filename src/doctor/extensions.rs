//! Installed extensions against the policy's `trusted_extensions` (the default list without a policy): an
//! extension not on it is a finding; one that reaches other servers, databases or files, or installs an
//! untrusted procedural language, is high whatever the list says.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::{Finding, Severity};
use crate::ids::TenantId;
use crate::policy::catalog::resolve::DEFAULT_TRUSTED_EXTENSIONS;

/// Extensions that reach other databases or servers, the server's files, or run untrusted code. Any
/// `*_fdw` counts too.
const DANGEROUS: &[&str] = &[
    "dblink",
    "postgres_fdw",
    "file_fdw",
    "adminpack",
    "plpython3u",
    "plpythonu",
    "plpython2u",
    "plperlu",
    "pltclu",
];

/// Whether an extension is high risk whatever the trusted list says.
pub fn dangerous(name: &str) -> bool {
    DANGEROUS.contains(&name) || name.ends_with("_fdw")
}

/// Runs the check; `trusted` is the policy's list (`None`: no policy, the default list applies).
pub async fn check(
    tenant: &TenantId,
    client: &Client,
    trusted: Option<&BTreeSet<String>>,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT e.extname::text, e.extversion, n.nspname::text FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace ORDER BY 1",
            &[],
        )
        .await?;
    let default: BTreeSet<String> = DEFAULT_TRUSTED_EXTENSIONS
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let trusted = trusted.unwrap_or(&default);
    let mut out = Vec::new();
    for row in rows {
        let (name, version, schema): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        // plpgsql is part of every database (and trusted: it runs with the caller's privileges).
        if name == "plpgsql" {
            continue;
        }
        let object = format!("extension {name} {version} (schema {schema})");
        if dangerous(&name) {
            out.push(Finding::new(
                Severity::High,
                "untrusted-extension",
                Some(tenant),
                object,
                format!(
                    "{name} is installed: it reaches other databases or servers, the server's files, or \
                     runs untrusted code{}",
                    if trusted.contains(&name) {
                        ", and the policy lists it in trusted_extensions, so masked roles may call it"
                    } else {
                        " (pgveil refuses its functions for masked roles, unrestricted roles can use it)"
                    }
                ),
                format!(
                    "DROP EXTENSION {};{}",
                    super::privileges::quote(&name),
                    if trusted.contains(&name) {
                        " and remove it from trusted_extensions"
                    } else {
                        ""
                    }
                ),
            ));
        } else if !trusted.contains(&name) {
            out.push(Finding::new(
                Severity::Medium,
                "untrusted-extension",
                Some(tenant),
                object,
                format!(
                    "{name} is installed but not in the policy's trusted_extensions: its functions and \
                     operators are tenant code to pgveil (refused for masked roles unless allow-listed)"
                ),
                format!(
                    "DROP EXTENSION {} if unused; if every function it defines is safe for masked roles, add \
                     it to trusted_extensions",
                    super::privileges::quote(&name)
                ),
            ));
        }
    }
    Ok(out)
}
