//! Throwaway local PostgreSQL clusters and the demo.
pub mod cluster;
pub mod data;
pub mod env;
pub mod mfa;
