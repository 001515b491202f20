//! The relay's loop: one `select!` over both sockets, with both directions buffered (high-water marks) so
//! a client that pipelines while the backend streams results can never deadlock it; the idle timeouts and
//! the shutdown drain; the transparent retry's bookkeeping; and what a run hands to the next one when it ends
//! (transaction mode runs once per transaction on the same relay).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Relay, RelayEnd, Step, pump};
use crate::backend::statements::BackendStatements;
use crate::backend::{BackendConn, BackendKey, BackendTarget};
use crate::frontend::retry::{self, Verdict};
use crate::net::ClientStream;
use crate::proto::PgError;
use crate::proto::frame::FrameSplitter;

/// Stop reading a side while this much is queued for the other.
const HIGH_WATER: usize = 256 * 1024;
/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;
/// Largest backend message pgveil inspects whole (ReadyForQuery, ParameterStatus, ErrorResponse).
const MAX_BACKEND_INSPECTED: usize = 16 * 1024 * 1024;
/// How often held messages are looked at again (see [`super::decide`]).
const HOLD_RECHECK: std::time::Duration = std::time::Duration::from_millis(5);

/// A run's buffers and framing state, both directions.
pub(super) struct Io {
    /// Client bytes read, not yet handled.
    pub(super) cin: BytesMut,
    /// Backend bytes read, not yet handled.
    pub(super) bin: BytesMut,
    /// Queued for the backend.
    pub(super) to_b: BytesMut,
    /// Queued for the client.
    pub(super) to_c: BytesMut,
    /// Framing of client bytes.
    pub(super) csplit: FrameSplitter,
    /// Framing of backend bytes.
    pub(super) bsplit: FrameSplitter,
    flush_b: bool,
    flush_c: bool,
    /// Set when the run is to end (after what is queued for the client is delivered).
    ending: Option<RelayEnd>,
    watch_shutdown: bool,
    /// An idle timeout is configured: keep `last_activity`.
    idle_on: bool,
    last_activity: Instant,
}

impl Io {
    fn end(&mut self, step: Step) {
        if let Step::End(end) = step {
            self.ending = Some(end);
        }
    }

    fn backend_lost(&mut self) {
        PgError::backend_lost().encode(&mut self.to_c);
        self.ending = Some(RelayEnd::BackendGone);
    }
}

/// The parts of the backend connection a run uses besides its socket.
pub(super) struct Link<'b> {
    pub(super) params: &'b mut BTreeMap<String, String>,
    pub(super) rbuf: &'b mut BytesMut,
    pub(super) statements: &'b mut BackendStatements,
    pub(super) target: &'b Arc<BackendTarget>,
    pub(super) key: BackendKey,
    pub(super) broken: &'b mut bool,
}

