//! Reading certificates and keys from PEM files, with errors that never quote file contents.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// All certificates in a PEM file, in order (a chain: leaf first).
pub(super) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file. Warns if the file is readable by others.
pub(super) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    warn_if_exposed(path);
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        e => pem_error(path, e),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    let reason = match e {
        pem::Error::Io(source) => {
            return TlsError::Io {
                path: path.to_owned(),
                source,
            };
        }
        pem::Error::NoItemsFound => {
            return TlsError::NoCertificate {
                path: path.to_owned(),
            };
        }
        // The other variants' Display can quote file bytes; keep only the kind of problem.
        pem::Error::MissingSectionEnd { .. } => "missing END line",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "invalid base64",
        pem::Error::SectionTooLarge => "section too large",
        _ => "unreadable",
    };
    TlsError::Pem {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "TLS private key file is accessible to other users");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

/// Writes `contents` to `path`, creating or truncating it; `private` files get mode 0600 (also when they
/// already existed with a looser mode).
pub(super) fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let io_err = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(if private { 0o600 } else { 0o644 });
        let mut file = options.open(path).map_err(io_err)?;
        if private {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err)?;
        }
        file.write_all(contents).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        let mut file = options.open(path).map_err(io_err)?;
        file.write_all(contents).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }
}
