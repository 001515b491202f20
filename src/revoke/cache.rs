//! The revocation snapshot and its refresh loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::SessionRegistry;
use crate::clock::Clock;
use crate::control::users::RevocationRows;
use crate::control::{ControlDb, epoch};
use crate::token::Claims;

/// Why a token is refused by the revocation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    /// The token's `jti` was revoked.
    #[error("token has been revoked")]
    Token,
    /// The user is disabled, or all tokens issued before a time were revoked.
    #[error("user is disabled or their tokens were revoked")]
    User,
    /// The revocation list could not be loaded recently enough (fail closed).
    #[error("revocation list unavailable")]
    Unavailable,
}

#[derive(Default)]
struct Snapshot {
    jtis: HashSet<String>,
    disabled: HashSet<String>,
    valid_after: HashMap<String, i64>,
    loaded: Option<Instant>,
}

impl Snapshot {
    fn from_rows(rows: RevocationRows) -> Self {
        Snapshot {
            jtis: rows.jtis.into_iter().collect(),
            disabled: rows.disabled.into_iter().collect(),
            valid_after: rows.valid_after.into_iter().collect(),
            loaded: Some(Instant::now()),
        }
    }

    fn check(&self, sub: &str, jti: &str, iat: i64) -> Result<(), Revoked> {
        if self.jtis.contains(jti) {
            return Err(Revoked::Token);
        }
        if self.disabled.contains(sub) || self.valid_after.get(sub).is_some_and(|&t| iat < t) {
            return Err(Revoked::User);
        }
        Ok(())
    }
}

/// Revoked tokens and disabled users, as of the last refresh. Checking is a hash lookup under a read lock.
pub struct RevocationCache {
    db: ControlDb,
    snapshot: RwLock<Snapshot>,
    max_stale: Duration,
    clock: Clock,
}

impl RevocationCache {
    /// Loads the first snapshot (fails if the control database is unreachable: fail closed at start-up).
    pub async fn load(
        db: ControlDb,
        max_stale: Duration,
        clock: Clock,
    ) -> Result<Arc<Self>, crate::control::ControlError> {
        let rows = db.revocations(epoch(clock())?).await?;
        Ok(Arc::new(Self {
            db,
            snapshot: RwLock::new(Snapshot::from_rows(rows)),
            max_stale,
            clock,
        }))
    }

    /// Checks a verified token's claims.
    pub fn check(&self, claims: &Claims) -> Result<(), Revoked> {
        let snap = self.snapshot.read();
        match snap.loaded {
            Some(at) if at.elapsed() <= self.max_stale => {}
            _ => return Err(Revoked::Unavailable),
        }
        snap.check(claims.sub.as_str(), &claims.jti, claims.iat)
    }

    /// Reloads the snapshot now and ends live sessions it no longer admits.
    pub async fn refresh(
        &self,
        sessions: &SessionRegistry,
    ) -> Result<(), crate::control::ControlError> {
        let rows = self.db.revocations(epoch((self.clock)())?).await?;
        let snap = Snapshot::from_rows(rows);
        let killed = sessions.kill_where(|user, jti, iat| snap.check(user, jti, iat).is_err());
        if killed > 0 {
            tracing::info!(
                sessions = killed,
                "terminated sessions of revoked tokens or disabled users"
            );
        }
        *self.snapshot.write() = snap;
        Ok(())
    }

    /// Refreshes every `every` until `shutdown` turns true.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        sessions: Arc<SessionRegistry>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(e) = this.refresh(&sessions).await {
                    tracing::warn!(error = %e, "revocation refresh failed; serving the cached list");
                }
            }
        });
    }
}
