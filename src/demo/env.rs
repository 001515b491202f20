//! A complete local environment: a throwaway PostgreSQL cluster with sample tenant databases, a dev CA and
//! server certificate, a token key pair, a file secret store with the tenants' credentials, and a
//! `pgveil.toml` tying them together. `pgveil demo` runs the proxy on it; the test suite builds its fixtures
//! with it, so the demo is exercised by every end-to-end test.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::RngExt;

use pgcluster::sample::{SCHEMA_SQL, sample_data_sql};
use pgcluster::{ClusterError, ClusterOptions, LocalCluster, PasswordMethod, quote_ident};
use pgveil::config::{Config, ConfigError};
use pgveil::ids::{RoleName, TenantId, UserId};
use pgveil::secret::{ExposeSecret, SecretString};
use pgveil::tls::{DevCerts, TlsError, generate_dev_certs};
use pgveil::token::{TokenError, TokenSigner, generate_keypair};

/// Secret id of the demo's token signing key (PKCS#8 PEM).
pub const SIGNING_KEY_SECRET: &str = "pgveil/token-signing";
/// Secret id of the demo's token verifying key (SPKI PEM).
pub const VERIFYING_KEY_SECRET: &str = "pgveil/token-verifying";

/// One sample tenant.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// Tenant id (also its database name).
    pub id: String,
    /// Backend login role.
    pub db_user: String,
    /// How the backend stores (and so checks) its password.
    pub method: PasswordMethod,
    /// Number of sample payers.
    pub payers: usize,
    /// Connect to the backend over TLS verified against the dev CA.
    pub backend_tls: bool,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Proxy listen address (port 0 = any free port).
    pub listen: SocketAddr,
    /// Tenants.
    pub tenants: Vec<TenantSpec>,
    /// Roles tokens may carry.
    pub roles: Vec<String>,
    /// Backend pool size per (tenant, role).
    pub pool_size: usize,
    /// Accept tokens over plain text from loopback.
    pub allow_plaintext_loopback: bool,
    /// Enable masking with the example policy (`policies/payments.toml`, embedded) and per-tenant pseudonym
    /// keys in the secret store.
    pub masking: bool,
    /// Also a control database (`pgveil_control` in the same cluster) and the HTTP API on this address, with
    /// the web-app first factor; its keys go to the secret store.
    pub api: Option<SocketAddr>,
}

/// Control database, its owner and the secret ids of the API's keys (with `EnvOptions::api`).
const CONTROL_DB: &str = "pgveil_control";
const CONTROL_DB_USER: &str = "pgveil_ctl";
const CONTROL_DB_SECRET: &str = "pgveil/control/db";
const TOTP_KEY_SECRET: &str = "pgveil/totp_key";
const ADMIN_KEY_SECRET: &str = "pgveil/admin_key";
/// Secret id of the web-app assertion key (the demo signs assertions with it, as a web-app would).
pub const WEBAPP_KEY_SECRET: &str = "pgveil/webapp_key";

/// The example policy shipped in `policies/`, embedded for the demo.
pub const EXAMPLE_POLICY: &str = include_str!("../../policies/payments.toml");
/// Its test cases.
pub const EXAMPLE_POLICY_TESTS: &str = include_str!("../../policies/payments.tests.toml");

impl EnvOptions {
    /// The demo's defaults: tenants `acme` (SCRAM) and `globex` (md5), roles `admin` and `analyst`.
    pub fn demo(listen: SocketAddr) -> Self {
        Self {
            listen,
            tenants: vec![
                TenantSpec {
                    id: "acme".into(),
                    db_user: "acme_app".into(),
                    method: PasswordMethod::Scram,
                    payers: 200,
                    backend_tls: false,
                },
                TenantSpec {
                    id: "globex".into(),
                    db_user: "globex_app".into(),
                    method: PasswordMethod::Md5,
                    payers: 50,
                    backend_tls: false,
                },
            ],
            roles: vec!["admin".into(), "analyst".into()],
            pool_size: 10,
            allow_plaintext_loopback: true,
            masking: false,
            api: None,
        }
    }
}

