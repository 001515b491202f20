//! Pipelining and Sync tracking: what the backend still owes the client. A client may send any number of
//! requests before reading an answer; each simple Query, Sync and FunctionCall is answered by exactly one
//! ReadyForQuery, and extended-protocol messages sent since the last Sync leave the backend in the middle of
//! a batch. The session's end and a transaction-mode release both read this state.

use crate::frontend::limits::extended_tag;
use crate::proto::TxnStatus;
use crate::proto::tags::frontend;

/// Protocol state that outlives one relay run (the backend's view of the conversation).
#[derive(Debug, Clone, Default)]
pub struct RelayState {
    /// Transaction status from the last ReadyForQuery.
    pub txn_status: TxnStatus,
    /// Query/Sync/FunctionCall messages sent whose ReadyForQuery has not arrived yet.
    pub in_flight: usize,
    /// True while a frame is only partly relayed in either direction.
    pub mid_frame: bool,
    /// Extended-protocol messages (Parse, Bind, Describe, Execute, Close, Flush) were sent since the last
    /// Sync: the backend may hold an open implicit transaction and portals, or skip everything until a Sync
    /// after an error. Such a backend must be drained before anything else runs on it.
    pub unsynced: bool,
}

impl RelayState {
    /// True when every response the backend owes has arrived and no frame is half relayed: after a drain of
    /// unsynced messages (see [`RelayState::unsynced`]) it can be reset and reused.
    pub fn backend_idle(&self) -> bool {
        self.in_flight == 0 && !self.mid_frame
    }

    /// A message the backend answers with a ReadyForQuery (Query, Sync, FunctionCall) was queued for it.
    pub(super) fn request_sent(&mut self) {
        self.in_flight += 1;
    }

    /// A ReadyForQuery with `status` arrived; returns whether it answered the last request in flight.
    pub(super) fn ready(&mut self, status: TxnStatus) -> bool {
        self.txn_status = status;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight == 0
    }

    /// A whole client frame with tag `t` was read: an extended-protocol message opens a batch, Sync closes it.
    pub(super) fn on_client_tag(&mut self, t: u8) {
        if extended_tag(t) {
            self.unsynced = true;
        } else if t == frontend::SYNC {
            self.unsynced = false;
        }
    }
}
