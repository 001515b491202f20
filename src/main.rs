//! The `pgveil` command line.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pgveil::config::Config;
use pgveil::ids::{RoleName, TenantId, UserId};
use pgveil::token::TokenSigner;

use self::cli::args::{CertsCommand, Cli, Command, DoctorArgs, PolicyCommand, TokenCommand};
use self::cli::demo::demo;
use self::cli::serve::{runtime, serve};

mod cli;
mod demo;

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
