//! Configuration file (`pgveil.toml`): serde structs with documented fields, defaults in one place and a
//! `validate()` that reports every problem at once.
//!
//! The file holds secret *ids* and file paths only, never secret values.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ids::{RoleName, SecretId, TenantId};

/// Default proxy port (DESIGN.md "Interfaces").
pub const DEFAULT_PORT: u16 = 6432;

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
}

/// Client-facing listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address and port to listen on.
    #[serde(default = "default_listen_addr")]
    pub addr: SocketAddr,
    /// Accept tokens over plain-text (non-TLS) connections from loopback addresses. For demo and tests only;
    /// plain text from any other address is always refused.
    #[serde(default)]
    pub allow_plaintext_loopback: bool,
    /// Time allowed from TCP accept to the end of authentication.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Largest startup packet accepted, in bytes.
    #[serde(default = "default_max_startup_packet")]
    pub max_startup_packet: usize,
    /// Largest `Query`/`Parse` message accepted, in bytes (other messages, e.g. COPY data, are streamed).
    #[serde(default = "default_max_query_bytes")]
    pub max_query_bytes: usize,
    /// Maximum number of concurrent client connections.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: default_listen_addr(),
            allow_plaintext_loopback: false,
            startup_timeout: default_startup_timeout(),
            max_startup_packet: default_max_startup_packet(),
            max_query_bytes: default_max_query_bytes(),
            max_clients: default_max_clients(),
        }
    }
}

/// Server certificate and key for client TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Token verification settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Expected `iss` claim.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Ed25519 public keys (SPKI PEM files) that tokens may be signed with; several allow key rotation.
    pub verifying_keys: Vec<PathBuf>,
    /// Ed25519 private key (PKCS#8 PEM file) used by `pgveil token mint`; the proxy itself never needs it.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
}

/// Secret store selection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "lowercase")]
pub enum SecretsConfig {
    /// A JSON file mapping secret ids to values (demo and tests).
    File {
        /// Path of the JSON file.
        path: PathBuf,
    },
}

/// How a pool hands backends to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client holds one backend for its whole session.
    Session,
    /// A client holds a backend only from the first message of a transaction to the ReadyForQuery that ends
    /// it (status idle, nothing else pending); session state is carried over or the client is pinned.
    Transaction,
}

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

/// Defaults applied to every tenant's pools.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDefaults {
    /// Backend connections per (tenant, role class) pool.
    #[serde(default = "default_pool_size")]
    pub size: usize,
    /// Pool mode.
    #[serde(default = "default_pool_mode")]
    pub mode: PoolMode,
    /// How long a client waits (in a fair FIFO queue) for a free backend before it gets a 53300 error; in
    /// transaction mode this is the wait at the start of every transaction.
    #[serde(default = "default_checkout_timeout", with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Transaction mode: server-side prepared statements kept per backend connection (least recently used
    /// ones are closed beyond this).
    #[serde(default = "default_max_prepared_statements")]
    pub max_prepared_statements: usize,
    /// Timeout for opening a backend connection (TCP + TLS + authentication).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for PoolDefaults {
    fn default() -> Self {
        Self {
            size: default_pool_size(),
            mode: default_pool_mode(),
            checkout_timeout: default_checkout_timeout(),
            max_prepared_statements: default_max_prepared_statements(),
            connect_timeout: default_connect_timeout(),
        }
    }
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
}

