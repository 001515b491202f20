//! One client connection from accept to close: handshake, authentication, backend checkout (session mode),
//! startup settings, relay, and the reset or discard of the backend afterwards.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use deadpool::managed::Object;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::auth::{AuthError, Authenticated, authenticate};
use super::handshake::{Hello, negotiate, refuse};
use super::params::{requested_settings, set_config_statement};
use super::relay::{IdleTimeouts, Relay, RelayEnd};
use crate::backend::pool::{BackendError, CheckoutError, PooledConn};
use crate::backend::reset::{drain_unsynced, reset, run_queries};
use crate::config::PoolMode;
use crate::identity::Identity;
use crate::net::ClientStream;
use crate::policy::Decision;
use crate::proto::messages;
use crate::proto::startup::StartupMessage;
use crate::proto::{PgError, TxnStatus};
use crate::revoke::NewSession;
use crate::route::Tenant;
use crate::server::{Shared, Slot};

/// Serves one accepted TCP connection to the end. `starting` is its place under `listen.max_startups`, given
/// up once authentication ends; an authenticated session then takes one under `listen.max_clients`.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, starting: Slot<'_>) {
    let _ = tcp.set_nodelay(true);
    let timeout = shared.cfg.listen.startup_timeout;
    let started = tokio::time::timeout(timeout, start(tcp, peer, &shared)).await;
    drop(starting);
    let (mut stream, startup, auth) = match started {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            tracing::info!(client = %peer, "startup timed out");
            return;
        }
    };
    let Some(_client) = Slot::take(&shared.clients, shared.cfg.listen.max_clients) else {
        metrics::counter!("pgveil_auth_total", "result" => "refused", "sqlstate" => "53300")
            .increment(1);
        refuse(
            &mut stream,
            PgError::too_many_connections("sorry, too many clients already"),
        )
        .await;
        return;
    };
    let who = &auth.identity;
    // The token's subject is the session's user; the startup packet's user name is only informational (clients
    // must send one; pgveil does not compare it). Both are on every event of the session (audit included),
    // with where it comes from.
    let startup_user = startup.get("user").unwrap_or_default();
    let span = tracing::info_span!("session", client = %peer, user = %who.user, startup_user = %startup_user, tenant = %who.tenant, role = %who.role);
    // Registered before the backend is checked out, so a revocation racing with start-up still ends it.
    let cap = shared.cfg.tenant(&who.tenant).and_then(|t| t.max_clients);
    let guard = match shared.sessions.register(NewSession {
        user: who.user.as_str(),
        tenant: who.tenant.as_str(),
        jti: &who.token_id,
        iat: auth.issued_at,
        max_per_user: shared.cfg.listen.max_sessions_per_user,
        max_per_tenant: cap,
    }) {
        Ok(g) => {
            metrics::counter!("pgveil_auth_total", "result" => "ok", "sqlstate" => "").increment(1);
            g
        }
        Err(e) => {
            tracing::info!(parent: &span, cap = %e, "session refused: connection cap");
            metrics::counter!("pgveil_auth_total", "result" => "refused", "sqlstate" => "53300")
                .increment(1);
            refuse(&mut stream, PgError::too_many_connections(e.to_string())).await;
            return;
        }
    };
    run_session(&mut stream, &startup, &auth, guard.killed.clone(), &shared)
        .instrument(span)
        .await;
}

