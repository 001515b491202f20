//! Encryption of TOTP secrets at rest: AES-256-GCM under a key fetched from the secret store. Each secret is
//! sealed with a fresh random 96-bit nonce and bound to its user id (associated data), so a ciphertext copied
//! onto another user's row does not decrypt.
//!
//! The same secret-store key also yields, through HKDF-SHA256 (domain-separated), the HMAC-SHA256 key that
//! recovery codes are stored under ([`SecretBox::code_mac`]). Recovery codes carry ~74 random bits, so a keyed
//! hash protects them as well as a slow password hash would, at the cost of one HMAC per attempt.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngExt;
use ring::{hkdf, hmac};

use crate::secret::{ExposeSecret, SecretString};

const NONCE_LEN: usize = 12;

/// Errors sealing or opening a secret. Never carries key or plaintext material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key is not 32 bytes as 64 hex characters or base64.
    #[error("TOTP encryption key must be 32 bytes, as 64 hex characters or base64")]
    BadKey,
    /// Authentication failed: wrong key, wrong user, or tampered data.
    #[error("encrypted TOTP secret cannot be opened (wrong key or tampered)")]
    Open,
    /// Encryption failed (should not happen).
    #[error("encryption failed")]
    Seal,
}

/// HKDF info naming the recovery-code MAC key (never change: stored MACs depend on it).
const CODE_MAC_INFO: &[u8] = b"pgveil recovery code mac v1";

/// An AES-256-GCM key and the recovery-code HMAC key derived from it. `Debug` never shows them.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
    code_mac: hmac::Key,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox([REDACTED])")
    }
}

impl SecretBox {
    /// Builds the key from its secret-store value: 64 hex characters or base64 of 32 bytes.
    pub fn from_secret(value: &SecretString) -> Result<SecretBox, CryptoError> {
        let text = value.expose_secret().trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| CryptoError::BadKey)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| CryptoError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        let code_mac = hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
            .extract(&bytes)
            .expand(&[CODE_MAC_INFO], hmac::HMAC_SHA256)
            .map_err(|_| CryptoError::BadKey)?
            .into();
        Ok(SecretBox { cipher, code_mac })
    }

    /// HMAC-SHA256 of a normalized recovery code, bound to its user (so a MAC copied onto another user's
    /// row does not match).
    pub fn code_mac(&self, user: &[u8], code: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.code_mac);
        ctx.update(&(user.len() as u32).to_be_bytes());
        ctx.update(user);
        ctx.update(code.as_bytes());
        ctx.sign().as_ref().to_vec()
    }

    /// A fresh random key as 64 hex characters (for `pgveil` setup and tests).
    pub fn generate_key_hex() -> String {
        let key: [u8; 32] = rand::rng().random();
        hex::encode(key)
    }

    /// Encrypts `plain` for `context` (the user id): nonce || ciphertext || tag.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce: [u8; NONCE_LEN] = rand::rng().random();
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`seal`](Self::seal) produced for the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context,
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let b = SecretBox::from_secret(&SecretString::from(SecretBox::generate_key_hex())).unwrap();
        let sealed = b.seal(b"totp-secret", b"user-1").unwrap();
        assert_eq!(b.open(&sealed, b"user-1").unwrap(), b"totp-secret");
        assert!(b.open(&sealed, b"user-2").is_err(), "bound to the user");
        let mut t = sealed.clone();
        t[20] ^= 1;
        assert!(b.open(&t, b"user-1").is_err(), "tamper detected");
        let other =
            SecretBox::from_secret(&SecretString::from(SecretBox::generate_key_hex())).unwrap();
        assert!(other.open(&sealed, b"user-1").is_err(), "wrong key");
        assert!(!format!("{b:?}").contains(|c: char| c.is_ascii_digit()));
    }

    #[test]
    fn code_mac_is_keyed_and_bound_to_the_user() {
        let key = SecretString::from(SecretBox::generate_key_hex());
        let b = SecretBox::from_secret(&key).unwrap();
        let same = SecretBox::from_secret(&key).unwrap();
        assert_eq!(b.code_mac(b"u1", "ABCD"), same.code_mac(b"u1", "ABCD"));
        assert_ne!(b.code_mac(b"u1", "ABCD"), b.code_mac(b"u2", "ABCD"));
        assert_ne!(b.code_mac(b"u1", "ABCD"), b.code_mac(b"u1", "ABCE"));
        let other =
            SecretBox::from_secret(&SecretString::from(SecretBox::generate_key_hex())).unwrap();
        assert_ne!(b.code_mac(b"u1", "ABCD"), other.code_mac(b"u1", "ABCD"));
    }

    #[test]
    fn key_formats() {
        assert!(SecretBox::from_secret(&SecretString::from("00".repeat(32))).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretBox::from_secret(&SecretString::from(b64)).is_ok());
        assert!(SecretBox::from_secret(&SecretString::from("short")).is_err());
    }
}
