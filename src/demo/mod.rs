//! The demo's environment ([`env`]: a throwaway cluster with sample tenants, certificates, token keys,
//! secrets, config and the example policy) and its TOTP-enrolled user ([`mfa`]).
//!
//! A module of the `pgveil` binary (`pgveil demo`), not of the library. The integration tests build their
//! fixtures from these very files (`tests/support/mod.rs` and `tests/doctor.rs` include them with `#[path]`), so
//! every end-to-end test exercises the demo. The cluster and the sample data are the `pgcluster` crate
//! (crates/pgcluster), with their unit tests. Keep `#[cfg(test)]` code out of these files: a test target with
//! the default harness that included them would compile it and run it once more.
pub mod env;
pub mod mfa;
