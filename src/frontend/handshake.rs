//! The first bytes of a connection: direct TLS (PostgreSQL 17, ALPN `postgresql`), SSLRequest, GSSENCRequest
//! (always 'N'), CancelRequest, and finally the StartupMessage.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{Classified, ErrorKind};
use crate::net::{ClientStream, Framed, ReadError};
use crate::proto::PgError;
use crate::proto::startup::{StartupMessage, StartupPacket};
use crate::tls::ALPN_POSTGRESQL;

/// The first byte of a TLS ClientHello record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a connection asked for.
pub enum Hello {
    /// A session: the stream (TLS or not) and its startup message.
    Session {
        /// The client stream.
        stream: ClientStream,
        /// Its startup message.
        startup: StartupMessage,
    },
    /// A cancel request.
    Cancel {
        /// Key pid.
        pid: i32,
        /// Key secret.
        secret: i32,
    },
}

/// Why a handshake ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client went away or its TLS handshake failed.
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent something invalid; it was sent this error.
    #[error("{0}")]
    Refused(PgError),
}

impl Classified for HandshakeError {
    fn kind(&self) -> ErrorKind {
        match self {
            HandshakeError::Io(_) => ErrorKind::ClientGone,
            HandshakeError::Refused(_) => ErrorKind::Refused,
        }
    }
}

/// Negotiates TLS and reads the startup message.
pub async fn negotiate(
    tcp: TcpStream,
    tls: Option<&TlsAcceptor>,
    max_packet: usize,
) -> Result<Hello, HandshakeError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    if first[0] == TLS_HANDSHAKE_RECORD {
        let Some(acceptor) = tls else {
            // Nothing sensible can be said to a TLS client in plain text: close.
            return Err(
                std::io::Error::other("direct TLS attempted but TLS is not configured").into(),
            );
        };
        let tls_stream = acceptor.accept(tcp).await?;
        if tls_stream.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            let mut stream = ClientStream::Tls(Box::new(tls_stream));
            return Err(refuse(
                &mut stream,
                PgError::protocol_violation("direct TLS connection without ALPN \"postgresql\""),
            )
            .await);
        }
        let mut stream = ClientStream::Tls(Box::new(tls_stream));
        return after_tls(stream_packet(&mut stream, max_packet).await, stream).await;
    }

    let mut stream = ClientStream::Plain(tcp);
    // At most one SSLRequest and one GSSENCRequest precede the startup message.
    for _ in 0..3 {
        match stream_packet(&mut stream, max_packet).await? {
            StartupPacket::SslRequest => {
                let ClientStream::Plain(mut tcp) = stream else {
                    return Err(refuse(
                        &mut stream,
                        PgError::protocol_violation("SSLRequest inside TLS"),
                    )
                    .await);
                };
                match tls {
                    Some(acceptor) => {
                        tcp.write_all(b"S").await?;
                        // The client must not have sent anything after SSLRequest before the TLS handshake:
                        // such bytes are fed to TLS as handshake data and fail it (CVE-2021-23214 class).
                        let tls_stream = acceptor.accept(tcp).await?;
                        let mut tls_client = ClientStream::Tls(Box::new(tls_stream));
                        return after_tls(
                            stream_packet(&mut tls_client, max_packet).await,
                            tls_client,
                        )
                        .await;
                    }
                    None => {
                        tcp.write_all(b"N").await?;
                        stream = ClientStream::Plain(tcp);
                    }
                }
            }
            StartupPacket::GssEncRequest => stream.write_all(b"N").await?,
            StartupPacket::Cancel { pid, secret } => return Ok(Hello::Cancel { pid, secret }),
            StartupPacket::Startup(startup) => return Ok(Hello::Session { stream, startup }),
        }
    }
    Err(refuse(
        &mut stream,
        PgError::protocol_violation("too many negotiation requests"),
    )
    .await)
}

async fn after_tls(
    packet: Result<StartupPacket, HandshakeError>,
    mut stream: ClientStream,
) -> Result<Hello, HandshakeError> {
    match packet? {
        StartupPacket::Startup(startup) => Ok(Hello::Session { stream, startup }),
        StartupPacket::Cancel { pid, secret } => Ok(Hello::Cancel { pid, secret }),
        _ => Err(refuse(
            &mut stream,
            PgError::protocol_violation("unexpected negotiation request inside TLS"),
        )
        .await),
    }
}

async fn stream_packet(
    stream: &mut ClientStream,
    max_packet: usize,
) -> Result<StartupPacket, HandshakeError> {
    match Framed::exact(&mut *stream).read_startup(max_packet).await {
        Ok(p) => Ok(p),
        Err(ReadError::Io(e)) => Err(e.into()),
        Err(ReadError::Closed) => {
            Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
        }
        Err(ReadError::Refused(e)) => Err(refuse(stream, e).await),
        // Startup reads report bad lengths as `Refused`.
        Err(e @ ReadError::BadLength(_)) => {
            Err(refuse(stream, PgError::protocol_violation(e.to_string())).await)
        }
    }
}

/// Sends a FATAL error and returns it as the handshake error.
pub async fn refuse(stream: &mut ClientStream, err: PgError) -> HandshakeError {
    let _ = Framed::exact(stream).write_fatal(&err).await;
    HandshakeError::Refused(err)
}
