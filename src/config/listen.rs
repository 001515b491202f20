//! `[listen]`: the client-facing listener and the limits every session is held to.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Default proxy port (DESIGN.md "Interfaces").
pub const DEFAULT_PORT: u16 = 6432;

/// Client-facing listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address and port to listen on.
    #[serde(default = "default_listen_addr")]
    pub addr: SocketAddr,
    /// Accept tokens over plain-text (non-TLS) connections from loopback addresses. For demo and tests only;
    /// plain text from any other address is always refused.
    #[serde(default)]
    pub allow_plaintext_loopback: bool,
    /// Time allowed from TCP accept to the end of authentication.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Largest startup packet accepted, in bytes.
    #[serde(default = "default_max_startup_packet")]
    pub max_startup_packet: usize,
    /// Largest `Query`/`Parse` message accepted, in bytes (other messages, e.g. COPY data, are streamed).
    #[serde(default = "default_max_query_bytes")]
    pub max_query_bytes: usize,
    /// Maximum number of concurrent authenticated client sessions. Connections still in their startup phase
    /// (handshake and authentication) count against `max_startups` instead, so sockets that never
    /// authenticate cannot keep real clients out.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Maximum number of connections in their startup phase (before authentication completes) at once;
    /// beyond it new connections get 53300. Each is also bounded in time by `startup_timeout`.
    #[serde(default = "default_max_startups")]
    pub max_startups: usize,
    /// Maximum concurrent sessions of one user (token subject) on this instance; absent: no cap.
    #[serde(default)]
    pub max_sessions_per_user: Option<usize>,
    /// Close sessions whose client sends nothing for this long outside a transaction (57P05); absent: never.
    #[serde(default, with = "humantime_serde")]
    pub client_idle_timeout: Option<Duration>,
    /// Close sessions whose client sends nothing for this long inside a transaction (25P03; the transaction is
    /// rolled back and its backend freed); absent: never.
    #[serde(default, with = "humantime_serde")]
    pub idle_transaction_timeout: Option<Duration>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: default_listen_addr(),
            allow_plaintext_loopback: false,
            startup_timeout: default_startup_timeout(),
            max_startup_packet: default_max_startup_packet(),
            max_query_bytes: default_max_query_bytes(),
            max_clients: default_max_clients(),
            max_startups: default_max_startups(),
            max_sessions_per_user: None,
            client_idle_timeout: None,
            idle_transaction_timeout: None,
        }
    }
}

impl ListenConfig {
    /// Adds every problem with this section to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.max_startup_packet < 64 || self.max_startup_packet > 1 << 20 {
            problems.push("listen.max_startup_packet must be between 64 and 1048576".to_owned());
        }
        if self.max_query_bytes < 1024 || self.max_query_bytes > 1 << 30 {
            problems.push("listen.max_query_bytes must be between 1024 and 1073741824".to_owned());
        }
        for (name, t) in [
            ("client_idle_timeout", self.client_idle_timeout),
            ("idle_transaction_timeout", self.idle_transaction_timeout),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                problems.push(format!(
                    "listen.{name} must be positive (leave it out for none)"
                ));
            }
        }
        if self.max_sessions_per_user == Some(0) {
            problems.push("listen.max_sessions_per_user must be at least 1".to_owned());
        }
        if self.max_clients == 0 {
            problems.push("listen.max_clients must be at least 1".to_owned());
        }
    }
}

fn default_listen_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_max_startup_packet() -> usize {
    10_000
}
fn default_max_query_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_clients() -> usize {
    10_000
}
fn default_max_startups() -> usize {
    1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_caps_are_not() {
        let mut problems = Vec::new();
        ListenConfig::default().validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let zero = ListenConfig {
            max_clients: 0,
            max_sessions_per_user: Some(0),
            client_idle_timeout: Some(Duration::ZERO),
            ..ListenConfig::default()
        };
        zero.validate(&mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
