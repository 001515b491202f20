//! Brute-force throttling shared by every instance through the control database.
//!
//! * **Users** (second-factor guesses): every guess is *reserved* before the code is checked, with one
//!   conditional upsert ([`ThrottleConfig::reserve`]): it counts the guess as a failure and sets the back-off
//!   (and, at `user_max_failures`, the lockout) in the same statement, and is refused while a back-off or
//!   lockout is running. PostgreSQL serializes concurrent upserts of one row, so however many requests or
//!   instances race, at most `user_max_failures` guesses are checked per lockout period. A success clears
//!   the counter (the reserved failure is refunded).
//! * **Client IPs** are often shared (offices, NAT, load balancers), so they are never locked out: beyond
//!   their budget each further failure doubles a wait (up to `max_backoff`). Failures without a valid first
//!   factor count in a separate budget ([`Scope::Unauthenticated`]) that requests presenting a valid first
//!   factor never consult, so a flood of garbage cannot lock real users out.
//!
//! Counters restart after `lockout` without failures. Times come from the injected clock.

use std::time::Duration;

use crate::control::{ControlDb, ControlError};

pub use crate::config::ThrottleConfig;

/// What is counted: a user or a client address.
#[derive(Debug, Clone)]
pub enum Scope {
    /// A user, by email: second-factor guesses (reserved before checking).
    User(String),
    /// A client IP address: refused second factors of users who presented a valid first factor.
    Ip(std::net::IpAddr),
    /// A client IP address: refused first factors (garbage assertions, forged ID tokens).
    Unauthenticated(std::net::IpAddr),
}

impl Scope {
    fn key(&self) -> String {
        match self {
            Scope::User(e) => format!("user:{e}"),
            Scope::Ip(ip) => format!("ip:{ip}"),
            Scope::Unauthenticated(ip) => format!("ip-unauth:{ip}"),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Scope::User(_) => "user",
            Scope::Ip(_) => "ip",
            Scope::Unauthenticated(_) => "ip_unauthenticated",
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

/// The failure count of a row after this attempt: 1 when the row's lockout is over or its last failure is
/// older than the lockout period (`$2` = now, `$3` = lockout seconds).
const NEXT_FAILURES: &str = "CASE WHEN (t.locked_until IS NOT NULL AND t.locked_until <= $2::bigint) \
     OR t.updated_at + $3::bigint <= $2::bigint THEN 1 ELSE t.failures + 1 END";

impl ThrottleConfig {
    fn secs(d: Duration) -> i64 {
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
    }

    /// Reserves one guess for a user at `now` (epoch seconds), counted as a failure until
    /// [`clear`](Self::clear)ed by a success. `Ok(Err(..))`: no guess may be made now.
    pub async fn reserve(
        &self,
        db: &ControlDb,
        user: &Scope,
        now: i64,
    ) -> Result<Result<u32, Throttled>, ControlError> {
        let c = db.client().await?;
        let key = user.key();
        let (base, max_wait, lockout) = (
            Self::secs(self.base_backoff),
            Self::secs(self.max_backoff),
            Self::secs(self.lockout),
        );
        let max = i32::try_from(self.user_max_failures).unwrap_or(i32::MAX);
        let f = NEXT_FAILURES;
        // The wait after failure f is base * 2^(f-1), at most max_backoff; failure `max` starts the lockout.
        let sql = format!(
            "INSERT INTO auth_throttle AS t (scope, failures, next_allowed, locked_until, updated_at) \
             VALUES ($1, 1, $2::bigint + least($4::bigint, $5::bigint), CASE WHEN 1 >= $6::int THEN $2::bigint + $3::bigint END, $2::bigint) \
             ON CONFLICT (scope) DO UPDATE SET \
               failures = {f}, \
               next_allowed = $2::bigint + least($4::bigint * (1::bigint << least(({f}) - 1, 20)), $5::bigint), \
               locked_until = CASE WHEN ({f}) >= $6::int THEN $2::bigint + $3::bigint END, \
               updated_at = $2::bigint \
             WHERE (t.locked_until IS NULL OR t.locked_until <= $2::bigint) AND t.next_allowed <= $2::bigint \
             RETURNING failures"
        );
        let row = c
            .query_opt(&sql, &[&key, &now, &lockout, &base, &max_wait, &max])
            .await?;
        // Back to the pool before `check` takes one: holding two per request can exhaust the pool.
        drop(c);
        if let Some(row) = row {
            let failures = row.get::<_, i32>(0).max(1) as u32;
            if failures >= self.user_max_failures {
                tracing::warn!(scope = user.label(), failures, "authentication locked out");
            }
            return Ok(Ok(failures));
        }
        Ok(Err(self.check(db, user, now).await?.unwrap_or(Throttled {
            retry_after: 1,
            locked: false,
        })))
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

    /// Records a failure of a client IP (either budget): no lockout; from the `ip_max_failures`th failure on,
    /// each one imposes a wait (`base_backoff`, doubled with each further failure, up to `max_backoff`).
    pub async fn fail(&self, db: &ControlDb, scope: &Scope, now: i64) -> Result<(), ControlError> {
        let c = db.client().await?;
        let (base, max_wait, lockout) = (
            Self::secs(self.base_backoff),
            Self::secs(self.max_backoff),
            Self::secs(self.lockout),
        );
        let max = i32::try_from(self.ip_max_failures).unwrap_or(i32::MAX);
        let f = NEXT_FAILURES;
        // No wait (within the budget): 0, so a clock that moves backwards can never block a scope.
        let sql = format!(
            "INSERT INTO auth_throttle AS t (scope, failures, next_allowed, updated_at) \
             VALUES ($1, 1, CASE WHEN 1 >= $6::int THEN $2::bigint + least($4::bigint, $5::bigint) ELSE 0 END, $2::bigint) \
             ON CONFLICT (scope) DO UPDATE SET \
               failures = {f}, \
               next_allowed = CASE WHEN ({f}) >= $6::int \
                 THEN $2::bigint + least($4::bigint * (1::bigint << least(({f}) - $6::int, 20)), $5::bigint) ELSE 0 END, \
               locked_until = NULL, \
               updated_at = $2::bigint \
             RETURNING failures"
        );
        let failures: i32 = c
            .query_one(
                &sql,
                &[&scope.key(), &now, &lockout, &base, &max_wait, &max],
            )
            .await?
            .get(0);
        if failures == max {
            tracing::warn!(
                scope = scope.label(),
                failures,
                "client IP over its failure budget: backing off"
            );
        }
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
