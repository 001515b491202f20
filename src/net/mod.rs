//! Byte streams: plain TCP or TLS, for both the client side and the backend side, and the framed connection
//! type every exchange outside the relay's hot path reads and writes through.

pub mod framed;
pub mod stream;

pub use framed::{Frame, Framed, ReadError};
pub use stream::{BackendStream, ClientStream, Stream};
