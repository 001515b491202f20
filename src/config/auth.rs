//! `[auth]`: how tokens are verified (and minted by `pgveil token mint` and the API).

use std::time::Duration;

use serde::Deserialize;

use super::names::check_secret_id;
use crate::ids::SecretId;

/// Token verification settings. Keys are secret ids in the configured secret store, never files or values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Expected `iss` claim.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Secret ids of the Ed25519 public keys (SPKI PEM text) tokens may be signed with; several allow key
    /// rotation. Read from the secret store at start-up.
    pub verifying_key_secrets: Vec<SecretId>,
    /// Secret id of the Ed25519 private key (PKCS#8 PEM text) used by `pgveil token mint`; the proxy itself never
    /// reads it.
    #[serde(default)]
    pub signing_key_secret: Option<SecretId>,
    /// Longest token lifetime (`exp - iat`) minted (`pgveil token mint`, the API) or accepted; revocations
    /// of tokens whose expiry is unknown are kept this long. Default 7 days.
    #[serde(default = "default_max_token_ttl", with = "humantime_serde")]
    pub max_token_ttl: Duration,
}

impl AuthConfig {
    /// Adds every problem with this section to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.verifying_key_secrets.is_empty() {
            problems
                .push("auth.verifying_key_secrets is empty: no token could be verified".to_owned());
        }
        for id in self
            .verifying_key_secrets
            .iter()
            .chain(&self.signing_key_secret)
        {
            check_secret_id("auth", id, problems);
        }
        if self.issuer.is_empty() {
            problems.push("auth.issuer is empty".to_owned());
        }
        if self.max_token_ttl < Duration::from_secs(60)
            || self.max_token_ttl > Duration::from_secs(366 * 24 * 3600)
        {
            problems.push("auth.max_token_ttl must be between 1m and 366d".to_owned());
        }
    }
}

fn default_issuer() -> String {
    "pgveil".to_owned()
}
fn default_max_token_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
