//! Backend side: connections to tenant databases (TLS, authentication as a client), their pools, and the
//! reset that makes a backend safe to hand to the next session.

pub mod cancel;
pub mod connect;
pub mod health;
pub mod pool;
pub mod reset;
pub mod statements;

pub use connect::{BackendConn, BackendKey, BackendTarget, ConnectError};
pub use pool::{PoolKey, Pools};
