//! Transaction mode: when the backend can go back to its pool. Only at a ReadyForQuery that says idle, with
//! no request in flight, no unsynced batch, no prepared-statement traffic of pgveil's own pending, the client
//! not pinned, and nothing buffered or half-framed in either direction (DESIGN.md "Trust boundary", Pools).

use super::Relay;
use super::run::Io;

impl Relay<'_> {
    /// The backend can be released now, as far as protocol state goes (always false in session mode).
    pub(super) fn releasable(&self) -> bool {
        match &self.txn {
            Some(t) => {
                t.pinned.is_none()
                    && !t.unsynced
                    && t.stmts.settled()
                    && self.state.in_flight == 0
                    && self.state.txn_status.is_idle()
            }
            None => false,
        }
    }

    /// Releasable, and no byte waits in the run's buffers or framers in either direction.
    pub(super) fn release_due(&self, io: &Io) -> bool {
        self.releasable()
            && io.cin.is_empty()
            && io.to_b.is_empty()
            && io.bin.is_empty()
            && !io.csplit.mid_frame()
            && !io.bsplit.mid_frame()
    }
}
