//! Transaction mode: session state created inside tenant-defined functions, which no reading of the client's
//! SQL can see (a function may call `set_config`, create a temporary table or take a session advisory lock).
//!
//! pgveil reads, per pool, the names of the functions outside `pg_catalog` and `information_schema` (again at
//! most every [`FUNCTIONS_MAX_AGE`], and at once after the client SQL created or replaced a function). A
//! transaction whose SQL mentions one of them (or that the fast scan cannot read conclusively) is verified at
//! release, in one round trip: the session settings (made the client's, as after `SET`) and whether the backend
//! now holds temporary objects, session advisory locks, LISTEN registrations, holdable cursors or SQL prepared
//! statements (the client is then pinned to it, and the backend reset when the client leaves).
//!
//! Cost: one query per pool per [`FUNCTIONS_MAX_AGE`], and one extra round trip at the end of each
//! transaction that calls a tenant-defined function.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::pool::{FunctionNames, PooledConn};
use crate::backend::reset::query_rows;
use crate::proto::TxnStatus;

/// How long a pool's function names are used before they are read again.
pub const FUNCTIONS_MAX_AGE: Duration = Duration::from_secs(60);

/// Names of the functions a client could call that pgveil does not know to be built-in.
const FUNCTIONS_SQL: &str = "SELECT DISTINCT pg_catalog.lower(proname) FROM pg_catalog.pg_proc WHERE pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace)";

/// Settings the session changed, plus one row (named `" pins"`, which no setting can be) listing the
/// session-lifetime state the backend holds.
pub const VERIFY_SQL: &str = "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session' \
UNION ALL SELECT ' pins', pg_catalog.concat_ws(',', \
CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) THEN 'temp' END, \
CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) THEN 'advisory' END, \
CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) THEN 'listen' END, \
CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable) THEN 'cursor' END, \
CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements WHERE from_sql) THEN 'prepare' END) \
ORDER BY 1";

/// The name of the state row in [`VERIFY_SQL`]'s result.
pub const PINS_ROW: &str = " pins";

/// Reads the function names on `conn`; `None` (and the connection marked broken) on failure.
pub async fn load_functions(conn: &mut PooledConn) -> Option<FunctionNames> {
    match query_rows(conn, FUNCTIONS_SQL).await {
        Ok((status, None, rows)) if TxnStatus::from_byte(status).is_idle() => Some(Arc::new(
            rows.into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect::<HashSet<String>>(),
        )),
        other => {
            tracing::warn!(result = ?other.map(|(s, e, _)| (s, e)).err(), "reading the tenant's function names failed");
            conn.broken = true;
            None
        }
    }
}

/// Whether `sql` mentions one of `names` as a whole word (case-insensitive; quoted spellings included, and
/// escaped ones are caught by the caller as inconclusive text).
pub fn mentions(sql: &[u8], names: &HashSet<String>) -> bool {
    if names.is_empty() {
        return false;
    }
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    sql.split(|&b| !is_ident(b))
        .filter(|w| !w.is_empty())
        .any(|w| std::str::from_utf8(w).is_ok_and(|w| names.contains(&w.to_lowercase())))
}

/// Whether client SQL creates or replaces a function or procedure (the names must be read again).
pub fn defines_function(sql: &[u8]) -> bool {
    let lower = sql.to_ascii_lowercase();
    let has = |w: &[u8]| lower.windows(w.len()).any(|x| x == w);
    has(b"create") && (has(b"function") || has(b"procedure"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_whole_words_only() {
        let names: HashSet<String> = ["leak_fn".to_owned()].into();
        assert!(mentions(b"SELECT public.LEAK_FN()", &names));
        assert!(mentions(br#"SELECT "leak_fn"()"#, &names));
        assert!(!mentions(b"SELECT leak_fn_other()", &names));
        assert!(defines_function(b"CREATE OR REPLACE FUNCTION f() ..."));
        assert!(!defines_function(b"SELECT 1"));
    }
}
