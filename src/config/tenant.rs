//! `[[tenant]]`: one merchant, its backend database and the secret holding its credentials.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Deserialize;

use super::names::{check_secret_id, valid_name};
use super::pool::PoolMode;
use crate::ids::{SecretId, TenantId};

/// TLS towards a backend database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS without certificate verification (like libpq `sslmode=require`).
    Require,
    /// TLS with certificate and host name verification against `ca_bundle`.
    VerifyFull,
}

/// One tenant (merchant) and its backend database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant id, as in the token's `tenant` claim.
    pub id: TenantId,
    /// Secret id of the backend credentials (RDS JSON: username, password, host, port, dbname).
    pub secret: SecretId,
    /// Backend host; when absent, the secret's `host`.
    #[serde(default)]
    pub host: Option<String>,
    /// Backend port; when absent, the secret's `port`, else 5432.
    #[serde(default)]
    pub port: Option<u16>,
    /// Backend database name; when absent, the secret's `dbname`. Clients may name it (or leave it empty).
    #[serde(default)]
    pub dbname: Option<String>,
    /// TLS towards the backend.
    #[serde(default)]
    pub tls: BackendTlsMode,
    /// CA bundle (PEM) for `tls = "verify-full"`, e.g. the RDS CA.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Pool size override.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Pool mode override.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Maximum concurrent client sessions of this tenant on this instance; absent: no cap.
    #[serde(default)]
    pub max_clients: Option<usize>,
    /// When the tenant went live with real data (RFC 3339, or a date `YYYY-MM-DD` meaning midnight UTC).
    /// From `live_since` + 7 days every user needs MFA; before that, sessions without MFA get a countdown
    /// notice. Absent: test data only (MFA not required unless `require_mfa`).
    #[serde(default, deserialize_with = "super::time::deserialize_opt_time")]
    pub live_since: Option<SystemTime>,
    /// Require MFA for this tenant's users at once, whatever `live_since` says (e.g. test-mode tenants).
    #[serde(default)]
    pub require_mfa: bool,
}

impl TenantConfig {
    /// Adds every problem with this tenant (the `i`th) to `problems` (`offline`: the CA bundle need not
    /// exist). Duplicate ids are checked by the caller, which sees every tenant.
    pub fn validate(&self, i: usize, problems: &mut Vec<String>, offline: bool) {
        let at = format!("tenant[{i}] ({})", self.id);
        if !valid_name(self.id.as_str()) {
            problems.push(format!("{at}: id must be 1-63 chars of [A-Za-z0-9_.-]"));
        }
        check_secret_id(&at, &self.secret, problems);
        if self.pool_size == Some(0) {
            problems.push(format!("{at}: pool_size must be at least 1"));
        }
        match (self.tls, &self.ca_bundle) {
            (BackendTlsMode::VerifyFull, None) => {
                problems.push(format!("{at}: tls = \"verify-full\" needs ca_bundle"))
            }
            (_, Some(ca)) if !offline && !ca.exists() => {
                problems.push(format!("{at}: ca_bundle {} does not exist", ca.display()))
            }
            _ => {}
        }
        if let Some(db) = &self.dbname
            && (db.is_empty() || db.len() > 63 || db.contains('\0'))
        {
            problems.push(format!("{at}: dbname must be 1-63 bytes"));
        }
    }
}
