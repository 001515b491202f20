//! `[metrics]`: the plain-HTTP Prometheus listener.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port of the plain-HTTP `/metrics` listener.
    pub addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::MetricsConfig;

    #[test]
    fn config_takes_an_address_and_nothing_else() {
        let c: MetricsConfig = toml::from_str("addr = \"127.0.0.1:9432\"").expect("valid");
        assert_eq!(c.addr.port(), 9432);
        assert!(
            toml::from_str::<MetricsConfig>("addr = \"127.0.0.1:9432\"\npath = \"/m\"").is_err()
        );
        assert!(toml::from_str::<MetricsConfig>("addr = \"localhost\"").is_err());
    }
}