/// Handshake and authentication, under the startup timeout.
async fn start(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(ClientStream, StartupMessage, Authenticated)> {
    let hello = match negotiate(
        tcp,
        shared.tls.as_ref(),
        shared.cfg.listen.max_startup_packet,
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "handshake ended");
            return None;
        }
    };
    let (mut stream, startup) = match hello {
        Hello::Cancel { pid, secret } => {
            shared.cancel.cancel(pid, secret).await;
            return None;
        }
        Hello::Session { stream, startup } => (stream, startup),
    };
    if startup.minor > 0 || startup.params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
        // We speak 3.0 and no protocol extensions; tell the client so it can fall back.
        let unsupported: Vec<String> = startup
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = BytesMut::new();
        messages::negotiate_protocol_version(&mut out, 0, &unsupported);
        if stream.write_all(&out).await.is_err() {
            return None;
        }
    }
    if startup
        .get("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off" && v != "no")
    {
        refuse(
            &mut stream,
            PgError::unsupported_startup("replication connections are not supported by pgveil"),
        )
        .await;
        return None;
    }
    let now = (shared.clock)();
    let revocations = shared.revocations.as_deref();
    match authenticate(
        &mut stream,
        peer,
        &shared.cfg,
        &shared.router,
        &shared.verifier,
        revocations,
        now,
    )
    .await
    {
        // Counted as "ok" once the session is registered within its caps (`serve`).
        Ok(who) => Some((stream, startup, who)),
        Err(AuthError::Gone) => {
            metrics::counter!("pgveil_auth_total", "result" => "gone", "sqlstate" => "")
                .increment(1);
            None
        }
        Err(AuthError::Refused(e)) => {
            metrics::counter!("pgveil_auth_total", "result" => "refused", "sqlstate" => e.code)
                .increment(1);
            refuse(&mut stream, e).await;
            None
        }
    }
}

async fn run_session(
    stream: &mut ClientStream,
    startup: &StartupMessage,
    auth: &Authenticated,
    mut killed: watch::Receiver<bool>,
    shared: &Shared,
) {
    let who = &auth.identity;
    // authenticate checked the tenant against the same router.
    let Some(tenant) = shared.router.tenant(&who.tenant).cloned() else {
        refuse(
            stream,
            PgError::invalid_authorization("token's tenant is not served here"),
        )
        .await;
        return;
    };
    let settings = match requested_settings(startup) {
        Ok(s) => s,
        Err(e) => {
            refuse(stream, e).await;
            return;
        }
    };
    // The database name is checked before a backend is taken whenever the config names the tenant's database;
    // when only the secret does, after checkout (against the target it resolved).
    let requested_db = startup
        .get("database")
        .filter(|db| !db.is_empty() && *db != who.tenant.as_str());
    if let (Some(db), Some(own)) = (requested_db, tenant.dbname.as_deref())
        && db != own
    {
        tracing::info!(database = db, "startup database is not the tenant's");
        refuse(stream, PgError::unknown_database(db)).await;
        return;
    }
    if tenant.pool_mode == PoolMode::Transaction {
        let Some((ctx, params)) =
            super::txn::login(stream, who, shared, &tenant, settings, requested_db).await
        else {
            return;
        };
        let handle = shared.cancel.register();
        if greet(stream, &params, &handle, auth).await.is_err() {
            return;
        }
        tracing::info!(transaction_mode = true, "session started");
        let tally = tally(startup, who, shared);
        super::txn::serve(
            stream,
            who,
            shared,
            &tenant,
            (ctx, tally),
            &handle,
            &mut killed,
        )
        .await;
        return;
    }
    let Some(mut conn) = open_backend(stream, who, shared, &tenant, &settings, requested_db).await
    else {
        return;
    };
    let handle = shared.cancel.register();
    if greet(stream, &conn.params, &handle, auth).await.is_err() {
        finish(conn, true, Leftover::Synced(TxnStatus::Idle), shared).await;
        return;
    }
    tracing::info!(transaction_mode = false, "session started");
    handle.set_backend(Some((conn.target.clone(), conn.key)));
    let mut relay = Relay::new(who, &*shared.policy, shared.cfg.listen.max_query_bytes);
    relay.idle = IdleTimeouts::from_listen(&shared.cfg.listen);
    relay.tally = tally(startup, who, shared);
    let mut shutdown = shared.shutdown.clone();
    // A revoked token or disabled user ends the session at once (not at its next idle point, as a drain
    // does): the relay is dropped mid-flight and the backend is cancelled and closed.
    let mut cin = BytesMut::new();
    // The session's first batch may go to a fresh backend if this one dies before running it.
    relay.arm_retry();
    let end = loop {
        let end = tokio::select! {
            end = relay.run(stream, &mut cin, &mut conn, &mut shutdown) => Some(end),
            _ = killed.wait_for(|k| *k) => None,
        };
        if !matches!(end, Some(RelayEnd::Retry)) {
            break end;
        }
        tracing::info!(
            pid = conn.key.pid,
            "backend died before running the session's first batch; sending it to a fresh backend"
        );
        metrics::counter!("pgveil_backend_retries_total", "mode" => "session").increment(1);
        finish(conn, false, Leftover::Synced(TxnStatus::Idle), shared).await;
        let Some(fresh) = open_backend(stream, who, shared, &tenant, &settings, requested_db).await
        else {
            handle.set_backend(None);
            return;
        };
        conn = fresh;
        handle.set_backend(Some((conn.target.clone(), conn.key)));
    };
    handle.set_backend(None);
    drop(handle);
    let Some(end) = end else {
        tracing::info!("session terminated: token revoked or user disabled");
        let mut out = BytesMut::new();
        PgError::invalid_authorization("session terminated: pgveil token revoked or user disabled")
            .encode(&mut out);
        let _ = stream.write_all(&out).await;
        crate::cancel::send_cancel_detached(conn.target.clone(), conn.key);
        finish(conn, false, Leftover::Synced(TxnStatus::Idle), shared).await;
        return;
    };
    tracing::info!(end = ?end, "session ended");
    let reusable = relay.state.backend_idle() && !matches!(end, RelayEnd::BackendGone);
    if !reusable && !matches!(end, RelayEnd::BackendGone) {
        // A statement may still be running for a client that is gone: stop it before dropping the link.
        crate::cancel::send_cancel_detached(conn.target.clone(), conn.key);
    }
    let status = if relay.state.unsynced {
        Leftover::Unsynced
    } else {
        Leftover::Synced(relay.state.txn_status)
    };
    finish(conn, reusable, status, shared).await;
}

