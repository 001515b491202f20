//! Framing for the relay: splits a direction's byte stream into whole frames (for the few tags pgveil
//! inspects, capped before allocating) and pass-through byte runs (everything else, streamed without waiting
//! for a large frame to arrive whole, so big DataRow/CopyData frames are never buffered entirely).

use bytes::BytesMut;

/// Frames at most this large are forwarded whole; larger pass-through frames are streamed in chunks.
const STREAM_THRESHOLD: usize = 64 * 1024;

/// Framing errors (protocol violations by the peer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A length word below 4.
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// A message that must be inspected exceeds the cap.
    #[error("message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
}

/// The next unit of a byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole frame (tag, length and payload) whose tag the caller asked to inspect.
    Inspect(BytesMut),
    /// Bytes to forward unchanged (whole frames, or part of a large streamed frame).
    Forward(BytesMut),
    /// Counting splitters: the next frame is a counted one beyond the allowance (nothing was consumed).
    Limit,
    /// Counting splitters in discard mode: a counted frame (or CopyDone), or part of one, was dropped.
    Discarded,
}

/// Incremental frame splitter for one direction.
#[derive(Debug)]
pub struct FrameSplitter {
    pass_remaining: usize,
    max_inspected: usize,
    /// The streamed frame in progress is being dropped.
    pass_discard: bool,
    /// Count DataRow and CopyData frames (backend side, for the exfiltration guard and audit).
    counting: bool,
    /// Counted frames relayed since the last [`FrameSplitter::take_counts`].
    rows: u64,
    /// Their bytes (whole frames).
    bytes: u64,
    /// Counted frames still allowed before [`Item::Limit`].
    pub rows_left: u64,
    /// Bytes of counted frames still allowed before [`Item::Limit`].
    pub bytes_left: u64,
    /// Drop counted frames and CopyDone instead of forwarding them.
    pub discarding: bool,
}

/// Frames a counting splitter counts: DataRow and CopyData (one row each in COPY TO, see `crate::exfil`).
fn counted(tag: u8) -> bool {
    tag == b'D' || tag == b'd'
}

impl FrameSplitter {
    /// A splitter that refuses inspected frames larger than `max_inspected` bytes.
    pub fn new(max_inspected: usize) -> Self {
        Self {
            pass_remaining: 0,
            max_inspected,
            pass_discard: false,
            counting: false,
            rows: 0,
            bytes: 0,
            rows_left: u64::MAX,
            bytes_left: u64::MAX,
            discarding: false,
        }
    }

    /// A splitter that also counts DataRow and CopyData frames, within an allowance.
    pub fn counting(max_inspected: usize) -> Self {
        Self {
            counting: true,
            ..Self::new(max_inspected)
        }
    }

    /// Counted frames and their bytes since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.rows),
            std::mem::take(&mut self.bytes),
        )
    }

    /// True while in the middle of a streamed frame.
    pub fn mid_frame(&self) -> bool {
        self.pass_remaining > 0
    }

    /// Whether a frame of `tag` and `total` bytes is counted, and fits the allowance (then it is counted).
    fn admit(&mut self, tag: u8, total: usize) -> bool {
        if !self.counting || !counted(tag) {
            return true;
        }
        let total = total as u64;
        if self.rows_left == 0 || total > self.bytes_left {
            return false;
        }
        self.rows_left -= 1;
        self.bytes_left -= total;
        self.rows += 1;
        self.bytes += total;
        true
    }

    fn dropped(&self, tag: u8) -> bool {
        self.discarding && (counted(tag) || tag == b'c')
    }

    /// Takes the next item off the front of `buf`, or `None` when more bytes are needed.
    /// `inspect(tag)` says whether a frame with that tag must be handed over whole.
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        inspect: impl Fn(u8) -> bool,
    ) -> Result<Option<Item>, FrameError> {
        if self.pass_remaining > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = self.pass_remaining.min(buf.len());
            self.pass_remaining -= n;
            let bytes = buf.split_to(n);
            return Ok(Some(if self.pass_discard {
                Item::Discarded
            } else {
                Item::Forward(bytes)
            }));
        }
        if buf.len() < 5 {
            return Ok(None);
        }
        let tag = buf[0];
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(FrameError::BadLength(len));
        }
        let total = 1 + len as usize;
        if inspect(tag) {
            if total > self.max_inspected {
                return Err(FrameError::TooLarge {
                    len: total,
                    limit: self.max_inspected,
                });
            }
            if buf.len() >= total {
                return Ok(Some(Item::Inspect(buf.split_to(total))));
            }
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let drop = self.dropped(tag);
        if buf.len() < total && total <= STREAM_THRESHOLD {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        if !drop && !self.admit(tag, total) {
            return Ok(Some(Item::Limit));
        }
        if buf.len() < total {
            self.pass_remaining = total - buf.len();
            self.pass_discard = drop;
            let bytes = buf.split_to(buf.len());
            return Ok(Some(if drop {
                Item::Discarded
            } else {
                Item::Forward(bytes)
            }));
        }
        if drop {
            let _ = buf.split_to(total);
            return Ok(Some(Item::Discarded));
        }
        // Forward as many consecutive whole pass-through frames as are buffered, in one piece.
        let mut end = total;
        while buf.len() >= end + 5 {
            let t = buf[end];
            let l = i32::from_be_bytes([buf[end + 1], buf[end + 2], buf[end + 3], buf[end + 4]]);
            if l < 4 || inspect(t) || buf.len() < end + 1 + l as usize || self.dropped(t) {
                break;
            }
            if !self.admit(t, 1 + l as usize) {
                break;
            }
            end += 1 + l as usize;
        }
        Ok(Some(Item::Forward(buf.split_to(end))))
    }
}

