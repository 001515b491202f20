//! How pgveil reaches the tenant's backend: the TLS mode of the tenant's config and the authentication method
//! the server asked for when the doctor connected (as the pool connects). What can be told this way: the
//! method used for this role from this host (pg_hba.conf line and how the password is stored together:
//! an md5 line challenges a SCRAM-stored password with SCRAM). What cannot: the stored password itself
//! (`pg_authid` is for superusers), other pg_hba.conf lines.

use std::net::IpAddr;

use tokio_postgres::Client;

use super::{Finding, Severity};
use crate::backend::connect::AuthMethod;
use crate::config::BackendTlsMode;
use crate::ids::TenantId;

/// Whether a backend host is this machine (a TLS-less link then never leaves it).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The finding for the tenant's configured TLS mode, if any.
pub fn tls_mode(tenant: &TenantId, mode: BackendTlsMode, host: &str) -> Vec<Finding> {
    let object = format!("backend {host}");
    match mode {
        BackendTlsMode::VerifyFull => Vec::new(),
        BackendTlsMode::Require => vec![Finding::new(
            Severity::Medium,
            "backend-tls-unverified",
            Some(tenant),
            object,
            "tls = \"require\": the backend's certificate is not verified, so a machine in the middle can \
             read the data and the authentication exchange",
            "set tls = \"verify-full\" and ca_bundle (e.g. the RDS CA bundle)",
        )],
        BackendTlsMode::Disable if is_loopback(host) => vec![Finding::new(
            Severity::Low,
            "backend-tls-off",
            Some(tenant),
            object,
            "tls = \"disable\": the backend is on this machine, so the plain-text link does not leave it",
            "set tls = \"verify-full\" with ca_bundle if the database ever moves to another host",
        )],
        BackendTlsMode::Disable => vec![Finding::new(
            Severity::High,
            "backend-tls-off",
            Some(tenant),
            object,
            "tls = \"disable\" towards a backend on another host: query results (PII included) cross the \
             network in plain text",
            "enable TLS on the server and set tls = \"verify-full\" and ca_bundle",
        )],
    }
}

/// The finding for the authentication method the server used, if any; `pg_stat_ssl` confirms what the
/// connection is.
pub async fn auth(
    tenant: &TenantId,
    method: AuthMethod,
    mode: BackendTlsMode,
    client: &Client,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, pg_catalog.current_setting('password_encryption'), \
             coalesce((SELECT s.ssl FROM pg_catalog.pg_stat_ssl s WHERE s.pid = pg_catalog.pg_backend_pid()), false)",
            &[],
        )
        .await?;
    let (role, encryption, ssl): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    let object = format!("role {role}");
    let quoted = super::privileges::quote(&role);
    let rotate = format!(
        "SET password_encryption = 'scram-sha-256'; ALTER ROLE {quoted} PASSWORD '<new>' (store it in the \
         secret), and use scram-sha-256 in pg_hba.conf"
    );
    let finding = |sev, code, msg: String, fix: String| {
        vec![Finding::new(
            sev,
            code,
            Some(tenant),
            object.clone(),
            msg,
            fix,
        )]
    };
    let link = if ssl { "over TLS" } else { "in plain text" };
    Ok(match method {
        AuthMethod::ScramSha256 => Vec::new(),
        AuthMethod::Md5 => finding(
            Severity::Medium,
            "backend-auth-md5",
            format!(
                "the server authenticated the backend role with md5 ({link}): the stored md5 hash is as good as \
                 the password, and PostgreSQL deprecates md5 passwords (password_encryption is \
                 {encryption})"
            ),
            rotate,
        ),
        AuthMethod::Cleartext => finding(
            if ssl && mode == BackendTlsMode::VerifyFull {
                Severity::Medium
            } else {
                Severity::High
            },
            "backend-auth-cleartext",
            format!(
                "the server asked for the backend role's password in clear text ({link}{})",
                if ssl && mode != BackendTlsMode::VerifyFull {
                    ", to a server whose certificate is not verified"
                } else {
                    ""
                }
            ),
            format!("use scram-sha-256 in pg_hba.conf for this role; {rotate}"),
        ),
        AuthMethod::None => finding(
            Severity::High,
            "backend-auth-none",
            "the server let the backend role in without a password (trust): anyone reaching the server \
             can connect as it"
                .into(),
            "replace trust by scram-sha-256 in pg_hba.conf".into(),
        ),
    })
}
