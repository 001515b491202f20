use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

/// Runs a TLS handshake plus one ping/pong over `client_io`/`server_io`; returns the ALPN the server saw.
async fn exchange<C, S>(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
    client_io: C,
    server_io: S,
) -> Result<Option<Vec<u8>>, String>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server_task = tokio::spawn(async move {
        let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(alpn)
    });
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let client_result = async {
        let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok::<_, std::io::Error>(())
    }
    .await;
    let server_result = server_task.await.map_err(|e| e.to_string())?;
    client_result.map_err(|e| format!("client: {e}"))?;
    server_result.map_err(|e| format!("server: {e}"))
}

async fn duplex_exchange(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> Result<Option<Vec<u8>>, String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    tokio::time::timeout(
        Duration::from_secs(10),
        exchange(server, client, name, c, s),
    )
    .await
    .expect("handshake timed out")
}

fn dev(extra: &[&str]) -> (tempfile::TempDir, DevCerts) {
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let certs = generate_dev_certs(dir.path(), &extra).unwrap();
    (dir, certs)
}

#[tokio::test]
async fn handshake_over_tcp_with_verification() {
    let (_dir, certs) = dev(&[]);
    let server = server_config(&certs.server_cert, &certs.server_key).unwrap();
    let client = backend_client_config(Some(&certs.ca_cert), true).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client_io, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let alpn = exchange(
            server.clone(),
            client.clone(),
            name,
            client_io.unwrap(),
            accepted.unwrap().0,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(alpn.as_deref(), Some(ALPN_POSTGRESQL));
    }
}

#[tokio::test]
async fn all_sans_verify() {
    let (_dir, certs) = dev(&["db.internal", "10.1.2.3"]);
    let server = server_config(&certs.server_cert, &certs.server_key).unwrap();
    let client = backend_client_config(Some(&certs.ca_cert), true).unwrap();
    for name in ["localhost", "127.0.0.1", "::1", "db.internal", "10.1.2.3"] {
        duplex_exchange(server.clone(), client.clone(), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let err = duplex_exchange(server, client, "not-in-cert.example")
        .await
        .unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for name"),
        "{err}"
    );
}

#[tokio::test]
async fn client_without_alpn_is_accepted() {
    // Clients that negotiate TLS after an SSLRequest (libpq < 17, JDBC, ...) usually send no ALPN.
    let (_dir, certs) = dev(&[]);
    let server = server_config(&certs.server_cert, &certs.server_key).unwrap();
    let mut client = (*backend_client_config(Some(&certs.ca_cert), true).unwrap()).clone();
    client.alpn_protocols.clear();
    let alpn = duplex_exchange(server, Arc::new(client), "localhost")
        .await
        .unwrap();
    assert_eq!(alpn, None);
}

#[tokio::test]
async fn client_with_foreign_alpn_is_refused() {
    let (_dir, certs) = dev(&[]);
    let server = server_config(&certs.server_cert, &certs.server_key).unwrap();
    let mut client = (*backend_client_config(Some(&certs.ca_cert), true).unwrap()).clone();
    client.alpn_protocols = vec![b"h2".to_vec()];
    assert!(
        duplex_exchange(server, Arc::new(client), "localhost")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn different_ca_fails() {
    let (_dir, certs) = dev(&[]);
    let (_other_dir, other) = dev(&[]);
    let server = server_config(&certs.server_cert, &certs.server_key).unwrap();
    let client = backend_client_config(Some(&other.ca_cert), true).unwrap();
    let err = duplex_exchange(server, client, "localhost")
        .await
        .unwrap_err();
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn verify_false_accepts_any_certificate() {
    let (_dir, certs) = dev(&[]);
    let server = server_config(&certs.server_cert, &certs.server_key).unwrap();
    let client = backend_client_config(None, false).unwrap();
    duplex_exchange(server, client, "some-rds-host.example")
        .await
        .unwrap();
}

#[test]
fn verify_requires_ca_bundle() {
    assert!(matches!(
        backend_client_config(None, true),
        Err(TlsError::CaBundleRequired)
    ));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = backend_client_config(Some(&empty), true).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.pem"));
}

#[test]
fn dev_cert_files() {
    let (_dir, certs) = dev(&[]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&certs.server_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key = std::fs::read_to_string(&certs.server_key).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        std::fs::read_to_string(&certs.ca_cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
}

#[test]
fn server_config_errors_name_the_file_but_not_its_contents() {
    let (dir, certs) = dev(&[]);
    let missing = dir.path().join("missing.pem");
    let err = server_config(&missing, &certs.server_key).unwrap_err();
    assert!(
        matches!(err, TlsError::Io { .. }) && err.to_string().contains("missing.pem"),
        "{err}"
    );

    // A certificate file given as the key: no private key in it.
    let err = server_config(&certs.server_cert, &certs.server_cert).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");

    // A corrupt key: the error must not quote the file.
    let corrupt = dir.path().join("corrupt.key");
    let secret_line = "SECRETSECRETSECRET!!";
    std::fs::write(
        &corrupt,
        format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let err = server_config(&certs.server_cert, &corrupt).unwrap_err();
    assert!(err.to_string().contains("corrupt.key"), "{err}");
    assert!(
        !err.to_string().contains("SECRET") && !format!("{err:?}").contains("SECRET"),
        "{err:?}"
    );

    // A key that does not belong to the certificate.
    let (_other_dir, other) = dev(&[]);
    let err = server_config(&certs.server_cert, &other.server_key).unwrap_err();
    assert!(matches!(err, TlsError::Rustls { .. }), "{err:?}");
}
