//! PostgreSQL wire protocol (v3): framing with length caps, the messages pgveil builds or inspects, and the
//! client-visible error allowlist. Everything else is relayed as raw bytes.

pub mod error;
pub mod frame;
pub mod messages;
#[cfg(test)]
mod robustness;
pub mod startup;
pub mod tags;
mod txn_status;

pub use error::PgError;
pub use txn_status::TxnStatus;
