use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::*;
use crate::audit::Collector;
use crate::exfil::Budgets;
use crate::ids::{RoleName, TenantId, UserId};
use crate::proto::frame::Item;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn tally(budgets: &Budgets, user: &str) -> (Tally, Collector) {
    let (auditor, events) = Auditor::collecting();
    let session = Arc::new(SessionInfo {
        client: "127.0.0.1:1".into(),
        user: UserId::new(user),
        startup_user: user.into(),
        tenant: TenantId::new("acme"),
        role: RoleName::new("analyst"),
    });
    let window = budgets.user(&TenantId::new("acme"), &UserId::new(user));
    (
        Tally::new(SessionAudit { auditor, session }, window),
        events,
    )
}

fn tag() -> Option<AuditTag> {
    Some(AuditTag {
        fingerprint: "00112233aabbccdd".into(),
        decision: "rewritten",
        code: "",
        rule: "",
        masked: Vec::new().into(),
    })
}

fn limits(per_statement: Option<u64>, rows: Option<u64>) -> Option<Limits> {
    Some(Limits {
        max_rows_per_statement: per_statement,
        max_rows: rows,
        max_bytes: None,
        window: Duration::from_secs(60),
    })
}

/// What the client would get: the relay's loop over `bytes`, in short.
fn relay(
    t: &mut Tally,
    split: &mut FrameSplitter,
    l: Option<Limits>,
    bytes: &[u8],
) -> (Vec<u8>, Vec<String>, Option<PgError>) {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let ends = |x: u8| x == READY_FOR_QUERY || ends_statement(x);
    t.arm(split, l);
    loop {
        let frame = match split.next(&mut buf, ends).unwrap() {
            None => {
                t.absorb(split);
                return (out, errors, None);
            }
            Some(Item::Forward(b)) => {
                if !t.swallowing() {
                    out.extend_from_slice(&b);
                }
                continue;
            }
            Some(Item::Limit) => {
                t.on_limit(split);
                continue;
            }
            Some(Item::Discarded) => continue,
            Some(Item::Inspect(f)) => f,
        };
        if t.swallowed(frame[0]) {
            continue;
        }
        let body = &frame[5..];
        if frame[0] == READY_FOR_QUERY {
            if let Some(e) = t.on_ready(TxnStatus::from_byte(body[0]), split) {
                return (out, errors, Some(e));
            }
        } else if let EndAction::Replace(e) = t.on_end(frame[0], body, None, split) {
            errors.push(e.code().to_owned());
            continue;
        }
        out.extend_from_slice(&frame);
    }
}

fn rows(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| msg(b'D', format!("row{i}").as_bytes()))
        .collect()
}