impl<'a> Relay<'a> {
    /// Relays until the client leaves, the backend fails, or shutdown is requested and the session is idle.
    /// `client_buf` holds bytes already read from the client.
    pub async fn run(
        &mut self,
        client: &mut ClientStream,
        client_buf: &mut BytesMut,
        backend: &mut BackendConn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> RelayEnd {
        let BackendConn {
            stream,
            params,
            rbuf,
            statements,
            target,
            key,
            broken,
            ..
        } = backend;
        let link = Link {
            params,
            rbuf,
            statements,
            target,
            key: *key,
            broken,
        };
        self.run_on(client.split(), stream.split(), client_buf, link, shutdown)
            .await
    }

    /// [`Relay::run`] over any pair of split streams.
    pub(super) async fn run_on<CR, CW, BR, BW>(
        &mut self,
        (mut cr, mut cw): (CR, CW),
        (mut br, mut bw): (BR, BW),
        client_buf: &mut BytesMut,
        mut link: Link<'_>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> RelayEnd
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        BR: AsyncRead + Unpin,
        BW: AsyncWrite + Unpin,
    {
        let mut io = self.open(client_buf, link.rbuf);
        // Bytes that arrived with the startup packet are processed before reading more.
        self.client_bytes(&mut io, link.statements);
        loop {
            if let Some(end) = io.ending.take() {
                // Deliver what is queued for the client (e.g. a FATAL error), then stop.
                if !io.to_c.is_empty() {
                    let _ = cw.write_all_buf(&mut io.to_c).await;
                    let _ = cw.flush().await;
                }
                return self.close(io, end, client_buf, link.rbuf);
            }
            if self.shutdown_due(&mut io, shutdown) {
                continue;
            }
            let idle_deadline = self.idle_deadline(&io);
            io.cin.reserve(READ_CHUNK);
            io.bin.reserve(READ_CHUNK);
            tokio::select! {
                () = sleep_until(idle_deadline), if idle_deadline.is_some() => self.idle_timeout(&mut io),
                () = tokio::time::sleep(HOLD_RECHECK), if self.holding() => {
                    self.client_bytes(&mut io, link.statements);
                }
                r = cr.read_buf(&mut io.cin), if io.to_b.len() < HIGH_WATER && !self.holding() => {
                    self.client_read(r, &mut io, link.statements);
                }
                r = br.read_buf(&mut io.bin), if io.to_c.len() < HIGH_WATER => self.backend_read(r, &mut io, &mut link),
                r = pump(&mut bw, &mut io.to_b), if !io.to_b.is_empty() || io.flush_b => self.backend_written(r, &mut io),
                r = pump(&mut cw, &mut io.to_c), if !io.to_c.is_empty() || io.flush_c => match r {
                    Ok(flushed) => io.flush_c = !flushed,
                    Err(_) => io.ending = Some(RelayEnd::ClientGone),
                },
                r = shutdown.changed(), if io.watch_shutdown && !*shutdown.borrow() => {
                    // The sender is gone: nobody can request a drain any more.
                    if r.is_err() {
                        io.watch_shutdown = false;
                    }
                }
            }
        }
    }

    /// The run's buffers: kept between runs (transaction mode runs once per transaction), so no allocation
    /// per run.
    fn open(&mut self, client_buf: &mut BytesMut, rbuf: &mut BytesMut) -> Io {
        let (to_b, to_c) = std::mem::take(&mut self.out_bufs);
        let bsplit = if self.tally.is_some() {
            FrameSplitter::counting(MAX_BACKEND_INSPECTED)
        } else {
            FrameSplitter::new(MAX_BACKEND_INSPECTED)
        };
        Io {
            cin: std::mem::take(client_buf),
            bin: std::mem::take(rbuf),
            to_b,
            to_c,
            csplit: FrameSplitter::new(self.max_query_bytes),
            bsplit,
            flush_b: false,
            flush_c: false,
            ending: None,
            watch_shutdown: true,
            idle_on: self.idle.session.is_some() || self.idle.transaction.is_some(),
            last_activity: Instant::now(),
        }
    }

    /// Ends a run: the buffers go back where the next run finds them; with [`RelayEnd::Retry`] the batch is
    /// queued again for the next backend as it was for this one.
    fn close(
        &mut self,
        mut io: Io,
        end: RelayEnd,
        client_buf: &mut BytesMut,
        rbuf: &mut BytesMut,
    ) -> RelayEnd {
        let retry = self.retry.take();
        if let (RelayEnd::Retry, Some(r)) = (&end, retry) {
            io.to_b = r.batch;
            *rbuf = BytesMut::new();
        } else {
            self.state.mid_frame |= io.csplit.mid_frame() || io.bsplit.mid_frame();
            self.state.mid_frame |= !io.to_b.is_empty() || !io.bin.is_empty();
            *rbuf = io.bin;
            io.to_b.clear();
        }
        io.to_c.clear();
        self.out_bufs = (io.to_b, io.to_c);
        *client_buf = io.cin;
        end
    }

    /// A drain was requested and the session is at an idle point: tell the client and end.
    fn shutdown_due(&mut self, io: &mut Io, shutdown: &watch::Receiver<bool>) -> bool {
        let due = *shutdown.borrow()
            && self.state.backend_idle()
            && self.state.txn_status.is_idle()
            && io.to_c.is_empty();
        if due {
            PgError::shutting_down().encode(&mut io.to_c);
            io.ending = Some(RelayEnd::Shutdown);
        }
        due
    }

    /// Client messages wait: the epoch of the session's prepared state is being determined, or the policy
    /// asked to decide the first one again shortly.
    fn holding(&self) -> bool {
        self.held_since.is_some() || self.deciding_later
    }

    /// When the client's silence ends the session: only on the client's turn (the backend has answered
    /// everything and nothing waits to be written), after the limit for the transaction status.
    fn idle_deadline(&self, io: &Io) -> Option<Instant> {
        let clients_turn = self.state.in_flight == 0
            && !self.holding()
            && io.to_b.is_empty()
            && io.to_c.is_empty()
            && !io.flush_b
            && !io.flush_c;
        if !clients_turn {
            return None;
        }
        let limit = if self.state.txn_status.is_idle() {
            self.idle.session
        } else {
            self.idle.transaction
        };
        limit.map(|d| io.last_activity + d)
    }

    fn idle_timeout(&mut self, io: &mut Io) {
        let err = if self.state.txn_status.is_idle() {
            PgError::idle_session_timeout()
        } else {
            PgError::idle_in_transaction_timeout()
        };
        tracing::info!(code = err.code(), "client idle timeout");
        self.state.mid_frame |= io.csplit.mid_frame();
        err.encode(&mut io.to_c);
        io.ending = Some(RelayEnd::IdleTimeout);
    }

    fn client_read(
        &mut self,
        r: std::io::Result<usize>,
        io: &mut Io,
        stmts: &mut BackendStatements,
    ) {
        match r {
            Ok(0) | Err(_) => {
                self.state.mid_frame |= io.csplit.mid_frame() || !io.cin.is_empty();
                io.ending = Some(RelayEnd::ClientGone);
            }
            Ok(_) => {
                if io.idle_on {
                    io.last_activity = Instant::now();
                }
                self.client_bytes(io, stmts);
            }
        }
    }

    /// Handles the client bytes read so far; what they queue for the backend is recorded for a retry while
    /// one is armed.
    pub(super) fn client_bytes(&mut self, io: &mut Io, stmts: &mut BackendStatements) {
        let before = io.to_b.len();
        let step = self.on_client_bytes(
            &mut io.cin,
            &mut io.csplit,
            &mut io.to_b,
            &mut io.to_c,
            stmts,
        );
        if let Some(r) = self.retry.as_mut() {
            r.batch.extend_from_slice(&io.to_b[before..]);
            if r.batch.len() > retry::MAX_BATCH || io.csplit.mid_frame() {
                self.retry = None; // too large to keep, or a frame is streamed past pgveil
            }
        }
        io.end(step);
    }

    /// Whether a failure of the backend now allows the retry: armed, and nothing was written yet or the
    /// failure was announced the way [`retry::first_message`] accepts.
    fn may_retry(&self, announced: bool, csplit: &FrameSplitter) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|r| (announced || !r.written) && !csplit.mid_frame())
    }

