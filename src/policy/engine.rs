//! The masking engine: implements the statement hook with the current policy snapshot, each tenant's catalog
//! snapshot and pseudonym key, and a rewrite cache. Snapshots are swapped atomically (`arc-swap`): a session
//! picks up a new policy or catalog at its next statement, and an invalid policy file never replaces the last
//! good one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::cache::{ByteCache, HeapSize};
use super::catalog::Catalog;
use super::file::{Policy, PolicyError};
use super::functions::PseudonymKey;
use super::rewrite::{
    Context, Normalized, Outcome, Template, check, may_have_comment, normalize, without_comments,
};
use super::{Decision, StatementPolicy, Versioned};
use crate::audit::AuditTag;
use crate::identity::Identity;
use crate::ids::{RoleName, SecretId, TenantId};
use crate::proto::PgError;
use crate::route::Router;
use crate::secret::{ExposeSecret, SecretStore};

/// Default byte budget of the decision caches (exact texts and literal-normalized plans, half each).
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;

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
    /// `sql` is the comment-free key of a statement with comments ([`without_comments`]), not its text.
    commented: bool,
    policy: u64,
    catalog: u64,
    tenant: TenantId,
    role: RoleName,
}

impl HeapSize for CacheKey {
    fn heap_size(&self) -> usize {
        self.sql.len() + self.tenant.as_str().len() + self.role.as_str().len()
    }
}

impl HeapSize for Cached {
    fn heap_size(&self) -> usize {
        let decision = match &self.decision {
            Decision::Rewrite(s) => s.len(),
            Decision::Allow | Decision::Deny(_) => 64,
        };
        decision + self.fingerprint.len() + self.masked.iter().map(String::len).sum::<usize>()
    }
}

impl HeapSize for Planned {
    fn heap_size(&self) -> usize {
        self.template.as_ref().map_or(0, |t| t.heap_size())
            + self.fingerprint.len()
            + self.masked.iter().map(String::len).sum::<usize>()
    }
}

/// A cached decision with what its audit event needs.
#[derive(Clone)]
struct Cached {
    decision: Decision,
    /// For refusals, the rule that refused (`parse`, `denied-function`, ...); never text from the statement.
    rule: &'static str,
    fingerprint: Arc<str>,
    masked: Arc<[String]>,
    /// SQL `PREPARE` or `DECLARE`: state that outlives the statement.
    lasting: bool,
}

/// One decision with what caching and auditing it need.
struct Decided {
    decision: Decision,
    rule: &'static str,
    masked: Vec<String>,
    plan: Option<(Normalized, Template)>,
}

/// A decision planned for every statement with the same literal-normalized text.
#[derive(Clone)]
struct Planned {
    /// `None`: allowed unchanged.
    template: Option<Arc<Template>>,
    fingerprint: Arc<str>,
    masked: Arc<[String]>,
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