#[test]
fn statements_get_rows_and_durations_in_order() {
    let b = Budgets::default();
    let (mut t, events) = tally(&b, "u");
    let mut split = FrameSplitter::counting(1 << 20);
    t.on_query(tag());
    t.on_query(None); // not audited (an unrestricted role's statement)
    let mut bytes = rows(3);
    bytes.extend(msg(b'C', b"SELECT 3\0"));
    bytes.extend(msg(b'Z', b"I"));
    bytes.extend(msg(b'C', b"SET\0"));
    bytes.extend(msg(b'Z', b"I"));
    let (out, errors, fatal) = relay(&mut t, &mut split, None, &bytes);
    assert_eq!(out, bytes);
    assert!(errors.is_empty() && fatal.is_none());
    let ev = events.events();
    assert_eq!(ev.len(), 1);
    match &ev[0] {
        Event::Statement {
            rows,
            outcome,
            tag: Some(_),
            ..
        } => {
            assert_eq!((*rows, *outcome), (3, Outcome::Complete))
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_statement_over_its_cap_is_stopped_after_the_cap_and_the_session_goes_on() {
    let b = Budgets::default();
    let (mut t, events) = tally(&b, "u");
    let mut split = FrameSplitter::counting(1 << 20);
    let l = limits(Some(2), None);
    t.on_query(tag());
    // The cancel landed: the backend ends the statement with 57014.
    let mut bytes = rows(5);
    bytes.extend(msg(
        b'E',
        b"SERROR\0C57014\0Mcanceling statement due to user request\0\0",
    ));
    bytes.extend(msg(b'Z', b"I"));
    let (out, errors, fatal) = relay(&mut t, &mut split, l, &bytes);
    let mut want = rows(2);
    want.extend(msg(b'Z', b"I"));
    assert_eq!(out, want);
    assert_eq!(errors, ["53400"]);
    // Its end was in the same read: no cancel is sent (it would hit the next statement).
    assert!(fatal.is_none() && !t.cancel);
    let ev = events.events();
    assert!(
        matches!(
            &ev[0],
            Event::GuardTrip {
                budget: "max_rows_per_statement",
                limit: 2,
                ..
            }
        ),
        "{ev:?}"
    );
    assert!(
        matches!(
            &ev[1],
            Event::Statement {
                rows: 2,
                outcome: Outcome::Error,
                ..
            }
        ),
        "{ev:?}"
    );
    // The next statement within the cap is relayed whole.
    t.on_query(tag());
    let mut bytes = rows(2);
    bytes.extend(msg(b'C', b"SELECT 2\0"));
    bytes.extend(msg(b'Z', b"I"));
    let (out, errors, fatal) = relay(&mut t, &mut split, l, &bytes);
    assert_eq!(out, bytes);
    assert!(errors.is_empty() && fatal.is_none() && !t.cancel);
}

#[test]
fn a_stopped_statement_that_completed_anyway_ends_the_session_only_inside_a_transaction() {
    let b = Budgets::default();
    let l = limits(Some(2), None);
    for (status, ends) in [(b"I", false), (b"T", true)] {
        let (mut t, _events) = tally(&b, "u");
        let mut split = FrameSplitter::counting(1 << 20);
        t.on_query(tag());
        let mut bytes = rows(4);
        bytes.extend(msg(b'C', b"SELECT 4\0"));
        bytes.extend(msg(b'Z', status));
        let (out, errors, fatal) = relay(&mut t, &mut split, l, &bytes);
        assert_eq!(errors, ["53400"]);
        assert_eq!(fatal.is_some(), ends);
        let mut want = rows(2);
        if !ends {
            want.extend(msg(b'Z', b"I"));
        }
        assert_eq!(out, want);
    }
    // Another statement of the same request ran after it: its effects would not match the error.
    let (mut t, _events) = tally(&b, "u");
    let mut split = FrameSplitter::counting(1 << 20);
    t.on_query(tag());
    let mut bytes = rows(4);
    bytes.extend(msg(b'C', b"SELECT 4\0"));
    bytes.extend(msg(b'C', b"INSERT 0 1\0"));
    bytes.extend(msg(b'Z', b"I"));
    let (_, _, fatal) = relay(&mut t, &mut split, l, &bytes);
    assert!(fatal.is_some());
}

#[test]
fn window_budgets_are_shared_by_a_users_sessions() {
    let b = Budgets::default();
    let l = limits(None, Some(3));
    let (mut one, _e1) = tally(&b, "u");
    let (mut two, _e2) = tally(&b, "u");
    let (mut other, _e3) = tally(&b, "v");
    let run = |t: &mut Tally, n: usize| {
        let mut split = FrameSplitter::counting(1 << 20);
        t.on_query(tag());
        let mut bytes = rows(n);
        bytes.extend(msg(b'E', b"SERROR\0C57014\0Mcanceled\0\0"));
        bytes.extend(msg(b'Z', b"I"));
        let mut ok = rows(n);
        ok.extend(msg(b'C', format!("SELECT {n}\0").as_bytes()));
        ok.extend(msg(b'Z', b"I"));
        // Ends with the CommandComplete when within budget, else the cancel's error.
        let input = if t
            .window
            .remaining(&l.unwrap(), tokio::time::Instant::now())
            .0
            >= n as u64
        {
            ok
        } else {
            bytes
        };
        relay(t, &mut split, l, &input).1
    };
    assert!(run(&mut one, 2).is_empty());
    assert_eq!(run(&mut two, 2), ["53400"]);
    assert!(run(&mut other, 3).is_empty());
}

#[test]
fn command_tags_give_row_counts() {
    assert_eq!(tag_rows(b"SELECT 12\0"), Some(12));
    assert_eq!(tag_rows(b"INSERT 0 5\0"), Some(5));
    assert_eq!(tag_rows(b"COPY 7\0"), Some(7));
    assert_eq!(tag_rows(b"CREATE TABLE\0"), None);
    assert_eq!(tag_rows(b"BEGIN\0"), None);
}
