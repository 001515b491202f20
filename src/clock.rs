//! The injected clock: every time-dependent decision (token expiry, TOTP windows, lockouts, revocation
//! staleness, MFA grace periods) reads the time through a [`Clock`], so tests can move time without sleeping.

use std::sync::Arc;
use std::time::SystemTime;

/// A clock, injectable for tests of time-dependent logic.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system() -> Clock {
    Arc::new(SystemTime::now)
}
