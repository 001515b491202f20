//! One-time recovery codes: 10 per enrolment, shown once, stored only as Argon2id hashes. Hashing and
//! verifying run on the blocking thread pool (`spawn_blocking`), never on the reactor threads.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngExt;

/// Codes issued per enrolment.
pub const CODES_PER_ENROLMENT: usize = 10;
/// Alphabet without look-alike characters (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Characters per code (about 74 bits), printed in groups of 4: `XXXX-XXXX-XXXX-XXX`.
const CODE_CHARS: usize = 15;

/// Errors hashing recovery codes.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Argon2 failed (should not happen with valid parameters).
    #[error("recovery code hashing failed")]
    Hash,
    /// The blocking task panicked or was cancelled.
    #[error("recovery code hashing task failed")]
    Task,
}

/// Fresh recovery codes (plain text, to be shown once) and their hashes (to be stored).
pub async fn generate() -> Result<(Vec<String>, Vec<String>), RecoveryError> {
    let codes: Vec<String> = (0..CODES_PER_ENROLMENT).map(|_| new_code()).collect();
    let to_hash = codes.clone();
    let hashes = tokio::task::spawn_blocking(move || {
        to_hash
            .iter()
            .map(|c| hash(&normalize(c)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| RecoveryError::Task)??;
    Ok((codes, hashes))
}

/// The index of the first hash in `hashes` that `code` matches, if any.
pub async fn find_match(code: &str, hashes: Vec<String>) -> Result<Option<usize>, RecoveryError> {
    let code = normalize(code);
    if code.len() != CODE_CHARS {
        return Ok(None);
    }
    tokio::task::spawn_blocking(move || {
        let argon = Argon2::default();
        hashes.iter().position(|h| {
            PasswordHash::new(h)
                .is_ok_and(|parsed| argon.verify_password(code.as_bytes(), &parsed).is_ok())
        })
    })
    .await
    .map_err(|_| RecoveryError::Task)
}

/// Upper case, without separators or spaces: users may type codes either way.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn new_code() -> String {
    let mut rng = rand::rng();
    let raw: String = (0..CODE_CHARS)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    raw.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("-")
}

fn hash(code: &str) -> Result<String, RecoveryError> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| RecoveryError::Hash)?;
    Argon2::default()
        .hash_password(code.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| RecoveryError::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn codes_hash_and_match() {
        let (codes, hashes) = generate().await.unwrap();
        assert_eq!(codes.len(), CODES_PER_ENROLMENT);
        assert!(hashes.iter().all(|h| h.starts_with("$argon2id$")));
        assert_eq!(
            find_match(&codes[3], hashes.clone()).await.unwrap(),
            Some(3)
        );
        let typed = codes[7].replace('-', " ").to_lowercase();
        assert_eq!(find_match(&typed, hashes.clone()).await.unwrap(), Some(7));
        assert_eq!(
            find_match("AAAA-AAAA-AAAA-AAA", hashes).await.unwrap(),
            None
        );
        assert_eq!(codes[0].len(), CODE_CHARS + 3);
    }
}
