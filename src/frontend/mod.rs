//! Client side of a connection, in the order a connection lives through it ([`stages`] drives the stages,
//! each a function returning what the next one consumes): [`handshake`] (TLS negotiation and the startup
//! packet), [`auth`] (the token), [`admit`] (connection caps and revocation registration), [`routing`]
//! (tenant, settings, database), then serving with a lean [`context`]: [`session`] mode or [`txn`]
//! (transaction) mode, both over the [`relay`] and both ending through [`finish`].

pub mod admit;
pub mod auth;
pub mod checkout;
pub mod context;
pub mod finish;
pub mod greet;
pub mod guard;
pub mod handshake;
pub mod limits;
pub mod params;
pub mod prepared;
pub mod relay;
pub mod retry;
pub mod routing;
pub mod session;
pub mod sqlscan;
pub mod sqltree;
pub mod stages;
pub mod tally;
pub mod txn;
pub mod verify;
pub mod versions;
