//! A minimal HTTPS client (for the IdP's JWKS and the `pgveil login` / `pgveil user` commands): HTTP/1.1 over
//! rustls, server verified against a CA bundle (default: the system bundle, or `PGVEIL_CA_BUNDLE`),
//! 10-second timeout, 1 MiB body cap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A request to send.
#[derive(Default)]
pub struct Request<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// `https://host[:port]/path`.
    pub url: &'a str,
    /// JSON body (POST).
    pub json: Option<String>,
    /// `Authorization: Bearer` value.
    pub bearer: Option<&'a str>,
    /// CA bundle to verify the server against.
    pub ca: Option<&'a Path>,
}

/// GETs `url` (must be `https://`) and returns the body as text.
pub async fn https_get(url: &str) -> Result<String, String> {
    let (status, body) = send(Request {
        method: "GET",
        url,
        ..Default::default()
    })
    .await?;
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}"));
    }
    Ok(body)
}

/// Sends a request; returns the status and the body text.
pub async fn send(req: Request<'_>) -> Result<(u16, String), String> {
    tokio::time::timeout(Duration::from_secs(10), send_inner(req))
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn send_inner(r: Request<'_>) -> Result<(u16, String), String> {
    let uri: hyper::Uri = r.url.parse().map_err(|_| "invalid URL".to_owned())?;
    if uri.scheme_str() != Some("https") {
        return Err("URL must be https".into());
    }
    let host = uri
        .host()
        .ok_or("URL without host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let ca: PathBuf = match r.ca {
        Some(p) => p.to_owned(),
        None => std::env::var_os("PGVEIL_CA_BUNDLE")
            .map(PathBuf::from)
            .unwrap_or_else(|| SYSTEM_CA.into()),
    };
    let base = crate::tls::backend_client_config(Some(&ca), true).map_err(|e| e.to_string())?;
    let mut cfg = (*base).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.clone()).map_err(|_| "invalid host name".to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut b = hyper::Request::builder()
        .method(r.method)
        .uri(path)
        .header(
            hyper::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(t) = r.bearer {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if r.json.is_some() {
        b = b.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(r.json.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".to_owned())?,
    ))
}
