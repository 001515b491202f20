//! Client side of a connection, in the order a connection lives through it: handshake (TLS negotiation and
//! the startup packet), token authentication, session setup, and the relay.

pub mod auth;
pub mod guard;
pub mod handshake;
pub mod limits;
pub mod params;
pub mod prepared;
pub mod relay;
pub mod retry;
pub mod session;
pub mod sqlscan;
pub mod sqltree;
pub mod tally;
pub mod txn;
pub mod verify;
pub mod versions;
