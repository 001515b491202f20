//! `[policy]`: where the masking policies are and how the engine caches and refreshes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ids::{SecretId, TenantId};

/// Default byte budget of the masking engine's decision caches (`policy.cache_bytes`).
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;

/// The masking engine's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Folder of policy files (`*.toml`; `*.tests.toml` are test cases), or one policy file.
    pub dir: PathBuf,
    /// Per tenant, the secret id of its pseudonym key (the HMAC key of the `pseudonym` masking function).
    #[serde(default)]
    pub pseudonym_keys: BTreeMap<TenantId, SecretId>,
    /// How often each tenant's catalog snapshot is reloaded.
    #[serde(default = "default_catalog_refresh", with = "humantime_serde")]
    pub catalog_refresh: Duration,
    /// Byte budget of the decision caches (exact statements and literal-normalized plans, half each); least
    /// valuable entries are evicted beyond it.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

impl PolicyConfig {
    /// Adds every problem with this section to `problems`; `is_tenant` says whether a tenant id is configured.
    pub fn validate(&self, problems: &mut Vec<String>, is_tenant: impl Fn(&TenantId) -> bool) {
        if !self.dir.exists() {
            problems.push(format!("policy.dir {} does not exist", self.dir.display()));
        }
        for t in self.pseudonym_keys.keys() {
            if !is_tenant(t) {
                problems.push(format!("policy.pseudonym_keys: unknown tenant {t}"));
            }
        }
        if self.catalog_refresh < Duration::from_secs(1) {
            problems.push("policy.catalog_refresh must be at least 1s".to_owned());
        }
    }
}

fn default_cache_bytes() -> u64 {
    DEFAULT_CACHE_BYTES
}
fn default_catalog_refresh() -> Duration {
    Duration::from_secs(60)
}
