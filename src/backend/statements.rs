//! Transaction mode: the server-side prepared statements pgveil created on one backend connection.
//!
//! Clients' named statements are never created on a backend under the client's name. Each distinct statement
//! definition (SQL text after the policy hook, plus parameter types) gets a pgveil-controlled name
//! (`pgveil_ps_<n>`, unique per connection, never reused) the first time a transaction on this backend needs
//! it. Two clients of the same pool (same tenant and role class) that prepare identical text share the server
//! statement; a client can only reach it through a name it prepared itself, so nothing is visible across
//! clients. The cache is bounded: the least recently used entry not used by the current transaction is closed.

use std::collections::HashMap;

use bytes::Bytes;

/// Prefix of every server-side statement name pgveil creates. Client SQL mentioning it is refused.
pub const NAME_PREFIX: &str = "pgveil_ps_";

struct Entry {
    name: Bytes,
    last_used: u64,
}

/// The statements present on one backend, keyed by definition.
#[derive(Default)]
pub struct BackendStatements {
    by_def: HashMap<Bytes, Entry>,
    next_id: u64,
    tick: u64,
}

impl BackendStatements {
    /// The server name of `def` if present on the backend (marks it used).
    pub fn get(&mut self, def: &[u8]) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        self.by_def.get_mut(def).map(|e| {
            e.last_used = tick;
            e.name.clone()
        })
    }

    /// Records `def` as about to be prepared; returns its new server name and, when the cache was full, the
    /// name of an evicted statement that must be closed. Entries used at or after `protect_since` (the
    /// current transaction) are never evicted, so the cache may exceed `cap` briefly.
    pub fn insert(&mut self, def: Bytes, cap: usize, protect_since: u64) -> (Bytes, Option<Bytes>) {
        let mut evicted = None;
        if self.by_def.len() >= cap.max(1)
            && let Some(victim) = self
                .by_def
                .iter()
                .filter(|(_, e)| e.last_used < protect_since)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
        {
            evicted = self.by_def.remove(&victim).map(|e| e.name);
        }
        self.next_id += 1;
        self.tick += 1;
        let name = Bytes::from(format!("{NAME_PREFIX}{}", self.next_id));
        self.by_def.insert(
            def,
            Entry {
                name: name.clone(),
                last_used: self.tick,
            },
        );
        (name, evicted)
    }

    /// Forgets `def` (its Parse failed or was skipped, so the server does not have it).
    pub fn remove(&mut self, def: &[u8], name: &[u8]) {
        if self.by_def.get(def).is_some_and(|e| e.name == name) {
            self.by_def.remove(def);
        }
    }

    /// Forgets everything (after `DISCARD ALL` / `DEALLOCATE ALL` on the connection).
    pub fn clear(&mut self) {
        self.by_def.clear();
    }

    /// The current use counter (entries used after this value belong to later work).
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Number of statements present.
    pub fn len(&self) -> usize {
        self.by_def.len()
    }

    /// True when none are present.
    pub fn is_empty(&self) -> bool {
        self.by_def.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_outside_current_transaction() {
        let mut s = BackendStatements::default();
        let none = u64::MAX; // nothing protected
        let (a, _) = s.insert(Bytes::from_static(b"a"), 2, none);
        let (b, _) = s.insert(Bytes::from_static(b"b"), 2, none);
        assert_ne!(a, b);
        assert_eq!(s.get(b"a"), Some(a.clone())); // a is now more recent than b
        let (_, evicted) = s.insert(Bytes::from_static(b"c"), 2, none);
        assert_eq!(evicted, Some(b));
        // Everything used in the current transaction is protected: the cache grows instead.
        let now = s.tick() + 1;
        s.get(b"a");
        s.get(b"c");
        let (_, evicted) = s.insert(Bytes::from_static(b"d"), 2, now);
        assert_eq!(evicted, None);
        assert_eq!(s.len(), 3);
        s.remove(b"d", b"wrong");
        assert_eq!(s.len(), 3);
        s.clear();
        assert!(s.is_empty());
    }
}
