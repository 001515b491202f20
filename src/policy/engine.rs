//! The masking engine: implements the statement hook with the current policy snapshot, each tenant's catalog
//! snapshot and pseudonym key, and a rewrite cache. Snapshots are swapped atomically (`arc-swap`): a session
//! picks up a new policy or catalog at its next statement, and an invalid policy file never replaces the last
//! good one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::catalog::Catalog;
use super::file::{Policy, PolicyError};
use super::functions::PseudonymKey;
use super::rewrite::{Context, Outcome, rewrite};
use super::{Decision, StatementPolicy};
use crate::identity::Identity;
use crate::ids::{RoleName, SecretId, TenantId};
use crate::proto::PgError;
use crate::route::Router;
use crate::secret::{ExposeSecret, SecretStore};

/// Largest number of cached rewrite results (the cache is cleared when full).
const CACHE_CAPACITY: usize = 10_000;

/// A policy with its version.
pub struct PolicySnapshot {
    /// Increases with every successful load.
    pub version: u64,
    /// The policy.
    pub policy: Policy,
}

/// What the engine knows about one tenant.
pub struct TenantState {
    /// Catalog snapshot.
    pub catalog: Catalog,
    /// Pseudonym key, when configured and fetched.
    pub key: Option<PseudonymKey>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    sql: Box<str>,
    policy: u64,
    catalog: u64,
    tenant: TenantId,
    role: RoleName,
}

/// A cached decision with what its audit event needs.
#[derive(Clone)]
struct Cached {
    decision: Decision,
    fingerprint: Arc<str>,
    masked: Arc<[String]>,
}

/// Cache and decision counters.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Decisions served from the cache.
    pub hits: AtomicU64,
    /// Decisions computed.
    pub misses: AtomicU64,
    /// Policy reloads that failed (the previous policy stayed).
    pub rejected_reloads: AtomicU64,
}

/// The masking engine.
pub struct MaskingEngine {
    policy_path: PathBuf,
    policy: ArcSwap<PolicySnapshot>,
    tenants: ArcSwap<HashMap<TenantId, Arc<TenantState>>>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
    /// Counters.
    pub stats: EngineStats,
}

impl MaskingEngine {
    /// Loads the policy (refusing to start without a valid one).
    pub fn new(policy_path: &Path) -> Result<MaskingEngine, PolicyError> {
        let policy = Policy::load(policy_path)?;
        Ok(MaskingEngine {
            policy_path: policy_path.to_owned(),
            policy: ArcSwap::from_pointee(PolicySnapshot { version: 1, policy }),
            tenants: ArcSwap::from_pointee(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            stats: EngineStats::default(),
        })
    }

    /// The current policy snapshot.
    pub fn policy(&self) -> Arc<PolicySnapshot> {
        self.policy.load_full()
    }

    /// Reloads the policy files; on error the current policy stays and the error is returned.
    pub fn reload(&self) -> Result<u64, PolicyError> {
        match Policy::load(&self.policy_path) {
            Ok(policy) => {
                let version = self.policy.load().version + 1;
                self.policy
                    .store(Arc::new(PolicySnapshot { version, policy }));
                tracing::info!(version, "policy reloaded");
                Ok(version)
            }
            Err(e) => {
                self.stats.rejected_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
                Err(e)
            }
        }
    }

    /// Installs a tenant's catalog and key (from the loader, or directly in tests and `policy explain`).
    pub fn set_tenant(&self, tenant: TenantId, state: TenantState) {
        let mut map = HashMap::clone(&self.tenants.load());
        map.insert(tenant, Arc::new(state));
        self.tenants.store(Arc::new(map));
    }

    /// The tenant's state, if its catalog is loaded.
    pub fn tenant(&self, tenant: &TenantId) -> Option<Arc<TenantState>> {
        self.tenants.load().get(tenant).cloned()
    }

    /// Decides on `sql` for (tenant, role) without the cache; also returns the masked columns.
    pub fn decide(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> (Decision, Vec<String>) {
        let snap = self.policy.load();
        let Some(eff) = snap.policy.effective(tenant, role) else {
            return (
                Decision::Deny(PgError::insufficient_privilege(format!(
                    "pgveil: role {role} has no masking policy; every statement is refused (rule no-policy)"
                ))),
                Vec::new(),
            );
        };
        if eff.role.unrestricted {
            return (Decision::Allow, Vec::new());
        }
        let state = self.tenant(tenant);
        let ctx = Context {
            policy: &eff,
            catalog: state.as_ref().map(|s| &s.catalog),
            key: state.as_ref().and_then(|s| s.key.as_ref()),
            role,
        };
        match rewrite(sql, &ctx) {
            Outcome::Allow => (Decision::Allow, Vec::new()),
            Outcome::Rewrite { sql, masked } => (Decision::Rewrite(sql), masked),
            Outcome::Refuse(r) => (Decision::Deny(r.to_pg_error()), Vec::new()),
        }
    }

    fn cache_key(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> CacheKey {
        CacheKey {
            sql: sql.into(),
            policy: self.policy.load().version,
            catalog: self
                .tenants
                .load()
                .get(tenant)
                .map(|t| t.catalog.version)
                .unwrap_or(0),
            tenant: tenant.clone(),
            role: role.clone(),
        }
    }

    /// Decides with the cache.
    pub fn check_cached(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> Decision {
        let key = self.cache_key(sql, tenant, role);
        let hit = self.cache.lock().expect("cache lock").get(&key).cloned();
        if let Some(c) = hit {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            audit(&c, tenant, role);
            return c.decision;
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let (decision, masked) = self.decide(sql, tenant, role);
        let fingerprint = pg_query::fingerprint(sql, 0, pg_query::FingerprintOptions::FULL_RELNAME)
            .map(|f| f.hex)
            .unwrap_or_else(|_| "unparsable".into());
        let c = Cached {
            decision,
            fingerprint: fingerprint.into(),
            masked: masked.into(),
        };
        audit(&c, tenant, role);
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        // Catalog-not-loaded refusals are not cached: the key's catalog version 0 would keep them forever.
        if key.catalog != 0 {
            cache.insert(key, c.clone());
        }
        c.decision
    }

    /// Starts the background work: catalog loads and refreshes for every tenant, policy reload on file
    /// change (polled every second) and on SIGHUP.
    pub fn start(
        self: &Arc<Self>,
        router: Arc<Router>,
        secrets: Arc<dyn SecretStore>,
        keys: HashMap<TenantId, SecretId>,
        refresh: Duration,
    ) {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                for tenant in router.tenants() {
                    engine
                        .refresh_tenant(tenant, &*secrets, keys.get(&tenant.id))
                        .await;
                }
                tokio::time::sleep(refresh).await;
            }
        });
        let engine = self.clone();
        tokio::spawn(async move {
            let mut last = policy_stamp(&engine.policy_path);
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let sighup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let by_signal = tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                    _ = sighup => true,
                };
                let now = policy_stamp(&engine.policy_path);
                if by_signal || now != last {
                    last = now;
                    let _ = engine.reload();
                }
            }
        });
    }

