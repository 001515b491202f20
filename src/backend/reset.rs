//! Statements pgveil itself runs on a backend, outside any client's conversation: the drain of a batch a client
//! left without Sync, the reset before a backend is reused (`ROLLBACK` when needed, then `DISCARD ALL`) and the
//! session settings a client asked for at startup.
//!
//! Every exchange here runs under the backend's `reset_timeout` (`pool.reset_timeout`): a backend that does not
//! answer in time is marked broken and cancelled, so its caller closes it instead of waiting forever or handing
//! it to the next client.

use bytes::BytesMut;

use super::BackendConn;
use crate::error::{Classified, ErrorKind};
use crate::net::{Framed, ReadError};
use crate::proto::error::parse_fields;
use crate::proto::messages::{self, tag};

/// Largest message (length word) accepted in an internal exchange.
const MAX_INTERNAL_MESSAGE: usize = 1 << 20;

/// The ErrorResponse a backend returned for an internal statement (its SQLSTATE and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendErrorResponse {
    /// SQLSTATE.
    pub code: String,
    /// Message.
    pub message: String,
}

/// Failures of internal exchanges; after any of these the connection is marked broken.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// I/O failure.
    #[error("backend i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("backend closed the connection")]
    Closed,
    /// Unexpected bytes from the server.
    #[error("backend protocol: {0}")]
    Protocol(&'static str),
    /// The server did not answer within `pool.reset_timeout`.
    #[error("backend did not answer within the reset timeout")]
    Timeout,
}

impl From<ReadError> for InternalError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => InternalError::Io(e),
            ReadError::Closed => InternalError::Closed,
            ReadError::BadLength(_) | ReadError::Refused(_) => {
                InternalError::Protocol("invalid message length")
            }
        }
    }
}

impl Classified for InternalError {
    fn kind(&self) -> ErrorKind {
        match self {
            InternalError::Io(_) | InternalError::Closed => ErrorKind::Io,
            InternalError::Protocol(_) => ErrorKind::Protocol,
            InternalError::Timeout => ErrorKind::Timeout,
        }
    }
}

/// The kind of a failed clean-up: the exchange's error, or [`ErrorKind::Unclean`] when the backend answered
/// but not as a clean one.
fn failure_kind<T>(r: &Result<T, InternalError>) -> ErrorKind {
    match r {
        Ok(_) => ErrorKind::Unclean,
        Err(e) => e.kind(),
    }
}

/// Runs each SQL string as its own simple Query (pipelined) and waits for all of them. Returns the first
/// server error, if any; ParameterStatus updates are recorded in `conn.params`. Returns the final
/// transaction status.
pub async fn run_queries(
    conn: &mut BackendConn,
    sqls: &[&str],
) -> Result<(u8, Option<BackendErrorResponse>), InternalError> {
    let limit = conn.reset_timeout;
    let r = tokio::time::timeout(limit, run_inner(conn, sqls, None))
        .await
        .unwrap_or(Err(InternalError::Timeout));
    if let Err(e) = &r {
        gone_wrong(conn, e);
    }
    r
}

/// Marks a connection broken after a failed internal exchange; a timeout also cancels what the server is doing
/// (the caller closes the connection).
fn gone_wrong(conn: &mut BackendConn, e: &InternalError) {
    conn.broken = true;
    if matches!(e, InternalError::Timeout) {
        metrics::counter!("pgveil_backend_reset_timeouts_total").increment(1);
        super::cancel::send_cancel_detached(conn.target.clone(), conn.key);
    }
}

/// Text rows of a query result.
pub type Rows = Vec<Vec<Option<String>>>;

/// Runs one simple Query and returns its rows (text format) with the final transaction status and the
/// server error, if any.
pub async fn query_rows(
    conn: &mut BackendConn,
    sql: &str,
) -> Result<(u8, Option<BackendErrorResponse>, Rows), InternalError> {
    let mut rows = Vec::new();
    let limit = conn.reset_timeout;
    let r = tokio::time::timeout(limit, run_inner(conn, &[sql], Some(&mut rows)))
        .await
        .unwrap_or(Err(InternalError::Timeout));
    if let Err(e) = &r {
        gone_wrong(conn, e);
    }
    r.map(|(status, err)| (status, err, rows))
}