/// Session mode: checks out a backend for `who` and prepares it (database name, the backend guard, the
/// client's startup settings); `None` when the client was refused (and told).
async fn open_backend(
    stream: &mut ClientStream,
    who: &Identity,
    shared: &Shared,
    tenant: &Arc<Tenant>,
    settings: &[(String, String)],
    requested_db: Option<&str>,
) -> Option<PooledConn> {
    let mut conn: PooledConn = match shared.pools.checkout(tenant, &who.role).await {
        Ok(c) => c,
        Err(e) => {
            refuse(stream, checkout_error(&e, who)).await;
            return None;
        }
    };
    if let Some(db) = requested_db
        && db != conn.target.dbname
    {
        tracing::info!(database = db, "startup database is not the tenant's");
        refuse(stream, PgError::unknown_database(db)).await;
        return None; // the backend was not touched: it goes back as it is
    }
    if shared.policy.inspects(who)
        && let Err(e) = super::guard::verify_backend(&mut conn, who, &*shared.policy).await
    {
        refuse(stream, e).await;
        finish(conn, false, Leftover::Synced(TxnStatus::Idle), shared).await;
        return None;
    }
    if let Err(e) = apply_settings(&mut conn, settings, who, shared).await {
        refuse(stream, e).await;
        finish(conn, true, Leftover::Synced(TxnStatus::Idle), shared).await;
        return None;
    }
    Some(conn)
}

/// The statement tally of a session (audit records with rows and durations, the exfiltration guard) when a
/// masking policy is configured (the policy names audited roles and guards); `None` otherwise: nothing is
/// counted and nothing is allocated for it.
pub(super) fn tally(
    startup: &StartupMessage,
    who: &Identity,
    shared: &Shared,
) -> Option<super::tally::Tally> {
    if !shared.policy.watches_backend() {
        return None;
    }
    let session = std::sync::Arc::new(crate::audit::SessionInfo {
        client: who.client.0.to_string(),
        user: who.user.clone(),
        startup_user: startup.get("user").unwrap_or_default().to_owned(),
        tenant: who.tenant.clone(),
        role: who.role.clone(),
    });
    let audit = super::tally::SessionAudit {
        auditor: shared.audit.clone(),
        session,
    };
    let window = shared.budgets.user(&who.tenant, &who.user);
    Some(super::tally::Tally::new(audit, window))
}

