//! `[pool]`: defaults for every tenant's backend pools, and the pool mode.

use std::time::Duration;

use serde::Deserialize;

/// How a pool hands backends to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client holds one backend for its whole session.
    Session,
    /// A client holds a backend only from the first message of a transaction to the ReadyForQuery that ends
    /// it (status idle, nothing else pending); session state is carried over or the client is pinned.
    Transaction,
}

/// Defaults applied to every tenant's pools.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDefaults {
    /// Backend connections per (tenant, role class) pool.
    #[serde(default = "default_pool_size")]
    pub size: usize,
    /// Pool mode.
    #[serde(default = "default_pool_mode")]
    pub mode: PoolMode,
    /// How long a client waits (in a fair FIFO queue) for a free backend before it gets a 53300 error; in
    /// transaction mode this is the wait at the start of every transaction.
    #[serde(default = "default_checkout_timeout", with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Transaction mode: server-side prepared statements kept per backend connection (least recently used
    /// ones are closed beyond this).
    #[serde(default = "default_max_prepared_statements")]
    pub max_prepared_statements: usize,
    /// Timeout for opening a backend connection (TCP + TLS + authentication).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on each step pgveil runs on a backend outside a client's conversation (draining unsynced
    /// messages, rollback, `DISCARD ALL`, applying or reading back settings). A backend that does not answer in
    /// time is cancelled and closed, never returned to its pool.
    #[serde(default = "default_reset_timeout", with = "humantime_serde")]
    pub reset_timeout: Duration,
    /// How often idle pooled backends are checked, without a round trip, for having been closed by the
    /// server (restart, `pg_terminate_backend`, idle timeout); dead ones are removed from their pool. `0s`
    /// turns the periodic check off (idle backends are still checked when they are checked out).
    #[serde(default = "default_idle_check_interval", with = "humantime_serde")]
    pub idle_check_interval: Duration,
}

impl Default for PoolDefaults {
    fn default() -> Self {
        Self {
            size: default_pool_size(),
            mode: default_pool_mode(),
            checkout_timeout: default_checkout_timeout(),
            max_prepared_statements: default_max_prepared_statements(),
            connect_timeout: default_connect_timeout(),
            reset_timeout: default_reset_timeout(),
            idle_check_interval: default_idle_check_interval(),
        }
    }
}

impl PoolDefaults {
    /// Adds every problem with this section to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.size == 0 {
            problems.push("pool.size must be at least 1".to_owned());
        }
        if self.max_prepared_statements == 0 {
            problems.push("pool.max_prepared_statements must be at least 1".to_owned());
        }
        if self.reset_timeout.is_zero() {
            problems.push("pool.reset_timeout must be more than 0".to_owned());
        }
    }
}

fn default_pool_size() -> usize {
    20
}
fn default_pool_mode() -> PoolMode {
    PoolMode::Session
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_prepared_statements() -> usize {
    200
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reset_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_check_interval() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let mut problems = Vec::new();
        PoolDefaults::default().validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let p: PoolDefaults = toml::from_str("mode = \"transaction\"\nsize = 0").unwrap();
        assert_eq!(p.mode, PoolMode::Transaction);
        p.validate(&mut problems);
        assert_eq!(problems, ["pool.size must be at least 1"]);
    }
}
