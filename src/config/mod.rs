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
    /// PII masking. Without this section every statement of every role is relayed unchanged.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Control database (users, MFA enrolment, revocations). Without it, tokens are checked offline only:
    /// no revocation, no disabled users, and the HTTP API cannot run.
    #[serde(default)]
    pub control: Option<crate::control::ControlConfig>,
    /// HTTP API (enrolment, login, admin) and security page. Needs `[control]`.
    #[serde(default)]
    pub api: Option<crate::api::ApiConfig>,
    /// Prometheus `/metrics` over plain HTTP (bind it to a loopback or internal address).
    #[serde(default)]
    pub metrics: Option<crate::telemetry::MetricsConfig>,
    /// Audit records: where they go (process log or a file) and the writer's queue.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
}

/// The masking engine's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Folder of policy files (`*.toml`; `*.tests.toml` are test cases), or one policy file.
    pub dir: PathBuf,
    /// Per tenant, the secret id of its pseudonym key (the HMAC key of the `pseudonym` masking function).
    #[serde(default)]
    pub pseudonym_keys: std::collections::BTreeMap<TenantId, SecretId>,
    /// How often each tenant's catalog snapshot is reloaded.
    #[serde(default = "default_catalog_refresh", with = "humantime_serde")]
    pub catalog_refresh: Duration,
    /// Byte budget of the decision caches (exact statements and literal-normalized plans, half each); least
    /// valuable entries are evicted beyond it.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
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
    /// Maximum number of concurrent authenticated client sessions. Connections still in their startup phase
    /// (handshake and authentication) count against `max_startups` instead, so sockets that never
    /// authenticate cannot keep real clients out.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Maximum number of connections in their startup phase (before authentication completes) at once;
    /// beyond it new connections get 53300. Each is also bounded in time by `startup_timeout`.
    #[serde(default = "default_max_startups")]
    pub max_startups: usize,
    /// Maximum concurrent sessions of one user (token subject) on this instance; absent: no cap.
    #[serde(default)]
    pub max_sessions_per_user: Option<usize>,
    /// Close sessions whose client sends nothing for this long outside a transaction (57P05); absent: never.
    #[serde(default, with = "humantime_serde")]
    pub client_idle_timeout: Option<Duration>,
    /// Close sessions whose client sends nothing for this long inside a transaction (25P03; the transaction is
    /// rolled back and its backend freed); absent: never.
    #[serde(default, with = "humantime_serde")]
    pub idle_transaction_timeout: Option<Duration>,
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
            max_startups: default_max_startups(),
            max_sessions_per_user: None,
            client_idle_timeout: None,
            idle_transaction_timeout: None,
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

fn default_max_token_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

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

    /// `offline`: the secrets file need not exist (tools that read no secret).
    fn problems(&self, problems: &mut Vec<String>, offline: bool) {
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
    /// Limit on each step pgveil runs on a backend outside a client's conversation (draining unsynced
    /// messages, rollback, `DISCARD ALL`, applying or reading back settings). A backend that does not answer in
    /// time is cancelled and closed, never returned to its pool.
    #[serde(default = "default_reset_timeout", with = "humantime_serde")]
    pub reset_timeout: Duration,
    /// How often idle pooled backends are checked, without a round trip, for having been closed by the
    /// server (restart, `pg_terminate_backend`, idle timeout); dead ones are removed from their pool. `0s`
    /// turns the periodic check off (idle backends are still checked when they are checked out).
    #[serde(default = "default_idle_check_interval", with = "humantime_serde")]
    pub idle_check_interval: Duration,
}

