//! The transaction status a backend reports in every ReadyForQuery.

/// Transaction status from a ReadyForQuery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxnStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (statements are refused until it ends).
    Failed,
}

impl TxnStatus {
    /// The status a ReadyForQuery byte stands for. A byte that is none of `I`, `T`, `E` is read as
    /// [`TxnStatus::Failed`]: never idle, so a backend that sent it is not taken for a clean one.
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'I' => Self::Idle,
            b'T' => Self::InTransaction,
            _ => Self::Failed,
        }
    }

    /// The status of a ReadyForQuery payload. An empty (malformed) payload reads as [`TxnStatus::Failed`],
    /// like an unknown byte: a backend that sent it is never taken for an idle one, so it is not released to
    /// its pool mid-session (transaction mode) and gets `ROLLBACK` before any reuse, which must then end idle.
    pub fn from_payload(body: &[u8]) -> Self {
        body.first().map_or(Self::Failed, |&b| Self::from_byte(b))
    }

    /// The ReadyForQuery byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }

    /// Not in a transaction block.
    pub fn is_idle(self) -> bool {
        self == Self::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_unknown_is_not_idle() {
        for s in [TxnStatus::Idle, TxnStatus::InTransaction, TxnStatus::Failed] {
            assert_eq!(TxnStatus::from_byte(s.byte()), s);
        }
        assert_eq!(TxnStatus::from_byte(b'?'), TxnStatus::Failed);
        assert_eq!(TxnStatus::from_payload(b"T"), TxnStatus::InTransaction);
        assert_eq!(TxnStatus::from_payload(b"I"), TxnStatus::Idle);
    }

    #[test]
    fn empty_payload_is_not_idle() {
        let s = TxnStatus::from_payload(b"");
        assert_eq!(s, TxnStatus::Failed);
        assert!(!s.is_idle());
    }
}
