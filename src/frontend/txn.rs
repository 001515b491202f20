//! Transaction pooling: a client holds a backend only from the first message of a transaction to the
//! ReadyForQuery (status idle) that ends it, with nothing else pending; then the backend goes back to its pool
//! for the next waiting client (deadpool's queue is FIFO; `pool.checkout_timeout` bounds the wait, then 53300).
//!
//! What follows the client from backend to backend:
//! - its settings: startup parameters and `SET`/`RESET`/`set_config`. A backend remembers which settings it
//!   carries; a client with different ones gets `RESET ALL` plus its own `set_config(...)` before its
//!   transaction. After a transaction that may have changed settings, pgveil reads them back
//!   (`pg_settings WHERE source = 'session'`) and makes them the client's;
//! - its prepared statements (see [`super::prepared`]);
//! - its cancel key ([`CancelHandle::set_backend`] follows the serving backend).
//!
//! State that cannot be moved pins the client to its backend until it disconnects (see [`super::sqlscan`]):
//! SQL `PREPARE`, `LISTEN`, temporary objects, session advisory locks, cursors `WITH HOLD`, `LOAD`, dblink
//! connections, and `SET ROLE`/`SET SESSION AUTHORIZATION`. A pinned client's backend is reset like a session
//! mode backend (`DISCARD ALL`) when it ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use deadpool::managed::Object;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::handshake::refuse;
use super::params::set_config_statement;
use super::prepared::TxnStatements;
use super::relay::{IdleTimeouts, Relay, RelayEnd};
use super::sqlscan;
use super::verify;
use crate::backend::pool::{FunctionNames, PooledConn};
use crate::backend::reset::{drain_unsynced, query_rows, reset, rollback, run_queries};
use crate::backend::statements::BackendStatements;
use crate::cancel::CancelHandle;
use crate::identity::Identity;
use crate::net::ClientStream;
use crate::proto::tags::frontend;
use crate::proto::{PgError, TxnStatus};
use crate::route::Tenant;
use crate::server::Shared;

/// Settings that cannot be re-applied on another backend: a client that changes them is pinned.
const UNMOVABLE_SETTINGS: &[&str] = &["role", "session_authorization"];

/// A client's transaction-mode state, kept across backends.
pub struct TxnCtx {
    /// Extended-protocol statements.
    pub stmts: TxnStatements,
    /// Why the client is pinned to its backend, if it is.
    pub pinned: Option<&'static str>,
    /// The current transaction may have changed settings: read them back before releasing the backend.
    pub settings_dirty: bool,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// The current transaction may have left state no reading of its SQL can see (it mentions a
    /// tenant-defined function, or its text needed the parser): verify the backend before releasing it.
    pub verify: bool,
    /// The pool's tenant-defined function names, as of the last checkout (see [`super::verify`]).
    functions: Option<FunctionNames>,
    /// The client created or replaced a function: read the names again at the next checkout.
    functions_stale: bool,
    /// The client's settings (name, value), as applied on top of a backend's startup state.
    settings: Vec<(String, String)>,
    /// The statement applying `settings` (already checked by the statement policy).
    settings_sql: Option<String>,
}

impl TxnCtx {
    /// State for a client whose startup settings are `settings`, applied by `settings_sql`.
    pub fn new(
        settings: Vec<(String, String)>,
        settings_sql: Option<String>,
        cache_cap: usize,
    ) -> Self {
        Self {
            stmts: TxnStatements::new(cache_cap),
            pinned: None,
            settings_dirty: false,
            unsynced: false,
            verify: false,
            functions: None,
            functions_stale: false,
            settings,
            settings_sql,
        }
    }

