//! The raw PostgreSQL protocol client of the tests, for tests that must craft packets or compare replies
//! byte for byte. This file holds the one copy of the framing: build startup-phase packets and frontend
//! messages, read backend messages one at a time (capped, with a safety timeout), decode ErrorResponse fields,
//! RowDescription column names and DataRows, log in with a token, and open TLS towards the proxy (after
//! SSLRequest or direct, with or without ALPN). [`script`] builds a scripted extended-protocol client on these
//! same functions, for exact comparisons of a proxy's replies with PostgreSQL's own.
#![allow(dead_code)]

pub mod script;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Protocol 3.0.
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80877103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80877104;
/// Largest message these helpers accept (the proxy never sends more during these tests).
const MAX_MSG: usize = 1 << 20;
/// Safety net for reads: the assertions are about what arrives, not about timing.
pub const SAFETY: Duration = Duration::from_secs(10);

/// A startup-phase packet: length, code, body.
pub fn startup_packet(code: i32, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Appends `s` as a NUL-terminated string.
pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A StartupMessage for protocol `major.minor` with these parameters.
pub fn startup_version(major: i32, minor: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    startup_packet((major << 16) | minor, &body)
}

/// A protocol 3.0 StartupMessage.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    startup_version(3, 0, params)
}

/// SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    startup_packet(SSL_REQUEST, &[])
}

/// GSSENCRequest.
pub fn gssenc_request() -> Vec<u8> {
    startup_packet(GSSENC_REQUEST, &[])
}

/// A tagged frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// PasswordMessage.
pub fn password(token: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, token);
    message(b'p', &body)
}

/// Simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    message(b'Q', &body)
}

/// Terminate.
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Tag byte.
    pub tag: u8,
    /// Payload after the length word.
    pub body: Vec<u8>,
}

impl Msg {
    /// Fields of an ErrorResponse/NoticeResponse.
    pub fn fields(&self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut rest = &self.body[..];
        while let Some((&t, tail)) = rest.split_first() {
            if t == 0 {
                break;
            }
            let Some(end) = tail.iter().position(|&b| b == 0) else {
                break;
            };
            out.push((t, String::from_utf8_lossy(&tail[..end]).into_owned()));
            rest = &tail[end + 1..];
        }
        out
    }

    /// One field of an ErrorResponse.
    pub fn field(&self, t: u8) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| v)
    }

    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        (self.tag == b'E').then(|| self.field(b'C')).flatten()
    }

    /// The request code of an Authentication ('R') message.
    pub fn auth_code(&self) -> Option<i32> {
        (self.tag == b'R' && self.body.len() >= 4)
            .then(|| i32::from_be_bytes(self.body[..4].try_into().unwrap()))
    }

    /// All text fields of an ErrorResponse joined (to search for leaked values).
    pub fn text(&self) -> String {
        self.fields()
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.tag {
            b'E' | b'N' => write!(f, "{}{:?}", self.tag as char, self.fields()),
            b'R' => write!(f, "R({:?})", self.auth_code()),
            t => write!(f, "{}({} bytes)", t as char, self.body.len()),
        }
    }
}

/// Reads one message; `None` on a clean EOF before its first byte. Fails after [`SAFETY`].
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Msg>> {
    tokio::time::timeout(SAFETY, read_msg_inner(r))
        .await
        .map_err(|_| anyhow!("no message within {SAFETY:?}"))?
}

async fn read_msg_inner<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Msg>> {
    let mut tag = [0u8; 1];
    match r.read(&mut tag).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = r.read_i32().await.context("message length")?;
    ensure!(
        (4..=MAX_MSG as i32).contains(&len),
        "bad message length {len} for tag {:?}",
        tag[0] as char
    );
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await.context("message body")?;
    Ok(Some(Msg { tag: tag[0], body }))
}

/// Reads the next message, which must exist.
pub async fn next_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<Msg> {
    read_msg(r)
        .await?
        .ok_or_else(|| anyhow!("connection closed unexpectedly"))
}

/// Reads a single byte (the answer to SSLRequest/GSSENCRequest).
pub async fn read_byte<R: AsyncRead + Unpin>(r: &mut R) -> Result<u8> {
    Ok(tokio::time::timeout(SAFETY, r.read_u8())
        .await
        .map_err(|_| anyhow!("no answer byte"))??)
}

/// Asserts the peer closes the connection: expects EOF next.
/// Any message that still arrives is an error.
pub async fn expect_closed<R: AsyncRead + Unpin>(r: &mut R) -> Result<()> {
    match read_msg(r)
        .await
        .context("waiting for the proxy to close the connection")?
    {
        None => Ok(()),
        Some(m) => bail!("expected the connection to be closed, got {m}"),
    }
}

