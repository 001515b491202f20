//! Frontend message checks PostgreSQL makes on every message header, made by pgveil before a frame is
//! forwarded: a frame longer than PostgreSQL accepts for its type is refused with 08P01 (as PostgreSQL would)
//! instead of reaching a backend that would drop the connection (08006 for the client). Also tells which
//! messages belong to the extended protocol, so the relay knows when a backend holds an unsynced batch.

use crate::proto::PgError;

/// PostgreSQL's own length limits per frontend message type (`PQ_LARGE_MESSAGE_LIMIT` and
/// `PQ_SMALL_MESSAGE_LIMIT` in postgres.c), length word included. A longer frame is refused with 08P01 as
/// PostgreSQL would, instead of being forwarded to a backend that would drop the connection.
pub fn max_frontend_len(t: u8) -> usize {
    match t {
        b'Q' | b'P' | b'B' | b'F' | b'd' => 0x3fff_fffe,
        _ => 10_000,
    }
}

/// Whether a frontend message type belongs to the extended protocol (answered only after a Sync).
pub fn extended_tag(t: u8) -> bool {
    matches!(t, b'P' | b'B' | b'D' | b'E' | b'C' | b'H')
}

/// Checks the frames starting at `bytes[0]` (whole frames, possibly a last partial one) against PostgreSQL's
/// length limits, and reports whether any is an extended-protocol message.
pub fn scan_frontend(bytes: &[u8]) -> Result<bool, PgError> {
    let mut extended = false;
    let mut off = 0;
    while off + 5 <= bytes.len() {
        let t = bytes[off];
        let len = i32::from_be_bytes([
            bytes[off + 1],
            bytes[off + 2],
            bytes[off + 3],
            bytes[off + 4],
        ]);
        if len < 4 || len as usize > max_frontend_len(t) {
            return Err(PgError::protocol_violation(format!(
                "invalid message length {len} for message type {}",
                char::from(t)
            )));
        }
        extended |= extended_tag(t);
        off += 1 + len as usize;
    }
    Ok(extended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(t: u8, len: i32) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn limits_follow_postgresql() {
        assert!(scan_frontend(&header(b'B', 1 << 30)).is_err());
        assert!(scan_frontend(&header(b'B', 0x3fff_fffe)).is_ok());
        assert!(scan_frontend(&header(b'S', 10_001)).is_err());
        assert!(scan_frontend(&header(b'Q', 3)).is_err());
        assert_eq!(scan_frontend(&header(b'E', 9)).ok(), Some(true));
        assert_eq!(scan_frontend(&header(b'd', 9)).ok(), Some(false));
    }
}
