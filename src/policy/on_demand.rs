//! On-demand catalog loads for relations the snapshot does not have (a table created outside pgveil, e.g.
//! by `pgbench -i` over a direct connection): the statement that names it waits for one fresh load and is
//! decided again, instead of failing until the next timer refresh.
//!
//! The statement hook is synchronous and runs on a session's runtime thread, which may be the only thread of
//! a current-thread runtime. So the load runs on a dedicated thread with its own runtime and its own
//! connection (never the catalog pool, whose connections are driven by the main runtime), and the caller
//! waits for it with a bound ([`WAIT`]). Loads are single-flight (one at a time; callers that waited for
//! another's load see its result) and rate-limited per tenant ([`INTERVAL`]): a client that keeps naming
//! a missing table costs at most one load per interval.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::catalog::Catalog;
use super::catalog::load;
use crate::error::Classified;
use crate::ids::TenantId;
use crate::route::Router;
use crate::secret::SecretStore;

/// The least time between two on-demand loads of one tenant.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long a statement waits for an on-demand load before it is answered with the snapshot it has.
pub const WAIT: Duration = Duration::from_secs(5);

type Job = (TenantId, mpsc::Sender<Option<Catalog>>);

/// The on-demand loader of a masking engine.
#[derive(Default)]
pub struct OnDemand {
    /// Per tenant: when its last on-demand load started.
    last: Mutex<HashMap<TenantId, Instant>>,
    /// Held for the duration of one load (single flight).
    flight: Mutex<()>,
    /// The loader thread's job queue, once started.
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
}

impl OnDemand {
    /// Starts the loader thread (once; later calls do nothing).
    pub fn start(&self, router: Arc<Router>, secrets: Arc<dyn SecretStore>) {
        if self.jobs.get().is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("pgveil-catalog-on-demand".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                while let Ok((id, reply)) = rx.recv() {
                    let catalog = router.tenant(&id).and_then(|t| {
                        rt.block_on(load::load(t, &*secrets, WAIT))
                            .map_err(|e| {
                                tracing::warn!(tenant = %id, kind = e.kind().as_label(), error = %e, "on-demand catalog load failed");
                            })
                            .ok()
                    });
                    let _ = reply.send(catalog);
                }
            });
        if spawned.is_ok() {
            let _ = self.jobs.set(Mutex::new(tx));
        }
    }

    /// Loads `tenant`'s catalog now and waits for it (at most [`WAIT`]); `None` when the tenant was loaded on
    /// demand less than [`INTERVAL`] ago, the loader is not running, or the load failed or took too long.
    pub fn load_now(&self, tenant: &TenantId) -> Option<Catalog> {
        let jobs = self.jobs.get()?;
        let _flight = self.flight.lock();
        let now = Instant::now();
        {
            let mut last = self.last.lock();
            if last
                .get(tenant)
                .is_some_and(|t| now.duration_since(*t) < INTERVAL)
            {
                return None;
            }
            last.insert(tenant.clone(), now);
        }
        let (tx, rx) = mpsc::channel();
        jobs.lock().send((tenant.clone(), tx)).ok()?;
        metrics::counter!("pgveil_catalog_on_demand_total").increment(1);
        rx.recv_timeout(WAIT).ok().flatten()
    }
}
