//! pgveil: a PostgreSQL wire-protocol proxy that authenticates sessions with MFA-backed tokens, routes each
//! session to its own tenant's database and masks PII by rewriting SQL.
//!
//! The data path, module by module: [`server`] accepts, [`frontend::handshake`] negotiates TLS and reads the
//! startup packet, [`frontend::auth`] verifies the token ([`token`]), [`route`] picks the tenant,
//! [`backend`] checks out a pooled backend connection, and [`frontend::relay`] relays frames, passing SQL
//! through the [`policy`] hook.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod backend;
pub mod cancel;
pub mod clock;
pub mod config;
pub mod control;
pub mod doctor;
pub mod error;
pub mod event_loops;
pub mod exfil;
pub mod frontend;
pub mod identity;
pub mod ids;
pub mod logging;
pub mod mfa;
pub mod net;
pub mod policy;
pub mod proto;
pub mod revoke;
pub mod route;
pub mod secret;
pub mod server;
pub mod shared;
pub mod telemetry;
pub mod tls;
pub mod token;
