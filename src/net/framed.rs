//! The one framed connection type for every exchange outside the relay's hot path: the client's startup
//! packets and password, a backend's startup and authentication, and the statements pgveil runs on a backend
//! itself (reset, drain, settings). It owns the framing rules in one place:
//!
//! - every length is checked against the caller's cap **before** anything is allocated for the frame (a peer
//!   that announces 2 GB gets an error, not an allocation);
//! - what it writes is flushed (a TLS stream may otherwise keep the bytes in its record buffer);
//! - errors go out through [`Framed::write_fatal`] (FATAL: send, then the caller closes) and
//!   [`Framed::write_error`] (ERROR inside a session: send, then ReadyForQuery).
//!
//! Two read modes. **Exact** (the client before the relay starts): it never reads past the frame it is asked
//! for, so the bytes after an SSLRequest stay in the socket for the TLS handshake (CVE-2021-23214 class) and
//! the relay starts with nothing lost. **Buffered** (backends): reads fill a buffer the connection keeps
//! (`BackendConn::rbuf`), so what arrives beyond a frame waits there for the next reader.
//!
//! The relay itself splits frames with [`crate::proto::frame::FrameSplitter`], which streams large
//! pass-through frames instead of holding them whole.

use std::borrow::BorrowMut;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::PgError;
use crate::proto::messages;
use crate::proto::startup::{StartupPacket, decode_startup};

/// Buffered mode reads at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A byte stream with the framing rules of the PostgreSQL protocol. `B` is the read buffer: owned, or borrowed
/// from the connection that keeps it between exchanges.
pub struct Framed<S, B = BytesMut> {
    stream: S,
    rbuf: B,
    exact: bool,
}

/// Why no frame was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection before a whole frame arrived.
    #[error("connection closed")]
    Closed,
    /// I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A length word outside what the caller accepts (nothing was allocated for it).
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// A startup packet the client must be refused for (sent as this FATAL error by the caller).
    #[error("{0}")]
    Refused(PgError),
}

/// One whole tagged frame: tag, length word and payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame(BytesMut);

impl Frame {
    /// The message type.
    pub fn tag(&self) -> u8 {
        self.0[0]
    }
    /// The bytes after the tag and length word.
    pub fn payload(&self) -> &[u8] {
        &self.0[5..]
    }
    /// The whole frame.
    pub fn into_bytes(self) -> BytesMut {
        self.0
    }
    /// A frame of `tag` whose payload was skipped.
    fn skipped(tag: u8) -> Frame {
        let mut b = BytesMut::with_capacity(5);
        b.put_u8(tag);
        b.put_i32(4);
        Frame(b)
    }
}

impl<S> Framed<S, BytesMut> {
    /// Exact mode: never reads beyond the frame asked for (a client before the relay takes over).
    pub fn exact(stream: S) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            exact: true,
        }
    }
}

impl<S, B: BorrowMut<BytesMut>> Framed<S, B> {
    /// Buffered mode over `rbuf`, which may already hold bytes read from `stream` (a backend connection).
    pub fn buffered(stream: S, rbuf: B) -> Self {
        Self {
            stream,
            rbuf,
            exact: false,
        }
    }

    /// The stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream and the bytes read from it but not consumed.
    pub fn into_parts(self) -> (S, B) {
        (self.stream, self.rbuf)
    }
}

impl<S: AsyncRead + Unpin, B: BorrowMut<BytesMut>> Framed<S, B> {
    /// Reads until the buffer holds at least `n` bytes (in exact mode: exactly `n`).
    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
        let buf: &mut BytesMut = self.rbuf.borrow_mut();
        while buf.len() < n {
            let want = n - buf.len();
            let read = if self.exact {
                buf.reserve(want);
                (&mut self.stream).take(want as u64).read_buf(buf).await?
            } else {
                buf.reserve(want.max(READ_CHUNK));
                self.stream.read_buf(buf).await?
            };
            if read == 0 {
                return Err(ReadError::Closed);
            }
        }
        Ok(())
    }

    /// The length word at `at` (after `fill`).
    fn length_at(&self, at: usize) -> i32 {
        let buf: &BytesMut = self.rbuf.borrow();
        (&buf[at..at + 4]).get_i32()
    }

    /// Reads one tagged frame whose length word (which counts itself, not the tag) is within `4..=max_len`.
    pub async fn read_frame(&mut self, max_len: usize) -> Result<Frame, ReadError> {
        self.fill(5).await?;
        let len = self.length_at(1);
        if len < 4 || len as usize > max_len {
            return Err(ReadError::BadLength(len));
        }
        let total = 1 + len as usize;
        self.fill(total).await?;
        Ok(Frame(self.rbuf.borrow_mut().split_to(total)))
    }

    /// Like [`Framed::read_frame`], but a frame longer than `max_len` is read past and returned with an empty
    /// payload (a departed client's rows during a drain) instead of refused.
    pub async fn read_frame_or_skip(&mut self, max_len: usize) -> Result<Frame, ReadError> {
        self.fill(5).await?;
        let len = self.length_at(1);
        if len < 4 {
            return Err(ReadError::BadLength(len));
        }
        if len as usize <= max_len {
            return self.read_frame(max_len).await;
        }
        let tag = self.rbuf.borrow()[0];
        let mut left = 1 + len as usize;
        loop {
            let buf: &mut BytesMut = self.rbuf.borrow_mut();
            let n = left.min(buf.len());
            buf.advance(n);
            left -= n;
            if left == 0 {
                return Ok(Frame::skipped(tag));
            }
            self.fill(1).await?;
        }
    }

    /// Reads one untagged startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest),
    /// refusing lengths outside `8..=max_len` before allocating, and decodes it.
    pub async fn read_startup(&mut self, max_len: usize) -> Result<StartupPacket, ReadError> {
        self.fill(4).await?;
        let len = self.length_at(0);
        if len < 8 || len as usize > max_len {
            return Err(ReadError::Refused(PgError::protocol_violation(format!(
                "invalid startup packet length {len}"
            ))));
        }
        self.fill(len as usize).await?;
        let packet = self.rbuf.borrow_mut().split_to(len as usize);
        decode_startup(&packet[4..]).map_err(ReadError::Refused)
    }
}

impl<S: AsyncWrite + Unpin, B> Framed<S, B> {
    /// Writes `bytes` and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends a FATAL error; the caller closes the connection next.
    pub async fn write_fatal(&mut self, err: &PgError) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        err.encode(&mut out);
        self.send(&out).await
    }

    /// Sends an ERROR inside a session, followed by ReadyForQuery with the transaction status `status`
    /// (`I`, `T` or `E`), as the protocol requires after an error outside an extended-protocol batch.
    pub async fn write_error(&mut self, err: &PgError, status: u8) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        err.encode(&mut out);
        messages::ready_for_query(&mut out, status);
        self.send(&out).await
    }
}

#[cfg(test)]
mod tests;
