//! TLS: the proxy listener's server config, the client config for pgveil's own connections to backend
//! PostgreSQL servers, and throwaway development certificates.
//!
//! Everything uses the `ring` provider explicitly; nothing relies on a process-wide default provider.

mod dev;
mod files;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

pub use dev::{DevCerts, generate_dev_certs};

/// The ALPN protocol id PostgreSQL uses (required by PostgreSQL 17 direct TLS, `sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a TLS configuration could not be built. Messages name files, never their contents.
#[derive(thiserror::Error, Debug)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file could not be parsed.
    #[error("{}: invalid PEM ({reason})", path.display())]
    Pem {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, without any of the file's contents.
        reason: &'static str,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate found", path.display())]
    NoCertificate {
        /// The file concerned.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{}: no private key found", path.display())]
    NoPrivateKey {
        /// The file concerned.
        path: PathBuf,
    },
    /// A CA bundle holds no usable CA certificate.
    #[error("{}: no usable CA certificate ({ignored} unparsable)", path.display())]
    NoUsableCa {
        /// The file concerned.
        path: PathBuf,
        /// How many certificates were skipped as unparsable.
        ignored: usize,
    },
    /// Certificate verification was requested but no CA bundle was given.
    #[error(
        "backend TLS verification needs a CA bundle (e.g. the RDS CA bundle); none was configured"
    )]
    CaBundleRequired,
    /// rustls refused the configuration (e.g. key does not match certificate, unsupported key type).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being configured, including file paths where relevant.
        context: String,
        /// The rustls error.
        source: rustls::Error,
    },
    /// Generating a development certificate failed.
    #[error("generating development certificates: {0}")]
    Generate(#[source] rcgen::Error),
}

/// The one crypto provider pgveil uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server TLS config for the proxy listener from a certificate chain PEM and a private key PEM.
///
/// Advertises ALPN `postgresql`, so PostgreSQL 17 direct-TLS clients are accepted; clients negotiating TLS
/// after an `SSLRequest` often send no ALPN at all, which is accepted too. A client offering only other ALPN
/// protocols is refused by the handshake.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = files::load_certs(cert_path)?;
    let key = files::load_private_key(key_path)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "server TLS protocol versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            context: format!(
                "server certificate {} with key {}",
                cert_path.display(),
                key_path.display()
            ),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Client TLS config for pgveil's connections to backend PostgreSQL servers.
///
/// * `verify = true`: the server certificate must chain to a CA in `ca_bundle` (e.g. the RDS CA bundle) and
///   match the host name or IP address connected to (like libpq's `sslmode=verify-full`). `ca_bundle` is then
///   required; there is no fallback to system roots.
/// * `verify = false`: any certificate is accepted (like `sslmode=require`): encrypted, but open to an active
///   man in the middle. An explicit opt-in that logs a warning; `ca_bundle` is ignored.
///
/// Offers ALPN `postgresql` (as libpq 17 does), which servers that predate it ignore.
pub fn backend_client_config(
    ca_bundle: Option<&Path>,
    verify: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "backend TLS protocol versions".into(),
            source,
        })?;
    let mut config = if verify {
        let path = ca_bundle.ok_or(TlsError::CaBundleRequired)?;
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(files::load_certs(path)?);
        if added == 0 {
            return Err(TlsError::NoUsableCa {
                path: path.to_owned(),
                ignored,
            });
        }
        if ignored > 0 {
            tracing::warn!(path = %path.display(), ignored, "some certificates in the CA bundle could not be used");
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!(
            ca_bundle = ?ca_bundle.map(Path::display),
            "backend TLS certificate verification is DISABLED: connections are encrypted but not authenticated"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate, but still checks that the handshake was signed by that certificate's key.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