    fn backend_read(&mut self, r: std::io::Result<usize>, io: &mut Io, link: &mut Link<'_>) {
        match r {
            Ok(0) | Err(_) if self.may_retry(false, &io.csplit) => {
                io.ending = Some(RelayEnd::Retry)
            }
            Ok(0) | Err(_) => io.backend_lost(),
            Ok(_) => self.backend_data(io, link),
        }
    }

    fn backend_data(&mut self, io: &mut Io, link: &mut Link<'_>) {
        if self.retry.is_some() {
            // Armed: nothing is relayed before the first message says whether the batch ran.
            match retry::first_message(&io.bin) {
                Verdict::Wait => return,
                Verdict::Retry if self.may_retry(true, &io.csplit) => {
                    io.ending = Some(RelayEnd::Retry);
                    return;
                }
                Verdict::Retry | Verdict::Answered => {}
            }
        }
        self.retry = None;
        if io.idle_on {
            io.last_activity = Instant::now();
        }
        let r = self.on_backend_bytes(
            &mut io.bin,
            &mut io.bsplit,
            &mut io.to_c,
            link.params,
            link.statements,
        );
        if let Some(t) = self.tally.as_mut()
            && std::mem::take(&mut t.cancel)
        {
            // The guard stopped a statement. A cancel that lands late hits whatever the backend runs then: it
            // never serves another client (closed at the end of the session, or of the transaction in
            // transaction mode).
            crate::cancel::send_cancel_detached(link.target.clone(), link.key);
            *link.broken = true;
        }
        if let Err(e) = r {
            tracing::warn!(error = %e, "backend protocol error");
            io.backend_lost();
        } else if let Some(err) = self.fatal.take() {
            err.encode(&mut io.to_c);
            io.ending = Some(RelayEnd::BackendGone); // never reused
        } else if self.release_due(io) {
            io.ending = Some(RelayEnd::Release);
        }
    }

    fn backend_written(&mut self, r: std::io::Result<bool>, io: &mut Io) {
        match r {
            Ok(flushed) => {
                io.flush_b = !flushed;
                if let Some(r) = self.retry.as_mut() {
                    r.written = true;
                }
            }
            Err(_) if self.may_retry(false, &io.csplit) => io.ending = Some(RelayEnd::Retry),
            Err(_) => io.backend_lost(),
        }
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