    fn cache_key(
        sql: Box<str>,
        commented: bool,
        tenant: &TenantId,
        role: &RoleName,
        snap: &PolicySnapshot,
        state: Option<&TenantState>,
    ) -> CacheKey {
        CacheKey {
            sql,
            commented,
            policy: snap.version,
            catalog: state.map(|t| t.catalog.version).unwrap_or(0),
            tenant: tenant.clone(),
            role: role.clone(),
        }
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

    /// Decides with the cache; also returns the epoch of the snapshots the decision was made with.
    pub fn check_epoch(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> Versioned {
        let mut d = self.check_uncounted(sql, tenant, role);
        // A relation the snapshot does not have: load the catalog now and decide again, once.
        if matches!(&d.decision, Decision::Deny(e) if e.code() == "42P01")
            && self.reload_on_demand(tenant)
        {
            d = self.check_uncounted(sql, tenant, role);
        }
        if matches!(d.decision, Decision::Deny(_)) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        d
    }

    /// Loads the tenant's catalog on demand (see [`super::on_demand`]); whether the snapshot changed since the
    /// call began (by this load or by another that finished meanwhile).
    fn reload_on_demand(&self, tenant: &TenantId) -> bool {
        let before = self.tenant(tenant).map(|t| t.catalog.version);
        let started = self.generation.load(Ordering::Acquire);
        if let Some(catalog) = self.on_demand.load_now(tenant) {
            let key = self.tenant(tenant).and_then(|t| t.key.clone());
            let same = self
                .tenant(tenant)
                .is_some_and(|old| same_catalog(&old.catalog, &catalog));
            if !same {
                tracing::info!(tenant = %tenant, version = catalog.version, "catalog loaded on demand (unknown relation)");
                self.set_tenant(tenant.clone(), TenantState { catalog, key });
            }
            self.loaded(tenant, started);
        }
        self.tenant(tenant).map(|t| t.catalog.version) != before
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

    fn check_uncounted(&self, sql: &str, tenant: &TenantId, role: &RoleName) -> Versioned {
        // One snapshot of the policy and of the tenant's state for the keys, the decision and its epoch: a
        // decision must never be filed under a version it was not made with (e.g. one taken without a
        // catalog, stale or not loaded, under a catalog version).
        let snap = self.policy.load_full();
        let state = self.current(tenant);
        let epoch = self.epoch_of(&snap, tenant, role);
        let versioned = |c: &Cached| Versioned {
            decision: c.decision.clone(),
            epoch,
            lasting: c.lasting,
            audit: Some(audit(c)),
        };
        // Statements that differ only in comments share one key: a comment is whitespace to PostgreSQL, so it
        // never changes the decision. Their rewrites come from plans (the comments are holes of the plan, so
        // each statement keeps its own); the exact cache keeps only their Allow and Deny decisions.
        let uncommented = may_have_comment(sql)
            .then(|| without_comments(sql))
            .flatten();
        let commented = uncommented.is_some();
        let key = Self::cache_key(
            uncommented.map_or_else(|| sql.into(), String::into_boxed_str),
            commented,
            tenant,
            role,
            &snap,
            state.as_deref(),
        );
        let hit = self
            .cache
            .get(&key)
            .filter(|c| !(commented && matches!(c.decision, Decision::Rewrite(_))));
        if let Some(c) = hit {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("pgveil_rewrite_cache_total", "result" => "hit").increment(1);
            return versioned(&c);
        }
        // The same statement with other literals: splice them into its plan.
        let norm = (key.catalog != 0).then(|| normalize(sql)).flatten();
        let plan_key = norm.as_ref().map(|n| {
            Self::cache_key(
                n.key.as_str().into(),
                false,
                tenant,
                role,
                &snap,
                state.as_deref(),
            )
        });
        if let (Some(n), Some(pk)) = (&norm, &plan_key) {
            let plan = self.plans.get(pk);
            if let Some(p) = plan {
                let decision = match &p.template {
                    None => Some(Decision::Allow),
                    Some(t) => t.instantiate(sql, n).map(Decision::Rewrite),
                };
                if let Some(decision) = decision {
                    self.stats.plan_hits.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("pgveil_rewrite_cache_total", "result" => "plan")
                        .increment(1);
                    let c = Cached {
                        decision,
                        rule: "",
                        fingerprint: p.fingerprint,
                        masked: p.masked,
                        lasting: false, // plans are made for SELECT and DML only
                    };
                    return versioned(&c);
                }
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgveil_rewrite_cache_total", "result" => "miss").increment(1);
        let Decided {
            decision,
            rule,
            masked,
            plan: template,
        } = self.decide_planned(sql, tenant, role, &snap, state);
        let fingerprint = pg_query::fingerprint(sql, 0, pg_query::FingerprintOptions::FULL_RELNAME)
            .map(|f| f.hex)
            .unwrap_or_else(|_| "unparsable".into());
        let c = Cached {
            lasting: !matches!(decision, Decision::Deny(_)) && super::version::lasting(sql),
            decision,
            rule,
            fingerprint: fingerprint.into(),
            masked: masked.into(),
        };
        // Catalog-not-loaded refusals are not cached: the key's catalog version 0 would keep them forever.
        if key.catalog == 0 {
            return versioned(&c);
        }
        if let (Some((n, t)), Some(pk)) = (template, plan_key)
            && norm.as_ref().is_some_and(|m| m.key == n.key)
        {
            let template = match &c.decision {
                Decision::Rewrite(_) => Some(Arc::new(t)),
                _ => None,
            };
            self.plans.insert(
                pk,
                Planned {
                    template,
                    fingerprint: c.fingerprint.clone(),
                    masked: c.masked.clone(),
                },
            );
        }
        let out = versioned(&c);
        // A rewrite carries this statement's comments: never handed to one with other comments.
        if !(commented && matches!(c.decision, Decision::Rewrite(_))) {
            self.cache.insert(key, c);
        }
        out
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
        self.on_demand.start(router.clone(), secrets.clone());
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                for tenant in router.tenants() {
                    engine
                        .refresh_tenant(tenant, &*secrets, keys.get(&tenant.id))
                        .await;
                }
                let next = tokio::time::Instant::now() + refresh;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => break,
                        _ = engine.wake.notified() => {}
                    }
                    let ids: Vec<TenantId> = engine.requested.lock().drain().collect();
                    for id in ids {
                        if let Some(tenant) = router.tenant(&id) {
                            engine
                                .refresh_tenant(tenant, &*secrets, keys.get(&id))
                                .await;
                        }
                    }
                }
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
        let started = self.generation.load(Ordering::Acquire);
        let catalog = match self
            .loader
            .load(tenant, secrets, Duration::from_secs(30))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("pgveil_catalog_loads_total", "result" => "error").increment(1);
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
        self.loaded(&tenant.id, started);
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
        && a.server_encoding == b.server_encoding
        && a.relations == b.relations
        && a.system_relations == b.system_relations
        && a.functions == b.functions
        && a.operators == b.operators
        && a.resolution == b.resolution
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

/// What the audit records of a decided statement say about it: the fingerprint of the statement with literals
/// removed (never its text), the decision, the refusal's SQLSTATE and rule (its reason; not the message, which
/// can quote the statement) and the masked columns. Counts the decision.
fn audit(c: &Cached) -> AuditTag {
    let (decision, code) = match &c.decision {
        Decision::Allow => ("allowed", ""),
        Decision::Rewrite(_) => ("rewritten", ""),
        Decision::Deny(e) => ("refused", e.code()),
    };
    metrics::counter!("pgveil_statements_total", "decision" => decision).increment(1);
    AuditTag {
        fingerprint: c.fingerprint.clone(),
        decision,
        code,
        rule: c.rule,
        masked: c.masked.clone(),
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

    fn expected_schemas(&self, who: &Identity) -> Option<Vec<String>> {
        self.current(&who.tenant)
            .map(|t| t.catalog.search_path.clone())
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
mod tests {
    use super::*;
    use crate::policy::catalog::fixture;

    /// An engine with the example policy and the fixture catalog for `acme`.
    fn engine() -> (MaskingEngine, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("payments.toml"),
            crate::demo::env::EXAMPLE_POLICY,
        )
        .expect("write policy");
        let e = MaskingEngine::new(dir.path()).expect("policy");
        e.set_tenant(
            TenantId::new("acme"),
            TenantState {
                catalog: fixture::catalog(),
                key: Some(PseudonymKey::new(b"unit-test-key")),
            },
        );
        (e, dir)
    }

    /// A log sink for a test subscriber.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn audit_events_have_decision_rule_and_masked_columns_but_never_literals() {
        let (e, _dir) = engine();
        let (t, r) = (TenantId::new("acme"), RoleName::new("analyst"));
        let capture = Capture::default();
        let sink = capture.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(sub, || {
            for sql in [
                "SELECT email FROM payers WHERE full_name = 'Zqx-literal-1'",
                "SELECT email FROM payers WHERE full_name = 'Zqx-literal-2'", // from the plan
                "SELECT email FROM payers WHERE full_name = 'Zqx-literal-2'", // exact cache
                "SELECT * FROM pg_stats WHERE tablename = 'Zqx-literal-3'",
                "SELECT 'Zqx-literal-4' FROM WHERE",
                "SELECT 1 + 1",
            ] {
                e.check_cached(sql, &t, &r);
            }
        });
        let out = String::from_utf8(capture.0.lock().clone()).expect("utf-8");
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("pgveil::audit"))
            .collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert!(
            !out.contains("Zqx-literal"),
            "a literal reached the audit log:\n{out}"
        );
        for l in &lines[..3] {
            assert!(
                l.contains("rewritten") && l.contains("public.payers.email"),
                "{l}"
            );
            assert!(l.contains("fingerprint="), "{l}");
        }
        assert!(
            lines[3].contains("refused")
                && lines[3].contains("denied-relation")
                && lines[3].contains("42501")
        );
        assert!(
            lines[4].contains("refused")
                && lines[4].contains("rule=\"parse\"")
                && lines[4].contains("42601")
        );
        assert!(lines[5].contains("allowed"), "{}", lines[5]);
    }

    #[test]
    fn statements_differing_only_in_comments_share_cache_entries() {
        let (e, _dir) = engine();
        let (t, r) = (TenantId::new("acme"), RoleName::new("analyst"));
        let plain = |sql: &str| e.decide(sql, &t, &r).0;
        let want_masked = match plain("SELECT email FROM payers  WHERE id = 5") {
            Decision::Rewrite(s) => s,
            other => panic!("no rewrite: {other:?}"),
        };
        for i in 0..1000 {
            let masked = format!("SELECT email FROM payers /* trace={i} */ WHERE id = 5");
            match e.check_cached(&masked, &t, &r) {
                Decision::Rewrite(got) => {
                    // The client's own comment is kept; the rest is the uncommented statement's rewrite.
                    assert_eq!(got.replace(&format!("/* trace={i} */"), ""), want_masked);
                }
                other => panic!("{masked}: {other:?}"),
            }
            let allowed = format!("-- request {i}\nSELECT 1 + 1");
            assert!(matches!(e.check_cached(&allowed, &t, &r), Decision::Allow));
            let refused = format!("SELECT * FROM pg_stats /* {i} */");
            assert!(matches!(
                e.check_cached(&refused, &t, &r),
                Decision::Deny(_)
            ));
            // Comment markers inside a literal are not comments: the literal is, and masking holds.
            let literal = format!("SELECT email FROM payers WHERE full_name = '/* {i} */'");
            assert!(
                matches!(e.check_cached(&literal, &t, &r), Decision::Rewrite(s) if s.contains(&format!("'/* {i} */'")))
            );
        }
        let entries = e.cache.len() + e.plans.len();
        assert!(entries <= 8, "{entries} cache entries for 4 statements");
        // A comment cannot change the decision: a commented-out masked column is no column, a comment cannot
        // end a statement early, and a cached answer is the uncached one.
        for sql in [
            "SELECT 1 /* , email FROM payers */",
            "SELECT email /* x */ FROM payers -- ; SELECT 1",
            "SELECT email /* x */ FROM payers -- ; SELECT 2",
            "SELECT /* */ full_name, email FROM payers /* y */ WHERE id = 9",
        ] {
            let cached = format!("{:?}", e.check_cached(sql, &t, &r));
            assert_eq!(cached, format!("{:?}", plain(sql)), "{sql}");
        }
        assert!(matches!(
            e.check_cached("SELECT 1 /* , email FROM payers */", &t, &r),
            Decision::Allow
        ));
    }

    #[test]
    fn a_stale_catalog_refuses_until_a_load_that_started_after_the_change() {
        let (e, _dir) = engine();
        let (t, r) = (TenantId::new("acme"), RoleName::new("analyst"));
        let sql = "SELECT email FROM payers WHERE id = 1";
        assert!(matches!(e.check_cached(sql, &t, &r), Decision::Rewrite(_)));
        let before_change = e.generation.load(Ordering::Acquire);
        e.schema_changed_in(&t);
        // Neither the exact-text cache nor the literal-normalized plan answers for a stale catalog.
        assert!(matches!(e.check_cached(sql, &t, &r), Decision::Deny(_)));
        let other = "SELECT email FROM payers WHERE id = 2";
        assert!(matches!(e.check_cached(other, &t, &r), Decision::Deny(_)));
        // A load that started before the change does not make it current.
        e.loaded(&t, before_change);
        assert!(e.is_stale(&t));
        assert!(matches!(e.check_cached(sql, &t, &r), Decision::Deny(_)));
        e.loaded(&t, e.generation.load(Ordering::Acquire));
        assert!(!e.is_stale(&t));
        // The refusals were not cached under the (unchanged) catalog version.
        assert!(matches!(e.check_cached(sql, &t, &r), Decision::Rewrite(_)));
        assert!(matches!(
            e.check_cached(other, &t, &r),
            Decision::Rewrite(_)
        ));
        assert_eq!(e.stats.refused.load(Ordering::Relaxed), 3);
        assert_eq!(e.stats.schema_changes.load(Ordering::Relaxed), 1);
    }
}