/// Rolls back an open transaction; false (and the connection marked broken) when that did not leave it idle.
pub async fn rollback(conn: &mut BackendConn) -> bool {
    match run_queries(conn, &["ROLLBACK"]).await {
        Ok((b'I', None)) => true,
        other => {
            let kind = failure_kind(&other).as_label();
            tracing::warn!(kind, result = ?other.map(|(s, _)| char::from(s)).err(), "rollback failed; discarding connection");
            conn.broken = true;
            false
        }
    }
}

async fn run_inner(
    conn: &mut BackendConn,
    sqls: &[&str],
    mut rows: Option<&mut Rows>,
) -> Result<(u8, Option<BackendErrorResponse>), InternalError> {
    let mut out = BytesMut::new();
    for sql in sqls {
        messages::query(&mut out, sql);
    }
    let params = &mut conn.params;
    let mut framed = Framed::buffered(&mut conn.stream, &mut conn.rbuf);
    framed.send(&out).await?;
    let mut pending = sqls.len();
    let mut first_error = None;
    let mut status = b'I';
    while pending > 0 {
        let frame = framed.read_frame(MAX_INTERNAL_MESSAGE).await?;
        let payload = frame.payload();
        match frame.tag() {
            tag::READY_FOR_QUERY => {
                status = *payload
                    .first()
                    .ok_or(InternalError::Protocol("empty ReadyForQuery"))?;
                pending -= 1;
            }
            tag::PARAMETER_STATUS => {
                let (name, rest) = messages::read_cstr(payload)
                    .ok_or(InternalError::Protocol("bad ParameterStatus"))?;
                let (value, _) = messages::read_cstr(rest)
                    .ok_or(InternalError::Protocol("bad ParameterStatus"))?;
                params.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                );
            }
            tag::ERROR_RESPONSE if first_error.is_none() => {
                let mut e = BackendErrorResponse {
                    code: String::new(),
                    message: String::new(),
                };
                for (t, v) in parse_fields(payload) {
                    match t {
                        b'C' => e.code = String::from_utf8_lossy(v).into_owned(),
                        b'M' => e.message = String::from_utf8_lossy(v).into_owned(),
                        _ => {}
                    }
                }
                first_error = Some(e);
            }
            b'D' => {
                if let Some(rows) = rows.as_mut() {
                    let row =
                        decode_data_row(payload).ok_or(InternalError::Protocol("bad DataRow"))?;
                    rows.push(row);
                }
            }
            // CopyIn/CopyOut/CopyBoth responses cannot come from our statements.
            b'G' | b'H' | b'W' => {
                return Err(InternalError::Protocol(
                    "unexpected COPY from internal statement",
                ));
            }
            _ => {} // CommandComplete, NoticeResponse, RowDescription, DataRow, EmptyQueryResponse...
        }
    }
    Ok((status, first_error))
}

fn decode_data_row(mut p: &[u8]) -> Option<Vec<Option<String>>> {
    let n = i16::from_be_bytes(p.get(..2)?.try_into().ok()?);
    p = &p[2..];
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(p.get(..4)?.try_into().ok()?);
        p = &p[4..];
        if len < 0 {
            row.push(None);
        } else {
            let v = p.get(..len as usize)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
            p = &p[len as usize..];
        }
    }
    Some(row)
}

/// Makes a backend safe for the next session: rolls back an open transaction, then `DISCARD ALL` (drops temp
/// tables, prepared statements, cursors, advisory locks, LISTEN registrations; resets every setting to the
/// connection's startup defaults). Marks the connection broken when anything is off.
pub async fn reset(conn: &mut BackendConn, txn_status: u8) -> bool {
    let sqls: &[&str] = if txn_status == b'I' {
        &["DISCARD ALL"]
    } else {
        &["ROLLBACK", "DISCARD ALL"]
    };
    match run_queries(conn, sqls).await {
        Ok((b'I', None)) => true,
        Ok((status, err)) => {
            let kind = ErrorKind::Unclean.as_label();
            tracing::warn!(kind, status = %char::from(status), error = ?err, "backend reset failed; discarding connection");
            conn.broken = true;
            false
        }
        Err(e) => {
            tracing::warn!(kind = e.kind().as_label(), error = %e, "backend reset failed; discarding connection");
            false
        }
    }
}

