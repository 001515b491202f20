//! Which decision epochs a session's lasting server-side state was made under (DESIGN.md "Trust boundary",
//! Versions). Prepared statements (protocol Parse, named or unnamed; SQL `PREPARE`) and cursors (`DECLARE`)
//! keep the rewrite of the epoch they were created in. Once the epoch changes (policy reload, schema change),
//! the relay ends a session that still holds any of them before its next message reaches the backend.
//!
//! Tracked precisely where it is cheap: named protocol statements until their Close, the unnamed statement
//! until the next simple Query (which drops it) or unnamed Parse. SQL `PREPARE`/`DECLARE` are kept for the
//! rest of the session (DEALLOCATE and CLOSE are not followed: fail closed).

use std::collections::HashMap;

/// The epoch of state created while the session was not inspected (its statements were not rewritten).
pub const UNINSPECTED: u64 = u64::MAX;

/// Epochs of a session's live prepared statements and cursors.
#[derive(Debug, Default)]
pub struct StateEpochs {
    named: HashMap<Box<[u8]>, u64>,
    unnamed: Option<u64>,
    /// SQL `PREPARE`/`DECLARE`: the first epoch one was made under.
    sql: Option<u64>,
    /// The SQL-level state was made under more than one epoch.
    mixed: bool,
}

impl StateEpochs {
    /// A Parse of statement `name` (empty: the unnamed statement) decided under `epoch`.
    pub fn on_parse(&mut self, name: &[u8], epoch: u64) {
        if name.is_empty() {
            self.unnamed = Some(epoch);
        } else {
            self.named.insert(name.into(), epoch);
        }
    }

    /// A Close message (payload: `S` or `P`, then the name).
    pub fn on_close(&mut self, body: &[u8]) {
        if let Some((&b'S', rest)) = body.split_first() {
            let name = rest.split(|&b| b == 0).next().unwrap_or_default();
            if name.is_empty() {
                self.unnamed = None;
            } else {
                self.named.remove(name);
            }
        }
    }

    /// A simple Query: PostgreSQL drops the unnamed statement.
    pub fn on_query(&mut self) {
        self.unnamed = None;
    }

    /// A SQL statement that creates lasting state (`PREPARE`, `DECLARE`) decided under `epoch`.
    pub fn on_lasting(&mut self, epoch: u64) {
        match self.sql {
            None => self.sql = Some(epoch),
            Some(e) if e != epoch => self.mixed = true,
            _ => {}
        }
    }

    /// Whether any live state was made under another epoch than `now()` (computed only if there is state).
    pub fn stale(&self, now: impl FnOnce() -> u64) -> bool {
        if self.named.is_empty() && self.unnamed.is_none() && self.sql.is_none() {
            return false;
        }
        let now = now();
        self.mixed
            || self.sql.is_some_and(|e| e != now)
            || self.unnamed.is_some_and(|e| e != now)
            || self.named.values().any(|&e| e != now)
    }
}

/// Whether simple-query text of a role that is not inspected may create lasting state: a conservative
/// byte search for `prepare` or `declare` (any case), so that no parsing is paid on the unrestricted path.
/// A false positive only means the session is ended if its role later becomes inspected.
pub fn may_create_state(sql: &[u8]) -> bool {
    sql.windows(7)
        .any(|w| w.eq_ignore_ascii_case(b"prepare") || w.eq_ignore_ascii_case(b"declare"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_statements_until_closed() {
        let mut s = StateEpochs::default();
        assert!(!s.stale(|| panic!("not computed without state")));
        s.on_parse(b"s1", 7);
        s.on_parse(b"", 7);
        assert!(!s.stale(|| 7));
        assert!(s.stale(|| 8));
        s.on_close(b"Ss1\0");
        s.on_query();
        assert!(!s.stale(|| panic!("all state is gone")));
        s.on_close(b"Pportal\0");
        s.on_lasting(7);
        assert!(s.stale(|| 8));
        s.on_lasting(8);
        assert!(s.stale(|| 8), "a cursor of epoch 7 is still open");
    }

    #[test]
    fn byte_search() {
        assert!(may_create_state(b"PREPARE p AS SELECT 1"));
        assert!(may_create_state(b"begin; Declare c cursor for select 1"));
        assert!(!may_create_state(b"SELECT 1"));
    }
}
