//! Revocation: which tokens and users may no longer open sessions, and the live sessions to end when that
//! changes. [`RevocationCache`] is a snapshot reloaded from the control database every
//! `control.revocation_refresh` (the propagation bound across instances); [`SessionRegistry`] holds a kill
//! switch per live session.

mod cache;
mod sessions;

pub use cache::{RevocationCache, Revoked};
pub use sessions::{CapReached, NewSession, SessionGuard, SessionRegistry};
