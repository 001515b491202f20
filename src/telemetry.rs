//! Prometheus metrics: the process-wide recorder and the plain-HTTP `/metrics` listener (`[metrics] addr`).
//!
//! Labels have a fixed, small set of values (decisions, results, SQLSTATEs of pgveil's own errors): never a
//! user, tenant, role, SQL text or secret id. The listener is separate from the HTTP API because the API is
//! public and TLS-only; bind it to a loopback or internal address.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

pub use crate::config::MetricsConfig;

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The listener could not be bound.
    #[error("metrics: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Another metrics recorder was installed in this process first.
    #[error("metrics: another recorder is installed in this process")]
    Recorder,
}

/// Bucket bounds (seconds) for the latency histograms.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same handle). Until it is
/// installed, every `metrics::` call is a no-op. `None` when another recorder was installed first (or, never
/// expected, the exporter refused the bucket list: logged).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .inspect_err(|e| tracing::error!(error = %e, "metrics: histogram buckets refused"))
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// Help texts, shown as `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "pgveil_client_connections_total",
        "Client TCP connections accepted."
    );
    describe_gauge!("pgveil_client_connections", "Client connections open.");
    describe_counter!(
        "pgveil_auth_total",
        "Client authentications by result (ok | refused | gone) and the SQLSTATE sent when refused."
    );
    describe_counter!(
        "pgveil_statements_total",
        "Statements checked by the masking engine by decision (allowed | rewritten | refused); unrestricted roles are not parsed and not counted."
    );
    describe_counter!(
        "pgveil_rewrite_cache_total",
        "Masking decisions by cache result: hit (same text), plan (same statement, other literals), miss."
    );
    describe_counter!(
        "pgveil_schema_changes_total",
        "Schema changes seen through pgveil (each makes the tenant's catalog reload)."
    );
    describe_counter!(
        "pgveil_catalog_loads_total",
        "Tenant catalog loads by result (ok | error); errors also by kind (secret | incomplete | connect | io | query | timeout | internal)."
    );
    describe_counter!(
        "pgveil_catalog_on_demand_total",
        "Catalog loads started for a statement naming a relation the tenant's snapshot lacks (the statement waits for it, its session only)."
    );
    describe_counter!(
        "pgveil_policy_reloads_total",
        "Policy reloads by result (ok | rejected)."
    );
    describe_counter!(
        "pgveil_pool_checkouts_total",
        "Backend checkouts by result (immediate | other_loop | waited | timeout | error); timeouts and errors also by kind (timeout | secret | incomplete | connect | shutdown | internal)."
    );
    describe_counter!(
        "pgveil_backend_drains_total",
        "Backends a client left mid-batch (without Sync), drained before reuse, by result (idle | failed); failures also by kind (io | protocol | timeout | unclean)."
    );
    describe_histogram!(
        "pgveil_pool_wait_seconds",
        "Time a checkout waited for a backend connection (checkouts that did not find one free)."
    );
    describe_counter!(
        "pgveil_backend_errors_total",
        "Backend connections that could not be made, by kind (secret | incomplete | connect)."
    );
    describe_counter!(
        "pgveil_backend_auth_rejected_total",
        "Backend logins rejected with the cached credentials (rotation)."
    );
    describe_counter!(
        "pgveil_secret_fetch_total",
        "Secret store fetches by result."
    );
    describe_histogram!("pgveil_secret_fetch_seconds", "Secret store fetch latency.");
    describe_gauge!(
        "pgveil_secret_stale",
        "Secrets currently served from the cache past their refresh because the store is unreachable."
    );
    describe_counter!(
        "pgveil_secret_stale_served_total",
        "Secret reads answered with a stale cached value."
    );
}

/// A bound `/metrics` listener.
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    handle: PrometheusHandle,
}

impl MetricsServer {
    /// Installs the recorder and binds the listener.
    pub async fn bind(cfg: &MetricsConfig) -> Result<MetricsServer, TelemetryError> {
        let handle = install().ok_or(TelemetryError::Recorder)?;
        let listener =
            TcpListener::bind(cfg.addr)
                .await
                .map_err(|source| TelemetryError::Bind {
                    addr: cfg.addr,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind {
                addr: cfg.addr,
                source,
            })?;
        Ok(MetricsServer {
            listener,
            addr,
            handle,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` until `stop` resolves; runs the recorder's upkeep every few seconds.
    pub async fn run(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let render = self.handle.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let h = render.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        h.render(),
                    )
                        .into_response()
                }
            }),
        );
        let upkeep = self.handle.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        tracing::info!(addr = %self.local_addr(), "metrics listening (plain HTTP, GET /metrics)");
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "metrics listener failed");
        }
        upkeep.abort();
    }
}
