//! pgveil session tokens.
