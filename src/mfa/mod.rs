//! Multi-factor authentication: TOTP enrolment and verification, recovery codes, brute-force throttling and
//! the forced-2FA policy. [`MfaService`] is the API's entry point; the pieces are:
//! [`totp`] (codes), [`recovery`] (one-time codes, Argon2id), [`crypto`] (secrets at rest, AES-256-GCM),
//! [`throttle`] (back-off and lockout), [`store`] (control database rows), [`policy`] (grace period).

pub mod crypto;
pub mod policy;
pub mod recovery;
mod service;
pub mod store;
pub mod throttle;
pub mod totp;

pub use service::{EnrolmentStart, MfaError, MfaService, SecondFactor};
