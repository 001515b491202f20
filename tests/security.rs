//! End-to-end negative tests against real PostgreSQL through pgveil: bad tokens, cross-tenant database names,
//! the TLS policy, handshake and session-phase protocol abuse, identity-changing startup settings, connection
//! limits, backend failures and secret leaks. Every refusal is checked for its exact SQLSTATE and, where the
//! protocol says so, for the connection being closed afterwards.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

#[path = "security/common.rs"]
mod common;

#[path = "security/auth.rs"]
mod auth;
#[path = "security/handshake.rs"]
mod handshake;
#[path = "security/leaks.rs"]
mod leaks;
#[path = "security/limits.rs"]
mod limits;
#[path = "security/session.rs"]
mod session;

fn main() -> std::process::ExitCode {
    support::main_with(&[
        // 1. tokens
        ("auth::forged_token", auth::forged_token),
        ("auth::tampered_payload", auth::tampered_payload),
        ("auth::tampered_signature", auth::tampered_signature),
        ("auth::expired_token", auth::expired_token),
        ("auth::alg_none", auth::alg_none),
        ("auth::hs256_with_public_key", auth::hs256_with_public_key),
        ("auth::wrong_issuer", auth::wrong_issuer),
        (
            "auth::garbage_and_empty_password",
            auth::garbage_and_empty_password,
        ),
        (
            "auth::unknown_tenant_and_role",
            auth::unknown_tenant_and_role,
        ),
        // 2. database names
        ("auth::other_tenant_database", auth::other_tenant_database),
        ("auth::system_databases", auth::system_databases),
        (
            "auth::empty_or_omitted_database",
            auth::empty_or_omitted_database,
        ),
        // 3. TLS policy
        (
            "handshake::plaintext_refused_before_password",
            handshake::plaintext_refused_before_password,
        ),
        (
            "handshake::ssl_request_then_login",
            handshake::ssl_request_then_login,
        ),
        (
            "handshake::direct_tls_with_alpn",
            handshake::direct_tls_with_alpn,
        ),
        (
            "handshake::direct_tls_without_alpn_refused",
            handshake::direct_tls_without_alpn_refused,
        ),
        // 4. handshake robustness
        (
            "handshake::gssenc_then_startup",
            handshake::gssenc_then_startup,
        ),
        (
            "handshake::too_many_negotiation_requests",
            handshake::too_many_negotiation_requests,
        ),
        (
            "handshake::oversize_startup_packets",
            handshake::oversize_startup_packets,
        ),
        ("handshake::garbage_is_closed", handshake::garbage_is_closed),
        (
            "handshake::protocol_2_refused",
            handshake::protocol_2_refused,
        ),
        (
            "handshake::silent_client_times_out",
            handshake::silent_client_times_out,
        ),
        (
            "handshake::protocol_3_2_negotiated",
            handshake::protocol_3_2_negotiated,
        ),
        // 7. replication
        (
            "handshake::replication_refused",
            handshake::replication_refused,
        ),
        // 5. session-phase protocol violations
        (
            "session::unknown_message_type",
            session::unknown_message_type,
        ),
        ("session::oversize_query", session::oversize_query),
        (
            "session::ssl_request_mid_session",
            session::ssl_request_mid_session,
        ),
        // 6. startup settings
        (
            "session::identity_settings_refused",
            session::identity_settings_refused,
        ),
        (
            "session::normal_settings_applied",
            session::normal_settings_applied,
        ),
        // 8-10. limits and backend failures
        ("limits::too_many_clients", limits::too_many_clients),
        ("limits::session_caps", limits::session_caps),
        ("limits::idle_timeouts", limits::idle_timeouts),
        ("limits::pool_exhaustion", limits::pool_exhaustion),
        ("limits::backend_down", limits::backend_down),
        // 11. secrets
        (
            "leaks::debug_and_errors_hide_secrets",
            leaks::debug_and_errors_hide_secrets,
        ),
        (
            "leaks::logs_and_client_errors_hide_secrets",
            leaks::logs_and_client_errors_hide_secrets,
        ),
    ])
}
