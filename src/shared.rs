//! The state every connection shares (built by [`crate::server`] from a config) and the counted places
//! ([`Slot`]) that cap startups and sessions. A module of its own so the data path (`frontend`) can take it
//! without importing the server that accepts connections and calls the data path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::audit::Auditor;
use crate::backend::Pools;
use crate::cancel::CancelRegistry;
use crate::clock::Clock;
use crate::config::Config;
use crate::exfil::Budgets;
use crate::policy::StatementPolicy;
use crate::policy::engine::MaskingEngine;
use crate::revoke::{RevocationCache, SessionRegistry};
use crate::route::Router;
use crate::secret::{CachedSecretStore, SecretStore};
use crate::token::TokenVerifier;

/// State shared by every session (an immutable snapshot plus the pools).
pub struct Shared {
    /// Configuration.
    pub cfg: Config,
    /// Tenants.
    pub router: Router,
    /// Backend pools.
    pub pools: Pools,
    /// Token verifier.
    pub verifier: TokenVerifier,
    /// TLS acceptor for clients.
    pub tls: Option<TlsAcceptor>,
    /// Secret store (cached) the pools and key loaders use.
    pub secrets: Arc<dyn SecretStore>,
    /// The cache, when the store came from the config (for stats).
    pub secret_cache: Option<Arc<CachedSecretStore>>,
    /// Statement hook.
    pub policy: Arc<dyn StatementPolicy>,
    /// The masking engine, when `[policy]` is configured (it is then also `policy`).
    pub masking: Option<Arc<MaskingEngine>>,
    /// Cancel keys.
    pub cancel: Arc<CancelRegistry>,
    /// Shutdown signal: true = drain.
    pub shutdown: watch::Receiver<bool>,
    /// Clock.
    pub clock: Clock,
    /// Authenticated client sessions.
    pub clients: AtomicUsize,
    /// Connections in their startup phase (handshake and authentication).
    pub starting: AtomicUsize,
    /// Revoked tokens and disabled users (when a control database is configured).
    pub revocations: Option<Arc<RevocationCache>>,
    /// Live sessions, so revocations can end them.
    pub sessions: Arc<SessionRegistry>,
    /// The audit queue (`[audit]`).
    pub audit: Auditor,
    /// The exfiltration guard's per-user windows.
    pub budgets: Budgets,
}

/// One place under a counted cap (startup phase or authenticated sessions); released when dropped.
pub struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    /// Takes a place when fewer than `cap` are taken.
    pub fn take(counter: &'a AtomicUsize, cap: usize) -> Option<Slot<'a>> {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = Slot(counter);
        (n <= cap).then_some(slot)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
