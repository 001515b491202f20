//! The decision caches: exact statements (comment-free text as the key) and literal-normalized plans, both
//! keyed by policy version, catalog version, tenant and role, and bounded in bytes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::cache::HeapSize;
use super::super::rewrite::{Normalized, Template, may_have_comment, normalize, without_comments};
use super::super::{Decision, Versioned};
use super::{MaskingEngine, PolicySnapshot, TenantState};
use crate::audit::AuditTag;
use crate::ids::{RoleName, TenantId};

#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct CacheKey {
    pub(super) sql: Box<str>,
    /// `sql` is the comment-free key of a statement with comments ([`without_comments`]), not its text.
    pub(super) commented: bool,
    pub(super) policy: u64,
    pub(super) catalog: u64,
    pub(super) tenant: TenantId,
    pub(super) role: RoleName,
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
pub(super) struct Cached {
    pub(super) decision: Decision,
    /// For refusals, the rule that refused (`parse`, `denied-function`, ...); never text from the statement.
    pub(super) rule: &'static str,
    pub(super) fingerprint: Arc<str>,
    pub(super) masked: Arc<[String]>,
    /// SQL `PREPARE` or `DECLARE`: state that outlives the statement.
    pub(super) lasting: bool,
}

/// One decision with what caching and auditing it need.
pub(super) struct Decided {
    pub(super) decision: Decision,
    pub(super) rule: &'static str,
    pub(super) masked: Vec<String>,
    pub(super) plan: Option<(Normalized, Template)>,
}

/// A decision planned for every statement with the same literal-normalized text.
#[derive(Clone)]
pub(super) struct Planned {
    /// `None`: allowed unchanged.
    pub(super) template: Option<Arc<Template>>,
    pub(super) fingerprint: Arc<str>,
    pub(super) masked: Arc<[String]>,
}

impl MaskingEngine {
    /// Decides with the caches; counts hits and misses but not refusals (see `check_epoch`).
    pub(super) fn check_uncounted(
        &self,
        sql: &str,
        tenant: &TenantId,
        role: &RoleName,
    ) -> Versioned {
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
        let key = cache_key(
            uncommented.map_or_else(|| sql.into(), String::into_boxed_str),
            commented,
            tenant,
            role,
            &snap,
            state.as_deref(),
        );
        if let Some(c) = self.exact_hit(&key, commented) {
            return versioned(&c);
        }
        // The same statement with other literals: splice them into its plan.
        let norm = (key.catalog != 0).then(|| normalize(sql)).flatten();
        let plan_key = norm.as_ref().map(|n| {
            cache_key(
                n.key.as_str().into(),
                false,
                tenant,
                role,
                &snap,
                state.as_deref(),
            )
        });
        if let (Some(n), Some(pk)) = (&norm, &plan_key)
            && let Some(c) = self.plan_hit(sql, n, pk)
        {
            return versioned(&c);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgveil_rewrite_cache_total", "result" => "miss").increment(1);
        let (c, template) = self.decide_fresh(sql, tenant, role, &snap, state);
        // Catalog-not-loaded refusals are not cached: the key's catalog version 0 would keep them forever.
        if key.catalog == 0 {
            return versioned(&c);
        }
        if let (Some((n, t)), Some(pk)) = (template, plan_key)
            && norm.as_ref().is_some_and(|m| m.key == n.key)
        {
            self.remember_plan(pk, t, &c);
        }
        let out = versioned(&c);
        // A rewrite carries this statement's comments: never handed to one with other comments.
        if !(commented && matches!(c.decision, Decision::Rewrite(_))) {
            self.cache.insert(key, c);
        }
        out
    }

    /// The exact cache's decision for `key`, unless it is a rewrite of a statement with comments.
    fn exact_hit(&self, key: &CacheKey, commented: bool) -> Option<Cached> {
        let c = self
            .cache
            .get(key)
            .filter(|c| !(commented && matches!(c.decision, Decision::Rewrite(_))))?;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgveil_rewrite_cache_total", "result" => "hit").increment(1);
        Some(c)
    }

    /// The decision for `sql` from the plan of its literal-normalized form `n`, if one is cached and
    /// `sql`'s literals fit it.
    fn plan_hit(&self, sql: &str, n: &Normalized, pk: &CacheKey) -> Option<Cached> {
        let p = self.plans.get(pk)?;
        let decision = match &p.template {
            None => Decision::Allow,
            Some(t) => Decision::Rewrite(t.instantiate(sql, n)?),
        };
        self.stats.plan_hits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgveil_rewrite_cache_total", "result" => "plan").increment(1);
        Some(Cached {
            decision,
            rule: "",
            fingerprint: p.fingerprint,
            masked: p.masked,
            lasting: false, // plans are made for SELECT and DML only
        })
    }

    /// Decides `sql` without the caches, with its fingerprint, and the plan for other literals if any.
    fn decide_fresh(
        &self,
        sql: &str,
        tenant: &TenantId,
        role: &RoleName,
        snap: &PolicySnapshot,
        state: Option<Arc<TenantState>>,
    ) -> (Cached, Option<(Normalized, Template)>) {
        let Decided {
            decision,
            rule,
            masked,
            plan,
        } = self.decide_planned(sql, tenant, role, snap, state);
        let fingerprint = pg_query::fingerprint(sql, 0, pg_query::FingerprintOptions::FULL_RELNAME)
            .map(|f| f.hex)
            .unwrap_or_else(|_| "unparsable".into());
        let c = Cached {
            lasting: !matches!(decision, Decision::Deny(_)) && super::super::version::lasting(sql),
            decision,
            rule,
            fingerprint: fingerprint.into(),
            masked: masked.into(),
        };
        (c, plan)
    }

    /// Files the plan of a decided statement for the same statement with other literals.
    fn remember_plan(&self, pk: CacheKey, t: Template, c: &Cached) {
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
