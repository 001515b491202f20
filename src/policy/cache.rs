//! The masking engine's decision caches, bounded in bytes rather than entries.
//!
//! Every entry holds client input (the statement text, its rewrite): counted in entries, 10,000 statements of
//! 1 MiB each would be 10 GiB. Each cache therefore has a byte budget and evicts by quick_cache's
//! CLOCK-Pro-style policy (frequent statements stay, one-off ones go first) instead of being cleared wholesale.
//! An entry larger than a sixteenth of its budget is not cached at all: one huge statement must not flush the
//! working set, and deciding it again costs less than it would to keep it.

use std::hash::Hash;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Fixed cost counted per entry on top of its text (map slot, `Arc`s, small fields).
const ENTRY_OVERHEAD: usize = 128;

/// Something whose heap size pgveil can estimate cheaply.
pub trait HeapSize {
    /// Approximate bytes owned (text lengths dominate).
    fn heap_size(&self) -> usize;
}

#[derive(Clone, Copy)]
struct ByHeapSize;

impl<K: HeapSize, V: HeapSize> Weighter<K, V> for ByHeapSize {
    fn weight(&self, key: &K, val: &V) -> u64 {
        (key.heap_size() + val.heap_size() + ENTRY_OVERHEAD) as u64
    }
}

/// A concurrent cache holding at most `budget` bytes (as estimated by [`HeapSize`]).
pub struct ByteCache<K, V> {
    inner: Cache<K, V, ByHeapSize>,
    max_entry: u64,
}

impl<K, V> ByteCache<K, V>
where
    K: Eq + Hash + HeapSize,
    V: Clone + HeapSize,
{
    /// An empty cache of `budget` bytes.
    pub fn new(budget: u64) -> Self {
        let budget = budget.max(1);
        // quick_cache sizes its tables from the expected number of entries; statements are typically a few
        // hundred bytes to a few KiB.
        let estimated = usize::try_from(budget / 2048)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 20);
        Self {
            inner: Cache::with_weighter(estimated, budget, ByHeapSize),
            max_entry: budget / 16,
        }
    }

    /// The cached value for `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        self.inner.get(key)
    }

    /// Caches `value` under `key`, evicting others as needed; entries over a sixteenth of the budget are
    /// not kept.
    pub fn insert(&self, key: K, value: V) {
        let weight = (key.heap_size() + value.heap_size() + ENTRY_OVERHEAD) as u64;
        if weight > self.max_entry {
            metrics::counter!("pgveil_rewrite_cache_too_large_total").increment(1);
            return;
        }
        self.inner.insert(key, value);
    }

    /// Bytes held now (estimated).
    pub fn weight(&self) -> u64 {
        self.inner.weight()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl HeapSize for String {
    fn heap_size(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_budget() {
        let c: ByteCache<String, String> = ByteCache::new(1 << 20);
        for i in 0..2000 {
            c.insert(
                format!("SELECT {i} -- {}", "x".repeat(4000)),
                "r".repeat(1000),
            );
        }
        assert!(c.weight() <= 1 << 20, "{} bytes held", c.weight());
        assert!(c.len() > 100, "evicted too much: {}", c.len());
        // A single entry over a sixteenth of the budget is not kept.
        c.insert("big".into(), "y".repeat(100_000));
        assert!(c.get(&"big".to_owned()).is_none());
        // A frequently used entry survives a stream of one-off ones.
        let hot = "SELECT hot".to_owned();
        c.insert(hot.clone(), "h".into());
        for i in 0..2000 {
            assert!(c.get(&hot).is_some() || i > 0, "hot entry lost at once");
            let _ = c.get(&hot);
            c.insert(format!("one-off {i} {}", "z".repeat(4000)), String::new());
        }
        assert!(
            c.get(&hot).is_some(),
            "hot entry evicted by one-off entries"
        );
    }
}