    /// Looks at SQL about to be sent: pins, marks settings dirty, forgets dropped statements. Returns an error
    /// when the SQL must be refused (it names pgveil's internal statements).
    pub fn observe(&mut self, sql: &[u8], stmts: &mut BackendStatements) -> Option<PgError> {
        let fx = sqlscan::scan(sql);
        if fx.reserved {
            return Some(PgError::insufficient_privilege(
                "pgveil's server-side prepared statements and pg_prepared_statements are not accessible in transaction pooling mode",
            ));
        }
        if let Some(why) = fx.pins
            && self.pinned.is_none()
        {
            tracing::debug!(reason = why, "client pinned to its backend");
            self.pinned = Some(why);
        }
        self.settings_dirty |= fx.settings;
        if super::sqltree::inconclusive(sql)
            || self
                .functions
                .as_ref()
                .is_some_and(|names| verify::mentions(sql, names))
        {
            self.verify = true;
        }
        if verify::defines_function(sql) {
            self.functions_stale = true;
        }
        if fx.drops_statements {
            self.stmts.on_statements_dropped(stmts);
        }
        None
    }
}

/// Makes `conn` carry exactly the client's settings (`RESET ALL` + the client's `set_config`), unless it
/// already does. Marks the connection broken on failure.
pub async fn ensure_settings(conn: &mut PooledConn, ctx: &TxnCtx) -> Result<(), PgError> {
    if conn.applied.as_ref() == Some(&ctx.settings) {
        return Ok(());
    }
    let mut sqls = vec!["RESET ALL"];
    if let Some(sql) = &ctx.settings_sql {
        sqls.push(sql);
    }
    match run_queries(conn, &sqls).await {
        Ok((status, None)) if TxnStatus::from_byte(status).is_idle() => {
            conn.applied = Some(ctx.settings.clone());
            Ok(())
        }
        Ok((_, err)) => {
            conn.broken = true;
            Err(PgError::invalid_startup_setting(
                err.map(|e| e.message).unwrap_or_default(),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "backend failed while applying client settings");
            Err(PgError::backend_unavailable())
        }
    }
}

/// Reads back the settings the client's last transaction left on `conn` and makes them the client's; pins the
/// client when the backend now holds session-lifetime state (one round trip, see [`super::verify`]).
async fn capture_settings(conn: &mut PooledConn, ctx: &mut TxnCtx) {
    ctx.settings_dirty = false;
    ctx.verify = false;
    match query_rows(conn, verify::VERIFY_SQL).await {
        Ok((status, None, rows)) if TxnStatus::from_byte(status).is_idle() => {
            let mut settings: Vec<(String, String)> = rows
                .into_iter()
                .filter_map(|r| match <[Option<String>; 2]>::try_from(r) {
                    Ok([Some(n), Some(v)]) => Some((n, v)),
                    _ => None,
                })
                .collect();
            if let Some(i) = settings.iter().position(|(n, _)| n == verify::PINS_ROW) {
                let (_, held) = settings.remove(i);
                if !held.is_empty() && ctx.pinned.is_none() {
                    tracing::debug!(state = %held, "client pinned: its transaction left session state");
                    ctx.pinned = Some("session state left by a function");
                }
            }
            if settings
                .iter()
                .any(|(n, _)| UNMOVABLE_SETTINGS.contains(&n.as_str()))
            {
                ctx.pinned = ctx.pinned.or(Some("SET ROLE / SESSION AUTHORIZATION"));
            }
            let pairs: Vec<(&str, &str)> = settings
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            ctx.settings_sql = (!pairs.is_empty()).then(|| set_config_statement(&pairs));
            ctx.settings = settings.clone();
            conn.applied = Some(settings);
        }
        other => {
            tracing::warn!(result = ?other.map(|(s, e, _)| (s, e)).err(), "reading back client settings failed");
            conn.broken = true;
        }
    }
}

/// Transaction-mode login: checks the client's startup settings and returns its state with the server
/// parameters to greet it with. A free backend (or one that can be opened now) answers it and takes the
/// settings at once, so a bad value fails the login as in PostgreSQL. When every backend is busy, the login is
/// answered from the parameters the pool's backends reported at startup (overlaid with the client's settings)
/// without waiting; its settings are then applied before its first transaction. `None` when the client was
/// refused (and told).
pub async fn login(
    stream: &mut ClientStream,
    who: &Identity,
    shared: &Shared,
    tenant: &Arc<Tenant>,
    settings: Vec<(String, String)>,
    requested_db: Option<&str>,
) -> Option<(TxnCtx, BTreeMap<String, String>)> {
    // The client's settings go with it to every backend: all of them, checked by the policy once.
    let pairs: Vec<(&str, &str)> = settings
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sql = match super::session::checked_settings_sql(&pairs, who, shared) {
        Ok(sql) => sql,
        Err(e) => {
            refuse(stream, e).await;
            return None;
        }
    };
    let ctx = TxnCtx::new(settings, sql, shared.cfg.pool.max_prepared_statements);
    let free = match shared.pools.try_checkout(tenant, &who.role).await {
        Ok(free) => free,
        Err(e) => {
            refuse(stream, super::session::checkout_error(&e, who)).await;
            return None;
        }
    };
    let greeting = match free {
        Some(conn) => return login_on(stream, conn, ctx, requested_db).await,
        None => shared.pools.greeting(tenant, &who.role),
    };
    let Some(greeting) = greeting else {
        // No backend was ever opened for this pool: wait for one like a transaction would.
        return match shared.pools.checkout(tenant, &who.role).await {
            Ok(conn) => login_on(stream, conn, ctx, requested_db).await,
            Err(e) => {
                refuse(stream, super::session::checkout_error(&e, who)).await;
                None
            }
        };
    };
    if let Some(db) = requested_db
        && db != greeting.dbname
    {
        tracing::info!(database = db, "startup database is not the tenant's");
        refuse(stream, PgError::unknown_database(db)).await;
        return None;
    }
    tracing::debug!("login answered from the pool's server parameters (no free backend)");
    metrics::counter!("pgveil_txn_logins_without_backend_total").increment(1);
    let mut params = greeting.params;
    for (name, value) in &ctx.settings {
        if let Some(key) = params
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned()
        {
            params.insert(key, value.clone());
        }
    }
    Some((ctx, params))
}

/// Login on a backend at hand: checks the database name and applies the client's settings on it, then
/// returns the backend to the pool.
async fn login_on(
    stream: &mut ClientStream,
    mut conn: PooledConn,
    ctx: TxnCtx,
    requested_db: Option<&str>,
) -> Option<(TxnCtx, BTreeMap<String, String>)> {
    if let Some(db) = requested_db
        && db != conn.target.dbname
    {
        tracing::info!(database = db, "startup database is not the tenant's");
        refuse(stream, PgError::unknown_database(db)).await;
        return None; // the backend was not touched: it goes back as it is
    }
    if let Err(e) = ensure_settings(&mut conn, &ctx).await {
        refuse(stream, e).await;
        discard(conn);
        return None;
    }
    let params = conn.params.clone();
    Some((ctx, params)) // the backend goes back to the pool until the first transaction
}

/// Gives the client the pool's tenant-defined function names, reading them on `conn` when they are older than
/// [`verify::FUNCTIONS_MAX_AGE`] or the client defined a function; false when reading failed.
async fn refresh_functions(
    conn: &mut PooledConn,
    ctx: &mut TxnCtx,
    shared: &Shared,
    tenant: &Arc<Tenant>,
    role: &crate::ids::RoleName,
) -> bool {
    let known = shared
        .pools
        .functions(tenant, role)
        .filter(|(at, _)| !ctx.functions_stale && at.elapsed() < verify::FUNCTIONS_MAX_AGE);
    if let Some((_, names)) = known {
        ctx.functions = Some(names);
        return true;
    }
    let Some(names) = verify::load_functions(conn).await else {
        return false;
    };
    shared.pools.set_functions(tenant, role, names.clone());
    ctx.functions = Some(names);
    ctx.functions_stale = false;
    true
}

/// How the wait for the client's next transaction ended.
enum Idle {
    Data,
    Gone,
    Shutdown,
    /// The session's token was revoked or its user disabled.
    Killed,
    /// The client sent nothing for `listen.client_idle_timeout`.
    TimedOut,
}

async fn wait_for_client(
    stream: &mut ClientStream,
    cin: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
    killed: &mut watch::Receiver<bool>,
    idle_timeout: Option<std::time::Duration>,
) -> Idle {
    let mut watching = true;
    let deadline = idle_timeout.map(|d| tokio::time::Instant::now() + d);
    loop {
        if *killed.borrow() {
            return Idle::Killed;
        }
        if *shutdown.borrow() {
            return Idle::Shutdown;
        }
        cin.reserve(8 * 1024);
        tokio::select! {
            r = stream.read_buf(cin) => return match r {
                Ok(0) | Err(_) => Idle::Gone,
                Ok(_) => Idle::Data,
            },
            r = shutdown.changed(), if watching => if r.is_err() { watching = false },
            r = killed.wait_for(|k| *k) => {
                drop(r);
                return Idle::Killed;
            }
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if deadline.is_some() => return Idle::TimedOut,
        }
    }
}

/// Checks out a backend for the client's next transaction and makes it the client's (settings, function
/// names, the backend guard, prepared statements); `None` when the client was refused (and told).
async fn check_out(
    stream: &mut ClientStream,
    who: &Identity,
    shared: &Shared,
    tenant: &Arc<Tenant>,
    ctx: &mut TxnCtx,
    retry: bool,
) -> Option<PooledConn> {
    let mut conn = match shared.pools.checkout(tenant, &who.role).await {
        Ok(c) => c,
        Err(e) => {
            refuse(stream, super::session::checkout_error(&e, who)).await;
            return None;
        }
    };
    if let Err(e) = ensure_settings(&mut conn, ctx).await {
        refuse(stream, e).await;
        discard(conn);
        return None;
    }
    if !refresh_functions(&mut conn, ctx, shared, tenant, &who.role).await {
        refuse(stream, PgError::backend_unavailable()).await;
        discard(conn);
        return None;
    }
    if shared.policy.inspects(who)
        && let Err(e) = super::guard::verify_backend(&mut conn, who, &*shared.policy).await
    {
        refuse(stream, e).await;
        discard(conn);
        return None;
    }
    if retry {
        ctx.stmts.on_reroute(&conn.statements);
    } else {
        ctx.stmts.on_checkout(&conn.statements);
    }
    Some(conn)
}

/// Serves a transaction-mode client after its greeting, until it leaves.
pub async fn serve(
    stream: &mut ClientStream,
    who: &Identity,
    shared: &Shared,
    tenant: &Arc<Tenant>,
    (ctx, tally): (TxnCtx, Option<super::tally::Tally>),
    handle: &CancelHandle,
    killed: &mut watch::Receiver<bool>,
) {
    let mut relay = Relay::new(who, &*shared.policy, shared.cfg.listen.max_query_bytes);
    relay.txn = Some(ctx);
    relay.tally = tally;
    relay.idle = IdleTimeouts::from_listen(&shared.cfg.listen);
    let mut shutdown = shared.shutdown.clone();
    let mut held: Option<PooledConn> = None;
    let mut cin = BytesMut::new();
    loop {
        let Some(ctx) = relay.txn.as_mut() else {
            return internal_error(stream, held.take()).await;
        };
        let conn = match held.as_mut() {
            Some(conn) => conn,
            None => {
                let limit = shared.cfg.listen.client_idle_timeout;
                match wait_for_client(stream, &mut cin, &mut shutdown, killed, limit).await {
                    Idle::Data => {}
                    Idle::TimedOut => {
                        tracing::info!(code = "57P05", "client idle timeout");
                        let mut out = BytesMut::new();
                        PgError::idle_session_timeout().encode(&mut out);
                        let _ = stream.write_all(&out).await;
                        return;
                    }
                    Idle::Gone => return,
                    Idle::Killed => {
                        terminated(stream).await;
                        return;
                    }
                    Idle::Shutdown => {
                        let mut out = BytesMut::new();
                        PgError::shutting_down().encode(&mut out);
                        let _ = stream.write_all(&out).await;
                        return;
                    }
                }
                if cin[0] == frontend::TERMINATE {
                    return;
                }
                let Some(conn) = check_out(stream, who, shared, tenant, ctx, false).await else {
                    return;
                };
                relay.arm_retry();
                held.insert(conn)
            }
        };
        handle.set_backend(Some((conn.target.clone(), conn.key)));
        // A revoked token or disabled user ends the session at once: the relay is dropped mid-flight and the
        // backend, whose state is then unknown, is cancelled and closed.
        let end = tokio::select! {
            end = relay.run(stream, &mut cin, conn, &mut shutdown) => Some(end),
            _ = killed.wait_for(|k| *k) => None,
        };
        handle.set_backend(None);
        let Some(end) = end else {
            if let Some(conn) = held.take() {
                crate::cancel::send_cancel_detached(conn.target.clone(), conn.key);
                discard(conn);
            }
            terminated(stream).await;
            return;
        };
        let Some(ctx) = relay.txn.as_mut() else {
            return internal_error(stream, held.take()).await;
        };
        match end {
            RelayEnd::Retry => {
                tracing::info!(
                    pid = conn.key.pid,
                    "backend died before running the batch; sending it to a fresh backend"
                );
                metrics::counter!("pgveil_backend_retries_total", "mode" => "transaction")
                    .increment(1);
                if let Some(conn) = held.take() {
                    discard(conn);
                }
                let Some(conn) = check_out(stream, who, shared, tenant, ctx, true).await else {
                    return;
                };
                held = Some(conn); // not armed again: one retry per batch
            }
            RelayEnd::Release => {
                if ctx.settings_dirty || ctx.verify {
                    capture_settings(conn, ctx).await;
                }
                if conn.broken {
                    if let Some(conn) = held.take() {
                        discard(conn);
                    }
                } else if ctx.pinned.is_none() {
                    held = None; // back to the pool
                }
            }
            end => {
                tracing::info!(end = ?end, pinned = ctx.pinned, "session ended");
                if let Some(conn) = held.take() {
                    finish(conn, &relay, &end).await;
                }
                return;
            }
        }
    }
}

/// The client left while holding a backend: roll back and return it, drain and reset it when it left
/// extended-protocol messages without Sync or was pinned, or discard it when responses are still owed (after a
/// cancel). Every step runs under `pool.reset_timeout`.
async fn finish(mut conn: PooledConn, relay: &Relay<'_>, end: &RelayEnd) {
    let Some(ctx) = relay.txn.as_ref() else {
        tracing::error!("transaction-mode session without its state");
        discard(conn);
        return;
    };
    let reusable =
        relay.state.backend_idle() && !matches!(end, RelayEnd::BackendGone) && !conn.broken;
    if !reusable {
        if !matches!(end, RelayEnd::BackendGone) {
            crate::cancel::send_cancel_detached(conn.target.clone(), conn.key);
        }
        discard(conn);
        return;
    }
    let status = relay.state.txn_status;
    let ok = if relay.state.unsynced {
        // Parses, portals and settings of the unsynced batch are unknown: drain, then reset like a pinned
        // backend (pgveil's server-side statements are forgotten with it).
        let ok = drain_unsynced(&mut conn).await && reset(&mut conn, TxnStatus::Idle.byte()).await;
        conn.statements.clear();
        conn.applied = Some(Vec::new());
        ok
    } else if ctx.pinned.is_some() || ctx.verify {
        let ok = reset(&mut conn, status.byte()).await;
        conn.statements.clear();
        conn.applied = Some(Vec::new());
        ok
    } else {
        let ok = status.is_idle() || rollback(&mut conn).await;
        if ctx.settings_dirty {
            conn.applied = None; // unknown: the next client starts with RESET ALL
        }
        ok
    };
    if !ok {
        discard(conn);
    }
}

/// Ends a session whose relay lost its transaction-mode state (a bug; never expected): FATAL XX000, and the
/// held backend, in an unknown state, is discarded.
async fn internal_error(stream: &mut ClientStream, held: Option<PooledConn>) {
    tracing::error!("transaction-mode session without its state");
    if let Some(conn) = held {
        discard(conn);
    }
    refuse(stream, PgError::internal()).await;
}

/// Tells the client its session was ended by a revocation.
async fn terminated(stream: &mut ClientStream) {
    tracing::info!("session terminated: token revoked or user disabled");
    let mut out = BytesMut::new();
    PgError::invalid_authorization("session terminated: pgveil token revoked or user disabled")
        .encode(&mut out);
    let _ = stream.write_all(&out).await;
}

/// Removes a backend from its pool and closes it.
fn discard(mut conn: PooledConn) {
    conn.broken = true;
    let _ = Object::take(conn);
}
