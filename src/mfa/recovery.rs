//! One-time recovery codes: 10 per enrolment, shown once.
//!
//! Stored as HMAC-SHA256 under a key derived from the secret store ([`SecretBox::code_mac`]), bound to the
//! user: checking a code is one HMAC and one indexed conditional `UPDATE`, so a burst of wrong codes costs
//! no more than a burst of wrong TOTP codes. Codes carry ~74 random bits, so without the key a stolen table
//! is useless, and even with it exhaustive search is out of reach: a slow hash adds nothing.
//!
//! Codes issued before (rows with an Argon2id `hash` and no `mac`) still work. Verifying them is expensive
//! (~19 MiB and tens of ms per hash, up to 10 hashes per attempt), so it runs on the blocking pool under a
//! process-wide bound of [`LEGACY_CONCURRENCY`] attempts with at most [`LEGACY_QUEUE`] waiting; beyond that
//! the attempt is refused as busy. Each running check hashes into one of at most `LEGACY_CONCURRENCY`
//! reused Argon2 work areas instead of allocating 19 MiB per hash: freed large blocks raise glibc's mmap
//! threshold and then stay in per-thread arenas, which is how bursts used to leave gigabytes resident.
//! Memory stays flat under any burst.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;
use rand::RngExt;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::crypto::SecretBox;

/// Codes issued per enrolment.
pub const CODES_PER_ENROLMENT: usize = 10;
/// Alphabet without look-alike characters (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Characters per code (about 74 bits), printed in groups of 4: `XXXX-XXXX-XXXX-XXX`.
pub const CODE_CHARS: usize = 15;
/// Legacy (Argon2id) verifications running at once in this process.
pub const LEGACY_CONCURRENCY: usize = 2;
/// Legacy verifications allowed to wait for a slot; further ones are refused as busy.
pub const LEGACY_QUEUE: usize = 8;

static LEGACY_SLOTS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(LEGACY_CONCURRENCY)));
/// Reusable Argon2 work areas (at most `LEGACY_CONCURRENCY` ever exist: one per running check).
static LEGACY_BUFFERS: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
/// Largest Argon2 memory cost accepted from a stored hash (64 MiB); pgveil issued 19 MiB ones.
const MAX_LEGACY_BLOCKS: usize = 64 * 1024;
/// Legacy checks admitted (running or waiting).
static LEGACY_ADMITTED: AtomicUsize = AtomicUsize::new(0);

/// One admitted legacy check; released when dropped (also when the request is cancelled).
struct Admitted;

impl Admitted {
    fn try_new() -> Option<Admitted> {
        let before = LEGACY_ADMITTED.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted;
        (before < LEGACY_QUEUE + LEGACY_CONCURRENCY).then_some(admitted)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        LEGACY_ADMITTED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Errors checking recovery codes.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Too many legacy verifications are running or waiting.
    #[error("too many recovery code checks in progress")]
    Busy,
    /// The blocking task panicked or was cancelled.
    #[error("recovery code hashing task failed")]
    Task,
}

/// Fresh recovery codes (plain text, to be shown once) and their MACs for `user` (to be stored).
pub fn generate(keys: &SecretBox, user: &[u8]) -> (Vec<String>, Vec<Vec<u8>>) {
    let codes: Vec<String> = (0..CODES_PER_ENROLMENT).map(|_| new_code()).collect();
    let macs = codes
        .iter()
        .map(|c| keys.code_mac(user, &normalize(c)))
        .collect();
    (codes, macs)
}

/// The MAC to look `code` up by, or None if it cannot be a recovery code (wrong length or alphabet).
pub fn lookup_mac(keys: &SecretBox, user: &[u8], code: &str) -> Option<Vec<u8>> {
    let code = normalize(code);
    let well_formed = code.len() == CODE_CHARS && code.bytes().all(|b| ALPHABET.contains(&b));
    well_formed.then(|| keys.code_mac(user, &code))
}

/// The index of the first legacy Argon2id hash in `hashes` that `code` matches, if any (bounded, see the
/// module comment).
pub async fn find_legacy_match(
    code: &str,
    hashes: Vec<String>,
) -> Result<Option<usize>, RecoveryError> {
    let code = normalize(code);
    if code.len() != CODE_CHARS || hashes.is_empty() {
        return Ok(None);
    }
    let admitted = Admitted::try_new().ok_or(RecoveryError::Busy)?;
    let permit = LEGACY_SLOTS
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| RecoveryError::Task)?;
    // The permit and the admission move into the blocking task: they are held until the hashing is done,
    // even if the request is cancelled meanwhile.
    tokio::task::spawn_blocking(move || {
        let _held = (permit, admitted);
        let mut blocks = LEGACY_BUFFERS.lock().pop().unwrap_or_default();
        let found = hashes
            .iter()
            .position(|h| verify_legacy(code.as_bytes(), h, &mut blocks));
        LEGACY_BUFFERS.lock().push(blocks);
        found
    })
    .await
    .map_err(|_| RecoveryError::Task)
}