/// Errors building the environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// PostgreSQL could not be set up.
    #[error("local PostgreSQL: {0}")]
    Cluster(#[from] ClusterError),
    /// Certificates could not be generated.
    #[error("certificates: {0}")]
    Tls(#[from] TlsError),
    /// Token keys could not be generated or loaded.
    #[error("token keys: {0}")]
    Token(#[from] TokenError),
    /// The generated config is invalid (a bug).
    #[error("generated config: {0}")]
    Config(#[from] ConfigError),
    /// A file could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A built environment. Dropping it stops PostgreSQL and removes every file.
pub struct DemoEnv {
    /// The cluster (public for tests that stop or inspect it).
    #[allow(dead_code, reason = "used by the tests (tests/support) only")]
    pub cluster: LocalCluster,
    /// Loaded config.
    pub config: Config,
    /// Path of the written config file.
    pub config_path: PathBuf,
    /// Dev certificates (the CA clients can verify against).
    pub certs: DevCerts,
    /// Token signer.
    pub signer: TokenSigner,
    /// Tenants as built.
    pub tenants: Vec<TenantSpec>,
    dir: tempfile::TempDir,
}

impl DemoEnv {
    /// Builds everything (blocking: runs initdb, psql).
    pub fn create(opts: &EnvOptions) -> Result<DemoEnv, EnvError> {
        let dir = tempfile::Builder::new()
            .prefix("pgveil-env-")
            .tempdir()
            .map_err(|source| EnvError::Io {
                what: "temporary directory".into(),
                source,
            })?;
        let certs = generate_dev_certs(&dir.path().join("certs"), &[])?;
        let need_ssl = opts.tenants.iter().any(|t| t.backend_tls);
        let cluster = LocalCluster::start(ClusterOptions {
            ssl: need_ssl.then(|| (certs.server_cert.clone(), certs.server_key.clone())),
        })?;
        // Token keys live in the secret store like every other pgveil key; the config names their ids.
        let (signing, verifying) = generate_keypair()?;
        let mut secrets = serde_json::Map::new();
        secrets.insert(SIGNING_KEY_SECRET.into(), signing.expose_secret().into());
        secrets.insert(VERIFYING_KEY_SECRET.into(), verifying.into());
        for t in &opts.tenants {
            let password = random_password();
            cluster.create_user(&t.db_user, &password, t.method)?;
            cluster.create_database(&t.id, &t.db_user)?;
            let script = format!(
                "SET ROLE {};\n{}\n{}",
                quote_ident(&t.db_user),
                SCHEMA_SQL,
                sample_data_sql(&t.id, t.payers)
            );
            cluster.psql(&t.id, &script)?;
            secrets.insert(
                format!("tenants/{}/pseudonym", t.id),
                serde_json::Value::String(random_password()),
            );
            secrets.insert(
                format!("tenants/{}/db", t.id),
                serde_json::json!({
                    "username": t.db_user, "password": password,
                    "host": cluster.host(), "port": cluster.port(), "dbname": t.id,
                }),
            );
        }
        if opts.api.is_some() {
            let password = random_password();
            cluster.create_user(CONTROL_DB_USER, &password, PasswordMethod::Scram)?;
            cluster.create_database(CONTROL_DB, CONTROL_DB_USER)?;
            secrets.insert(
                CONTROL_DB_SECRET.into(),
                serde_json::json!({
                    "username": CONTROL_DB_USER, "password": password,
                    "host": cluster.host(), "port": cluster.port(), "dbname": CONTROL_DB,
                }),
            );
            secrets.insert(
                TOTP_KEY_SECRET.into(),
                pgveil::mfa::crypto::SecretBox::generate_key_hex().into(),
            );
            secrets.insert(ADMIN_KEY_SECRET.into(), random_password().into());
            secrets.insert(WEBAPP_KEY_SECRET.into(), random_password().into());
        }
        let secrets_path = dir.path().join("secrets.json");
        write_private(
            &secrets_path,
            &serde_json::Value::Object(secrets).to_string(),
        )?;

        if opts.masking {
            let pdir = dir.path().join("policies");
            let io = |source| EnvError::Io {
                what: "policies".into(),
                source,
            };
            std::fs::create_dir_all(&pdir).map_err(io)?;
            std::fs::write(pdir.join("payments.toml"), EXAMPLE_POLICY).map_err(io)?;
            std::fs::write(pdir.join("payments.tests.toml"), EXAMPLE_POLICY_TESTS).map_err(io)?;
        }
        let config_path = dir.path().join("pgveil.toml");
        std::fs::write(&config_path, render_config(opts, &certs, &secrets_path)).map_err(
            |source| EnvError::Io {
                what: "pgveil.toml".into(),
                source,
            },
        )?;
        let config = Config::load(&config_path)?;
        let signer = TokenSigner::from_pem(&signing, &config.auth.issuer)?;
        Ok(DemoEnv {
            cluster,
            config,
            config_path,
            certs,
            signer,
            tenants: opts.tenants.clone(),
            dir,
        })
    }

    /// Mints a token (valid for `ttl` from now).
    pub fn mint(
        &self,
        user: &str,
        tenant: &str,
        role: &str,
        mfa: bool,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let amr = if mfa {
            vec!["pwd".into(), "otp".into()]
        } else {
            vec!["pwd".into()]
        };
        self.signer.mint(
            &UserId::new(user),
            &TenantId::new(tenant),
            &RoleName::new(role),
            amr,
            ttl,
            SystemTime::now(),
        )
    }

    /// The environment's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The token signing key (PKCS#8 PEM), as stored in the secrets file under [`SIGNING_KEY_SECRET`].
    #[allow(dead_code, reason = "used by the tests (tests/support) only")]
    pub fn signing_key_pem(&self) -> Result<SecretString, EnvError> {
        self.stored_string(SIGNING_KEY_SECRET)
            .map(SecretString::from)
    }

    /// The token verifying key (SPKI PEM), as stored under [`VERIFYING_KEY_SECRET`].
    #[allow(dead_code, reason = "used by the tests (tests/support) only")]
    pub fn verifying_key_pem(&self) -> Result<String, EnvError> {
        self.stored_string(VERIFYING_KEY_SECRET)
    }

    fn stored_string(&self, id: &str) -> Result<String, EnvError> {
        let bad = |what: &str| EnvError::Io {
            what: format!("secret {id}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
        };
        let text = std::fs::read_to_string(self.secrets_path()).map_err(|source| EnvError::Io {
            what: "secrets file".into(),
            source,
        })?;
        let all: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| bad("secrets file is not JSON"))?;
        all[id]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad("missing or not a string"))
    }

    /// Path of the secrets file.
    #[allow(dead_code, reason = "used by the tests (tests/support) only")]
    pub fn secrets_path(&self) -> PathBuf {
        self.dir.path().join("secrets.json")
    }
}

fn render_config(opts: &EnvOptions, certs: &DevCerts, secrets: &Path) -> String {
    let roles: Vec<String> = opts.roles.iter().map(|r| format!("{r:?}")).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by pgveil for a throwaway local environment."
    );
    let _ = writeln!(s, "roles = [{}]\n", roles.join(", "));
    let _ = writeln!(s, "[listen]\naddr = \"{}\"", opts.listen);
    let _ = writeln!(
        s,
        "allow_plaintext_loopback = {}\n",
        opts.allow_plaintext_loopback
    );
    let _ = writeln!(
        s,
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        certs.server_cert, certs.server_key
    );
    let _ = writeln!(
        s,
        "[auth]\nverifying_key_secrets = [{VERIFYING_KEY_SECRET:?}]\nsigning_key_secret = {SIGNING_KEY_SECRET:?}\n"
    );
    let _ = writeln!(s, "[secrets]\nbackend = \"file\"\npath = {secrets:?}\n");
    let _ = writeln!(
        s,
        "[pool]\nsize = {}\ncheckout_timeout = \"10s\"\n",
        opts.pool_size
    );
    if opts.masking {
        let _ = writeln!(
            s,
            "[policy]\ndir = \"policies\"\ncatalog_refresh = \"30s\"\n\n[policy.pseudonym_keys]"
        );
        for t in &opts.tenants {
            let _ = writeln!(s, "{:?} = \"tenants/{}/pseudonym\"", t.id, t.id);
        }
        s.push('\n');
    }
    if let Some(addr) = opts.api {
        let _ = writeln!(
            s,
            "[control]\nsecret = {CONTROL_DB_SECRET:?}\ntotp_key_secret = {TOTP_KEY_SECRET:?}\n\n\
             [api]\naddr = \"{addr}\"\nadmin_key_secret = {ADMIN_KEY_SECRET:?}\nproxy_host = \"localhost\"\n\
             [api.webapp]\nkey_secret = {WEBAPP_KEY_SECRET:?}\nmax_age = \"8h\"\n"
        );
    }
    for t in &opts.tenants {
        let _ = writeln!(
            s,
            "[[tenant]]\nid = {:?}\nsecret = \"tenants/{}/db\"\ndbname = {:?}",
            t.id, t.id, t.id
        );
        if t.backend_tls {
            let _ = writeln!(
                s,
                "tls = \"verify-full\"\nca_bundle = {:?}\nhost = \"localhost\"",
                certs.ca_cert
            );
        }
        s.push('\n');
    }
    s
}

fn random_password() -> String {
    const CHARS: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn write_private(path: &Path, text: &str) -> Result<(), EnvError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| EnvError::Io {
        what: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}
