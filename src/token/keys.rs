//! Ed25519 key pairs for signing and verifying session tokens.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::TokenError;
use crate::secret::{ExposeSecret, SecretString};

/// File name of the private (signing) key written by [`write_keypair`].
pub const SIGNING_KEY_FILE: &str = "token_signing.pem";
/// File name of the public (verifying) key written by [`write_keypair`].
pub const VERIFYING_KEY_FILE: &str = "token_verifying.pem";

/// Generates a fresh Ed25519 key pair: the private key as a PKCS#8 PEM and the public key as an SPKI PEM.
pub fn generate_keypair() -> Result<(SecretString, String), TokenError> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|_| TokenError::Key("generating an Ed25519 key pair failed".into()))?;
    let private = SecretString::from(pair.serialize_pem());
    Ok((private, pair.public_key_pem()))
}

/// Generates a key pair and writes it into `dir` as [`SIGNING_KEY_FILE`] (mode 0600) and [`VERIFYING_KEY_FILE`].
///
/// Returns `(signing_path, verifying_path)`. Existing key files are never overwritten: if either file already
/// exists nothing is written and an `AlreadyExists` I/O error is returned, so a live signing key cannot be
/// replaced by accident.
pub fn write_keypair(dir: &Path) -> Result<(PathBuf, PathBuf), TokenError> {
    let signing = dir.join(SIGNING_KEY_FILE);
    let verifying = dir.join(VERIFYING_KEY_FILE);
    for path in [&signing, &verifying] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(TokenError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite a key file",
                ),
            });
        }
    }
    let (private, public) = generate_keypair()?;
    write_new(&signing, private.expose_secret().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&verifying, public.as_bytes(), 0o644) {
        // Do not leave half a key pair behind.
        let _ = fs::remove_file(&signing);
        return Err(e);
    }
    Ok((signing, verifying))
}

/// Creates `path` (which must not exist) with `mode` and writes `contents`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TokenError> {
    let io_err = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}
