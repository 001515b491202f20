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

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1 bytes); it truncates longer ones.
const MAX_IDENT: usize = 63;

/// Whether `sql` mentions one of `names` as a whole word (case-insensitive; quoted spellings included, and
/// escaped ones are caught by the caller as inconclusive text). A word longer than PostgreSQL's identifier
/// limit is also looked up as PostgreSQL would truncate it (at a character boundary within 63 bytes).
/// Runs on every statement in transaction mode when the tenant has functions: ASCII words are lowercased in a
/// stack buffer (no allocation per word).
pub fn mentions(sql: &[u8], names: &HashSet<String>) -> bool {
    if names.is_empty() {
        return false;
    }
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    let mut buf = [0u8; MAX_IDENT];
    sql.split(|&b| !is_ident(b))
        .filter(|w| !w.is_empty())
        .any(|w| mentioned(w, names, &mut buf))
}

fn mentioned(word: &[u8], names: &HashSet<String>, buf: &mut [u8; MAX_IDENT]) -> bool {
    if word.is_ascii() {
        let w = &word[..word.len().min(MAX_IDENT)];
        let lower = &mut buf[..w.len()];
        lower.copy_from_slice(w);
        lower.make_ascii_lowercase();
        return std::str::from_utf8(lower).is_ok_and(|l| names.contains(l));
    }
    let Ok(w) = std::str::from_utf8(word) else {
        return false;
    };
    let lower = w.to_lowercase();
    if names.contains(&lower) {
        return true;
    }
    // Truncated as PostgreSQL would: the client's spelling cut at 63 bytes, then lowercased (either order
    // is looked up; matching too much only costs a verification).
    let cut = |s: &str| -> String {
        let mut end = s.len().min(MAX_IDENT);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    w.len() > MAX_IDENT && (names.contains(&cut(w).to_lowercase()) || names.contains(&cut(&lower)))
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
        // PostgreSQL truncates identifiers to 63 bytes: a longer spelling calls the function too.
        let long = "f".repeat(63);
        let names: HashSet<String> = [long.clone(), "äpfel".to_owned()].into();
        assert!(mentions(
            format!("SELECT {}xyz()", long.to_uppercase()).as_bytes(),
            &names
        ));
        assert!(mentions(format!("SELECT \"{long}\"()").as_bytes(), &names));
        assert!(!mentions(
            format!("SELECT {}()", &long[..62]).as_bytes(),
            &names
        ));
        assert!(mentions("SELECT \"ÄPFEL\"()".as_bytes(), &names));
        assert!(mentions(
            format!("SELECT \"äpfel{}\"()", "x".repeat(70)).as_bytes(),
            &["äpfel".to_owned() + &"x".repeat(57)].into()
        ));
        assert!(defines_function(b"CREATE OR REPLACE FUNCTION f() ..."));
        assert!(!defines_function(b"SELECT 1"));
    }
}
