//! Opening a backend connection: TCP, optional TLS (SSLRequest), StartupMessage, authentication as a client
//! (SCRAM-SHA-256, md5, cleartext), then ParameterStatus/BackendKeyData until ReadyForQuery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{AuthenticationSaslBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{BackendStream, Framed, ReadError};
pub use crate::route::BackendTarget;
use crate::secret::{DbCredentials, ExposeSecret};

/// The cancel key a backend gave us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// Backend process id.
    pub pid: i32,
    /// Backend secret key.
    pub secret: i32,
}

/// How the server authenticated the connection (the request it sent during startup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked (`trust`, `peer`/`ident` on TCP, certificate...): AuthenticationOk straight away.
    None,
    /// AuthenticationCleartextPassword (`password` in pg_hba.conf, or LDAP/RADIUS/PAM).
    Cleartext,
    /// AuthenticationMD5Password: pg_hba.conf `md5` with an md5-stored password.
    Md5,
    /// SASL SCRAM-SHA-256.
    ScramSha256,
}

impl AuthMethod {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Cleartext => "cleartext password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

/// An authenticated backend connection, ready for queries.
pub struct BackendConn {
    /// The byte stream.
    pub stream: BackendStream,
    /// Current values of the parameters the server reports (ParameterStatus).
    pub params: BTreeMap<String, String>,
    /// Cancel key.
    pub key: BackendKey,
    /// Bytes already read from the server but not yet processed.
    pub rbuf: BytesMut,
    /// Set when the connection's protocol state is unknown; a broken connection is never reused.
    pub broken: bool,
    /// Where it is connected (for cancel requests).
    pub target: Arc<BackendTarget>,
    /// Transaction mode: pgveil's server-side prepared statements on this connection.
    pub statements: crate::backend::statements::BackendStatements,
    /// Transaction mode: the client settings applied on top of the startup state (`None` = unknown, so
    /// `RESET ALL` first).
    pub applied: Option<Vec<(String, String)>>,
    /// Limit on each internal exchange (reset, drain, rollback, settings); set by the pool.
    pub reset_timeout: Duration,
    /// Session defaults read once for inspected roles (`frontend::guard`): `client_min_messages` and
    /// `current_schemas(false)` as the connection started with them.
    pub defaults: Option<(String, Vec<String>)>,
    /// How the server authenticated it.
    pub auth: AuthMethod,
}

/// Why a backend connection could not be opened. Messages never include the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect or I/O failed.
    #[error("backend {addr}: {source}")]
    Io {
        /// host:port.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Connecting and authenticating took too long.
    #[error("backend {0}: timed out")]
    Timeout(String),
    /// TLS was required but refused, or the handshake failed.
    #[error("backend {addr}: TLS: {reason}")]
    Tls {
        /// host:port.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The server rejected our credentials (28P01/28000): may be a rotation in progress.
    #[error("backend {addr}: authentication failed ({code}): {message}")]
    Auth {
        /// host:port.
        addr: String,
        /// SQLSTATE.
        code: String,
        /// Server message.
        message: String,
    },
    /// The server refused the connection for another reason (e.g. 3D000, 53300, 57P03).
    #[error("backend {addr}: server error {code}: {message}")]
    Server {
        /// host:port.
        addr: String,
        /// SQLSTATE.
        code: String,
        /// Server message.
        message: String,
    },
    /// The server asked for an authentication method we do not support, or sent something unexpected.
    #[error("backend {addr}: protocol: {reason}")]
    Protocol {
        /// host:port.
        addr: String,
        /// What was unexpected.
        reason: String,
    },
}

impl ConnectError {
    /// True when the server rejected the credentials (worth re-fetching the secret and retrying).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, ConnectError::Auth { .. })
    }
}

/// Largest message (length word) accepted from a backend during startup.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Opens and authenticates a backend connection. `params` are extra startup parameters (GUCs).
pub async fn connect(
    target: Arc<BackendTarget>,
    creds: &DbCredentials,
    params: &[(&str, &str)],
    timeout: Duration,
) -> Result<BackendConn, ConnectError> {
    let addr = format!("{}:{}", target.host, target.port);
    match tokio::time::timeout(timeout, connect_inner(target, creds, params, &addr)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(addr)),
    }
}

