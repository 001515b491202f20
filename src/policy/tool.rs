//! `pgveil policy check | explain | test | catalog`: the security team's tools, against live tenant catalogs or
//! catalogs saved to files (`pgveil policy catalog`), which need no database, secret store or credentials.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Decision;
use super::catalog::Catalog;
use super::catalog::saved::{self, SavedError};
use super::engine::{MaskingEngine, TenantState};
use super::functions::PseudonymKey;
use crate::config::Config;
use crate::ids::{RoleName, TenantId};
use crate::route::Router;
use crate::secret::SecretStore;

/// Errors of the policy tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The config has no `[policy]` section.
    #[error("the config has no [policy] section")]
    NoPolicy,
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] super::file::PolicyError),
    /// Routing table.
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    /// Unknown tenant.
    #[error("unknown tenant {0}")]
    UnknownTenant(TenantId),
    /// A catalog could not be loaded.
    #[error("tenant {0}: catalog: {1}")]
    Catalog(TenantId, super::catalog::load::LoadError),
    /// A saved catalog could not be read or written.
    #[error(transparent)]
    Saved(#[from] SavedError),
    /// Saved catalogs were given, but none of them is of this tenant.
    #[error("tenant {0}: no saved catalog of this tenant among the --catalog files{1}")]
    NoSavedCatalog(TenantId, String),
    /// Two saved catalogs of the same tenant.
    #[error("tenant {tenant}: two saved catalogs ({} and {}); give one per tenant", .first.display(), .second.display())]
    DuplicateCatalog {
        /// The tenant.
        tenant: TenantId,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// Test case file problems.
    #[error("{0}")]
    Cases(String),
}

async fn secrets(cfg: &Config) -> Arc<dyn SecretStore> {
    crate::secret::store_from_config(&cfg.secrets, false).await
}

async fn live_catalog(
    cfg: &Config,
    router: &Router,
    tenant: &TenantId,
) -> Result<Catalog, ToolError> {
    let t = router
        .tenant(tenant)
        .ok_or_else(|| ToolError::UnknownTenant(tenant.clone()))?;
    super::catalog::load::load(t, &*secrets(cfg).await, Duration::from_secs(15))
        .await
        .map_err(|e| ToolError::Catalog(tenant.clone(), e))
}

/// Where `check`, `explain` and `test` get each tenant's catalog.
#[derive(Debug)]
pub enum Catalogs {
    /// From the tenant's database, with credentials from the configured secret store.
    Live,
    /// From files written by `pgveil policy catalog`, each of the tenant it was saved from. Nothing is
    /// connected to and no secret is read; a tenant without a file is an error, never a live load.
    Saved(HashMap<TenantId, (PathBuf, Catalog)>),
}

impl Catalogs {
    /// Reads saved catalog files (at least one; two of the same tenant are refused).
    pub fn saved(paths: &[PathBuf]) -> Result<Catalogs, ToolError> {
        let mut map: HashMap<TenantId, (PathBuf, Catalog)> = HashMap::new();
        for p in paths {
            let s = saved::load(p)?;
            if let Some((first, _)) = map.get(&s.tenant) {
                return Err(ToolError::DuplicateCatalog {
                    tenant: s.tenant,
                    first: first.clone(),
                    second: p.clone(),
                });
            }
            map.insert(s.tenant, (p.clone(), s.catalog));
        }
        Ok(Catalogs::Saved(map))
    }

    /// `Live` without files, else the saved files.
    pub fn from_args(paths: &[PathBuf]) -> Result<Catalogs, ToolError> {
        if paths.is_empty() {
            Ok(Catalogs::Live)
        } else {
            Catalogs::saved(paths)
        }
    }

    /// The catalog of `tenant` (a tenant of the config).
    async fn get(&self, cfg: &Config, tenant: &TenantId) -> Result<Catalog, ToolError> {
        match self {
            Catalogs::Live => live_catalog(cfg, &Router::from_config(cfg)?, tenant).await,
            Catalogs::Saved(map) => {
                if cfg.tenant(tenant).is_none() {
                    return Err(ToolError::UnknownTenant(tenant.clone()));
                }
                match map.get(tenant) {
                    Some((_, cat)) => Ok(cat.clone()),
                    None => {
                        let mut have: Vec<String> = map
                            .iter()
                            .map(|(t, (p, _))| format!("{} ({t})", p.display()))
                            .collect();
                        have.sort();
                        Err(ToolError::NoSavedCatalog(
                            tenant.clone(),
                            format!(": {}", have.join(", ")),
                        ))
                    }
                }
            }
        }
    }
}

/// Loads the live catalog of `tenant` and writes it to `out` (schema metadata only; atomically). Returns a
/// one-line summary.
pub async fn save_catalog(
    cfg: &Config,
    tenant: &TenantId,
    out: &Path,
) -> Result<String, ToolError> {
    let cat = live_catalog(cfg, &Router::from_config(cfg)?, tenant).await?;
    saved::save(out, tenant, &cat)?;
    Ok(format!(
        "tenant {tenant}: {} relation(s), {} function(s), {} operator(s) outside the system schemas; catalog written to {}\n",
        cat.relations.len(),
        cat.functions.len(),
        cat.operators.len(),
        out.display()
    ))
}

/// A placeholder key: explain/test output never shows a tenant's real key material.
fn placeholder_key() -> PseudonymKey {
    PseudonymKey::new(b"pgveil-explain-placeholder-key")
}

/// Validates the policy and, for every tenant whose catalog is at hand (reachable, or saved with
/// `--catalog`), lists columns no rule classifies.
pub async fn check(cfg: &Config, catalogs: &Catalogs) -> Result<String, ToolError> {
    let pc = cfg.policy.as_ref().ok_or(ToolError::NoPolicy)?;
    let engine = MaskingEngine::new(&pc.dir)?;
    let snap = engine.policy();
    let mut out = format!(
        "{}: policy ok ({} file(s))\n",
        pc.dir.display(),
        snap.policy.sources.len()
    );
    for t in &cfg.tenants {
        match catalogs.get(cfg, &t.id).await {
            Err(e) => {
                let _ = writeln!(
                    out,
                    "tenant {}: catalog not available ({e}); unclassified columns not listed",
                    t.id
                );
            }
            Ok(cat) => {
                let role = snap
                    .policy
                    .roles()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| RoleName::new("-"));
                // Loading refuses a policy without roles, so `None` is not expected here.
                let Some(eff) = snap.policy.effective(&t.id, &role) else {
                    let _ = writeln!(
                        out,
                        "tenant {}: the policy defines no role; unclassified columns not listed",
                        t.id
                    );
                    continue;
                };
                let direct = |s: &str, tb: &str, c: &str| eff.classify(s, tb, c);
                let mut rels: Vec<_> = cat.relations.values().collect();
                rels.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
                let mut lines = Vec::new();
                for r in rels.into_iter().filter(|r| r.kind != 'S') {
                    let unclassified: Vec<&str> = r
                        .columns
                        .iter()
                        .filter(|c| cat.classify(r, &c.name, &direct).is_none())
                        .map(|c| c.name.as_str())
                        .collect();
                    if !unclassified.is_empty() {
                        lines.push(format!(
                            "  {}.{}: {}",
                            r.schema,
                            r.name,
                            unclassified.join(", ")
                        ));
                    }
                }
                let _ = writeln!(
                    out,
                    "tenant {}: {} unclassified relation(s)",
                    t.id,
                    lines.len()
                );
                for l in lines {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
    }
    Ok(out)
}

/// The decision, rewritten SQL and masked columns for one statement.
pub async fn explain(
    cfg: &Config,
    catalogs: &Catalogs,
    tenant: &TenantId,
    role: &RoleName,
    sql: &str,
) -> Result<String, ToolError> {
    let pc = cfg.policy.as_ref().ok_or(ToolError::NoPolicy)?;
    let engine = MaskingEngine::new(&pc.dir)?;
    let cat = catalogs.get(cfg, tenant).await?;
    Ok(explain_with(&engine, cat, tenant, role, sql))
}

/// [`explain`] with the policy loaded and the catalog at hand.
fn explain_with(
    engine: &MaskingEngine,
    cat: Catalog,
    tenant: &TenantId,
    role: &RoleName,
    sql: &str,
) -> String {
    let version = cat.version;
    engine.set_tenant(
        tenant.clone(),
        TenantState {
            catalog: cat,
            key: Some(placeholder_key()),
        },
    );
    let (d, masked) = engine.decide(sql, tenant, role);
    let mut out = format!(
        "tenant {tenant}, role {role}, policy version {}, catalog version {version}\n",
        engine.policy().version
    );
    match d {
        Decision::Allow => out.push_str("decision: allow (forwarded unchanged)\n"),
        Decision::Rewrite(s) => {
            out.push_str("decision: rewrite\nmasked columns:\n");
            for m in &masked {
                let _ = writeln!(out, "  {m}");
            }
            let _ = writeln!(
                out,
                "rewritten SQL (pseudonym keys shown as a placeholder key):\n{s}"
            );
        }
        Decision::Deny(e) => {
            let _ = writeln!(out, "decision: refuse\n{} {}", e.code(), e.message());
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    tenant: TenantId,
    role: RoleName,
    sql: String,
    /// allow | rewrite | refuse
    decision: String,
    /// `schema.table.column` that must be masked (rewrite only).
    #[serde(default)]
    masked: Vec<String>,
}

/// Runs the `*.tests.toml` cases next to the policies; returns the report and whether all passed.
pub async fn test(cfg: &Config, catalogs: &Catalogs) -> Result<(String, bool), ToolError> {
    let pc = cfg.policy.as_ref().ok_or(ToolError::NoPolicy)?;
    let engine = MaskingEngine::new(&pc.dir)?;
    let dir = if pc.dir.is_dir() {
        pc.dir.clone()
    } else {
        pc.dir.parent().unwrap_or(Path::new(".")).to_owned()
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| ToolError::Cases(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".tests.toml"))
        .collect();
    files.sort();
    let mut loaded: HashMap<TenantId, bool> = HashMap::new();
    let (mut out, mut ok, mut n) = (String::new(), true, 0);
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| ToolError::Cases(format!("{}: {e}", f.display())))?;
        let cases: CaseFile =
            toml::from_str(&text).map_err(|e| ToolError::Cases(format!("{}: {e}", f.display())))?;
        for c in cases.cases {
            if !loaded.contains_key(&c.tenant) {
                let cat = catalogs.get(cfg, &c.tenant).await?;
                engine.set_tenant(
                    c.tenant.clone(),
                    TenantState {
                        catalog: cat,
                        key: Some(placeholder_key()),
                    },
                );
                loaded.insert(c.tenant.clone(), true);
            }
            n += 1;
            let (d, masked) = engine.decide(&c.sql, &c.tenant, &c.role);
            let got = match &d {
                Decision::Allow => "allow",
                Decision::Rewrite(_) => "rewrite",
                Decision::Deny(_) => "refuse",
            };
            let missing: Vec<&String> = c
                .masked
                .iter()
                .filter(|m| !masked.iter().any(|x| x.starts_with(&format!("{m} "))))
                .collect();
            let pass = got == c.decision && missing.is_empty();
            ok &= pass;
            let _ = writeln!(
                out,
                "{} {} ({}): expected {}, got {}{}",
                if pass { "ok  " } else { "FAIL" },
                c.name,
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                c.decision,
                got,
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; not masked: {missing:?}")
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "{n} case(s), {}",
        if ok { "all passed" } else { "FAILURES" }
    );
    Ok((out, ok))
}

#[cfg(test)]
mod tests;
