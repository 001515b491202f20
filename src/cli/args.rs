//! The command line's arguments (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgveil",
    version,
    about = "PostgreSQL proxy: MFA-token sessions, tenant routing, PII masking"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the proxy with a config file.
    Serve {
        /// Path of pgveil.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Event loops, each on its own thread with its own share of every backend pool ("thread per
        /// core": a session and its backends stay on one thread, no cross-thread wake-ups): 0 = one per
        /// core; 1 = a single event loop like PgBouncer's.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Run a self-contained demo: throwaway PostgreSQL, two sample tenants, tokens, and the proxy.
    Demo {
        /// Proxy address.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        /// HTTP API address (login with TOTP, security page).
        #[arg(long, default_value = "127.0.0.1:8432")]
        api_listen: SocketAddr,
    },
    /// Validate a config file and report every problem.
    Check {
        /// Path of pgveil.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Token administration.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Certificate helpers.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Masking policy tools for security teams.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check each tenant's database (with its own credentials), the config and the policy for settings that
    /// weaken pgveil's guarantees. Exit status: 0 no high finding, 1 a high finding, 2 usage or config error.
    Doctor(DoctorArgs),
    /// Log in through the pgveil API (first factor + TOTP code) and print a ready connection string.
    Login(super::LoginArgs),
    /// User administration through the pgveil API (admin key in PGVEIL_ADMIN_KEY).
    #[command(subcommand)]
    User(super::UserCommand),
}

/// `pgveil doctor`.
#[derive(clap::Args)]
pub(crate) struct DoctorArgs {
    /// Path of pgveil.toml.
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// Only this tenant (config-wide checks still run).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Print a JSON document instead of the listing.
    #[arg(long)]
    pub(crate) json: bool,
    /// Token lifetimes (auth.max_token_ttl, api.token_ttl) above this are reported.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) max_token_ttl: Duration,
    /// Limit on all checks of one tenant.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate the policy files; list unclassified columns of every reachable tenant (or of the tenants of
    /// the saved catalogs given with --catalog).
    Check {
        /// Path of pgveil.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// A catalog saved by `pgveil policy catalog`; repeat for several tenants. With any --catalog nothing
        /// is connected to: tenants without a file are reported as not listed.
        #[arg(long = "catalog", value_name = "FILE")]
        catalogs: Vec<PathBuf>,
    },
    /// Show the decision, masked columns and rewritten SQL for one statement, against the tenant's live catalog
    /// or a saved one (--catalog).
    Explain {
        /// Path of pgveil.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Role.
        #[arg(long)]
        role: String,
        /// Use this catalog, saved by `pgveil policy catalog` from the same tenant, instead of the live one:
        /// nothing is connected to and no secret is read (the secrets file, TLS files and CA bundles the
        /// config names need not exist).
        #[arg(long, value_name = "FILE")]
        catalog: Option<PathBuf>,
        /// The SQL text.
        sql: String,
    },
    /// Run the test cases kept next to the policies (`*.tests.toml`).
    Test {
        /// Path of pgveil.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// A catalog saved by `pgveil policy catalog`, used for the tenant it was saved from; repeat for
        /// several tenants. With any --catalog nothing is connected to: a case of a tenant without a file is an
        /// error (no live load).
        #[arg(long = "catalog", value_name = "FILE")]
        catalogs: Vec<PathBuf>,
    },
    /// Save a tenant's live catalog (schema metadata only: names, types, dependencies; no rows, credentials
    /// or keys) to a JSON file for `policy explain|test --catalog`.
    Catalog {
        /// Path of pgveil.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Output file (replaced atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a session token with the signing key (admin/dev tool).
    Mint {
        /// Path of pgveil.toml (the key named by its auth.signing_key_secret is fetched from the secret store).
        #[arg(long, short)]
        config: PathBuf,
        /// Token subject (user id).
        #[arg(long)]
        user: String,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Role.
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. 1h, 8h, 30m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Record a second factor (amr includes "otp").
        #[arg(long)]
        mfa: bool,
    },
    /// Generate an Ed25519 key pair (token_signing.pem, token_verifying.pem) into a folder, to be stored in the
    /// secret store under the ids named by auth.signing_key_secret / auth.verifying_key_secrets.
    Keygen {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
    /// Generate a throwaway dev CA and a server certificate for localhost.
    Dev {
        /// Output folder.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}