/// Completes the login: AuthenticationOk, the server parameters, the client's own cancel key, the grace-period
/// notice if any, ReadyForQuery.
async fn greet(
    stream: &mut ClientStream,
    params: &std::collections::BTreeMap<String, String>,
    handle: &crate::cancel::CancelHandle,
    auth: &Authenticated,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    messages::auth_ok(&mut out);
    for (name, value) in params {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, handle.pid, handle.secret);
    if let Some(notice) = &auth.notice {
        PgError::encode_notice("01000", notice, &mut out);
    }
    messages::ready_for_query(&mut out, TxnStatus::Idle.byte());
    stream.write_all(&out).await
}

/// Applies the client's startup settings in one statement (skipping values already in force), checked by the
/// statement policy like any client SQL.
async fn apply_settings(
    conn: &mut PooledConn,
    settings: &[(String, String)],
    who: &Identity,
    shared: &Shared,
) -> Result<(), PgError> {
    let pending: Vec<(&str, &str)> = settings
        .iter()
        .filter(|(name, value)| {
            let current = conn
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
            current != Some(value)
        })
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    // `None`: nothing to apply.
    let Some(sql) = checked_settings_sql(&pending, who, shared)? else {
        return Ok(());
    };
    match run_queries(conn, &[sql.as_str()]).await {
        Ok((_, None)) => Ok(()),
        Ok((_, Some(err))) => Err(PgError::invalid_startup_setting(err.message)),
        Err(e) => {
            tracing::warn!(error = %e, "backend failed while applying startup settings");
            Err(PgError::backend_unavailable())
        }
    }
}

/// The statement applying startup settings, checked by the statement policy like any client SQL.
pub(super) fn checked_settings_sql(
    settings: &[(&str, &str)],
    who: &Identity,
    shared: &Shared,
) -> Result<Option<String>, PgError> {
    if settings.is_empty() {
        return Ok(None);
    }
    let sql = set_config_statement(settings);
    if !shared.policy.inspects(who) {
        return Ok(Some(sql));
    }
    match shared.policy.check(&sql, who) {
        Decision::Allow => Ok(Some(sql)),
        Decision::Rewrite(s) => Ok(Some(s)),
        Decision::Deny(e) => Err(PgError::startup_setting_refused(e.message)),
    }
}

/// What a departed client left on its backend (all responses read).
#[derive(Debug, Clone, Copy)]
enum Leftover {
    /// Everything was synced; the last ReadyForQuery said this transaction status.
    Synced(TxnStatus),
    /// Extended-protocol messages after the last Sync: drain first.
    Unsynced,
}

/// Returns a backend to its pool after draining and resetting it, or removes it from the pool.
async fn finish(mut conn: PooledConn, reusable: bool, left: Leftover, _shared: &Shared) {
    if reusable && !conn.broken {
        let status = match left {
            Leftover::Synced(status) => status,
            Leftover::Unsynced => TxnStatus::Idle, // once drained
        };
        let drained = matches!(left, Leftover::Synced(_)) || drain_unsynced(&mut conn).await;
        if drained && reset(&mut conn, status.byte()).await {
            drop(conn); // back to the pool, clean
            return;
        }
    }
    conn.broken = true;
    let _ = Object::take(conn); // dropped: closes the socket
}

/// The client-visible error for a failed checkout (53300 after the queue timeout).
pub(super) fn checkout_error(e: &CheckoutError, who: &Identity) -> PgError {
    match e {
        CheckoutError::Timeout => PgError::too_many_connections(format!(
            "no free connection to the tenant database for role {} (pool exhausted)",
            who.role
        )),
        CheckoutError::Closed => PgError::shutting_down(),
        CheckoutError::Build(b) => {
            tracing::error!(error = %b, "backend pool could not be built");
            PgError::internal()
        }
        CheckoutError::Backend(b) => {
            tracing::warn!(error = %b, "backend unavailable");
            let (kind, err) = match b {
                BackendError::Secret { .. } => ("secret", PgError::credentials_unavailable()),
                BackendError::Incomplete(_) => ("incomplete", PgError::backend_unavailable()),
                BackendError::Connect(_) => ("connect", PgError::backend_unavailable()),
            };
            metrics::counter!("pgveil_backend_errors_total", "kind" => kind).increment(1);
            err
        }
    }
}