fn default_listen_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_max_startup_packet() -> usize {
    10_000
}
fn default_max_query_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_clients() -> usize {
    10_000
}
fn default_issuer() -> String {
    "pgveil".to_owned()
}
fn default_pool_size() -> usize {
    20
}
fn default_pool_mode() -> PoolMode {
    PoolMode::Session
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_prepared_statements() -> usize {
    200
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
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
        cfg.validate().map_err(|problems| ConfigError::Invalid {
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
        self.auth.verifying_keys.iter_mut().for_each(fix);
        if let Some(k) = &mut self.auth.signing_key {
            fix(k);
        }
        match &mut self.secrets {
            SecretsConfig::File { path } => fix(path),
        }
        for t in &mut self.tenants {
            if let Some(ca) = &mut t.ca_bundle {
                fix(ca);
            }
        }
    }

    /// Checks everything that can be checked without I/O beyond file existence; returns every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.tls.is_none() && !self.listen.allow_plaintext_loopback {
            problems.push(
                "no [tls] section and listen.allow_plaintext_loopback = false: no client could ever log in"
                    .to_owned(),
            );
        }
        if let Some(tls) = &self.tls {
            for p in [&tls.cert, &tls.key] {
                if !p.exists() {
                    problems.push(format!("tls: file {} does not exist", p.display()));
                }
            }
        }
        if self.listen.max_startup_packet < 64 || self.listen.max_startup_packet > 1 << 20 {
            problems.push("listen.max_startup_packet must be between 64 and 1048576".to_owned());
        }
        if self.listen.max_query_bytes < 1024 || self.listen.max_query_bytes > 1 << 30 {
            problems.push("listen.max_query_bytes must be between 1024 and 1073741824".to_owned());
        }
        if self.listen.max_clients == 0 {
            problems.push("listen.max_clients must be at least 1".to_owned());
        }
        if self.auth.verifying_keys.is_empty() {
            problems.push("auth.verifying_keys is empty: no token could be verified".to_owned());
        }
        for p in &self.auth.verifying_keys {
            if !p.exists() {
                problems.push(format!(
                    "auth.verifying_keys: file {} does not exist",
                    p.display()
                ));
            }
        }
        if self.auth.issuer.is_empty() {
            problems.push("auth.issuer is empty".to_owned());
        }
        match &self.secrets {
            SecretsConfig::File { path } => {
                if !path.exists() {
                    problems.push(format!("secrets: file {} does not exist", path.display()));
                }
            }
        }
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
        if self.pool.size == 0 {
            problems.push("pool.size must be at least 1".to_owned());
        }
        if self.pool.max_prepared_statements == 0 {
            problems.push("pool.max_prepared_statements must be at least 1".to_owned());
        }
        let mut seen = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = format!("tenant[{i}] ({})", t.id);
            if !valid_name(t.id.as_str()) {
                problems.push(format!("{at}: id must be 1-63 chars of [A-Za-z0-9_.-]"));
            }
            if !seen.insert(&t.id) {
                problems.push(format!("{at}: duplicate tenant id"));
            }
            if t.secret.as_str().is_empty() {
                problems.push(format!("{at}: secret id is empty"));
            }
            if t.pool_size == Some(0) {
                problems.push(format!("{at}: pool_size must be at least 1"));
            }
            match (t.tls, &t.ca_bundle) {
                (BackendTlsMode::VerifyFull, None) => {
                    problems.push(format!("{at}: tls = \"verify-full\" needs ca_bundle"))
                }
                (_, Some(ca)) if !ca.exists() => {
                    problems.push(format!("{at}: ca_bundle {} does not exist", ca.display()))
                }
                _ => {}
            }
            if let Some(db) = &t.dbname
                && (db.is_empty() || db.len() > 63 || db.contains('\0'))
            {
                problems.push(format!("{at}: dbname must be 1-63 bytes"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &TenantId) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| &t.id == id)
    }
}

/// Tenant ids and role names: short, printable, no quoting needed anywhere.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_at_once() {
        let cfg = Config::parse(
            r#"
            roles = ["analyst", "analyst", "bad role"]
            [auth]
            verifying_keys = ["/nonexistent/key.pem"]
            [secrets]
            backend = "file"
            path = "/nonexistent/secrets.json"
            [pool]
            size = 0
            [[tenant]]
            id = "acme"
            secret = "s"
            tls = "verify-full"
            [[tenant]]
            id = "acme"
            secret = ""
            "#,
        )
        .unwrap();
        let problems = cfg.validate().unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "allow_plaintext_loopback",
            "verifying_keys: file",
            "secrets: file",
            "listed twice",
            "not a valid role name",
            "pool.size",
            "needs ca_bundle",
            "duplicate tenant id",
            "secret id is empty",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_location() {
        let err =
            Config::parse("roles=[\"a\"]\n[auth]\nverifying_keys=[]\npasword=\"x\"\n").unwrap_err();
        assert!(err.contains("pasword"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }
}
