//! The claims carried by a pgveil session token.

use serde::{Deserialize, Serialize};

use crate::ids::{RoleName, TenantId, UserId};

/// Authentication-method references (`amr`) that count as a second factor.
const MFA_METHODS: &[&str] = &["otp", "mfa"];

/// The verified contents of a pgveil session token.
///
/// Every field except `amr` is required when a token is verified; `amr` defaults to empty (no MFA).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user the token was issued to.
    pub sub: UserId,
    /// The tenant whose database this session may reach.
    pub tenant: TenantId,
    /// The pgveil role the session runs as (decides masking).
    pub role: RoleName,
    /// Authentication methods used at login (RFC 8176), e.g. `["pwd", "otp"]`.
    #[serde(default)]
    pub amr: Vec<String>,
    /// Issued-at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not-before, seconds since the Unix epoch (optional; pgveil does not set it, other issuers may).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Unique token id, for revocation.
    pub jti: String,
    /// Issuer.
    pub iss: String,
}

impl Claims {
    /// Whether the login that produced this token used a second factor (`amr` contains `otp` or `mfa`).
    pub fn has_mfa(&self) -> bool {
        self.amr.iter().any(|m| MFA_METHODS.contains(&m.as_str()))
    }
}

/// Claim names that must be present in every token (checked before deserializing, for a precise error).
pub(crate) const REQUIRED_CLAIMS: &[&str] = &["sub", "tenant", "role", "iat", "exp", "jti", "iss"];
