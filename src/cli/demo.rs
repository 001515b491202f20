//! `pgveil demo`: a throwaway PostgreSQL with sample tenants, an enrolled user, the proxy and the API, and
//! instructions printed for trying them; everything is removed on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pgveil::ids::{RoleName, TenantId};
use pgveil::server::{Server, ServerOptions};

use super::serve::{api_options, runtime, stop_signal};
use crate::demo::env::{DemoEnv, EnvOptions};
use crate::demo::mfa::DemoUser;

/// Runs the demo until SIGINT or SIGTERM.
pub(crate) fn demo(listen: SocketAddr, api_listen: SocketAddr) -> Result<()> {
    eprintln!("pgveil demo: starting a throwaway PostgreSQL and sample tenants...");
    let mut opts = EnvOptions::demo(listen);
    opts.masking = true;
    opts.api = Some(api_listen);
    let env = DemoEnv::create(&opts).context("building the demo environment")?;
    let rt = runtime()?;
    rt.block_on(run(&env, listen, api_listen))?;
    drop(env);
    eprintln!("pgveil demo: stopped and cleaned up");
    Ok(())
}

async fn run(env: &DemoEnv, listen: SocketAddr, api_listen: SocketAddr) -> Result<()> {
    let opts = ServerOptions {
        demo: true,
        ..ServerOptions::default()
    };
    let server = Server::bind(env.config.clone(), opts)
        .await
        .with_context(|| {
            format!("starting the proxy on {listen} (is the port free? try --listen 127.0.0.1:0)")
        })?;
    let shared = server.shared();
    let api = pgveil::api::ApiServer::bind(env.config.clone(), api_options(&server))
        .await
        .with_context(|| {
            format!(
                "starting the API on {api_listen} (is the port free? try --api-listen 127.0.0.1:0)"
            )
        })?;
    let ttl = Duration::from_secs(8 * 3600);
    let dana = crate::demo::mfa::enroll_demo_user(
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
        let tenants: Vec<TenantId> = env
            .tenants
            .iter()
            .map(|t| TenantId::new(t.id.clone()))
            .collect();
        if !m.wait_ready(&tenants, Duration::from_secs(30)).await {
            eprintln!(
                "pgveil demo: tenant catalogs not loaded yet; masked roles are refused until they are"
            );
        }
    }
    let tokens = Tokens {
        alice: env.mint("alice@acme.example", "acme", "admin", true, ttl)?,
        bob: env.mint("bob@acme.example", "acme", "analyst", true, ttl)?,
        carol: env.mint("carol@globex.example", "globex", "analyst", false, ttl)?,
    };
    println!(
        "{}",
        instructions(env, server.local_addr(), api.local_addr(), &tokens, &dana)
    );
    tokio::join!(
        server.run(stop_signal(), Duration::from_secs(5)),
        api.run(stop_signal())
    );
    Ok(())
}

/// The demo users' tokens.
struct Tokens {
    alice: String,
    bob: String,
    carol: String,
}

/// What the demo prints once it runs: how to connect as each demo user, and what to try.
fn instructions(
    env: &DemoEnv,
    addr: SocketAddr,
    api_addr: SocketAddr,
    tokens: &Tokens,
    dana: &DemoUser,
) -> String {
    let Tokens { alice, bob, carol } = tokens;
    let ca = env.certs.ca_cert.display();
    let (host, port) = (addr.ip(), addr.port());
    format!(
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
    )
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
