//! The masking engine: implements the statement hook with the current policy snapshot, each tenant's catalog
//! snapshot and pseudonym key, and a rewrite cache. Snapshots are swapped atomically (`arc-swap`): a session
//! picks up a new policy or catalog at its next statement, and an invalid policy file never replaces the last
//! good one.
//!
//! The decision caches are in [`cache`], catalog loads and policy reloads in [`background`].

mod background;
mod cache;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use self::cache::{CacheKey, Cached, Decided, Planned};
use super::cache::ByteCache;
use super::catalog::Catalog;
use super::file::{Policy, PolicyError};
use super::functions::PseudonymKey;
use super::rewrite::{Context, Outcome, check};
use super::{Decision, StatementPolicy, Versioned};
use crate::identity::Identity;
use crate::ids::{RoleName, TenantId};
use crate::proto::PgError;

pub use crate::config::DEFAULT_CACHE_BYTES;

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

/// Cache and decision counters.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Decisions served from the cache.
    pub hits: AtomicU64,
    /// Decisions computed (every decision is a hit, a plan hit or a miss).
    pub misses: AtomicU64,
    /// Decisions served from a literal-normalized plan (same statement, other literals).
    pub plan_hits: AtomicU64,
    /// Statements refused (cached or not).
    pub refused: AtomicU64,
    /// Policy reloads that failed (the previous policy stayed).
    pub rejected_reloads: AtomicU64,
    /// Schema changes reported by sessions (each makes the tenant's catalog stale until reloaded).
    pub schema_changes: AtomicU64,
    /// Catalog loads that completed (timer and schema changes).
    pub catalog_loads: AtomicU64,
}

