//! The engine's background work: catalog loads (on a timer, on reported schema changes, on demand for an
//! unknown relation) and policy reloads (file change, SIGHUP).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::super::catalog::Catalog;
use super::super::functions::PseudonymKey;
use super::super::on_demand::Sink;
use super::{MaskingEngine, TenantState};
use crate::error::Classified;
use crate::ids::{SecretId, TenantId};
use crate::route::Router;
use crate::secret::{ExposeSecret, SecretStore};

impl MaskingEngine {
    /// Starts the background work: catalog loads and refreshes for every tenant, policy reload on file
    /// change (polled every second) and on SIGHUP.
    pub fn start(
        self: &Arc<Self>,
        router: Arc<Router>,
        secrets: Arc<dyn SecretStore>,
        keys: HashMap<TenantId, SecretId>,
        refresh: Duration,
    ) {
        let sink = Box::new(OnDemandSink(Arc::downgrade(self)));
        self.on_demand.start(sink, router.clone(), secrets.clone());
        tokio::spawn(
            self.clone()
                .refresh_catalogs(router, secrets, keys, refresh),
        );
        tokio::spawn(self.clone().watch_policy());
    }

    /// Loads every tenant's catalog every `refresh`, and requested ones (schema changes) at once.
    async fn refresh_catalogs(
        self: Arc<Self>,
        router: Arc<Router>,
        secrets: Arc<dyn SecretStore>,
        keys: HashMap<TenantId, SecretId>,
        refresh: Duration,
    ) {
        loop {
            for tenant in router.tenants() {
                self.refresh_tenant(tenant, &*secrets, keys.get(&tenant.id))
                    .await;
            }
            let next = tokio::time::Instant::now() + refresh;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = self.wake.notified() => {}
                }
                let ids: Vec<TenantId> = self.requested.lock().drain().collect();
                for id in ids {
                    if let Some(tenant) = router.tenant(&id) {
                        self.refresh_tenant(tenant, &*secrets, keys.get(&id)).await;
                    }
                }
            }
        }
    }

    /// Reloads the policy when its files change (polled every second) or on SIGHUP.
    async fn watch_policy(self: Arc<Self>) {
        let mut last = policy_stamp(&self.policy_path);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
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
            let now = policy_stamp(&self.policy_path);
            if by_signal || now != last {
                last = now;
                let _ = self.reload();
            }
        }
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
                let kind = e.kind().as_label();
                metrics::counter!("pgveil_catalog_loads_total", "result" => "error", "kind" => kind)
                    .increment(1);
                tracing::warn!(tenant = %tenant.id, kind, error = %e, "catalog load failed");
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

    /// Installs a catalog loaded on demand (see [`super::super::on_demand`]) by a load that started at
    /// schema-change generation `started`; the tenant's key stays.
    fn install_on_demand(&self, tenant: &TenantId, catalog: Catalog, started: u64) {
        let old = self.tenant(tenant);
        if !old
            .as_ref()
            .is_some_and(|old| same_catalog(&old.catalog, &catalog))
        {
            tracing::info!(tenant = %tenant, version = catalog.version, "catalog loaded on demand (unknown relation)");
            let key = old.and_then(|t| t.key.clone());
            self.set_tenant(tenant.clone(), TenantState { catalog, key });
        }
        self.loaded(tenant, started);
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

/// The engine as the on-demand loader's sink (weak: the loader thread must not keep the engine alive).
struct OnDemandSink(Weak<MaskingEngine>);

impl Sink for OnDemandSink {
    fn generation(&self) -> Option<u64> {
        self.0
            .upgrade()
            .map(|e| e.generation.load(Ordering::Acquire))
    }

    fn install(&self, tenant: &TenantId, catalog: Catalog, generation: u64) {
        if let Some(e) = self.0.upgrade() {
            e.install_on_demand(tenant, catalog, generation);
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
