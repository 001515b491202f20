//! pgveil session tokens: JWTs signed with EdDSA (Ed25519) that a client presents as its PostgreSQL password.
//!
//! [`TokenSigner`] mints tokens (used by the login API), [`TokenVerifier`] checks them on every connection.
//! Verification is deliberately strict and runs entirely locally: only `alg: EdDSA` is accepted (checked on the
//! raw header before any key is used), every claim is required, and time is injected by the caller so expiry
//! can be tested without a real clock.

mod claims;
mod keys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::ids::{RoleName, TenantId, UserId};
use crate::secret::{ExposeSecret, SecretString};

pub use claims::Claims;
pub use keys::{SIGNING_KEY_FILE, VERIFYING_KEY_FILE, generate_keypair, write_keypair};

/// Longest token accepted; anything longer is refused before it is parsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated when checking `exp` (and `nbf`, if present), in seconds.
pub const EXP_LEEWAY_SECS: i64 = 30;
/// How far in the future `iat` may lie before a token is refused, in seconds.
pub const MAX_IAT_SKEW_SECS: i64 = 5 * 60;

/// The only JWS algorithm pgveil signs with or accepts.
const ALG: &str = "EdDSA";

/// Why a token could not be minted or verified. Messages never contain the token or any key material.
#[derive(thiserror::Error, Debug)]
pub enum TokenError {
    /// The token is not a well-formed JWT (wrong shape, bad base64 or JSON, wrongly typed claim).
    #[error("token is malformed")]
    Malformed,
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// The header names an algorithm other than EdDSA (e.g. `none`, HS256, RS256).
    #[error("token algorithm is not supported (only EdDSA is accepted)")]
    UnsupportedAlgorithm,
    /// No configured verifying key validates the signature.
    #[error("token signature is invalid")]
    BadSignature,
    /// A required claim is absent.
    #[error("token lacks the required claim `{0}`")]
    MissingClaim(&'static str),
    /// `exp` lies in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `iat` (or `nbf`) lies too far in the future.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `exp - iat` exceeds the configured maximum token lifetime (`auth.max_token_ttl`).
    #[error("token lifetime exceeds the configured maximum")]
    LifetimeTooLong,
    /// A key could not be loaded or used; the message describes the problem, never the key.
    #[error("token key error: {0}")]
    Key(String),
    /// The supplied time is not representable (before 1970 or absurdly far in the future).
    #[error("time is out of range for a token")]
    Clock,
    /// Reading or writing a key file failed.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl TokenError {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::TooLong => "too_long",
            TokenError::UnsupportedAlgorithm => "unsupported_algorithm",
            TokenError::BadSignature => "bad_signature",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::LifetimeTooLong => "lifetime_too_long",
            TokenError::Key(_) => "key",
            TokenError::Clock => "clock",
            TokenError::Io { .. } => "io",
        }
    }
}

/// Mints session tokens with an Ed25519 private key. Its `Debug` shows only the issuer.
pub struct TokenSigner {
    key: EncodingKey,
    issuer: String,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("issuer", &self.issuer)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl TokenSigner {
    /// Loads an Ed25519 PKCS#8 private key PEM (`-----BEGIN PRIVATE KEY-----`) and the issuer to stamp on tokens.
    ///
    /// The key is exercised once here, so a wrong or corrupt key fails at start-up rather than at first login.
    pub fn from_pem(pem: &SecretString, issuer: &str) -> Result<Self, TokenError> {
        if issuer.is_empty() {
            return Err(TokenError::Key("issuer must not be empty".into()));
        }
        let key = EncodingKey::from_ed_pem(pem.expose_secret().as_bytes())
            .map_err(|_| TokenError::Key("signing key is not an Ed25519 PKCS#8 PEM".into()))?;
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &Map::new(), &key)
            .map_err(|_| TokenError::Key("signing key is not a usable Ed25519 key".into()))?;
        Ok(Self {
            key,
            issuer: issuer.to_owned(),
        })
    }

    /// The issuer (`iss`) this signer stamps on its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Mints a token for `user` in `tenant` acting as `role`, valid from `now` for `ttl`, with a fresh random `jti`.
    pub fn mint(
        &self,
        user: &UserId,
        tenant: &TenantId,
        role: &RoleName,
        amr: Vec<String>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        self.mint_with_claims(user, tenant, role, amr, ttl, now)
            .map(|(t, _)| t)
    }

