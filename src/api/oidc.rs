//! OIDC ID token verification (the first factor from the company IdP): signature against the IdP's JWKS
//! (RS256 or ES256, from a local file or an HTTPS URL), issuer, audience, expiry with the injected clock, and
//! the `email` claim, which must name the user logging in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde_json::Value;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: i64 = 60;
/// How long a JWKS fetched from a URL is used before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(600);

pub use crate::config::OidcConfig;

/// Why an ID token was refused (a label for logs; clients get one generic error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    /// Not a JWT, or an algorithm other than RS256/ES256.
    #[error("malformed ID token or unsupported algorithm")]
    Malformed,
    /// No JWKS key matches, or the signature is wrong.
    #[error("bad signature")]
    BadSignature,
    /// Expired (or not yet valid).
    #[error("expired")]
    Expired,
    /// Wrong issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// Wrong audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The email claim is missing, unverified, or another user's.
    #[error("email does not match")]
    WrongEmail,
    /// The JWKS could not be loaded.
    #[error("JWKS unavailable: {0}")]
    Jwks(String),
}

/// Verifies ID tokens from one IdP.
pub struct OidcVerifier {
    cfg: OidcConfig,
    jwks: RwLock<(JwkSet, Option<Instant>)>,
}

impl OidcVerifier {
    /// Loads the JWKS (file or URL) once; fails if it cannot be loaded.
    pub async fn new(cfg: OidcConfig) -> Result<Self, OidcError> {
        let set = load_jwks(&cfg).await?;
        Ok(Self {
            cfg,
            jwks: RwLock::new((set, Some(Instant::now()))),
        })
    }

    /// Verifies `token` for the user `email` as of `now`.
    pub async fn verify(&self, token: &str, email: &str, now: SystemTime) -> Result<(), OidcError> {
        if token.len() > 16 * 1024 {
            return Err(OidcError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| OidcError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(OidcError::Malformed);
        }
        let mut key = self.key_for(header.kid.as_deref(), header.alg);
        if key.is_none() && self.cfg.jwks_url.is_some() && self.stale_or_unknown() {
            let set = load_jwks(&self.cfg).await?;
            *self.jwks.write() = (set, Some(Instant::now()));
            key = self.key_for(header.kid.as_deref(), header.alg);
        }
        let key = key.ok_or(OidcError::BadSignature)?;
        let mut v = Validation::new(header.alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => OidcError::BadSignature,
                _ => OidcError::Malformed,
            })?;
        let c = data.claims;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if c.get("iss").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(OidcError::WrongIssuer);
        }
        let aud_ok = match c.get("aud") {
            Some(Value::String(a)) => a == &self.cfg.audience,
            Some(Value::Array(a)) => a
                .iter()
                .any(|x| x.as_str() == Some(self.cfg.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(OidcError::WrongAudience);
        }
        match c.get("exp").and_then(Value::as_i64) {
            Some(exp) if now <= exp + LEEWAY_SECS => {}
            _ => return Err(OidcError::Expired),
        }
        if c.get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| nbf > now + LEEWAY_SECS)
            || c.get("iat")
                .and_then(Value::as_i64)
                .is_some_and(|iat| iat > now + LEEWAY_SECS)
        {
            return Err(OidcError::Expired);
        }
        if c.get("email_verified")
            .is_some_and(|v| v != &Value::Bool(true))
        {
            return Err(OidcError::WrongEmail);
        }
        match c.get(&self.cfg.email_claim).and_then(Value::as_str) {
            Some(e) if e.eq_ignore_ascii_case(email) => Ok(()),
            _ => Err(OidcError::WrongEmail),
        }
    }

    fn stale_or_unknown(&self) -> bool {
        let g = self.jwks.read();
        g.1.is_none_or(|t| t.elapsed() > Duration::from_secs(30))
    }

    fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let g = self.jwks.read();
        if g.1.is_some_and(|t| t.elapsed() > JWKS_TTL) && self.cfg.jwks_url.is_some() {
            return None;
        }
        let jwk = match kid {
            Some(kid) => g.0.find(kid)?,
            None if g.0.keys.len() == 1 => &g.0.keys[0],
            None => return None,
        };
        if jwk
            .common
            .key_algorithm
            .is_some_and(|a| a.to_string() != format!("{alg:?}"))
        {
            return None;
        }
        DecodingKey::from_jwk(jwk).ok()
    }
}

async fn load_jwks(cfg: &OidcConfig) -> Result<JwkSet, OidcError> {
    let text = match (&cfg.jwks_file, &cfg.jwks_url) {
        (Some(path), _) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| OidcError::Jwks(format!("{}: {e}", path.display())))?,
        (None, Some(url)) => super::fetch::https_get(url)
            .await
            .map_err(OidcError::Jwks)?,
        (None, None) => {
            return Err(OidcError::Jwks(
                "neither jwks_file nor jwks_url is set".into(),
            ));
        }
    };
    serde_json::from_str(&text).map_err(|e| OidcError::Jwks(format!("not a JWKS document: {e}")))
}
