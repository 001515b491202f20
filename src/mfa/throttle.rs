//! Brute-force throttling shared by every instance through the control database: each failed attempt (wrong,
//! stale or replayed code, wrong recovery code, refused first factor) counts against the user and against the
//! client IP. Every failure imposes an exponentially growing wait before the next attempt; after
//! `max_failures` the scope is locked for `lockout`. Client IPs (often shared: offices, NAT) get no back-off,
//! only the lockout after `ip_max_failures`. A success clears the user's counter (never the IP's).
//! Times come from the injected clock.

use std::time::Duration;

use serde::Deserialize;

use crate::control::{ControlDb, ControlError};

/// `[api.throttle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures per user before a lockout.
    #[serde(default = "default_user_max")]
    pub user_max_failures: u32,
    /// Failures per client IP before a lockout.
    #[serde(default = "default_ip_max")]
    pub ip_max_failures: u32,
    /// Wait after the first failure; doubled with each further failure.
    #[serde(default = "default_base", with = "humantime_serde")]
    pub base_backoff: Duration,
    /// Longest wait between attempts short of a lockout.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a lockout lasts.
    #[serde(default = "default_lockout", with = "humantime_serde")]
    pub lockout: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            user_max_failures: default_user_max(),
            ip_max_failures: default_ip_max(),
            base_backoff: default_base(),
            max_backoff: default_max_backoff(),
            lockout: default_lockout(),
        }
    }
}

fn default_user_max() -> u32 {
    5
}
fn default_ip_max() -> u32 {
    50
}
fn default_base() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}
fn default_lockout() -> Duration {
    Duration::from_secs(15 * 60)
}

/// What is counted: a user or a client address.
#[derive(Debug, Clone)]
pub enum Scope {
    /// A user, by email.
    User(String),
    /// A client IP address.
    Ip(std::net::IpAddr),
}

impl Scope {
    fn key(&self) -> String {
        match self {
            Scope::User(e) => format!("user:{e}"),
            Scope::Ip(ip) => format!("ip:{ip}"),
        }
    }
}

/// Why an attempt may not be made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds until the next attempt is allowed.
    pub retry_after: u64,
    /// Whether this is a lockout (as opposed to a back-off wait).
    pub locked: bool,
}

impl ThrottleConfig {
    fn max_for(&self, scope: &Scope) -> u32 {
        match scope {
            Scope::User(_) => self.user_max_failures,
            Scope::Ip(_) => self.ip_max_failures,
        }
    }

    /// Whether an attempt in `scope` is allowed at `now` (epoch seconds).
    pub async fn check(
        &self,
        db: &ControlDb,
        scope: &Scope,
        now: i64,
    ) -> Result<Option<Throttled>, ControlError> {
        let c = db.client().await?;
        let row = c
            .query_opt(
                "SELECT next_allowed, locked_until FROM auth_throttle WHERE scope = $1",
                &[&scope.key()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let next: i64 = row.get(0);
        let locked: Option<i64> = row.get(1);
        if let Some(until) = locked
            && until > now
        {
            return Ok(Some(Throttled {
                retry_after: (until - now) as u64,
                locked: true,
            }));
        }
        if next > now {
            return Ok(Some(Throttled {
                retry_after: (next - now) as u64,
                locked: false,
            }));
        }
        Ok(None)
    }

    /// Records a failed attempt; an expired lockout starts a fresh count.
    pub async fn fail(&self, db: &ControlDb, scope: &Scope, now: i64) -> Result<(), ControlError> {
        let c = db.client().await?;
        let key = scope.key();
        let failures: i32 = c
            .query_one(
                "INSERT INTO auth_throttle AS t (scope, failures, next_allowed) VALUES ($1, 1, $2) \
                 ON CONFLICT (scope) DO UPDATE SET \
                   failures = CASE WHEN t.locked_until IS NOT NULL AND t.locked_until <= $2 THEN 1 ELSE t.failures + 1 END, \
                   locked_until = CASE WHEN t.locked_until IS NOT NULL AND t.locked_until <= $2 THEN NULL ELSE t.locked_until END \
                 RETURNING failures",
                &[&key, &now],
            )
            .await?
            .get(0);
        let failures = failures.max(1) as u32;
        let wait = if matches!(scope, Scope::Ip(_)) {
            0
        } else {
            self.base_backoff
                .saturating_mul(1u32 << (failures - 1).min(20))
                .min(self.max_backoff)
                .as_secs() as i64
        };
        let locked_until =
            (failures >= self.max_for(scope)).then(|| now + self.lockout.as_secs() as i64);
        if locked_until.is_some() {
            tracing::warn!(scope = %match scope { Scope::User(_) => "user", Scope::Ip(_) => "ip" }, failures, "authentication locked out");
        }
        c.execute(
            "UPDATE auth_throttle SET next_allowed = $2, locked_until = coalesce($3, locked_until) WHERE scope = $1",
            // No wait (client IPs): 0, so a clock that moves backwards can never block a scope.
            &[&key, &(if wait > 0 { now + wait } else { 0 }), &locked_until],
        )
        .await?;
        Ok(())
    }

    /// Clears a scope's counter after a success.
    pub async fn clear(&self, db: &ControlDb, scope: &Scope) -> Result<(), ControlError> {
        let c = db.client().await?;
        c.execute(
            "DELETE FROM auth_throttle WHERE scope = $1",
            &[&scope.key()],
        )
        .await?;
        Ok(())
    }
}
