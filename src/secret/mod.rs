//! Secret store: where backend credentials and pgveil's own keys come from at run time.
//!
//! Secret values are held in [`SecretString`] (its `Debug` prints `[REDACTED]`), never in plain `String`s.

pub use secrecy::{ExposeSecret, SecretString};
