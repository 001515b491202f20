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
    std::fs::write(dir.join("payments.toml"), pgveil::demo::env::EXAMPLE_POLICY)?;
    Ok(dir)
}

/// Starts a pgveil with the policy in `dir` (catalog timer: one hour, so only schema changes reported by
/// sessions reload a catalog during a test) and waits for the `acme`, `globex` and `tlsco` (TLS backend) catalogs. Roles `admin`,
/// `analyst`, `tiny` and `support` are accepted.
pub fn masking_proxy(fx: &Fixture, dir: PathBuf) -> Result<Running> {
    masking_proxy_with(fx, dir, |_| {})
}

/// [`masking_proxy`] with a further change to the config (e.g. the pool mode).
pub fn masking_proxy_with(
    fx: &Fixture,
    dir: PathBuf,
    edit: impl FnOnce(&mut pgveil::config::Config),
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
            });
            edit(cfg);
        },
        ServerOptions::default(),
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