async fn connect_inner(
    target: Arc<BackendTarget>,
    creds: &DbCredentials,
    params: &[(&str, &str)],
    addr: &str,
) -> Result<BackendConn, ConnectError> {
    let io = |source| ConnectError::Io {
        addr: addr.to_owned(),
        source,
    };
    let proto = |reason: &str| ConnectError::Protocol {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    let stream = match &target.tls {
        None => BackendStream::Plain(tcp),
        Some(cfg) => BackendStream::Tls(Box::new(
            start_tls(tcp, cfg.clone(), &target.host, addr).await?,
        )),
    };

    let mut buf = BytesMut::new();
    let mut startup: Vec<(&str, &str)> =
        vec![("user", &creds.username), ("database", &target.dbname)];
    startup.extend_from_slice(params);
    frontend::startup_message(startup.iter().copied(), &mut buf).map_err(io)?;
    let mut framed = Framed::buffered(stream, BytesMut::with_capacity(8192));
    framed.send(&buf).await.map_err(io)?;

    let mut st = StartupState {
        scram: None,
        params: BTreeMap::new(),
        key: None,
        auth: AuthMethod::None,
    };
    loop {
        let msg = next_message(&mut framed, addr).await?;
        buf.clear();
        if st.on_message(msg, creds, &mut buf, addr).await? {
            break;
        }
        if !buf.is_empty() {
            framed.send(&buf).await.map_err(io)?;
        }
    }
    let (stream, rbuf) = framed.into_parts();
    Ok(BackendConn {
        stream,
        params: st.params,
        key: st
            .key
            .ok_or_else(|| proto("server sent no BackendKeyData"))?,
        rbuf,
        broken: false,
        target,
        statements: Default::default(),
        applied: Some(Vec::new()),
        reset_timeout: Duration::from_secs(5),
        defaults: None,
        auth: st.auth,
    })
}

/// What the startup exchange has collected so far.
struct StartupState {
    /// The SCRAM exchange in progress.
    scram: Option<ScramSha256>,
    /// ParameterStatus values.
    params: BTreeMap<String, String>,
    /// BackendKeyData.
    key: Option<BackendKey>,
    /// How the server authenticated us.
    auth: AuthMethod,
}

impl StartupState {
    /// Handles one startup message, putting any reply into `buf`; `true` at ReadyForQuery.
    async fn on_message(
        &mut self,
        msg: Message,
        creds: &DbCredentials,
        buf: &mut BytesMut,
        addr: &str,
    ) -> Result<bool, ConnectError> {
        let io = |source| ConnectError::Io {
            addr: addr.to_owned(),
            source,
        };
        let proto = |reason: &str| protocol_error(addr, reason);
        match msg {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                self.auth = AuthMethod::Cleartext;
                frontend::password_message(creds.password.expose_secret().as_bytes(), buf)
                    .map_err(io)?;
            }
            Message::AuthenticationMd5Password(body) => {
                self.auth = AuthMethod::Md5;
                let hash = postgres_protocol::authentication::md5_hash(
                    creds.username.as_bytes(),
                    creds.password.expose_secret().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), buf).map_err(io)?;
            }
            Message::AuthenticationSasl(body) => {
                self.scram = Some(sasl_start(&body, creds, buf, addr)?);
                self.auth = AuthMethod::ScramSha256;
            }
            Message::AuthenticationSaslContinue(body) => {
                let mut s = self
                    .scram
                    .take()
                    .ok_or_else(|| proto("unexpected SASL continue"))?;
                let data = body.data().to_vec();
                // PBKDF2 with thousands of iterations: keep it off the reactor threads.
                let s = tokio::task::spawn_blocking(move || s.update(&data).map(|()| s))
                    .await
                    .map_err(|_| proto("SCRAM task failed"))?
                    .map_err(|e| proto(&format!("SCRAM: {e}")))?;
                frontend::sasl_response(s.message(), buf).map_err(io)?;
                self.scram = Some(s);
            }
            Message::AuthenticationSaslFinal(body) => {
                let mut s = self
                    .scram
                    .take()
                    .ok_or_else(|| proto("unexpected SASL final"))?;
                s.finish(body.data())
                    .map_err(|_| proto("server SCRAM signature does not verify"))?;
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(io)?.to_owned();
                let value = body.value().map_err(io)?.to_owned();
                self.params.insert(name, value);
            }
            Message::BackendKeyData(body) => {
                self.key = Some(BackendKey {
                    pid: body.process_id(),
                    secret: body.secret_key(),
                });
            }
            Message::ReadyForQuery(_) => return Ok(true),
            Message::ErrorResponse(body) => return Err(server_error(addr, &body)),
            Message::NoticeResponse(_) => {}
            _ => return Err(proto("unexpected message during startup")),
        }
        Ok(false)
    }
}

