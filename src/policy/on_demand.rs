//! On-demand catalog loads for relations the snapshot does not have (a table created outside pgveil, e.g.
//! by `pgbench -i` over a direct connection): the statement that names it waits for one fresh load and is
//! decided again, instead of failing until the next timer refresh.
//!
//! Nothing here blocks a caller: the statement hook runs on a session's event loop, which serves many
//! sessions. A statement that needs a load asks [`OnDemand::poll`], which starts one (or finds one in flight)
//! and answers [`Poll::Loading`]; the session holds that statement (not its other traffic) and asks again a
//! few milliseconds later (`frontend::relay::decide`). The load runs on a dedicated thread with its own
//! runtime and its own connection (never the catalog pool, whose connections are driven by the main
//! runtime), installs its catalog in the engine itself, and only then counts as finished, so a statement
//! decided again sees it. Loads are single-flight per tenant, queued one at a time on the thread, rate-limited
//! per tenant ([`INTERVAL`] from the end of the last one: a client that keeps naming a missing table costs at
//! most one load per interval), and waited for at most [`WAIT`].

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::catalog::{Catalog, load};
use crate::error::Classified;
use crate::ids::TenantId;
use crate::route::Router;
use crate::secret::SecretStore;

/// The least time between the end of one on-demand load of a tenant and the start of the next.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long a statement waits for an on-demand load before it is answered with the snapshot it has.
pub const WAIT: Duration = Duration::from_secs(5);

/// Whether a statement naming an unknown relation waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// A load of the tenant's catalog is in flight: hold the statement and ask again.
    Loading,
    /// No load is in flight and none may start now: decide with the snapshot there is.
    Idle,
}

/// Where the loader's catalogs go (the masking engine, which owns this loader).
pub trait Sink: Send + Sync + 'static {
    /// The schema-change generation now, read before a load starts; `None` when the engine is gone (the
    /// loader thread then ends).
    fn generation(&self) -> Option<u64>;
    /// Installs `catalog`, loaded for `tenant` by a load that started at `generation`.
    fn install(&self, tenant: &TenantId, catalog: Catalog, generation: u64);
}

/// One tenant's last on-demand load.
#[derive(Debug, Clone, Copy)]
struct Flight {
    started: Instant,
    /// When its catalog was installed, or the load failed.
    ended: Option<Instant>,
}

impl Flight {
    fn poll(&self, now: Instant) -> Option<Poll> {
        match self.ended {
            // In flight; past WAIT the loader is stuck (its own timeout is WAIT): stop waiting for it, and
            // queue nothing more behind it.
            None if now.duration_since(self.started) < WAIT => Some(Poll::Loading),
            None => Some(Poll::Idle),
            Some(ended) if now.duration_since(ended) < INTERVAL => Some(Poll::Idle),
            // Ended long enough ago: a new load may start.
            Some(_) => None,
        }
    }
}

/// The on-demand loader of a masking engine.
#[derive(Default)]
pub struct OnDemand {
    /// Per tenant: its last on-demand load (shared with the loader thread, which ends flights).
    flights: Arc<Mutex<HashMap<TenantId, Flight>>>,
    /// The loader thread's job queue, once started.
    jobs: OnceLock<Mutex<mpsc::Sender<TenantId>>>,
}

impl OnDemand {
    /// Starts the loader thread (once; later calls do nothing). It installs what it loads in `sink`.
    pub fn start(&self, sink: Box<dyn Sink>, router: Arc<Router>, secrets: Arc<dyn SecretStore>) {
        if self.jobs.get().is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel::<TenantId>();
        let flights = self.flights.clone();
        let spawned = std::thread::Builder::new()
            .name("pgveil-catalog-on-demand".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                while let Ok(id) = rx.recv() {
                    let Some(started) = sink.generation() else {
                        return;
                    };
                    let catalog = router.tenant(&id).and_then(|t| {
                        rt.block_on(load::load(t, &*secrets, WAIT))
                            .map_err(|e| {
                                let kind = e.kind().as_label();
                                metrics::counter!("pgveil_catalog_loads_total", "result" => "error", "kind" => kind)
                                    .increment(1);
                                tracing::warn!(tenant = %id, kind, error = %e, "on-demand catalog load failed");
                            })
                            .ok()
                    });
                    if let Some(catalog) = catalog {
                        sink.install(&id, catalog, started);
                    }
                    // Only now: a statement decided again after this sees the new catalog.
                    if let Some(f) = flights.lock().get_mut(&id) {
                        f.ended = Some(Instant::now());
                    }
                }
            });
        if spawned.is_ok() {
            let _ = self.jobs.set(Mutex::new(tx));
        }
    }

    /// For a statement of `tenant` naming a relation the snapshot does not have: [`Poll::Loading`] while a
    /// load of its catalog is in flight (one is started now when none ended within [`INTERVAL`]),
    /// [`Poll::Idle`] otherwise (also when the loader is not running). Never blocks on a load.
    pub fn poll(&self, tenant: &TenantId) -> Poll {
        let Some(jobs) = self.jobs.get() else {
            return Poll::Idle;
        };
        let now = Instant::now();
        let mut flights = self.flights.lock();
        if let Some(p) = flights.get(tenant).and_then(|f| f.poll(now)) {
            return p;
        }
        if jobs.lock().send(tenant.clone()).is_err() {
            return Poll::Idle;
        }
        flights.insert(
            tenant.clone(),
            Flight {
                started: now,
                ended: None,
            },
        );
        metrics::counter!("pgveil_catalog_on_demand_total").increment(1);
        Poll::Loading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flight_is_waited_for_until_it_ends_or_wait_passes_then_rate_limited() {
        let t0 = Instant::now();
        let flight = Flight {
            started: t0,
            ended: None,
        };
        assert_eq!(flight.poll(t0), Some(Poll::Loading));
        assert_eq!(
            flight.poll(t0 + WAIT - Duration::from_millis(1)),
            Some(Poll::Loading)
        );
        // Stuck past WAIT: answered with what there is, and nothing queued behind it.
        assert_eq!(flight.poll(t0 + WAIT), Some(Poll::Idle));
        let ended = Flight {
            started: t0,
            ended: Some(t0 + Duration::from_millis(30)),
        };
        assert_eq!(
            ended.poll(t0 + Duration::from_millis(30) + INTERVAL / 2),
            Some(Poll::Idle)
        );
        // A new load may start once INTERVAL has passed since the end of the last.
        assert_eq!(ended.poll(t0 + Duration::from_millis(30) + INTERVAL), None);
    }

    #[test]
    fn without_a_loader_nothing_waits() {
        let od = OnDemand::default();
        assert_eq!(od.poll(&TenantId::new("acme")), Poll::Idle);
    }
}
