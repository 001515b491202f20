//! A statement the policy decides later (`StatementPolicy::try_check_versioned` → `None`, e.g. while the
//! tenant's catalog is loaded on demand): held where it is, with what follows it, and sent in order once
//! decided — in session and transaction mode, and by the run loop alone (no more client bytes needed).

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::tests::{
    Harness, answer, frames, msg, parse, query, read_until_ready, run_duplex, sql_of, txn_harness,
    who,
};
use super::*;
use crate::policy::{Decision, Versioned};
use crate::proto::tags::{backend, frontend};

/// Allows everything, but asks to decide statements naming `later` again, `waits` times in all.
struct DecideLater {
    waits: AtomicUsize,
    asked: AtomicUsize,
}

impl DecideLater {
    fn new(waits: usize) -> Self {
        Self {
            waits: AtomicUsize::new(waits),
            asked: AtomicUsize::new(0),
        }
    }
}

impl StatementPolicy for DecideLater {
    fn inspects(&self, _: &Identity) -> bool {
        true
    }
    fn check(&self, _: &str, _: &Identity) -> Decision {
        Decision::Allow
    }
    fn try_check_versioned(&self, sql: &str, who: &Identity) -> Option<Versioned> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if sql.contains("later")
            && self
                .waits
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| w.checked_sub(1))
                .is_ok()
        {
            return None;
        }
        Some(self.check_versioned(sql, who))
    }
}

#[test]
fn a_query_decided_later_waits_with_what_follows_it_then_goes_in_order() {
    let who = who();
    let policy = DecideLater::new(2);
    let mut h = Harness::new(&who, &policy);
    // Before it: a statement decided at once, sent at once.
    let mut batch = query("SELECT 0");
    let held = [query("SELECT later"), query("SELECT 1")].concat();
    batch.extend_from_slice(&held);
    let mut cin = BytesMut::from(&batch[..]);
    for _ in 0..2 {
        let (to_b, go_on) = h.client_in(&mut cin);
        assert!(go_on);
        assert_eq!(h.relay.state.in_flight, 1, "only the first was sent");
        assert!(to_b.is_empty() || frames(&to_b).len() == 1);
        assert_eq!(
            &cin[..],
            &held[..],
            "the held message and what follows stay, unchanged"
        );
        assert!(h.relay.deciding_later);
    }
    let (to_b, go_on) = h.client_in(&mut cin);
    assert!(go_on);
    assert!(cin.is_empty());
    assert!(!h.relay.deciding_later);
    let sent: Vec<String> = frames(&to_b).iter().map(|(_, b)| sql_of(b)).collect();
    assert_eq!(sent, ["SELECT later", "SELECT 1"]);
    assert_eq!(h.relay.state.in_flight, 3, "each counted once");
}

#[test]
fn a_parse_decided_later_in_transaction_mode_is_prepared_once_decided() {
    let who = who();
    let policy = DecideLater::new(1);
    let mut h = txn_harness(&who, &policy);
    let batch = [parse("SELECT later"), msg(frontend::SYNC, b"")].concat();
    let mut cin = BytesMut::from(&batch[..]);
    let (to_b, go_on) = h.client_in(&mut cin);
    assert!(go_on);
    assert!(to_b.is_empty());
    assert_eq!(&cin[..], &batch[..]);
    let (to_b, _) = h.client_in(&mut cin);
    assert!(cin.is_empty());
    let tags: Vec<u8> = frames(&to_b).iter().map(|(t, _)| *t).collect();
    assert_eq!(
        tags, b"PS",
        "the Parse (prepared under the client's name), then Sync"
    );
    assert_eq!(h.relay.state.in_flight, 1);
}

#[tokio::test]
async fn the_run_loop_decides_a_held_statement_again_by_itself() {
    let who = who();
    let policy = DecideLater::new(3);
    let mut relay = Relay::new(&who, &policy, 1 << 20);
    let run = run_duplex(&mut relay, false, answer, |mut c| async move {
        // One write: nothing more arrives from the client while the statement waits.
        c.write_all(&query("SELECT later")).await.unwrap();
        let got = read_until_ready(&mut c).await;
        let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, [backend::COMMAND_COMPLETE, backend::READY_FOR_QUERY]);
        c.write_all(&msg(frontend::TERMINATE, b"")).await.unwrap();
    });
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("the held statement was never decided again");
    assert!(matches!(end, RelayEnd::Terminate), "{end:?}");
    assert_eq!(policy.waits.load(Ordering::Acquire), 0);
    assert!(policy.asked.load(Ordering::Acquire) >= 4);
}
