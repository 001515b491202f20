//! Configuration file (`pgveil.toml`): serde structs with documented fields, defaults in one place and a
//! `validate()` that reports every problem at once.
//!
//! The file holds secret *ids* and file paths only, never secret values. Each section lives in its own
//! module with its defaults and its checks; this module is a leaf of the crate: it imports no other pgveil
//! module but [`crate::ids`], and subsystems take their section from here.

mod api;
mod audit;
mod auth;
mod control;
mod listen;
mod metrics;
mod names;
mod policy;
mod pool;
mod secrets;
mod tenant;
mod time;
mod tls;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::api::{
    ApiConfig, DEFAULT_API_PORT, OidcConfig, ThrottleConfig, WebappConfig, demo_mode,
    parse_trusted_proxies,
};
pub use self::audit::AuditConfig;
pub use self::auth::AuthConfig;
pub use self::control::ControlConfig;
pub use self::listen::{DEFAULT_PORT, ListenConfig};
pub use self::metrics::MetricsConfig;
use self::names::valid_name;
pub use self::policy::{DEFAULT_CACHE_BYTES, PolicyConfig};
pub use self::pool::{PoolDefaults, PoolMode};
pub use self::secrets::{SecretBackend, SecretsConfig};
pub use self::tenant::{BackendTlsMode, TenantConfig};
pub use self::time::{deserialize_opt_time, parse_time};
pub use self::tls::TlsConfig;
use crate::ids::{RoleName, TenantId};

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// TOML syntax or unknown/missing fields (the message carries line and column).
    #[error("{path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Parser message with location.
        message: String,
    },
    /// One or more semantic problems, all listed.
    #[error("{path}: invalid configuration:\n  - {}", problems.join("\n  - "))]
    Invalid {
        /// File path.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing listener.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Server TLS certificate for clients. Without it, only loopback plain-text clients can connect, and only
    /// when `listen.allow_plaintext_loopback` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Token verification.
    pub auth: AuthConfig,
    /// Where secrets (backend credentials) come from.
    pub secrets: SecretsConfig,
    /// Roles that tokens may carry; a token with any other role is refused.
    pub roles: Vec<RoleName>,
    /// Tenants: one backend database each.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// Defaults for every tenant's pools.
    #[serde(default)]
    pub pool: PoolDefaults,
    /// PII masking. Without this section every statement of every role is relayed unchanged.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Control database (users, MFA enrolment, revocations). Without it, tokens are checked offline only:
    /// no revocation, no disabled users, and the HTTP API cannot run.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// HTTP API (enrolment, login, admin) and security page. Needs `[control]`.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Prometheus `/metrics` over plain HTTP (bind it to a loopback or internal address).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Audit records: where they go (process log or a file) and the writer's queue.
    #[serde(default)]
    pub audit: AuditConfig,
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_checked(path, false)
    }

    /// Loads a config for tools that connect to nothing (`pgveil policy explain|test --catalog`): like
    /// [`Config::load`], but files only needed to serve clients or reach backends (TLS certificate and key,
    /// the secrets file, backend CA bundles) need not exist on this machine.
    pub fn load_offline(path: &Path) -> Result<Config, ConfigError> {
        Config::load_checked(path, true)
    }

    fn load_checked(path: &Path, offline: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        if let Some(base) = path.parent() {
            cfg.resolve_paths(base);
        }
        cfg.problems(offline)
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })?;
        Ok(cfg)
    }

    /// Parses TOML text without validating it.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(p) = &mut self.secrets.path {
            fix(p);
        }
        if let Some(api) = &mut self.api {
            api.resolve_paths(base);
        }
        if let Some(ca) = self.control.as_mut().and_then(|c| c.ca_bundle.as_mut()) {
            fix(ca);
        }
        for t in &mut self.tenants {
            if let Some(ca) = &mut t.ca_bundle {
                fix(ca);
            }
        }
        if let Some(p) = &mut self.policy {
            fix(&mut p.dir);
        }
        if let Some(f) = &mut self.audit.file {
            fix(f);
        }
    }

    /// Checks everything that can be checked without I/O beyond file existence; returns every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        self.problems(false)
    }

    /// [`Config::validate`]; `offline` skips the existence of files only needed to serve or connect.
    fn problems(&self, offline: bool) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.tls.is_none() && !self.listen.allow_plaintext_loopback {
            problems.push(
                "no [tls] section and listen.allow_plaintext_loopback = false: no client could ever log in"
                    .to_owned(),
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate(&mut problems, offline);
        }
        self.listen.validate(&mut problems);
        for t in self.tenants.iter().filter(|t| t.max_clients == Some(0)) {
            problems.push(format!("tenant {}: max_clients must be at least 1", t.id));
        }
        self.auth.validate(&mut problems);
        self.secrets.validate(&mut problems, offline);
        self.roles_problems(&mut problems);
        self.pool.validate(&mut problems);
        let mut seen = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            t.validate(i, &mut problems, offline);
            if !seen.insert(&t.id) {
                problems.push(format!("tenant[{i}] ({}): duplicate tenant id", t.id));
            }
        }
        if let Some(p) = &self.policy {
            p.validate(&mut problems, |t| self.tenant(t).is_some());
        }
        if let Some(control) = &self.control {
            control.validate(&mut problems, offline);
        }
        if let Some(api) = &self.api {
            self.api_problems(api, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn roles_problems(&self, problems: &mut Vec<String>) {
        if self.roles.is_empty() {
            problems.push("roles is empty: no token could be accepted".to_owned());
        }
        let mut seen_roles = HashSet::new();
        for r in &self.roles {
            if !valid_name(r.as_str()) {
                problems.push(format!(
                    "roles: {:?} is not a valid role name ([A-Za-z0-9_.-], 1-63 chars)",
                    r.as_str()
                ));
            }
            if !seen_roles.insert(r) {
                problems.push(format!("roles: {:?} listed twice", r.as_str()));
            }
        }
    }

    /// `[api]` and what it needs from the other sections.
    fn api_problems(&self, api: &ApiConfig, problems: &mut Vec<String>) {
        if self.control.is_none() {
            problems.push("[api] needs a [control] section (the control database)".to_owned());
        }
        if self.auth.signing_key_secret.is_none() {
            problems.push("[api] needs auth.signing_key_secret to mint tokens".to_owned());
        }
        api.validate(problems);
        if api.token_ttl > self.auth.max_token_ttl {
            problems.push("api.token_ttl must not exceed auth.max_token_ttl".to_owned());
        }
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &TenantId) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| &t.id == id)
    }
}

#[cfg(test)]
mod tests;
