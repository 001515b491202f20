//! `pgveil serve`: the proxy with its API and metrics listeners, until SIGINT or SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use pgveil::config::Config;
use pgveil::server::{Server, ServerOptions};

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn serve(path: &Path, threads: usize) -> Result<()> {
    let cfg = Config::load(path)?;
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // Loop 0 is this thread's runtime (it also accepts and runs the API, metrics and background tasks);
    // loops 1.. are started here and stopped when the server has drained (the last `Arc` is dropped).
    let loops = match threads {
        1 => None,
        n => Some(Arc::new(pgveil::event_loops::EventLoops::start(n)?)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // SIGHUP (systemd's ExecReload) re-reads the masking policies when [policy] is set (policy::engine
        // listens too); it must never end the process, which is SIGHUP's default action.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let policies = cfg.policy.is_some();
        let opts = ServerOptions {
            loops,
            ..ServerOptions::default()
        };
        let server = Server::bind(cfg.clone(), opts).await?;
        // SIGHUP also reopens the audit file (log rotation: move it, then SIGHUP).
        let audit = server.shared().audit.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                audit.reopen();
                if policies {
                    tracing::info!(
                        "SIGHUP: masking policies re-read; other settings need a restart"
                    );
                } else {
                    tracing::info!("SIGHUP: no [policy] to re-read; other settings need a restart");
                }
            }
        });
        let api = if cfg.api.is_some() {
            Some(pgveil::api::ApiServer::bind(cfg.clone(), api_options(&server)).await?)
        } else {
            None
        };
        let metrics = match &cfg.metrics {
            Some(m) => Some(pgveil::telemetry::MetricsServer::bind(m).await?),
            None => None,
        };
        let proxy = server.run(stop_signal(), Duration::from_secs(30));
        let api = async move {
            if let Some(api) = api {
                api.run(stop_signal()).await;
            }
        };
        let metrics = async move {
            if let Some(m) = metrics {
                m.run(stop_signal()).await;
            }
        };
        tokio::join!(proxy, api, metrics);
        Ok(())
    })
}

/// Options for an API next to `server`: its (cached) secret store and clock, revocations applied to its
/// sessions at once, connection strings pointing at its port.
pub(crate) fn api_options(server: &Server) -> pgveil::api::ApiOptions {
    let shared = server.shared();
    pgveil::api::ApiOptions {
        secrets: shared.secrets.clone(),
        clock: shared.clock.clone(),
        local_proxy: shared
            .revocations
            .clone()
            .map(|r| (r, shared.sessions.clone())),
        proxy_port: server.local_addr().port(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
