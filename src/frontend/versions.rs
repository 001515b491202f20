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

    /// Applies the Close messages at the start of freshly read client bytes (`buf` starts at a frame
    /// boundary), up to the first message that could use a statement. Drivers close statements they no longer
    /// need just before their next request (tokio-postgres sends a dropped statement's Close in the same write
    /// as the next Parse), and such a Close must not make the session look stale: it ends the statement
    /// before anything can run it. Sync and Flush are passed over; any other message stops the scan.
    pub fn apply_leading_closes(&mut self, buf: &[u8]) {
        let mut rest = buf;
        while rest.len() >= 5 {
            let tag = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len < 4 || rest.len() < 1 + len {
                return;
            }
            match tag {
                b'C' => self.on_close(&rest[5..1 + len]),
                b'S' | b'H' => {}
                _ => return,
            }
            rest = &rest[1 + len..];
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
    fn leading_closes_end_statements_before_any_use() {
        fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut f = vec![tag];
            f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            f.extend_from_slice(body);
            f
        }
        let mut s = StateEpochs::default();
        s.on_parse(b"s1", 7);
        s.on_parse(b"s2", 7);
        // Close s1, then Bind s2 (a use), then Close s2: only the leading Close counts.
        let mut buf = frame(b'C', b"Ss1\0");
        buf.extend(frame(b'H', b""));
        buf.extend(frame(b'B', b"\0s2\0\0\0\0\0\0\0"));
        buf.extend(frame(b'C', b"Ss2\0"));
        s.apply_leading_closes(&buf);
        assert!(
            s.stale(|| 8),
            "s2 is still live: its Close comes after a use"
        );
        s.on_close(b"Ss2\0");
        assert!(!s.stale(|| panic!("all state is gone")));
        // A truncated frame is left alone.
        s.on_parse(b"s3", 7);
        s.apply_leading_closes(&frame(b'C', b"Ss3\0")[..6]);
        assert!(s.stale(|| 8));
    }

    #[test]
    fn byte_search() {
        assert!(may_create_state(b"PREPARE p AS SELECT 1"));
        assert!(may_create_state(b"begin; Declare c cursor for select 1"));
        assert!(!may_create_state(b"SELECT 1"));
    }
}
