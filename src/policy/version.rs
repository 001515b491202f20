//! Decision versions ("epochs"). A decision is only valid under the snapshots it was made with: the role's
//! effective policy and the tenant's catalog. Statements a session prepared (protocol Parse, SQL `PREPARE`)
//! and cursors it opened keep the rewrite of the epoch they were made in; after the epoch changes they must
//! not return rows (DESIGN.md "Trust boundary", Versions). The relay compares epochs; this module computes
//! them.
//!
//! The epoch hashes a canonical form of the effective policy (sorted, so that reloading the same files gives
//! the same fingerprint and a reload that does not touch a role leaves its sessions alone) with the catalog
//! version (0 while the catalog is stale or not loaded, so a schema change counts at once).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use parking_lot::Mutex;

use super::file::{Effective, RawSet};
use crate::ids::{RoleName, TenantId};

/// A fingerprint of everything in an effective policy that decisions depend on.
pub fn fingerprint(e: &Effective<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.role.unrestricted.hash(&mut h);
    match &e.role.raw {
        RawSet::All => "raw:*".hash(&mut h),
        RawSet::Some(set) => sorted(set.iter().map(String::as_str)).hash(&mut h),
    }
    sorted(e.role.statements.iter().map(|k| k.name())).hash(&mut h);
    sorted(e.role.allow_functions.iter().map(String::as_str)).hash(&mut h);
    format!("{:?}", e.role.unclassified).hash(&mut h);
    for rule in &e.rules {
        format!("{rule:?}").hash(&mut h);
    }
    let mut classes: Vec<String> = e
        .classes
        .iter()
        .map(|(name, f)| format!("{name}={f:?}"))
        .collect();
    classes.sort();
    classes.hash(&mut h);
    h.finish()
}

/// Fingerprints of (tenant, role) effective policies, computed once per policy version.
#[derive(Default)]
pub struct Fingerprints(Mutex<HashMap<(TenantId, RoleName), (u64, u64)>>);

impl Fingerprints {
    /// The fingerprint of `effective()` for (tenant, role) under policy `version` (0 without a policy).
    pub fn get<'p>(
        &self,
        version: u64,
        tenant: &TenantId,
        role: &RoleName,
        effective: impl FnOnce() -> Option<Effective<'p>>,
    ) -> u64 {
        let id = (tenant.clone(), role.clone());
        if let Some((v, fp)) = self.0.lock().get(&id)
            && *v == version
        {
            return *fp;
        }
        let fp = effective().map_or(0, |e| fingerprint(&e));
        let mut map = self.0.lock();
        if map.len() >= 10_000 {
            map.clear();
        }
        map.insert(id, (version, fp));
        fp
    }
}

/// The epoch of a policy fingerprint and a catalog version.
pub fn epoch(fingerprint: u64, catalog_version: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (fingerprint, catalog_version).hash(&mut h);
    h.finish()
}

/// Whether `sql` holds a statement whose effect outlives it: SQL `PREPARE` or `DECLARE` (a cursor; `WITH
/// HOLD` ones even outlive the transaction).
pub fn lasting(sql: &str) -> bool {
    // The protobuf decode recurses per nesting level: deep statements get a deep stack (a runtime thread's
    // 2 MiB would overflow and abort the process). No thread for it: assume lasting state (fail closed).
    super::rewrite::stack::deep_enough(sql, || lasting_parsed(sql)).unwrap_or(true)
}

fn lasting_parsed(sql: &str) -> bool {
    use pg_query::NodeEnum;
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return false; // refused anyway
    };
    parsed.protobuf.stmts.iter().any(|raw| {
        matches!(
            raw.stmt.as_ref().and_then(|n| n.node.as_ref()),
            Some(NodeEnum::PrepareStmt(_) | NodeEnum::DeclareCursorStmt(_))
        )
    })
}

fn sorted<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = items.collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lasting_statements() {
        assert!(lasting("PREPARE p AS SELECT 1"));
        assert!(lasting(
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT"
        ));
        assert!(!lasting("SELECT 1"));
        assert!(!lasting("EXECUTE p"));
        assert!(!lasting("FETCH 1 FROM c"));
        assert!(!lasting("SELEC"));
    }

    #[test]
    fn fingerprint_follows_the_effective_policy_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |text: &str| {
            std::fs::write(dir.path().join("p.toml"), text).expect("write");
            crate::policy::file::Policy::load(dir.path()).expect("policy")
        };
        // The example policy shipped in policies/.
        let base = include_str!("../../policies/payments.toml");
        let (t, analyst) = (
            crate::ids::TenantId::new("acme"),
            crate::ids::RoleName::new("analyst"),
        );
        let fp = |p: &crate::policy::file::Policy| {
            fingerprint(&p.effective(&t, &analyst).expect("role"))
        };
        let a = write(base);
        let b = write(base);
        assert_eq!(fp(&a), fp(&b), "same files, same fingerprint");
        let analyst_raw = "[roles.analyst]\nraw = []";
        assert!(base.contains(analyst_raw));
        let widened = base.replacen(analyst_raw, "[roles.analyst]\nraw = [\"pii.email\"]", 1);
        assert_ne!(fp(&a), fp(&write(&widened)));
    }
}
