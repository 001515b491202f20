//! pgveil: a PostgreSQL wire-protocol proxy that authenticates sessions with MFA-backed tokens, routes each
//! session to its own tenant's database and masks PII by rewriting SQL.
#![forbid(unsafe_code)]

pub mod demo;
pub mod ids;
pub mod secret;
pub mod tls;
pub mod token;
