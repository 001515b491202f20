//! Throwaway certificates for development, demos and tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use super::TlsError;
use super::files::write_file;

/// Paths of the PEM files written by [`generate_dev_certs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCerts {
    /// The throwaway CA certificate: what clients should trust (`sslrootcert=...`).
    pub ca_cert: PathBuf,
    /// The server certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key (mode 0600).
    pub server_key: PathBuf,
}

/// Names every development server certificate covers, besides the caller's extra names.
const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Generates a throwaway CA and a server certificate signed by it, and writes them into `dir` (created if
/// missing) as `ca.pem`, `server.pem` and `server.key` (mode 0600), replacing earlier files of those names.
///
/// The server certificate's subject alternative names are `localhost`, `127.0.0.1`, `::1` and `extra_names`
/// (IP addresses become IP SANs, anything else a DNS name). Keys are ECDSA P-256, which every TLS client
/// supports. The CA's private key is discarded, so nothing else can ever be signed by that CA.
pub fn generate_dev_certs(dir: &Path, extra_names: &[String]) -> Result<DevCerts, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A unique CA name, so trust stores never confuse two generated CAs with each other.
    let ca_name = format!(
        "pgveil development CA {}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    ca_params.distinguished_name = name(&ca_name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(TlsError::Generate)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    for extra in extra_names {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut params = CertificateParams::new(names).map_err(TlsError::Generate)?;
    params.distinguished_name = name("localhost");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .map_err(TlsError::Generate)?;

    let certs = DevCerts {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    write_file(&certs.ca_cert, ca_cert.pem().as_bytes(), false)?;
    write_file(&certs.server_cert, server_cert.pem().as_bytes(), false)?;
    write_file(
        &certs.server_key,
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    Ok(certs)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "pgveil (development only)");
    dn
}