    /// Like [`mint`](Self::mint), also returning the claims (`jti`, `exp`) for the issuer's records.
    pub fn mint_with_claims(
        &self,
        user: &UserId,
        tenant: &TenantId,
        role: &RoleName,
        amr: Vec<String>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, Claims), TokenError> {
        let iat = unix_secs(now)?;
        let ttl = i64::try_from(ttl.as_secs()).map_err(|_| TokenError::Clock)?;
        let exp = iat.checked_add(ttl).ok_or(TokenError::Clock)?;
        let claims = Claims {
            sub: user.clone(),
            tenant: tenant.clone(),
            role: role.clone(),
            amr,
            iat,
            exp,
            nbf: None,
            jti: uuid::Uuid::new_v4().to_string(),
            iss: self.issuer.clone(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|_| TokenError::Key("signing the token failed".into()))?;
        Ok((token, claims))
    }
}

/// Verifies session tokens against one or more Ed25519 public keys (several during key rotation).
pub struct TokenVerifier {
    keys: Vec<DecodingKey>,
    issuer: String,
    validation: Validation,
    max_ttl: Option<i64>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TokenVerifier {
    /// Builds a verifier from Ed25519 public key PEMs (`-----BEGIN PUBLIC KEY-----`, SPKI) and the expected issuer.
    ///
    /// A token is accepted if any of the keys verifies it, so a new key can be added before the old one is retired.
    pub fn from_pems(pems: &[String], issuer: &str) -> Result<Self, TokenError> {
        if pems.is_empty() {
            return Err(TokenError::Key("no verifying key configured".into()));
        }
        if issuer.is_empty() {
            return Err(TokenError::Key("issuer must not be empty".into()));
        }
        let keys = pems
            .iter()
            .enumerate()
            .map(|(i, pem)| {
                DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|_| {
                    TokenError::Key(format!(
                        "verifying key #{} is not an Ed25519 SPKI public key PEM",
                        i + 1
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        // jsonwebtoken checks only the signature here; claims and times are checked in `verify` against the
        // injected clock.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            validation,
            max_ttl: None,
        })
    }

    /// Refuses tokens whose lifetime (`exp - iat`) exceeds `max_ttl` (`auth.max_token_ttl`), whoever minted
    /// them: revocations are kept that long, so no revoked token can outlive its revocation.
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = Some(i64::try_from(max_ttl.as_secs()).unwrap_or(i64::MAX));
        self
    }

    /// Verifies `token` as of `now` and returns its claims.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        check_header(token)?;
        let now = unix_secs(now)?;
        let payload = self.verify_signature(token)?;
        let claims = parse_claims(payload)?;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if now > claims.exp.saturating_add(EXP_LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if claims.iat > now.saturating_add(MAX_IAT_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(EXP_LEEWAY_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp < claims.iat {
            return Err(TokenError::Malformed);
        }
        if self
            .max_ttl
            .is_some_and(|max| claims.exp.saturating_sub(claims.iat) > max)
        {
            return Err(TokenError::LifetimeTooLong);
        }
        Ok(claims)
    }

    /// Returns the payload of the first key that validates the signature.
    fn verify_signature(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        for key in &self.keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), JwtErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_jwt_error(e.kind())),
            }
        }
        Err(TokenError::BadSignature)
    }
}

/// Checks the token's shape and that its header names EdDSA, before any key is involved.
fn check_header(token: &str) -> Result<(), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == ALG => {}
        Some(_) => return Err(TokenError::UnsupportedAlgorithm),
        None => return Err(TokenError::Malformed),
    }
    // We implement no JWS extensions, so any critical one must be refused (RFC 7515 section 4.1.11).
    if header.contains_key("crit") {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    Ok(())
}

/// Checks that every required claim is present, then deserializes the payload.
fn parse_claims(payload: Map<String, Value>) -> Result<Claims, TokenError> {
    if let Some(missing) = claims::REQUIRED_CLAIMS
        .iter()
        .find(|c| payload.get(**c).is_none_or(Value::is_null))
    {
        return Err(TokenError::MissingClaim(missing));
    }
    serde_json::from_value(Value::Object(payload)).map_err(|_| TokenError::Malformed)
}

fn map_jwt_error(kind: &JwtErrorKind) -> TokenError {
    match kind {
        JwtErrorKind::InvalidSignature => TokenError::BadSignature,
        JwtErrorKind::InvalidAlgorithm
        | JwtErrorKind::InvalidAlgorithmName
        | JwtErrorKind::MissingAlgorithm => TokenError::UnsupportedAlgorithm,
        _ => TokenError::Malformed,
    }
}

/// Seconds since the Unix epoch, as JWT `NumericDate`.
fn unix_secs(t: SystemTime) -> Result<i64, TokenError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::Clock)?;
    i64::try_from(d.as_secs()).map_err(|_| TokenError::Clock)
}
