//! What serving a session needs from the server, and nothing more: a lean context built once per session
//! from [`crate::shared::Shared`] by the serve stage ([`super::stages`]), so session and transaction mode
//! never see the config, the router, the token verifier or the other sessions.

use std::sync::Arc;

use tokio::sync::watch;

use super::relay::IdleTimeouts;
use super::tally::{SessionAudit, Tally};
use crate::audit::{Auditor, SessionInfo};
use crate::backend::Pools;
use crate::cancel::CancelRegistry;
use crate::exfil::Budgets;
use crate::identity::Identity;
use crate::policy::StatementPolicy;
use crate::shared::Shared;

/// Who a served session is, as the earlier stages established it.
pub struct Client<'a> {
    /// The token's identity.
    pub who: &'a Identity,
    /// The forced-2FA countdown to show once logged in, when inside the grace period.
    pub notice: Option<&'a str>,
    /// The startup packet's user name (informational: the token's subject is the session's user).
    pub startup_user: &'a str,
}

/// The server state one session uses.
pub struct SessionCtx<'s> {
    /// The statement hook.
    pub policy: &'s dyn StatementPolicy,
    /// Backend pools.
    pub pools: &'s Pools,
    /// Cancel keys (the client's own key, following its backend).
    pub cancel: &'s Arc<CancelRegistry>,
    /// Shutdown signal: true = drain.
    pub shutdown: watch::Receiver<bool>,
    /// Idle limits for the client (`listen.client_idle_timeout`, `listen.idle_transaction_timeout`).
    pub idle: IdleTimeouts,
    /// Largest Query or Parse message (`listen.max_query_bytes`).
    pub max_query_bytes: usize,
    /// Transaction mode: prepared statements kept per client (`pool.max_prepared_statements`).
    pub max_prepared_statements: usize,
    /// The audit queue.
    audit: &'s Auditor,
    /// The exfiltration guard's per-user windows.
    budgets: &'s Budgets,
}

impl<'s> SessionCtx<'s> {
    /// The context of a session served by `shared`.
    pub fn of(shared: &'s Shared) -> Self {
        Self {
            policy: &*shared.policy,
            pools: &shared.pools,
            cancel: &shared.cancel,
            shutdown: shared.shutdown.clone(),
            idle: IdleTimeouts::from_listen(&shared.cfg.listen),
            max_query_bytes: shared.cfg.listen.max_query_bytes,
            max_prepared_statements: shared.cfg.pool.max_prepared_statements,
            audit: &shared.audit,
            budgets: &shared.budgets,
        }
    }

    /// The statement tally of a session (audit records with rows and durations, the exfiltration guard) when
    /// a masking policy is configured (the policy names audited roles and guards); `None` otherwise: nothing
    /// is counted and nothing is allocated for it. `startup_user`: the user name of the startup packet.
    pub fn tally(&self, who: &Identity, startup_user: &str) -> Option<Tally> {
        if !self.policy.watches_backend() {
            return None;
        }
        let session = std::sync::Arc::new(SessionInfo {
            client: who.client.0.to_string(),
            user: who.user.clone(),
            startup_user: startup_user.to_owned(),
            tenant: who.tenant.clone(),
            role: who.role.clone(),
        });
        let audit = SessionAudit {
            auditor: self.audit.clone(),
            session,
        };
        let window = self.budgets.user(&who.tenant, &who.user);
        Some(Tally::new(audit, window))
    }
}
