//! `[secrets]`: which secret store holds backend credentials and pgveil's keys, and how values are cached.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Which secret store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretBackend {
    /// AWS Secrets Manager (production).
    Aws,
    /// A local JSON file mapping secret ids to values (demo and tests; pgveil warns when it is used elsewhere).
    File,
}

/// Secret store selection and caching.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// `aws` or `file`.
    pub backend: SecretBackend,
    /// `file`: path of the JSON file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `aws`: region; default from the standard AWS chain (`AWS_REGION`, profile, instance metadata).
    #[serde(default)]
    pub region: Option<String>,
    /// `aws`: endpoint override (a VPC endpoint, or moto/LocalStack for local testing).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `aws`: `VersionStage` to read; default the service's (`AWSCURRENT`).
    #[serde(default)]
    pub version_stage: Option<String>,
    /// `aws`: when a backend rejects freshly fetched credentials, also try the `AWSPENDING` version (covers the
    /// window of a rotation between "set the new password" and "promote it to AWSCURRENT").
    #[serde(default)]
    pub try_pending: bool,
    /// `aws`: time allowed for one GetSecretValue, retries included.
    #[serde(default = "default_secret_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A cached value older than this is fetched again before use.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Values older than `cache_ttl - refresh_ahead` are refreshed in the background while still served.
    #[serde(default = "default_refresh_ahead", with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// While the store is unreachable, cached values are served until they are this old (since their fetch);
    /// after that new backend connections fail. Must be at least `cache_ttl`.
    #[serde(default = "default_max_stale", with = "humantime_serde")]
    pub max_stale: Duration,
    /// After a failed fetch, the store is not asked again for this long (the cached value is served meanwhile).
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
}

impl SecretsConfig {
    /// A `file` store at `path` with default cache settings.
    pub fn file(path: PathBuf) -> SecretsConfig {
        SecretsConfig {
            backend: SecretBackend::File,
            path: Some(path),
            region: None,
            endpoint: None,
            version_stage: None,
            try_pending: false,
            timeout: default_secret_timeout(),
            cache_ttl: default_cache_ttl(),
            refresh_ahead: default_refresh_ahead(),
            max_stale: default_max_stale(),
            retry_after: default_retry_after(),
        }
    }

    /// An `aws` store with default cache settings.
    pub fn aws(region: Option<String>, endpoint: Option<String>) -> SecretsConfig {
        SecretsConfig {
            backend: SecretBackend::Aws,
            path: None,
            region,
            endpoint,
            ..SecretsConfig::file(PathBuf::new())
        }
    }

    /// Adds every problem with this section to `problems` (`offline`: the secrets file need not exist, for
    /// tools that read no secret).
    pub fn validate(&self, problems: &mut Vec<String>, offline: bool) {
        match self.backend {
            SecretBackend::File => match &self.path {
                None => problems.push("secrets: backend = \"file\" needs path".to_owned()),
                Some(p) if !offline && !p.exists() => {
                    problems.push(format!("secrets: file {} does not exist", p.display()))
                }
                Some(_) => {}
            },
            SecretBackend::Aws => {
                if self.path.is_some() {
                    problems.push("secrets: path is only for backend = \"file\"".to_owned());
                }
            }
        }
        if self.backend != SecretBackend::Aws
            && (self.region.is_some()
                || self.endpoint.is_some()
                || self.version_stage.is_some()
                || self.try_pending)
        {
            problems.push("secrets: region, endpoint, version_stage and try_pending are only for backend = \"aws\"".into());
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            problems.push(format!(
                "secrets: endpoint {e:?} must be an http:// or https:// URL"
            ));
        }
        if self.cache_ttl.is_zero() {
            problems.push("secrets: cache_ttl must be more than 0".to_owned());
        }
        if self.refresh_ahead >= self.cache_ttl {
            problems.push("secrets: refresh_ahead must be shorter than cache_ttl".to_owned());
        }
        if self.max_stale < self.cache_ttl {
            problems.push("secrets: max_stale must be at least cache_ttl".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("secrets: timeout must be more than 0".to_owned());
        }
    }
}

fn default_secret_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_refresh_ahead() -> Duration {
    Duration::from_secs(60)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(3600)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_are_valid() {
        let mut problems = Vec::new();
        SecretsConfig::aws(Some("eu-west-1".into()), None).validate(&mut problems, false);
        SecretsConfig::file(PathBuf::from("/nonexistent.json")).validate(&mut problems, true);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
