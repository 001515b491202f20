//! `[tls]`: the server certificate clients see.

use std::path::PathBuf;

use serde::Deserialize;

/// Server certificate and key for client TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TlsConfig {
    /// Adds every problem with this section to `problems` (`offline`: the files need not exist).
    pub fn validate(&self, problems: &mut Vec<String>, offline: bool) {
        if offline {
            return;
        }
        for p in [&self.cert, &self.key] {
            if !p.exists() {
                problems.push(format!("tls: file {} does not exist", p.display()));
            }
        }
    }
}
