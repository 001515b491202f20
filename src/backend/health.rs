//! Liveness of an idle pooled backend, judged without a round trip: an idle PostgreSQL backend sends nothing
//! unless something happened to it. A restart, `pg_terminate_backend` or the server's idle timeout all end
//! with a FATAL ErrorResponse (57P01, 57P05, ...) followed by EOF, so a socket that is readable at checkout means
//! the backend is gone or carries state pgveil did not see (an asynchronous notification, a parameter change
//! from a configuration reload). Such a backend is discarded; the pool opens a fresh one in its place.
//!
//! [`peek_idle`] makes the same judgement without consuming anything (a peek at the TCP socket), so the
//! periodic check of idle backends (`pool.idle_check_interval`) can look at backends still in the pool.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use super::BackendConn;
use crate::net::Stream;
use crate::proto::error::parse_fields;

/// Why an idle backend is not handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// The server closed the connection (or the socket failed).
    Closed,
    /// The server sent an ErrorResponse while idle (its SQLSTATE, e.g. 57P01 on shutdown).
    ServerError(String),
    /// The server sent some other message while idle.
    Unsolicited(u8),
}

/// Checks an idle backend without waiting: `None` when nothing arrived from the server since its last
/// ReadyForQuery, otherwise why it must not be reused. Reads at most one buffer's worth, and only from a
/// connection that is about to be discarded if anything is there.
pub fn check_idle(conn: &mut BackendConn) -> Option<Unfit> {
    if conn.rbuf.is_empty() {
        let mut scratch = [0u8; 1024];
        let mut buf = ReadBuf::new(&mut scratch);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut conn.stream).poll_read(&mut cx, &mut buf) {
            Poll::Pending => return None,
            Poll::Ready(Err(_)) => return Some(Unfit::Closed),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Some(Unfit::Closed),
            Poll::Ready(Ok(())) => conn.rbuf.extend_from_slice(buf.filled()),
        }
    }
    Some(classify(&conn.rbuf))
}

/// Like [`check_idle`] through a shared reference and without consuming anything: peeks at the TCP socket
/// (under TLS, any record arriving at an idle backend is unsolicited as well).
pub fn peek_idle(conn: &BackendConn) -> Option<Unfit> {
    if conn.broken {
        return Some(Unfit::Closed);
    }
    if !conn.rbuf.is_empty() {
        return Some(classify(&conn.rbuf));
    }
    let tcp = match &conn.stream {
        Stream::Plain(s) => s,
        Stream::Tls(s) => s.get_ref().0,
    };
    let mut scratch = [0u8; 512];
    let mut buf = ReadBuf::new(&mut scratch);
    let mut cx = Context::from_waker(Waker::noop());
    match tcp.poll_peek(&mut cx, &mut buf) {
        Poll::Pending => None,
        Poll::Ready(Err(_) | Ok(0)) => Some(Unfit::Closed),
        Poll::Ready(Ok(_)) if conn.stream.is_tls() => Some(Unfit::Unsolicited(buf.filled()[0])),
        Poll::Ready(Ok(_)) => Some(classify(buf.filled())),
    }
}

/// What unsolicited bytes from an idle backend are: an ErrorResponse (with its SQLSTATE) or another message.
fn classify(bytes: &[u8]) -> Unfit {
    let t = bytes[0];
    if t == b'E' && bytes.len() >= 5 {
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let end = (1 + len.max(4) as usize).min(bytes.len());
        let code = parse_fields(&bytes[5..end])
            .into_iter()
            .find(|(f, _)| *f == b'C')
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        return Unfit::ServerError(code);
    }
    Unfit::Unsolicited(t)
}