/// The masking engine.
pub struct MaskingEngine {
    policy_path: PathBuf,
    policy: ArcSwap<PolicySnapshot>,
    tenants: ArcSwap<HashMap<TenantId, Arc<TenantState>>>,
    cache: ByteCache<CacheKey, Cached>,
    /// Fingerprints of effective policies, for decision epochs.
    fingerprints: super::version::Fingerprints,
    /// Literal-normalized plans, keyed like `cache` but by the normalized text.
    plans: ByteCache<CacheKey, Planned>,
    /// Tenants whose schema changed since their catalog was loaded, with the generation of the latest change.
    /// Their statements are decided as if no catalog were loaded (refused where one is needed).
    stale: Mutex<HashMap<TenantId, u64>>,
    /// `stale.len()`, read without the lock on every statement.
    stale_count: AtomicUsize,
    /// Source of schema-change generations.
    generation: AtomicU64,
    /// Tenants to reload now, and the wake-up of the refresh task.
    requested: Mutex<HashSet<TenantId>>,
    wake: tokio::sync::Notify,
    /// Catalog loads for statements naming relations the snapshot does not have.
    on_demand: super::on_demand::OnDemand,
    /// A pooled connection per tenant for catalog loads.
    loader: super::catalog::pool::CatalogPools,
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
            cache: ByteCache::new(DEFAULT_CACHE_BYTES / 2),
            fingerprints: super::version::Fingerprints::default(),
            plans: ByteCache::new(DEFAULT_CACHE_BYTES / 2),
            stale: Mutex::new(HashMap::new()),
            stale_count: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            requested: Mutex::new(HashSet::new()),
            wake: tokio::sync::Notify::new(),
            on_demand: super::on_demand::OnDemand::default(),
            loader: super::catalog::pool::CatalogPools::default(),
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
                metrics::counter!("pgveil_policy_reloads_total", "result" => "ok").increment(1);
                tracing::info!(version, "policy reloaded");
                Ok(version)
            }
            Err(e) => {
                self.stats.rejected_reloads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("pgveil_policy_reloads_total", "result" => "rejected")
                    .increment(1);
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

    /// The tenant's state if its catalog is loaded and current (no schema change reported since).
    fn current(&self, tenant: &TenantId) -> Option<Arc<TenantState>> {
        if self.is_stale(tenant) {
            return None;
        }
        self.tenant(tenant)
    }

    /// Whether a schema change was reported for the tenant since its catalog was last loaded.
    pub fn is_stale(&self, tenant: &TenantId) -> bool {
        self.stale_count.load(Ordering::Acquire) != 0 && self.stale.lock().contains_key(tenant)
    }

    /// Records a schema change in a tenant's database: its catalog counts as not loaded until a load that
    /// started after this call completes, and such a load is requested now.
    pub fn schema_changed_in(&self, tenant: &TenantId) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut stale = self.stale.lock();
            stale.insert(tenant.clone(), generation);
            self.stale_count.store(stale.len(), Ordering::Release);
        }
        self.stats.schema_changes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgveil_schema_changes_total").increment(1);
        self.requested.lock().insert(tenant.clone());
        self.wake.notify_one();
    }

    /// A load of the tenant's catalog that started at generation `started` completed.
    fn loaded(&self, tenant: &TenantId, started: u64) {
        self.stats.catalog_loads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgveil_catalog_loads_total", "result" => "ok").increment(1);
        let mut stale = self.stale.lock();
        if stale.get(tenant).is_some_and(|g| *g <= started) {
            stale.remove(tenant);
            self.stale_count.store(stale.len(), Ordering::Release);
        }
    }

    /// Decides on `sql` for (tenant, role) without the cache; also returns the masked columns.
    pub fn decide(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> (Decision, Vec<String>) {
        let d = self.decide_planned(sql, tenant, role, &self.policy(), self.current(tenant));
        (d.decision, d.masked)
    }

    /// [`MaskingEngine::decide`] on the given policy and tenant state (the ones the cache key was made from),
    /// with the decision's plan for other literal values when it has one.
    fn decide_planned(
        &self,
        sql: &str,
        tenant: &TenantId,
        role: &RoleName,
        snap: &PolicySnapshot,
        state: Option<Arc<TenantState>>,
    ) -> Decided {
        let decided = |decision, rule, masked, plan| Decided {
            decision,
            rule,
            masked,
            plan,
        };
        let Some(eff) = snap.policy.effective(tenant, role) else {
            let e = PgError::insufficient_privilege(format!(
                "pgveil: role {role} has no masking policy; every statement is refused (rule no-policy)"
            ));
            return decided(Decision::Deny(e), "no-policy", Vec::new(), None);
        };
        if eff.role.unrestricted {
            return decided(Decision::Allow, "", Vec::new(), None);
        }
        let ctx = Context {
            policy: &eff,
            catalog: state.as_ref().map(|s| &s.catalog),
            key: state.as_ref().and_then(|s| s.key.as_ref()),
            role,
        };
        let checked = check(sql, &ctx);
        match checked.outcome {
            Outcome::Allow => decided(Decision::Allow, "", Vec::new(), checked.template),
            Outcome::Rewrite { sql, masked } => {
                decided(Decision::Rewrite(sql), "", masked, checked.template)
            }
            Outcome::Refuse(r) => {
                decided(Decision::Deny(r.to_pg_error()), r.rule, Vec::new(), None)
            }
        }
    }

    /// Sets the byte budget of the decision caches (`policy.cache_bytes`), emptying them.
    pub fn with_cache_budget(mut self, bytes: u64) -> Self {
        self.cache = ByteCache::new(bytes / 2);
        self.plans = ByteCache::new(bytes / 2);
        self
    }

    /// Bytes held by the decision caches (estimated), for metrics and tests.
    pub fn cache_weight(&self) -> u64 {
        self.cache.weight() + self.plans.weight()
    }

    /// Decides with the cache, and logs the decision's audit event now (sessions' relays queue theirs with
    /// the statement's completion instead, see [`crate::audit`]).
    pub fn check_cached(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> Decision {
        let v = self.check_epoch(sql, tenant, role);
        if let Some(tag) = &v.audit {
            tag.log(tenant, role);
        }
        v.decision
    }

    /// Decides with the cache; also returns the epoch of the snapshots the decision was made with. Never
    /// waits for a catalog load (see [`MaskingEngine::try_check_epoch`]).
    pub fn check_epoch(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> Versioned {
        self.counted(self.check_uncounted(sql, tenant, role))
    }

    /// [`MaskingEngine::check_epoch`] for a statement that may wait: `None` when it names a relation the
    /// tenant's snapshot does not have and a load of the catalog is in flight (started now if none ran
    /// within [`super::on_demand::INTERVAL`]): decide it again shortly; it then sees the loaded catalog.
    pub fn try_check_epoch(
        &self,
        sql: &str,
        tenant: &TenantId,
        role: &RoleName,
    ) -> Option<Versioned> {
        let d = self.check_uncounted(sql, tenant, role);
        if matches!(&d.decision, Decision::Deny(e) if e.code() == "42P01")
            && self.on_demand.poll(tenant) == super::on_demand::Poll::Loading
        {
            return None;
        }
        Some(self.counted(d))
    }

    fn counted(&self, d: Versioned) -> Versioned {
        if matches!(d.decision, Decision::Deny(_)) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        d
    }

    /// The epoch of (tenant, role) under this policy and the tenant's last loaded catalog (0 if none). A
    /// decision taken while the catalog is stale needed no catalog, so it holds under the last loaded one.
    fn epoch_of(&self, snap: &PolicySnapshot, tenant: &TenantId, role: &RoleName) -> u64 {
        let fp = self.fingerprints.get(snap.version, tenant, role, || {
            snap.policy.effective(tenant, role)
        });
        let catalog = self.tenant(tenant).map_or(0, |t| t.catalog.version);
        super::version::epoch(fp, catalog)
    }
}

impl StatementPolicy for MaskingEngine {
    fn inspects(&self, who: &Identity) -> bool {
        // Asked per statement: no allocation.
        self.policy.load().policy.unrestricted(&who.role) != Some(true)
    }

    fn check(&self, sql: &str, who: &Identity) -> Decision {
        self.check_cached(sql, &who.tenant, &who.role)
    }

    fn check_versioned(&self, sql: &str, who: &Identity) -> Versioned {
        self.check_epoch(sql, &who.tenant, &who.role)
    }

    fn try_check_versioned(&self, sql: &str, who: &Identity) -> Option<Versioned> {
        self.try_check_epoch(sql, &who.tenant, &who.role)
    }

    fn schemas_match(&self, who: &Identity, schemas: &[String]) -> bool {
        self.current(&who.tenant)
            .is_none_or(|t| t.catalog.search_path == schemas)
    }

    fn versioned(&self) -> bool {
        true
    }

    fn epoch(&self, who: &Identity) -> Option<u64> {
        // While a reported schema change is being reloaded the epoch is not known yet.
        if self.is_stale(&who.tenant) {
            return None;
        }
        Some(self.epoch_of(&self.policy(), &who.tenant, &who.role))
    }

    fn watches_backend(&self) -> bool {
        true
    }

    fn schema_changed(&self, who: &Identity) {
        tracing::info!(tenant = %who.tenant, role = %who.role, "schema change reported; reloading the tenant's catalog");
        self.schema_changed_in(&who.tenant);
    }

    fn session_defaults_changed(&self, who: &Identity) {
        tracing::info!(tenant = %who.tenant, "backend session defaults differ from the catalog snapshot; reloading it over a new connection");
        self.loader.forget(&who.tenant);
        self.schema_changed_in(&who.tenant);
    }

    fn guard(&self, who: &Identity) -> Option<crate::exfil::Limits> {
        self.policy.load().policy.guard(&who.tenant, &who.role)
    }

    fn withholds_details(&self, who: &Identity) -> bool {
        // Everyone but roles that see every column raw (those are not masked, so details hold nothing hidden).
        self.policy
            .load()
            .policy
            .effective(&who.tenant, &who.role)
            .is_none_or(|e| !e.role.sees_everything())
    }
}

#[cfg(test)]
mod tests;