/// Whether `code` matches the PHC-format Argon2 hash `hash`, computed in `blocks` (grown as needed, kept).
fn verify_legacy(code: &[u8], hash: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(alg), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let n = params.block_count();
    if n > MAX_LEGACY_BLOCKS {
        return false;
    }
    if blocks.len() < n {
        blocks.resize(n, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(alg, version, params)
        .hash_password_into_with_memory(code, salt, &mut out, &mut blocks[..n])
        .is_ok()
        && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// Upper case, without separators or spaces: users may type codes either way.
pub fn normalize(code: &str) -> String {
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

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, SaltString};

    use super::*;
    use crate::secret::SecretString;

    fn keys() -> SecretBox {
        SecretBox::from_secret(&SecretString::from(SecretBox::generate_key_hex())).unwrap()
    }

    #[test]
    fn codes_and_macs() {
        let k = keys();
        let (codes, macs) = generate(&k, b"user-1");
        assert_eq!(
            (codes.len(), macs.len()),
            (CODES_PER_ENROLMENT, CODES_PER_ENROLMENT)
        );
        assert_eq!(codes[0].len(), CODE_CHARS + 3);
        assert_eq!(
            lookup_mac(&k, b"user-1", &codes[3]).as_ref(),
            Some(&macs[3])
        );
        let typed = codes[7].replace('-', " ").to_lowercase();
        assert_eq!(lookup_mac(&k, b"user-1", &typed).as_ref(), Some(&macs[7]));
        assert_ne!(
            lookup_mac(&k, b"user-2", &codes[3]).as_ref(),
            Some(&macs[3])
        );
        assert_eq!(lookup_mac(&k, b"user-1", "AAAA-AAAA"), None, "too short");
        assert_eq!(
            lookup_mac(&k, b"user-1", "0000-0000-0000-000"),
            None,
            "not the alphabet"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legacy_argon2_codes_match_under_a_bound() {
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let hash = Argon2::default()
            .hash_password(b"ABCDEFGHJKMNPQR", &salt)
            .unwrap()
            .to_string();
        let hashes = vec!["garbage".to_owned(), hash];
        assert_eq!(
            find_legacy_match("abcd-efgh-jkmn-pqr", hashes.clone())
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(
            find_legacy_match("AAAA-AAAA-AAAA-AAA", hashes.clone())
                .await
                .unwrap(),
            None
        );
        // (One test: the bound is process-wide.) A burst: at most LEGACY_QUEUE + LEGACY_CONCURRENCY are
        // admitted, the rest refused as busy at once.
        let hash = hashes[1].clone();
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                tokio::spawn(find_legacy_match(
                    "AAAA-AAAA-AAAA-AAA",
                    vec![hash.clone(); 3],
                ))
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(None) => {}
                Err(RecoveryError::Busy) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(
            busy >= 40 - LEGACY_QUEUE - LEGACY_CONCURRENCY,
            "{busy} refused"
        );
        assert_eq!(LEGACY_ADMITTED.load(Ordering::SeqCst), 0);
    }
}
