//! `[audit]`: where audit records go and how many may wait for the writer.

use std::path::PathBuf;

use serde::Deserialize;

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append JSON lines to this file instead of the process log; reopened on SIGHUP.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Events that may wait for the writer; more are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            queue: default_queue(),
        }
    }
}

fn default_queue() -> usize {
    65_536
}
