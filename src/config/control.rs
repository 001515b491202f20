//! `[control]`: where the control database is and the keys that protect what it holds.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::tenant::BackendTlsMode;
use crate::ids::SecretId;

/// `[control]`: where the control database is and the keys that protect what it holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Secret id of the control database credentials (RDS JSON: username, password, host, port, dbname).
    pub secret: SecretId,
    /// Secret id of the 256-bit key that encrypts TOTP secrets at rest (AES-256-GCM): 64 hex characters or
    /// standard base64 of 32 bytes.
    pub totp_key_secret: SecretId,
    /// Connections to the control database per pgveil instance.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How often each proxy reloads revocations and disabled users: the upper bound on how long a revoked
    /// token or disabled user can still open sessions on another instance (the instance that handled the
    /// revocation applies it at once).
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub revocation_refresh: Duration,
    /// If the control database cannot be read for this long, new connections are refused (fail closed).
    #[serde(default = "default_max_stale", with = "humantime_serde")]
    pub revocation_max_stale: Duration,
    /// TLS to the control database: `disable` (default; loopback or a trusted private link only),
    /// `require` (encrypted, server not authenticated) or `verify-full` (recommended: certificate and host
    /// name checked against `ca_bundle`).
    #[serde(default)]
    pub tls: BackendTlsMode,
    /// CA bundle (PEM) for `tls = "verify-full"`, e.g. the RDS CA bundle.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

fn default_pool_size() -> usize {
    8
}
fn default_refresh() -> Duration {
    Duration::from_secs(2)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(300)
}

impl ControlConfig {
    /// Adds every problem with this section to `problems` (`offline`: files need not exist).
    pub fn validate(&self, problems: &mut Vec<String>, offline: bool) {
        match (self.tls, &self.ca_bundle) {
            (BackendTlsMode::VerifyFull, None) => {
                problems.push("control: tls = \"verify-full\" needs ca_bundle".into())
            }
            (_, Some(ca)) if !offline && !ca.exists() => problems.push(format!(
                "control: ca_bundle {} does not exist",
                ca.display()
            )),
            _ => {}
        }
        if self.secret.as_str().is_empty() {
            problems.push("control.secret is empty".into());
        }
        if self.totp_key_secret.as_str().is_empty() {
            problems.push("control.totp_key_secret is empty".into());
        }
        if self.pool_size == 0 {
            problems.push("control.pool_size must be at least 1".into());
        }
        if self.revocation_refresh < Duration::from_millis(100)
            || self.revocation_refresh > Duration::from_secs(60)
        {
            problems.push("control.revocation_refresh must be between 100ms and 60s".into());
        }
        if self.revocation_max_stale < self.revocation_refresh {
            problems
                .push("control.revocation_max_stale must be at least revocation_refresh".into());
        }
    }
}
