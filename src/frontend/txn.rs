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
//! - its cancel key ([`crate::cancel::CancelHandle::set_backend`] follows the serving backend).
//!
//! State that cannot be moved pins the client to its backend until it disconnects (see [`super::sqlscan`]):
//! SQL `PREPARE`, `LISTEN`, temporary objects, session advisory locks, cursors `WITH HOLD`, `LOAD`, dblink
//! connections, and `SET ROLE`/`SET SESSION AUTHORIZATION`. A pinned client's backend is reset like a session
//! mode backend (`DISCARD ALL`) when it ends.

mod serve;

use std::collections::BTreeMap;

use super::checkout::{checked_settings_sql, checkout_error};
use super::context::SessionCtx;
use super::finish::discard;
use super::handshake::refuse;
use super::params::set_config_statement;
use super::prepared::TxnStatements;
use super::routing::Route;
use super::sqlscan;
use super::verify;
use crate::backend::pool::{FunctionNames, PooledConn};
use crate::backend::reset::{query_rows, run_queries};
use crate::backend::statements::BackendStatements;
use crate::identity::Identity;
use crate::net::ClientStream;
use crate::proto::{PgError, TxnStatus};

pub use serve::serve;

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
            // Text PostgreSQL's grammar rejects anyway gets the syntax error PostgreSQL would give (the fast
            // scan reads words, and names it cannot decode count as reserved).
            if let Some(message) = super::sqltree::syntax_error(sql) {
                return Some(PgError::syntax_error(message));
            }
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
async fn login(
    stream: &mut ClientStream,
    who: &Identity,
    ctx: &SessionCtx<'_>,
    route: &Route,
) -> Option<(TxnCtx, BTreeMap<String, String>)> {
    let tenant = &route.tenant;
    // The client's settings go with it to every backend: all of them, checked by the policy once.
    let settings = route.settings.clone();
    let pairs: Vec<(&str, &str)> = settings
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sql = match checked_settings_sql(&pairs, who, ctx.policy) {
        Ok(sql) => sql,
        Err(e) => {
            refuse(stream, e).await;
            return None;
        }
    };
    let txn = TxnCtx::new(settings, sql, ctx.max_prepared_statements);
    let free = match ctx.pools.try_checkout(tenant, &who.role).await {
        Ok(free) => free,
        Err(e) => {
            refuse(stream, checkout_error(&e, who)).await;
            return None;
        }
    };
    let greeting = match free {
        Some(conn) => return login_on(stream, conn, txn, route).await,
        None => ctx.pools.greeting(tenant, &who.role),
    };
    let Some(greeting) = greeting else {
        // No backend was ever opened for this pool: wait for one like a transaction would.
        return match ctx.pools.checkout(tenant, &who.role).await {
            Ok(conn) => login_on(stream, conn, txn, route).await,
            Err(e) => {
                refuse(stream, checkout_error(&e, who)).await;
                None
            }
        };
    };
    if !route.check_db(stream, &greeting.dbname).await {
        return None;
    }
    tracing::debug!("login answered from the pool's server parameters (no free backend)");
    metrics::counter!("pgveil_txn_logins_without_backend_total").increment(1);
    let mut params = greeting.params;
    for (name, value) in &txn.settings {
        if let Some(key) = params
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned()
        {
            params.insert(key, value.clone());
        }
    }
    Some((txn, params))
}

/// Login on a backend at hand: checks the database name and applies the client's settings on it, then
/// returns the backend to the pool.
async fn login_on(
    stream: &mut ClientStream,
    mut conn: PooledConn,
    txn: TxnCtx,
    route: &Route,
) -> Option<(TxnCtx, BTreeMap<String, String>)> {
    if !route.check_db(stream, &conn.target.dbname).await {
        return None; // the backend was not touched: it goes back as it is
    }
    if let Err(e) = ensure_settings(&mut conn, &txn).await {
        refuse(stream, e).await;
        discard(conn);
        return None;
    }
    let params = conn.params.clone();
    Some((txn, params)) // the backend goes back to the pool until the first transaction
}
