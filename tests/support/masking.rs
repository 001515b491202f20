//! A pgveil with the example masking policy (`policies/payments.toml`) for the fixture's tenants.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use pgveil::config::PolicyConfig;
use pgveil::ids::{RoleName, SecretId, TenantId};
use pgveil::server::ServerOptions;

use super::{Fixture, Running};

/// Writes the example policy into a fresh folder of the environment.
pub fn write_policy_dir(fx: &Fixture, name: &str) -> Result<PathBuf> {
    let dir = fx.env.dir().join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("payments.toml"), super::demo::env::EXAMPLE_POLICY)?;
    Ok(dir)
}

/// Starts a pgveil with the policy in `dir` (catalog timer: one hour, so only schema changes reported by
/// sessions reload a catalog during a test) and waits for the `acme`, `globex` and `tlsco` (TLS backend) catalogs. Roles `admin`,
/// `analyst`, `tiny` and `support` are accepted.
pub fn masking_proxy(fx: &Fixture, dir: PathBuf) -> Result<Running> {
    masking_proxy_with(fx, dir, |_| {})
}

/// [`masking_proxy`] in transaction mode (`txn`) or session mode.
pub fn masking_proxy_in(fx: &Fixture, dir: PathBuf, txn: bool) -> Result<Running> {
    masking_proxy_with(fx, dir, |cfg| {
        if txn {
            cfg.pool.mode = pgveil::config::PoolMode::Transaction;
            for t in &mut cfg.tenants {
                t.pool_mode = None;
            }
        }
    })
}

/// [`masking_proxy`] with a further change to the config (e.g. the pool mode).
pub fn masking_proxy_with(
    fx: &Fixture,
    dir: PathBuf,
    edit: impl FnOnce(&mut pgveil::config::Config),
) -> Result<Running> {
    masking_proxy_opts(fx, dir, edit, ServerOptions::default())
}

/// [`masking_proxy_with`] with server options (e.g. its own event loops).
pub fn masking_proxy_opts(
    fx: &Fixture,
    dir: PathBuf,
    edit: impl FnOnce(&mut pgveil::config::Config),
    opts: ServerOptions,
) -> Result<Running> {
    let running = fx.start_server(
        |cfg| {
            let support = RoleName::new("support");
            if !cfg.roles.contains(&support) {
                cfg.roles.push(support);
            }
            cfg.policy = Some(PolicyConfig {
                dir,
                pseudonym_keys: [
                    ("acme", "tenants/acme/pseudonym"),
                    ("globex", "tenants/globex/pseudonym"),
                ]
                .into_iter()
                .map(|(t, s)| (TenantId::new(t), SecretId::new(s)))
                .collect(),
                catalog_refresh: Duration::from_secs(3600),
                cache_bytes: pgveil::policy::engine::DEFAULT_CACHE_BYTES,
            });
            edit(cfg);
        },
        opts,
    )?;
    let engine = running
        .shared
        .masking
        .clone()
        .ok_or_else(|| anyhow!("no masking engine"))?;
    let ready = fx.block_on(engine.wait_ready(
        &[
            TenantId::new("acme"),
            TenantId::new("globex"),
            // Its backend requires TLS: catalog loads go over TLS too.
            TenantId::new("tlsco"),
        ],
        Duration::from_secs(30),
    ));
    ensure!(ready, "tenant catalogs did not load");
    Ok(running)
}

/// Every representation of a tenant's pseudonym key that pgveil puts into SQL or that PostgreSQL could print
/// for it: the HMAC inner and outer pads as hex (`'\\x..'::bytea`, lower and upper case), as bytea escape
/// format (`bytea_output = escape`) and base64, and the key itself (text and hex). Pairs of (what, needle).
pub fn key_needles(fx: &Fixture, tenant: &str) -> Result<Vec<(String, String)>> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let secrets: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.env.secrets_path())?)?;
    let key = secrets[format!("tenants/{tenant}/pseudonym")]
        .as_str()
        .ok_or_else(|| anyhow!("no pseudonym key for {tenant}"))?
        .as_bytes()
        .to_vec();
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha2::Sha256::digest(&key));
    } else {
        block[..key.len()].copy_from_slice(&key);
    }
    let mut out = vec![
        ("key".to_owned(), String::from_utf8_lossy(&key).into_owned()),
        ("key hex".to_owned(), hex::encode(&key)),
    ];
    for (name, x) in [("ipad", 0x36u8), ("opad", 0x5c)] {
        let pad: Vec<u8> = block.iter().map(|b| b ^ x).collect();
        // Half a pad is as good as a whole one to a guesser: search for each half too.
        for (part, bytes) in [
            ("", &pad[..]),
            (" first half", &pad[..32]),
            (" second half", &pad[32..]),
        ] {
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            for (repr, needle) in [
                ("hex", hex::encode(bytes)),
                ("HEX", hex::encode_upper(bytes)),
                ("escape", bytea_escape(bytes)),
                ("base64", b64[..b64.len().saturating_sub(4)].to_owned()),
            ] {
                out.push((format!("{name}{part} as {repr}"), needle));
            }
        }
    }
    Ok(out)
}

/// PostgreSQL's bytea escape output format.
fn bytea_escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s
}