impl Default for PoolDefaults {
    fn default() -> Self {
        Self {
            size: default_pool_size(),
            mode: default_pool_mode(),
            checkout_timeout: default_checkout_timeout(),
            max_prepared_statements: default_max_prepared_statements(),
            connect_timeout: default_connect_timeout(),
            reset_timeout: default_reset_timeout(),
            idle_check_interval: default_idle_check_interval(),
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
    /// Maximum concurrent client sessions of this tenant on this instance; absent: no cap.
    #[serde(default)]
    pub max_clients: Option<usize>,
    /// When the tenant went live with real data (RFC 3339, or a date `YYYY-MM-DD` meaning midnight UTC).
    /// From `live_since` + 7 days every user needs MFA; before that, sessions without MFA get a countdown
    /// notice. Absent: test data only (MFA not required unless `require_mfa`).
    #[serde(default, deserialize_with = "crate::mfa::policy::deserialize_opt_time")]
    pub live_since: Option<std::time::SystemTime>,
    /// Require MFA for this tenant's users at once, whatever `live_since` says (e.g. test-mode tenants).
    #[serde(default)]
    pub require_mfa: bool,
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
fn default_max_startups() -> usize {
    1_000
}
fn default_issuer() -> String {
    "pgveil".to_owned()
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
fn default_reset_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_check_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_cache_bytes() -> u64 {
    crate::policy::engine::DEFAULT_CACHE_BYTES
}
fn default_catalog_refresh() -> Duration {
    Duration::from_secs(60)
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
        if let Some(tls) = self.tls.as_ref().filter(|_| !offline) {
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
        for (name, t) in [
            ("client_idle_timeout", self.listen.client_idle_timeout),
            (
                "idle_transaction_timeout",
                self.listen.idle_transaction_timeout,
            ),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                problems.push(format!(
                    "listen.{name} must be positive (leave it out for none)"
                ));
            }
        }
        if self.listen.max_sessions_per_user == Some(0) {
            problems.push("listen.max_sessions_per_user must be at least 1".to_owned());
        }
        for t in self.tenants.iter().filter(|t| t.max_clients == Some(0)) {
            problems.push(format!("tenant {}: max_clients must be at least 1", t.id));
        }
        if self.listen.max_clients == 0 {
            problems.push("listen.max_clients must be at least 1".to_owned());
        }
        if self.auth.verifying_key_secrets.is_empty() {
            problems
                .push("auth.verifying_key_secrets is empty: no token could be verified".to_owned());
        }
        for id in self
            .auth
            .verifying_key_secrets
            .iter()
            .chain(&self.auth.signing_key_secret)
        {
            check_secret_id("auth", id, &mut problems);
        }
        if self.auth.issuer.is_empty() {
            problems.push("auth.issuer is empty".to_owned());
        }
        if self.auth.max_token_ttl < Duration::from_secs(60)
            || self.auth.max_token_ttl > Duration::from_secs(366 * 24 * 3600)
        {
            problems.push("auth.max_token_ttl must be between 1m and 366d".to_owned());
        }
        self.secrets.problems(&mut problems, offline);
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
        if self.pool.reset_timeout.is_zero() {
            problems.push("pool.reset_timeout must be more than 0".to_owned());
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
            check_secret_id(&at, &t.secret, &mut problems);
            if t.pool_size == Some(0) {
                problems.push(format!("{at}: pool_size must be at least 1"));
            }
            match (t.tls, &t.ca_bundle) {
                (BackendTlsMode::VerifyFull, None) => {
                    problems.push(format!("{at}: tls = \"verify-full\" needs ca_bundle"))
                }
                (_, Some(ca)) if !offline && !ca.exists() => {
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
        if let Some(p) = &self.policy {
            if !p.dir.exists() {
                problems.push(format!("policy.dir {} does not exist", p.dir.display()));
            }
            for t in p.pseudonym_keys.keys() {
                if !self.tenants.iter().any(|x| &x.id == t) {
                    problems.push(format!("policy.pseudonym_keys: unknown tenant {t}"));
                }
            }
            if p.catalog_refresh < Duration::from_secs(1) {
                problems.push("policy.catalog_refresh must be at least 1s".to_owned());
            }
        }
        if let Some(control) = &self.control {
            control.validate(&mut problems, offline);
        }
        if let Some(api) = &self.api {
            if self.control.is_none() {
                problems.push("[api] needs a [control] section (the control database)".to_owned());
            }
            if self.auth.signing_key_secret.is_none() {
                problems.push("[api] needs auth.signing_key_secret to mint tokens".to_owned());
            }
            api.validate(&mut problems);
            if api.token_ttl > self.auth.max_token_ttl {
                problems.push("api.token_ttl must not exceed auth.max_token_ttl".to_owned());
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

/// A secret id is a Secrets Manager name (`A-Za-z0-9/_+=.@-`, up to 512 characters) or ARN. Anything else, or
/// a name that looks like a random credential, is refused: the config holds ids, never values.
fn check_secret_id(at: &str, id: &SecretId, problems: &mut Vec<String>) {
    let s = id.as_str();
    if s.is_empty() {
        problems.push(format!("{at}: secret id is empty"));
        return;
    }
    let name_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-:".contains(&b));
    let arn = s.starts_with("arn:");
    // A long run of mixed-case letters and digits without any separator reads like a password or a key.
    let random_looking = s.len() >= 24
        && !s.bytes().any(|b| b"/_.:-@".contains(&b))
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_uppercase())
        && s.bytes().any(|b| b.is_ascii_lowercase());
    if !name_chars || (!arn && (s.len() > 512 || s.contains(':'))) || random_looking {
        // The value itself is not repeated: it may be a secret.
        problems.push(format!(
            "{at}: a secret id ({} characters) that looks like an inline secret value; the config holds secret \
             ids only (a Secrets Manager name or ARN): put the value in the secret store",
            s.len()
        ));
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
mod tests;
