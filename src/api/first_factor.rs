//! The first factor of a login: an OIDC ID token from the company IdP, or an assertion signed by the trusted
//! web-app (which did the primary login itself), or, in demo mode only, nothing.
//!
//! Web-app assertion: `v1.<base64url(JSON {"email", "exp"})>.<base64url(HMAC-SHA256(key, "v1." + payload))>`,
//! with the key from the secret store (`api.webapp.key_secret`); short-lived (`exp`, at most
//! `api.webapp.max_age` ahead). The MAC is checked in constant time ([`ring::hmac::verify`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::oidc::{OidcError, OidcVerifier};
use crate::secret::{ExposeSecret, SecretString};

pub use crate::config::WebappConfig;

/// What a client presents as its first factor.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct FirstFactorInput {
    /// OIDC ID token.
    #[serde(default)]
    pub id_token: Option<String>,
    /// Web-app assertion.
    #[serde(default)]
    pub assertion: Option<String>,
}

/// Why the first factor was refused.
#[derive(Debug, thiserror::Error)]
pub enum FirstFactorError {
    /// No accepted first factor was presented.
    #[error("no first factor presented (id_token or assertion)")]
    Missing,
    /// The ID token was refused.
    #[error("ID token refused: {0}")]
    Oidc(#[from] OidcError),
    /// The assertion was refused.
    #[error("web-app assertion refused: {0}")]
    Assertion(&'static str),
}

#[derive(Serialize, Deserialize)]
struct AssertionPayload {
    email: String,
    exp: i64,
}

/// Signs a web-app assertion for `email`, valid until `exp` (what the web-app does for each user).
pub fn sign_assertion(key: &SecretString, email: &str, exp: SystemTime) -> String {
    let exp = exp
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&AssertionPayload {
            email: email.into(),
            exp,
        })
        .unwrap_or_default(),
    );
    let signed = format!("v1.{payload}");
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret().as_bytes());
    let tag = hmac::sign(&k, signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Verifies a web-app assertion for `email` at `now`.
pub fn verify_assertion(
    key: &SecretString,
    max_age: Duration,
    assertion: &str,
    email: &str,
    now: SystemTime,
) -> Result<(), FirstFactorError> {
    let bad = FirstFactorError::Assertion;
    let (signed, tag) = assertion.rsplit_once('.').ok_or(bad("malformed"))?;
    let payload = signed.strip_prefix("v1.").ok_or(bad("unknown version"))?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad("malformed"))?;
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret().as_bytes());
    hmac::verify(&k, signed.as_bytes(), &tag).map_err(|_| bad("bad signature"))?;
    let p: AssertionPayload = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad("malformed"))?,
    )
    .map_err(|_| bad("malformed"))?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if p.exp < now {
        return Err(bad("expired"));
    }
    if p.exp > now + max_age.as_secs() as i64 {
        return Err(bad("lifetime too long"));
    }
    if !p.email.eq_ignore_ascii_case(email) {
        return Err(bad("email does not match"));
    }
    Ok(())
}

/// The configured first-factor verifiers.
pub struct FirstFactor {
    /// OIDC verifier.
    pub oidc: Option<OidcVerifier>,
    /// Web-app key and max age.
    pub webapp: Option<(SecretString, Duration)>,
    /// Demo mode: no first factor needed.
    pub insecure_none: bool,
}

impl FirstFactor {
    /// Verifies the presented first factor for `email`; returns its `amr` value
    /// (`fed` for OIDC, `pwd` for a web-app assertion, none in demo mode).
    pub async fn verify(
        &self,
        input: &FirstFactorInput,
        email: &str,
        now: SystemTime,
    ) -> Result<Option<&'static str>, FirstFactorError> {
        if let (Some(v), Some(t)) = (
            &self.oidc,
            input.id_token.as_deref().filter(|t| !t.is_empty()),
        ) {
            v.verify(t, email, now).await?;
            return Ok(Some("fed"));
        }
        if let (Some((key, max_age)), Some(a)) = (
            &self.webapp,
            input.assertion.as_deref().filter(|a| !a.is_empty()),
        ) {
            verify_assertion(key, *max_age, a, email, now)?;
            return Ok(Some("pwd"));
        }
        if self.insecure_none {
            return Ok(None);
        }
        Err(FirstFactorError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertion_roundtrip_and_refusals() {
        let key = SecretString::from("k3y-for-tests");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = sign_assertion(&key, "alice@acme.example", now + Duration::from_secs(60));
        let max = Duration::from_secs(600);
        assert!(verify_assertion(&key, max, &a, "Alice@acme.example", now).is_ok());
        assert!(verify_assertion(&key, max, &a, "bob@acme.example", now).is_err());
        assert!(
            verify_assertion(
                &key,
                max,
                &a,
                "alice@acme.example",
                now + Duration::from_secs(61)
            )
            .is_err()
        );
        assert!(
            verify_assertion(
                &SecretString::from("other"),
                max,
                &a,
                "alice@acme.example",
                now
            )
            .is_err()
        );
        let long = sign_assertion(&key, "alice@acme.example", now + Duration::from_secs(3600));
        assert!(verify_assertion(&key, max, &long, "alice@acme.example", now).is_err());
        let mut t = a.clone();
        t.insert(5, 'x');
        assert!(verify_assertion(&key, max, &t, "alice@acme.example", now).is_err());
    }
}
