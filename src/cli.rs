//! The command line's pieces: its arguments ([`args`]), `pgveil serve` ([`serve`]) and `pgveil demo`
//! ([`demo`]); here, `pgveil login` and `pgveil user ...`: thin clients of the HTTP API.

pub mod args;
pub mod demo;
pub mod serve;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use pgveil::api::fetch::{Request, send};
use serde_json::{Value, json};

/// `pgveil login`.
#[derive(Args)]
pub struct LoginArgs {
    /// API base URL.
    #[arg(long, env = "PGVEIL_API", default_value = "https://localhost:8432")]
    api: String,
    /// Your email (pgveil user).
    #[arg(long, env = "PGVEIL_EMAIL")]
    email: String,
    /// First factor: an OIDC ID token from your IdP (or set PGVEIL_ID_TOKEN).
    #[arg(long, env = "PGVEIL_ID_TOKEN", hide_env_values = true)]
    id_token: Option<String>,
    /// First factor: a web-app assertion (or set PGVEIL_ASSERTION).
    #[arg(long, env = "PGVEIL_ASSERTION", hide_env_values = true)]
    assertion: Option<String>,
    /// TOTP code (asked for on the terminal when absent and the user is enrolled).
    #[arg(long)]
    code: Option<String>,
    /// Use a recovery code instead of a TOTP code.
    #[arg(long)]
    recovery: bool,
    /// CA bundle to verify the API's certificate (default: system CAs).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Also add an entry to ~/.pgpass (created with mode 0600).
    #[arg(long)]
    pgpass: bool,
}

/// `pgveil user`.
#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add {
        /// Email.
        email: String,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Role.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List users.
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Disable a user: no more tokens, new connections refused, open sessions terminated.
    Disable {
        /// Email.
        email: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach the admin API.
#[derive(Args)]
pub struct AdminArgs {
    /// API base URL.
    #[arg(long, env = "PGVEIL_API", default_value = "https://localhost:8432")]
    api: String,
    /// CA bundle to verify the API's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
}

fn admin_key() -> Result<String> {
    std::env::var("PGVEIL_ADMIN_KEY").context("set PGVEIL_ADMIN_KEY to the admin API key")
}

async fn call(
    api: &str,
    ca: &Option<PathBuf>,
    method: &str,
    path: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> Result<Value> {
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let (status, text) = send(Request {
        method,
        url: &url,
        json: body.map(|b| b.to_string()),
        bearer,
        ca: ca.as_deref(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let code = v["error"]["code"].as_str().unwrap_or("error");
        let msg = v["error"]["message"].as_str().unwrap_or(&text);
        bail!("{code}: {msg} (HTTP {status})");
    }
    Ok(v)
}

/// Runs `pgveil login`.
pub async fn login(a: LoginArgs) -> Result<()> {
    let code = match a.code.clone() {
        Some(c) => Some(c),
        None => {
            eprint!(
                "{} for {}: ",
                if a.recovery {
                    "Recovery code"
                } else {
                    "Authenticator code"
                },
                a.email
            );
            std::io::stderr().flush().ok();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let line = line.trim().to_owned();
            (!line.is_empty()).then_some(line)
        }
    };
    let mut body = json!({ "email": a.email, "id_token": a.id_token, "assertion": a.assertion });
    if let Some(c) = code {
        body[if a.recovery { "recovery_code" } else { "code" }] = Value::String(c);
    }
    let v = call(&a.api, &a.ca, "POST", "/v1/login", Some(body), None).await?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let (token, host, db, user) = (s("token"), s("host"), s("dbname"), s("user"));
    let port = v["port"].as_u64().unwrap_or(6432);
    if let Some(days) = v["mfa_deadline_days"].as_u64() {
        eprintln!(
            "warning: two-factor authentication becomes mandatory in {days} day(s); enrol on the security page"
        );
    }
    println!("{}", s("url"));
    println!(
        "export PGHOST='{host}' PGPORT='{port}' PGDATABASE='{db}' PGUSER='{user}' PGSSLMODE=require PGPASSWORD='{token}'"
    );
    if a.pgpass {
        let home = std::env::var_os("HOME").context("HOME is not set")?;
        let path = PathBuf::from(home).join(".pgpass");
        let esc = |x: &str| x.replace('\\', "\\\\").replace(':', "\\:");
        let entry = format!(
            "{}:{port}:{}:{}:{}\n",
            esc(&host),
            esc(&db),
            esc(&user),
            esc(&token)
        );
        let prefix = format!("{}:{port}:{}:{}:", esc(&host), esc(&db), esc(&user));
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: String = old
            .lines()
            .filter(|l| !l.starts_with(&prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(format!("{entry}{kept}").as_bytes())?;
        eprintln!("wrote {} (entry for {host}:{port}/{db})", path.display());
    }
    Ok(())
}

/// Runs `pgveil user ...`.
pub async fn user(cmd: UserCommand) -> Result<()> {
    let key = admin_key()?;
    match cmd {
        UserCommand::Add {
            email,
            tenant,
            role,
            admin,
        } => {
            let v = call(
                &admin.api,
                &admin.ca,
                "POST",
                "/v1/admin/users",
                Some(json!({"email": email, "tenant": tenant, "role": role})),
                Some(&key),
            )
            .await?;
            println!(
                "created {} (tenant {}, role {})",
                v["email"].as_str().unwrap_or(""),
                v["tenant"].as_str().unwrap_or(""),
                v["role"].as_str().unwrap_or("")
            );
        }
        UserCommand::List { tenant, admin } => {
            let path = match &tenant {
                Some(t) => format!("/v1/admin/users?tenant={}", urlencoding::encode(t)),
                None => "/v1/admin/users".into(),
            };
            let v = call(&admin.api, &admin.ca, "GET", &path, None, Some(&key)).await?;
            println!(
                "{:<40} {:<16} {:<12} {:<5} DISABLED",
                "EMAIL", "TENANT", "ROLE", "MFA"
            );
            for u in v.as_array().into_iter().flatten() {
                println!(
                    "{:<40} {:<16} {:<12} {:<5} {}",
                    u["email"].as_str().unwrap_or(""),
                    u["tenant"].as_str().unwrap_or(""),
                    u["role"].as_str().unwrap_or(""),
                    if u["mfa_enrolled"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    if u["disabled"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                );
            }
        }
        UserCommand::Disable { email, admin } => {
            call(
                &admin.api,
                &admin.ca,
                "POST",
                &format!("/v1/admin/users/{}/disable", urlencoding::encode(&email)),
                None,
                Some(&key),
            )
            .await?;
            println!("disabled {email}: new connections refused, open sessions terminated");
        }
    }
    Ok(())
}
