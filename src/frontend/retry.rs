//! Transparent retry of a batch whose backend died before answering any of it.
//!
//! A backend taken from a pool can die between the checkout check ([`crate::backend::health`]) and the
//! client's first message: `pg_terminate_backend`, a fast shutdown or the server's idle timeout, arriving a
//! moment too late to be seen at checkout. The batch is then sent once more on a fresh backend, invisibly to
//! the client, but only when PostgreSQL cannot have run any of it to completion:
//!
//! - the backend closed, or its socket failed, before a single byte of the batch was written to it; or
//! - the first message it answered with is `FATAL` `57P01` (administrator shutdown) or `57P05` (idle session
//!   timeout). PostgreSQL raises these at an interrupt check, before the statement it interrupts completes;
//!   a FATAL error aborts the open transaction; and every statement that did complete has its
//!   `CommandComplete` (or `ParseComplete`, ...) queued before the error. So when the error is the first
//!   message, nothing of the batch completed, and nothing of it was committed.
//!
//! Never retried: a batch after any byte of its answer reached the client; a bare EOF or socket error after
//! the batch was written (a crash, `SIGKILL`, an immediate shutdown, a network failure: the statement may
//! have committed before the backend died, and a retry could run a write twice); a shutdown announced by a
//! NoticeResponse (`pg_ctl stop -m immediate`, the end of a synchronous-replication wait: the latter comes
//! after a commit); anything but the first batch on a backend fresh from the pool (later batches depend on
//! state the dead backend held). In transaction mode only batches of simple `Query` messages are retried
//! (extended-protocol messages were translated against the dead backend's prepared statements); in session
//! mode the session's first batch, whatever its messages (it can only refer to what it creates itself).
//! Non-transactional effects of an interrupted statement (a sequence advanced, a `dblink` call) are repeated
//! as they would be by a client retrying.

use bytes::BytesMut;

use crate::proto::error::parse_fields;
use crate::proto::tags::backend;

/// Largest batch kept for a retry; a larger one is sent without a second chance.
pub const MAX_BATCH: usize = 1 << 20;

/// What a retry needs: the batch as sent to the backend, and whether any of it was written.
#[derive(Debug, Default)]
pub struct Retry {
    /// The bytes queued for the backend since the backend was checked out.
    pub batch: BytesMut,
    /// Some of `batch` was written to the backend.
    pub written: bool,
}

/// What the first bytes from a backend mean for a pending retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a whole first message yet: wait for more before relaying anything.
    Wait,
    /// The backend refused to run the batch: retry it on a fresh backend.
    Retry,
    /// A real answer: relay it; no retry any more.
    Answered,
}

/// Judges the first message the backend sent after the batch (`bin` holds what arrived so far).
pub fn first_message(bin: &[u8]) -> Verdict {
    let Some(&t) = bin.first() else {
        return Verdict::Wait;
    };
    if t != backend::ERROR_RESPONSE {
        return Verdict::Answered;
    }
    if bin.len() < 5 {
        return Verdict::Wait;
    }
    let len = i32::from_be_bytes([bin[1], bin[2], bin[3], bin[4]]);
    let Ok(len) = usize::try_from(len) else {
        return Verdict::Answered;
    };
    if !(4..=64 * 1024).contains(&len) {
        return Verdict::Answered; // not a shutdown message; the relay's own checks handle it
    }
    if bin.len() < 1 + len {
        return Verdict::Wait;
    }
    let fields = parse_fields(&bin[5..1 + len]);
    let field = |f: u8| fields.iter().find(|(t, _)| *t == f).map(|(_, v)| *v);
    let severity = field(b'V').or_else(|| field(b'S'));
    let fatal = severity == Some(b"FATAL".as_slice());
    if fatal && matches!(field(b'C'), Some(b"57P01" | b"57P05")) {
        Verdict::Retry
    } else {
        Verdict::Answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(severity: &str, code: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', "x"),
        ] {
            body.push(t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = vec![b'E'];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn only_a_leading_fatal_shutdown_is_retried() {
        assert_eq!(first_message(&error("FATAL", "57P01")), Verdict::Retry);
        assert_eq!(first_message(&error("FATAL", "57P05")), Verdict::Retry);
        assert_eq!(first_message(&error("ERROR", "57P01")), Verdict::Answered);
        assert_eq!(first_message(&error("FATAL", "57P02")), Verdict::Answered);
        assert_eq!(first_message(&error("FATAL", "08006")), Verdict::Answered);
        assert_eq!(first_message(&error("ERROR", "42P01")), Verdict::Answered);
        // A notice first (immediate shutdown, sync-rep wait cancelled after commit): answered.
        let mut notice = error("WARNING", "57P01");
        notice[0] = b'N';
        assert_eq!(first_message(&notice), Verdict::Answered);
        // CommandComplete first: something completed.
        assert_eq!(first_message(b"C\0\0\0\x0bINSERT\0"), Verdict::Answered);
        // Partial messages wait.
        let e = error("FATAL", "57P01");
        for cut in [0, 1, 4, 5, e.len() - 1] {
            assert_eq!(first_message(&e[..cut]), Verdict::Wait, "{cut}");
        }
    }
}