/// Reads until an ErrorResponse, failing if the proxy asks for a password first (or closes without one).
/// Returns the error and the messages seen before it.
pub async fn expect_error_no_password<R: AsyncRead + Unpin>(r: &mut R) -> Result<Msg> {
    loop {
        let m = next_msg(r).await?;
        match m.tag {
            b'E' => return Ok(m),
            b'R' => bail!("proxy asked for authentication ({m}) instead of refusing"),
            b'N' | b'v' => continue,
            _ => bail!("unexpected message {m} before the error"),
        }
    }
}

/// Asserts the next message is a FATAL ErrorResponse with `code`, then that the connection closes.
pub async fn expect_fatal<R: AsyncRead + Unpin>(r: &mut R, code: &str) -> Result<Msg> {
    let m = next_msg(r).await?;
    ensure!(m.tag == b'E', "expected ErrorResponse {code}, got {m}");
    ensure!(
        m.sqlstate().as_deref() == Some(code),
        "expected SQLSTATE {code}, got {m}"
    );
    ensure!(
        m.field(b'S').as_deref() == Some("FATAL"),
        "expected FATAL, got {m}"
    );
    expect_closed(r).await?;
    Ok(m)
}

/// After the StartupMessage: expects AuthenticationCleartextPassword, sends `token`, and reads up to
/// ReadyForQuery. Returns every message after AuthenticationOk (ParameterStatus, BackendKeyData, ...).
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    token: &str,
) -> Result<Vec<Msg>> {
    let m = next_msg(s).await?;
    ensure!(
        m.auth_code() == Some(3),
        "expected AuthenticationCleartextPassword, got {m}"
    );
    s.write_all(&password(token)).await?;
    let ok = next_msg(s).await?;
    ensure!(
        ok.auth_code() == Some(0),
        "expected AuthenticationOk, got {ok}"
    );
    let mut seen = Vec::new();
    loop {
        let m = next_msg(s).await?;
        let done = m.tag == b'Z';
        ensure!(m.tag != b'E', "error after AuthenticationOk: {m}");
        seen.push(m);
        if done {
            return Ok(seen);
        }
    }
}

/// Sends StartupMessage (user `tester`, database = tenant, plus `extra`) and authenticates.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    tenant: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> Result<Vec<Msg>> {
    let mut params = vec![("user", "tester"), ("database", tenant)];
    params.extend_from_slice(extra);
    s.write_all(&startup(&params)).await?;
    authenticate(s, token).await
}

/// Result of a simple query: rows of text values, or the ErrorResponse.
pub type QueryResult = std::result::Result<Vec<Vec<Option<String>>>, Msg>;

/// Runs one simple query and reads up to ReadyForQuery.
pub async fn simple_query<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sql: &str,
) -> Result<QueryResult> {
    s.write_all(&query(sql)).await?;
    let mut rows = Vec::new();
    let mut err = None;
    loop {
        let m = next_msg(s).await?;
        match m.tag {
            b'D' => rows.push(data_row(&m.body)),
            b'E' => err = Some(m),
            b'Z' => break,
            _ => {}
        }
    }
    Ok(match err {
        Some(e) => Err(e),
        None => Ok(rows),
    })
}

/// The single text value of a one-row, one-column query.
pub async fn query_value<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sql: &str,
) -> Result<String> {
    let rows = simple_query(s, sql)
        .await?
        .map_err(|e| anyhow!("{sql}: {e}"))?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .ok_or_else(|| anyhow!("{sql}: no value"))
}

/// The values of a DataRow payload, as text (`None` for NULL).
pub fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(
                String::from_utf8_lossy(&rest[..len as usize]).into_owned(),
            ));
            rest = &rest[len as usize..];
        }
    }
    out
}

/// The column names of a RowDescription payload.
pub fn column_names(body: &[u8]) -> Vec<String> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut names = Vec::new();
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(0);
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        // After the name: table OID, column number, type OID, type size, type modifier, format code.
        rest = &rest[(end + 1 + 18).min(rest.len())..];
    }
    names
}

/// A TLS connector trusting the dev CA, offering ALPN `postgresql` or no ALPN at all.
pub fn tls_connector(ca: &Path, alpn: bool) -> Result<TlsConnector> {
    let cfg = pgveil::tls::backend_client_config(Some(ca), true)?;
    let mut cfg = (*cfg).clone();
    if !alpn {
        cfg.alpn_protocols.clear();
    }
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// TLS handshake as a client of the proxy (server name `localhost`).
pub async fn tls_handshake(tcp: TcpStream, ca: &Path, alpn: bool) -> Result<TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let s = tokio::time::timeout(SAFETY, tls_connector(ca, alpn)?.connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake timed out"))??;
    Ok(s)
}

/// SSLRequest, expect 'S', TLS handshake with ALPN.
pub async fn ssl_upgrade(mut tcp: TcpStream, ca: &Path) -> Result<TlsStream<TcpStream>> {
    tcp.write_all(&ssl_request()).await?;
    let b = read_byte(&mut tcp).await?;
    ensure!(b == b'S', "expected 'S' to SSLRequest, got {:?}", b as char);
    tls_handshake(tcp, ca, true).await
}