/// Payload of a whole frame (after tag and length).
pub fn payload(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn groups_passthrough_and_isolates_inspected() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'D', b"row1"));
        buf.extend_from_slice(&msg(b'D', b"row2"));
        buf.extend_from_slice(&msg(b'Z', b"I"));
        let mut s = FrameSplitter::new(1024);
        let is_z = |t| t == b'Z';
        let a = s.next(&mut buf, is_z).unwrap().unwrap();
        assert_eq!(
            a,
            Item::Forward(BytesMut::from(
                &[msg(b'D', b"row1"), msg(b'D', b"row2")].concat()[..]
            ))
        );
        let b = s.next(&mut buf, is_z).unwrap().unwrap();
        assert_eq!(b, Item::Inspect(BytesMut::from(&msg(b'Z', b"I")[..])));
        assert_eq!(s.next(&mut buf, is_z).unwrap(), None);
    }

    #[test]
    fn streams_large_frames_without_buffering_them() {
        let big = vec![7u8; 200_000];
        let whole = msg(b'd', &big);
        let mut s = FrameSplitter::new(1024);
        let mut buf = BytesMut::from(&whole[..1000]);
        let mut got = Vec::new();
        while let Some(Item::Forward(b)) = s.next(&mut buf, |_| false).unwrap() {
            got.extend_from_slice(&b);
        }
        assert!(s.mid_frame());
        buf.extend_from_slice(&whole[1000..]);
        while let Some(Item::Forward(b)) = s.next(&mut buf, |_| false).unwrap() {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, whole);
        assert!(!s.mid_frame());
    }

    #[test]
    fn caps_inspected_frames_and_bad_lengths() {
        let mut s = FrameSplitter::new(100);
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            s.next(&mut buf, |_| true),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert_eq!(s.next(&mut buf, |_| true), Err(FrameError::BadLength(2)));
    }

    #[test]
    fn counts_rows_within_an_allowance_then_drops_them_in_discard_mode() {
        let mut buf = BytesMut::new();
        for r in [&b"r1"[..], b"r2", b"r3"] {
            buf.extend_from_slice(&msg(b'D', r));
        }
        buf.extend_from_slice(&msg(b'C', b"SELECT 3\0"));
        let mut s = FrameSplitter::counting(1024);
        s.rows_left = 2;
        let is_c = |t| t == b'C';
        let a = s.next(&mut buf, is_c).unwrap().unwrap();
        assert_eq!(
            a,
            Item::Forward(BytesMut::from(
                &[msg(b'D', b"r1"), msg(b'D', b"r2")].concat()[..]
            ))
        );
        assert_eq!(s.take_counts(), (2, 14));
        // The third row is over the allowance: nothing is consumed until the caller decides.
        assert_eq!(s.next(&mut buf, is_c).unwrap(), Some(Item::Limit));
        assert_eq!(s.next(&mut buf, is_c).unwrap(), Some(Item::Limit));
        s.discarding = true;
        assert_eq!(s.next(&mut buf, is_c).unwrap(), Some(Item::Discarded));
        assert!(matches!(
            s.next(&mut buf, is_c).unwrap(),
            Some(Item::Inspect(_))
        ));
        assert_eq!(s.take_counts(), (0, 0));
        // Byte allowance: a frame larger than what is left is over it; a streamed one is dropped whole.
        let mut s = FrameSplitter::counting(1024);
        s.bytes_left = 100;
        let big = msg(b'd', &vec![1u8; 100_000]);
        let mut buf = BytesMut::from(&big[..1000]);
        assert_eq!(s.next(&mut buf, |_| false).unwrap(), Some(Item::Limit));
        s.discarding = true;
        assert_eq!(s.next(&mut buf, |_| false).unwrap(), Some(Item::Discarded));
        buf.extend_from_slice(&big[1000..]);
        buf.extend_from_slice(&msg(b'Z', b"I"));
        assert_eq!(s.next(&mut buf, |_| false).unwrap(), Some(Item::Discarded));
        assert!(!s.mid_frame());
        assert_eq!(
            s.next(&mut buf, |_| false).unwrap(),
            Some(Item::Forward(BytesMut::from(&msg(b'Z', b"I")[..])))
        );
    }
}
