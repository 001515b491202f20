//! The `pgveil` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use pgveil::config::Config;
use pgveil::demo::env::{DemoEnv, EnvOptions};
use pgveil::ids::{RoleName, TenantId, UserId};
use pgveil::server::{Server, ServerOptions};
use pgveil::token::TokenSigner;

mod cli;

#[derive(Parser)]
#[command(
    name = "pgveil",
    version,
    about = "PostgreSQL proxy: MFA-token sessions, tenant routing, PII masking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    Login(cli::LoginArgs),
    /// User administration through the pgveil API (admin key in PGVEIL_ADMIN_KEY).
    #[command(subcommand)]
    User(cli::UserCommand),
}

/// `pgveil doctor`.
#[derive(clap::Args)]
struct DoctorArgs {
    /// Path of pgveil.toml.
    #[arg(long, short)]
    config: PathBuf,
    /// Only this tenant (config-wide checks still run).
    #[arg(long)]
    tenant: Option<String>,
    /// Print a JSON document instead of the listing.
    #[arg(long)]
    json: bool,
    /// Token lifetimes (auth.max_token_ttl, api.token_ttl) above this are reported.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_token_ttl: Duration,
    /// Limit on all checks of one tenant.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum PolicyCommand {
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
enum TokenCommand {
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
enum CertsCommand {
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

/// A failed command prints one line, `pgveil: <what failed>: <cause>` (the hint included), and exits with
/// status 1; anyhow's multi-line report (with a backtrace) only when RUST_BACKTRACE asks for it.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("Error: {e:?}");
            } else {
                eprintln!("pgveil: {}", one_line(&e));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined with ": ", leaving out a cause whose text its parent already quotes (most
/// of pgveil's error types print their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run() -> Result<std::process::ExitCode> {
    use std::io::IsTerminal as _;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(pgveil::logging::filter(
            &std::env::var("PGVEIL_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .with_writer(std::io::stderr);
    let format = std::env::var("PGVEIL_LOG_FORMAT").unwrap_or_default();
    if format == "json" {
        // JSON lines: one object per event, with the session span (client, user, tenant, role).
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
        if !format.is_empty() && format != "text" {
            tracing::warn!(%format, "PGVEIL_LOG_FORMAT is json or text; using text");
        }
    }
    let cli = Cli::parse();
    let done: Result<()> = match cli.command {
        Command::Serve { config, threads } => serve(&config, threads),
        Command::Demo { listen, api_listen } => demo(listen, api_listen),
        Command::Check { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Token(TokenCommand::Mint {
            config,
            user,
            tenant,
            role,
            ttl,
            mfa,
        }) => mint(&config, &user, &tenant, &role, ttl, mfa),
        Command::Token(TokenCommand::Keygen { out }) => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let (signing, verifying) = pgveil::token::write_keypair(&out)?;
            println!(
                "signing key (keep secret): {}\nverifying key: {}",
                signing.display(),
                verifying.display()
            );
            Ok(())
        }
        Command::Policy(cmd) => policy(cmd),
        Command::Doctor(args) => return Ok(doctor(args)),
        Command::Login(args) => runtime()?.block_on(cli::login(args)),
        Command::User(cmd) => runtime()?.block_on(cli::user(cmd)),
        Command::Certs(CertsCommand::Dev { out, names }) => {
            let c = pgveil::tls::generate_dev_certs(&out, &names)?;
            println!(
                "CA: {}\nserver certificate: {}\nserver key: {}",
                c.ca_cert.display(),
                c.server_cert.display(),
                c.server_key.display()
            );
            Ok(())
        }
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

/// Runs `pgveil doctor`: 0 without a high finding, 1 with one, 2 when it cannot run (config, policy,
/// `--tenant`), with the one-line error other commands print.
fn doctor(args: DoctorArgs) -> std::process::ExitCode {
    let run = || -> Result<pgveil::doctor::Report> {
        let cfg = Config::load(&args.config)?;
        let opts = pgveil::doctor::Options {
            tenant: args.tenant.clone().map(TenantId::new),
            max_token_ttl: args.max_token_ttl,
            timeout: args.timeout,
        };
        Ok(runtime()?.block_on(pgveil::doctor::run(&cfg, &opts))?)
    };
    match run() {
        Ok(report) => {
            if args.json {
                print!("{}", pgveil::doctor::report::json(&report));
            } else {
                print!("{}", pgveil::doctor::report::table(&report));
            }
            std::process::ExitCode::from(u8::from(report.has_high()))
        }
        Err(e) => {
            eprintln!("pgveil: {}", one_line(&e));
            std::process::ExitCode::from(2)
        }
    }
}

fn policy(cmd: PolicyCommand) -> Result<()> {
    use pgveil::policy::tool;
    let rt = runtime()?;
    match cmd {
        PolicyCommand::Check { config, catalogs } => {
            let cfg = policy_config(&config, &catalogs)?;
            let catalogs = tool::Catalogs::from_args(&catalogs)?;
            print!("{}", rt.block_on(tool::check(&cfg, &catalogs))?);
        }
        PolicyCommand::Explain {
            config,
            tenant,
            role,
            catalog,
            sql,
        } => {
            let files: Vec<PathBuf> = catalog.into_iter().collect();
            let cfg = policy_config(&config, &files)?;
            let catalogs = tool::Catalogs::from_args(&files)?;
            print!(
                "{}",
                rt.block_on(tool::explain(
                    &cfg,
                    &catalogs,
                    &TenantId::new(tenant),
                    &RoleName::new(role),
                    &sql
                ))?
            );
        }
        PolicyCommand::Test { config, catalogs } => {
            let cfg = policy_config(&config, &catalogs)?;
            let catalogs = tool::Catalogs::from_args(&catalogs)?;
            let (report, ok) = rt.block_on(tool::test(&cfg, &catalogs))?;
            print!("{report}");
            if !ok {
                bail!("policy tests failed");
            }
        }
        PolicyCommand::Catalog {
            config,
            tenant,
            out,
        } => {
            let cfg = Config::load(&config)?;
            print!(
                "{}",
                rt.block_on(tool::save_catalog(&cfg, &TenantId::new(tenant), &out))?
            );
        }
    }
    Ok(())
}

/// The config for `policy explain|test`: with saved catalogs nothing is connected to, so files only needed to
/// connect (secrets file, TLS files, CA bundles) may be missing.
fn policy_config(path: &Path, catalogs: &[PathBuf]) -> Result<Config> {
    Ok(if catalogs.is_empty() {
        Config::load(path)?
    } else {
        Config::load_offline(path)?
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(path: &Path, threads: usize) -> Result<()> {
    let cfg = Config::load(path)?;
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // Loop 0 is this thread's runtime (it also accepts and runs the API, metrics and background tasks);
    // loops 1.. are started here and stopped when the server has drained (the last `Arc` is dropped).
    let loops = match threads {
        1 => None,
        n => Some(Arc::new(pgveil::event_loops::EventLoops::start(n)?)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // SIGHUP (systemd's ExecReload) re-reads the masking policies when [policy] is set (policy::engine
        // listens too); it must never end the process, which is SIGHUP's default action.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let policies = cfg.policy.is_some();
        let opts = ServerOptions {
            loops,
            ..ServerOptions::default()
        };
        let server = Server::bind(cfg.clone(), opts).await?;
        // SIGHUP also reopens the audit file (log rotation: move it, then SIGHUP).
        let audit = server.shared().audit.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                audit.reopen();
                if policies {
                    tracing::info!(
                        "SIGHUP: masking policies re-read; other settings need a restart"
                    );
                } else {
                    tracing::info!("SIGHUP: no [policy] to re-read; other settings need a restart");
                }
            }
        });
        let api = if cfg.api.is_some() {
            Some(pgveil::api::ApiServer::bind(cfg.clone(), api_options(&server)).await?)
        } else {
            None
        };
        let metrics = match &cfg.metrics {
            Some(m) => Some(pgveil::telemetry::MetricsServer::bind(m).await?),
            None => None,
        };
        let proxy = server.run(stop_signal(), Duration::from_secs(30));
        let api = async move {
            if let Some(api) = api {
                api.run(stop_signal()).await;
            }
        };
        let metrics = async move {
            if let Some(m) = metrics {
                m.run(stop_signal()).await;
            }
        };
        tokio::join!(proxy, api, metrics);
        Ok(())
    })
}

/// Options for an API next to `server`: its (cached) secret store and clock, revocations applied to its
/// sessions at once, connection strings pointing at its port.
fn api_options(server: &Server) -> pgveil::api::ApiOptions {
    let shared = server.shared();
    pgveil::api::ApiOptions {
        secrets: shared.secrets.clone(),
        clock: shared.clock.clone(),
        local_proxy: shared
            .revocations
            .clone()
            .map(|r| (r, shared.sessions.clone())),
        proxy_port: server.local_addr().port(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn mint(
    config: &Path,
    user: &str,
    tenant: &str,
    role: &str,
    ttl: Duration,
    mfa: bool,
) -> Result<()> {
    let cfg = Config::load(config)?;
    let Some(key_id) = &cfg.auth.signing_key_secret else {
        bail!("{}: auth.signing_key_secret is not set", config.display());
    };
    if cfg.tenant(&TenantId::new(tenant)).is_none() {
        bail!("tenant {tenant:?} is not in {}", config.display());
    }
    if !cfg.roles.contains(&RoleName::new(role)) {
        bail!("role {role:?} is not in {}", config.display());
    }
    if ttl > cfg.auth.max_token_ttl {
        bail!(
            "--ttl {} exceeds auth.max_token_ttl ({}): such a token would be refused",
            humantime::format_duration(ttl),
            humantime::format_duration(cfg.auth.max_token_ttl)
        );
    }
    let pem = runtime()?.block_on(async {
        let store = pgveil::secret::store_from_config(&cfg.secrets, true).await;
        pgveil::secret::fetch_text(&*store, key_id).await
    });
    let pem = pem.with_context(|| format!("fetching the signing key (secret {key_id})"))?;
    let signer = TokenSigner::from_pem(&pem, &cfg.auth.issuer)?;
    let amr = if mfa {
        vec!["pwd".into(), "otp".into()]
    } else {
        vec!["pwd".into()]
    };
    let token = signer.mint(
        &UserId::new(user),
        &TenantId::new(tenant),
        &RoleName::new(role),
        amr,
        ttl,
        SystemTime::now(),
    )?;
    println!("{token}");
    Ok(())
}

/// How to call this binary in a printed command: `pgveil` when that name on PATH is this executable, else its
/// full path (e.g. `target/release/pgveil` started by demo.sh), so every printed line works as pasted.
fn self_command() -> String {
    let Ok(me) = std::env::current_exe() else {
        return "pgveil".to_owned();
    };
    // A rebuild while the demo runs replaces the file: Linux then reports "<path> (deleted)".
    let me = match std::fs::canonicalize(&me) {
        Ok(p) => p,
        Err(_) => PathBuf::from(me.to_string_lossy().trim_end_matches(" (deleted)")),
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter_map(|dir| std::fs::canonicalize(dir.join("pgveil")).ok())
            .next()
            .is_some_and(|found| found == me)
    });
    let shown = me.display().to_string();
    if on_path {
        "pgveil".to_owned()
    } else if shown
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        shown
    } else {
        format!("'{}'", shown.replace('\'', r"'\''"))
    }
}

fn demo(listen: SocketAddr, api_listen: SocketAddr) -> Result<()> {
    eprintln!("pgveil demo: starting a throwaway PostgreSQL and sample tenants...");
    let mut opts = EnvOptions::demo(listen);
    opts.masking = true;
    opts.api = Some(api_listen);
    let env = DemoEnv::create(&opts).context("building the demo environment")?;
    let rt = runtime()?;
    rt.block_on(async {
        let opts = ServerOptions {
            demo: true,
            ..ServerOptions::default()
        };
        let server = Server::bind(env.config.clone(), opts)
            .await
            .with_context(|| format!("starting the proxy on {listen} (is the port free? try --listen 127.0.0.1:0)"))?;
        let addr = server.local_addr();
        let shared = server.shared();
        let api = pgveil::api::ApiServer::bind(env.config.clone(), api_options(&server))
        .await
        .with_context(|| format!("starting the API on {api_listen} (is the port free? try --api-listen 127.0.0.1:0)"))?;
        let api_addr = api.local_addr();
        let ttl = Duration::from_secs(8 * 3600);
        let dana = pgveil::demo::mfa::enroll_demo_user(
            &env.config,
            &*shared.secrets,
            "dana@acme.example",
            &TenantId::new("acme"),
            &RoleName::new("analyst"),
            ttl,
        )
        .await
        .context("enrolling the demo user")?;
        if let Some(m) = &shared.masking {
            let tenants: Vec<TenantId> = env.tenants.iter().map(|t| TenantId::new(t.id.clone())).collect();
            if !m.wait_ready(&tenants, Duration::from_secs(30)).await {
                eprintln!("pgveil demo: tenant catalogs not loaded yet; masked roles are refused until they are");
            }
        }
        let alice = env.mint("alice@acme.example", "acme", "admin", true, ttl)?;
        let bob = env.mint("bob@acme.example", "acme", "analyst", true, ttl)?;
        let carol = env.mint("carol@globex.example", "globex", "analyst", false, ttl)?;
        let ca = env.certs.ca_cert.display();
        let (host, port) = (addr.ip(), addr.port());
        println!(
            "\npgveil demo is running on {addr}. Environment (config, keys, certs, secrets): {dir}\n\n\
             Tenant databases: acme (backend auth SCRAM-SHA-256), globex (backend auth md5).\n\
             Tokens are the passwords; they are valid for 8 hours.\n\n\
             alice, acme, role admin (TLS verified against the demo CA):\n  \
             PGPASSWORD='{alice}' psql \"host=localhost port={port} dbname=acme user=alice sslmode=verify-full sslrootcert={ca}\"\n\n\
             bob, acme, role analyst:\n  \
             PGPASSWORD='{bob}' psql \"host={host} port={port} dbname=acme user=bob sslmode=require\"\n\n\
             carol, globex, role analyst (no MFA in her token):\n  \
             PGPASSWORD='{carol}' psql \"host={host} port={port} dbname=globex user=carol sslmode=require\"\n\n\
             dana, acme, role analyst, enrolled in TOTP: log in through the API (https://localhost:{api_port}) like a user.\n  \
             TOTP secret (demo only; add it to an authenticator app): {totp_secret}\n  \
             otpauth URI (for a QR code generator): {totp_uri}\n  \
             Get a token (asks for the current 6-digit code; the assertion stands in for the web-app's first factor):\n  \
             PGVEIL_ASSERTION='{assertion}' {pgveil} login --api https://localhost:{api_port} --ca {ca} --email {dana_email}\n  \
             Recovery codes (each works once instead of a code): {recovery}\n\n\
             Try: SELECT full_name, email, card_pan FROM payers LIMIT 5;\n\
             alice (admin) sees raw data; bob and carol (analyst) see masked PII: pseudonymized names, ****@domain\n\
             e-mails, ************1234 card numbers, birth years, /24 networks (policy: {pdir}/payments.toml).\n\
             Attempts to get around it (pg_stats, query_to_xml, SET search_path, DDL, ...) are refused with 42501.\n\
             Explain a statement: {pgveil} policy explain --config {cfg} --tenant acme --role analyst \"SELECT * FROM payers\"\n\
             Cross-tenant: bob's token with dbname=globex is refused (3D000).\n\
             Mint more tokens: {pgveil} token mint --config {cfg} --user U --tenant acme --role analyst --ttl 1h --mfa\n\n\
             Press Ctrl-C to stop; everything is removed.\n\
             pgveil demo ready",
            dir = env.dir().display(),
            cfg = env.config_path.display(),
            pdir = env.dir().join("policies").display(),
            api_port = api_addr.port(),
            totp_secret = dana.secret_base32,
            totp_uri = dana.otpauth_uri,
            assertion = dana.assertion,
            dana_email = dana.email,
            recovery = dana.recovery_codes.join(" "),
            pgveil = self_command(),
        );
        tokio::join!(
            server.run(stop_signal(), Duration::from_secs(5)),
            api.run(stop_signal())
        );
        anyhow::Ok(())
    })?;
    drop(env);
    eprintln!("pgveil demo: stopped and cleaned up");
    Ok(())
}