/// Answers AuthenticationSASL: SCRAM-SHA-256 without channel binding, or an error when the server offers no
/// mechanism pgveil supports.
fn sasl_start(
    body: &AuthenticationSaslBody,
    creds: &DbCredentials,
    buf: &mut BytesMut,
    addr: &str,
) -> Result<ScramSha256, ConnectError> {
    let io = |source| ConnectError::Io {
        addr: addr.to_owned(),
        source,
    };
    let mut offered = Vec::new();
    let mut mechs = body.mechanisms();
    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechs).map_err(io)? {
        offered.push(m.to_owned());
    }
    if !offered.iter().any(|m| m == "SCRAM-SHA-256") {
        return Err(protocol_error(
            addr,
            &format!("server offers no supported SASL mechanism ({offered:?})"),
        ));
    }
    // Channel binding is not used ("n" flag): SCRAM-SHA-256 over the (optionally TLS) link.
    let s = ScramSha256::new(
        creds.password.expose_secret().as_bytes(),
        ChannelBinding::unsupported(),
    );
    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), buf).map_err(io)?;
    Ok(s)
}

fn protocol_error(addr: &str, reason: &str) -> ConnectError {
    ConnectError::Protocol {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    }
}

async fn start_tls(
    mut tcp: TcpStream,
    cfg: Arc<rustls::ClientConfig>,
    host: &str,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let tls_err = |reason: String| ConnectError::Tls {
        addr: addr.to_owned(),
        reason,
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    let answer = tcp.read_u8().await.map_err(|e| tls_err(e.to_string()))?;
    if answer != b'S' {
        return Err(tls_err("server does not accept TLS".to_owned()));
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| tls_err(format!("invalid server name {host:?}")))?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))
}

/// The next backend message during startup.
async fn next_message(
    framed: &mut Framed<BackendStream>,
    addr: &str,
) -> Result<Message, ConnectError> {
    let io = |source| ConnectError::Io {
        addr: addr.to_owned(),
        source,
    };
    let frame = match framed.read_frame(MAX_STARTUP_MESSAGE).await {
        Ok(frame) => frame,
        Err(ReadError::Closed) => {
            return Err(ConnectError::Protocol {
                addr: addr.to_owned(),
                reason: "connection closed during startup".to_owned(),
            });
        }
        Err(ReadError::Io(e)) => return Err(io(e)),
        Err(ReadError::BadLength(_) | ReadError::Refused(_)) => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "invalid message length",
            )));
        }
    };
    // A whole frame always parses to a message.
    Message::parse(&mut frame.into_bytes())
        .map_err(io)?
        .ok_or_else(|| io(std::io::ErrorKind::UnexpectedEof.into()))
}

fn server_error(
    addr: &str,
    body: &postgres_protocol::message::backend::ErrorResponseBody,
) -> ConnectError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    if code == "28P01" || code == "28000" {
        ConnectError::Auth {
            addr: addr.to_owned(),
            code,
            message,
        }
    } else {
        ConnectError::Server {
            addr: addr.to_owned(),
            code,
            message,
        }
    }
}
