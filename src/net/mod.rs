//! Byte streams: plain TCP or TLS, for both the client side and the backend side.

pub mod stream;

pub use stream::{BackendStream, ClientStream, Stream};