/// Ends the extended-protocol batch a departed client left without Sync, so the backend is idle again:
/// `ROLLBACK` (a Query: outside an error it aborts the batch's implicit or explicit transaction, which a bare
/// Sync would commit), `Sync` (ends the skip-until-Sync state after an error; everything before it is ignored
/// then), `ROLLBACK` again (an explicit transaction aborted by that error), and a marker query whose answer,
/// recognised by a random column name, proves that every earlier response has been read. Open portals die
/// with the transaction. True when the backend ended idle; otherwise it is marked broken (and cancelled on
/// timeout).
pub async fn drain_unsynced(conn: &mut BackendConn) -> bool {
    let marker = format!("pgveil_drain_{:016x}", rand::random::<u64>());
    let limit = conn.reset_timeout;
    let r = tokio::time::timeout(limit, drain_inner(conn, &marker))
        .await
        .unwrap_or(Err(InternalError::Timeout));
    match r {
        Ok(b'I') => {
            metrics::counter!("pgveil_backend_drains_total", "result" => "idle").increment(1);
            true
        }
        other => {
            let kind = failure_kind(&other).as_label();
            tracing::warn!(kind, result = ?other.as_ref().map(|s| char::from(*s)), "draining an unsynced backend failed; discarding it");
            metrics::counter!("pgveil_backend_drains_total", "result" => "failed", "kind" => kind)
                .increment(1);
            if let Err(e) = &other {
                gone_wrong(conn, e);
            }
            conn.broken = true;
            false
        }
    }
}

async fn drain_inner(conn: &mut BackendConn, marker: &str) -> Result<u8, InternalError> {
    let mut out = BytesMut::new();
    messages::query(&mut out, "ROLLBACK");
    messages::sync(&mut out);
    messages::query(&mut out, "ROLLBACK");
    messages::query(&mut out, &format!("SELECT 1 AS \"{marker}\""));
    let mut framed = Framed::buffered(&mut conn.stream, &mut conn.rbuf);
    framed.send(&out).await?;
    let mut seen_marker = false;
    loop {
        // The payload of a message larger than an internal exchange allows (a departed client's rows) is
        // skipped. `MAX_INTERNAL_MESSAGE` counts the tag here.
        let frame = framed.read_frame_or_skip(MAX_INTERNAL_MESSAGE - 1).await?;
        let body = frame.payload();
        match frame.tag() {
            b'T' if body.windows(marker.len()).any(|w| w == marker.as_bytes()) => {
                seen_marker = true;
            }
            tag::READY_FOR_QUERY if seen_marker => {
                return body
                    .first()
                    .copied()
                    .ok_or(InternalError::Protocol("empty ReadyForQuery"));
            }
            _ => {} // the client's leftovers and our statements' own responses
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_classified_by_cause() {
        let closed = InternalError::from(ReadError::Closed);
        assert!(matches!(closed, InternalError::Closed));
        assert_eq!(closed.kind().as_label(), "io");
        let io = InternalError::from(ReadError::Io(std::io::ErrorKind::BrokenPipe.into()));
        assert_eq!(io.kind().as_label(), "io");
        assert_eq!(
            InternalError::from(ReadError::BadLength(-1))
                .kind()
                .as_label(),
            "protocol"
        );
        assert_eq!(InternalError::Timeout.kind().as_label(), "timeout");
        assert_eq!(
            failure_kind(&Ok::<u8, InternalError>(b'T')),
            ErrorKind::Unclean
        );
        assert_eq!(
            failure_kind(&Err::<u8, _>(InternalError::Protocol(
                "empty ReadyForQuery"
            ))),
            ErrorKind::Protocol
        );
    }
}