    /// Loads one tenant's catalog and key; on failure the previous snapshot (if any) stays.
    pub async fn refresh_tenant(
        &self,
        tenant: &crate::route::Tenant,
        secrets: &dyn SecretStore,
        key: Option<&SecretId>,
    ) {
        let catalog =
            match super::catalog::load::load(tenant, secrets, Duration::from_secs(30)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(tenant = %tenant.id, error = %e, "catalog load failed");
                    return;
                }
            };
        let key = match key {
            None => None,
            Some(id) => match secrets.fetch(id).await {
                Ok(v) => Some(PseudonymKey::new(v.expose_secret().as_bytes())),
                Err(e) => {
                    tracing::warn!(tenant = %tenant.id, error = %e, "pseudonym key unavailable");
                    self.tenant(&tenant.id).and_then(|t| t.key.clone())
                }
            },
        };
        let same = self.tenant(&tenant.id).is_some_and(|old| {
            same_catalog(&old.catalog, &catalog) && old.key.is_some() == key.is_some()
        });
        if !same {
            tracing::info!(tenant = %tenant.id, version = catalog.version, relations = catalog.relations.len(), "catalog loaded");
            self.set_tenant(tenant.id.clone(), TenantState { catalog, key });
        }
    }

    /// Waits until every listed tenant has a catalog (tests, demo start-up).
    pub async fn wait_ready(&self, tenants: &[TenantId], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if tenants.iter().all(|t| self.tenant(t).is_some()) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Catalog equality ignoring the version (so an unchanged schema keeps cached rewrites).
fn same_catalog(a: &Catalog, b: &Catalog) -> bool {
    a.search_path == b.search_path
        && a.relations == b.relations
        && a.system_relations == b.system_relations
        && a.functions == b.functions
        && a.operators == b.operators
}

/// Names and modification times of the policy files (change detection).
fn policy_stamp(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    let entries: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    } else {
        vec![path.to_owned()]
    };
    for p in entries {
        let meta = std::fs::metadata(&p).ok();
        out.push((
            p,
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.map(|m| m.len()).unwrap_or(0),
        ));
    }
    out.sort();
    out
}

/// One structured audit event per decided statement (target `pgveil::audit`): the fingerprint of the statement
/// with literals removed (never its text), the decision, the refusal's SQLSTATE and the masked columns.
fn audit(c: &Cached, tenant: &TenantId, role: &RoleName) {
    let (decision, code) = match &c.decision {
        Decision::Allow => ("allowed", ""),
        Decision::Rewrite(_) => ("rewritten", ""),
        Decision::Deny(e) => ("refused", e.code),
    };
    tracing::info!(target: "pgveil::audit", %tenant, %role, fingerprint = %c.fingerprint, decision, code, masked = ?c.masked, "statement");
}

impl StatementPolicy for MaskingEngine {
    fn inspects(&self, who: &Identity) -> bool {
        self.policy
            .load()
            .policy
            .effective(&who.tenant, &who.role)
            .is_none_or(|e| !e.role.unrestricted)
    }

    fn check(&self, sql: &str, who: &Identity) -> Decision {
        self.check_cached(sql, &who.tenant, &who.role)
    }
}
