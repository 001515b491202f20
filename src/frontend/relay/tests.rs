//! The relay without PostgreSQL: the denial swap, pipelining and Sync tracking, the transaction-mode release
//! conditions, and whole runs over `tokio::io::duplex` streams with a scripted backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::run::Link;
use super::*;
use crate::backend::statements::BackendStatements;
use crate::backend::{BackendKey, BackendTarget};
use crate::frontend::txn::TxnCtx;
use crate::ids::{ClientAddr, RoleName, TenantId, UserId};
use crate::policy::{AllowAll, Decision};
use crate::proto::TxnStatus;
use crate::proto::error::parse_fields;
use crate::proto::frame::FrameSplitter;
use crate::proto::messages;
use crate::proto::tags::{backend, frontend};

/// Inspects every statement; refuses those that mention `secret` (42501).
struct DenySecret;

impl StatementPolicy for DenySecret {
    fn inspects(&self, _: &Identity) -> bool {
        true
    }
    fn check(&self, sql: &str, _: &Identity) -> crate::policy::Decision {
        if sql.contains("secret") {
            Decision::Deny(PgError::insufficient_privilege(
                "refused by the test policy",
            ))
        } else {
            Decision::Allow
        }
    }
}

pub(super) fn who() -> Identity {
    Identity {
        user: UserId::new("alice"),
        tenant: TenantId::new("acme"),
        role: RoleName::new("analyst"),
        mfa: true,
        token_id: "t1".into(),
        client: ClientAddr("127.0.0.1:1".parse().unwrap()),
    }
}

pub(super) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub(super) fn query(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    messages::query(&mut b, sql);
    b.to_vec()
}

pub(super) fn parse(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    messages::parse(&mut b, b"", sql, &[0, 0]);
    b.to_vec()
}

pub(super) fn ready(status: TxnStatus) -> Vec<u8> {
    let mut b = BytesMut::new();
    messages::ready_for_query(&mut b, status.byte());
    b.to_vec()
}

pub(super) fn complete(tag: &str) -> Vec<u8> {
    msg(backend::COMMAND_COMPLETE, format!("{tag}\0").as_bytes())
}

/// A backend ErrorResponse.
fn error(code: &str, message: &str) -> Vec<u8> {
    let body = format!("SERROR\0VERROR\0C{code}\0M{message}\0\0");
    msg(backend::ERROR_RESPONSE, body.as_bytes())
}

/// Whole frames of `bytes` as (tag, payload).
pub(super) fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        out.push((rest[0], rest[5..1 + len].to_vec()));
        rest = &rest[1 + len..];
    }
    assert!(rest.is_empty(), "trailing partial frame");
    out
}

/// A field of an ErrorResponse payload.
fn field(body: &[u8], f: u8) -> String {
    let fields = parse_fields(body);
    let v = fields.iter().find(|(t, _)| *t == f).map(|(_, v)| *v);
    String::from_utf8_lossy(v.unwrap_or_default()).into_owned()
}

/// The SQL of a Query payload.
pub(super) fn sql_of(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()
}

/// A relay driven frame by frame, without sockets.
pub(super) struct Harness<'a> {
    pub(super) relay: Relay<'a>,
    csplit: FrameSplitter,
    bsplit: FrameSplitter,
    stmts: BackendStatements,
    params: BTreeMap<String, String>,
}

impl<'a> Harness<'a> {
    pub(super) fn new(who: &'a Identity, policy: &'a dyn StatementPolicy) -> Self {
        Self {
            relay: Relay::new(who, policy, 1 << 20),
            csplit: FrameSplitter::new(1 << 20),
            bsplit: FrameSplitter::new(1 << 20),
            stmts: BackendStatements::default(),
            params: BTreeMap::new(),
        }
    }

    /// Client bytes: what goes to the backend, and whether the session goes on.
    pub(super) fn client(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        let mut cin = BytesMut::from(bytes);
        let (to_b, go_on) = self.client_in(&mut cin);
        assert!(!go_on || cin.is_empty(), "client bytes left over");
        (to_b, go_on)
    }

    /// Client bytes in `cin`, which keeps what the relay leaves there (held messages).
    pub(super) fn client_in(&mut self, cin: &mut BytesMut) -> (Vec<u8>, bool) {
        let (mut to_b, mut to_c) = (BytesMut::new(), BytesMut::new());
        let step = self.relay.on_client_bytes(
            cin,
            &mut self.csplit,
            &mut to_b,
            &mut to_c,
            &mut self.stmts,
        );
        (to_b.to_vec(), matches!(step, Step::Continue))
    }

    /// Backend bytes: what goes to the client.
    fn backend(&mut self, bytes: &[u8]) -> Vec<u8> {
        let (mut bin, mut to_c) = (BytesMut::from(bytes), BytesMut::new());
        self.relay
            .on_backend_bytes(
                &mut bin,
                &mut self.bsplit,
                &mut to_c,
                &mut self.params,
                &mut self.stmts,
            )
            .unwrap();
        assert!(bin.is_empty(), "backend bytes left over");
        to_c.to_vec()
    }
}

/// The marker a denial stand-in asks the backend for (`SELECT "pgveil:<nonce>"`).
fn marker(stand_in: &str) -> String {
    let start = stand_in.find('"').unwrap() + 1;
    let end = stand_in.rfind('"').unwrap();
    stand_in[start..end].to_owned()
}

#[test]
fn a_refused_query_fails_in_order_on_the_backend_and_its_error_is_swapped() {
    let who = who();
    let mut h = Harness::new(&who, &DenySecret);
    let mut batch = query("SELECT secret FROM t");
    batch.extend(query("SELECT 1"));
    let (to_b, go_on) = h.client(&batch);
    assert!(go_on);
    let sent = frames(&to_b);
    assert_eq!(sent.len(), 2, "both statements go to the backend, in order");
    assert!(
        sql_of(&sent[0].1).starts_with("SELECT \"pgveil:"),
        "{:?}",
        sql_of(&sent[0].1)
    );
    assert!(!sql_of(&sent[0].1).contains("secret"));
    assert_eq!(sql_of(&sent[1].1), "SELECT 1");
    assert_eq!(h.relay.state.in_flight, 2);

    let m = marker(&sql_of(&sent[0].1));
    let mut answer = error("42703", &format!("column \"{m}\" does not exist"));
    answer.extend(ready(TxnStatus::Idle));
    answer.extend(complete("SELECT 1"));
    answer.extend(ready(TxnStatus::Idle));
    let got = frames(&h.backend(&answer));
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"EZCZ");
    assert_eq!(field(&got[0].1, b'C'), "42501");
    assert_eq!(field(&got[0].1, b'M'), "refused by the test policy");
    assert!(!String::from_utf8_lossy(&got[0].1).contains("pgveil:"));
    assert!(h.relay.state.backend_idle());
    assert!(h.relay.denials.is_empty());
}

#[test]
fn a_real_error_is_relayed_while_a_denial_is_pending() {
    let who = who();
    let mut h = Harness::new(&who, &DenySecret);
    let mut batch = query("SELECT nope FROM t");
    batch.extend(query("SELECT secret FROM t"));
    let (to_b, _) = h.client(&batch);
    let sent = frames(&to_b);
    let m = marker(&sql_of(&sent[1].1));
    // The first statement fails on its own 42703: relayed unchanged, the denial still waits.
    let own = error("42703", "column \"nope\" does not exist");
    let mut answer = own.clone();
    answer.extend(ready(TxnStatus::Idle));
    let got = h.backend(&answer);
    assert_eq!(&got[..own.len()], &own[..]);
    assert_eq!(h.relay.denials.len(), 1);
    let mut answer = error("42703", &format!("column \"{m}\" does not exist"));
    answer.extend(ready(TxnStatus::Idle));
    let got = frames(&h.backend(&answer));
    assert_eq!(field(&got[0].1, b'C'), "42501");
}

#[test]
fn denials_skipped_after_an_error_are_forgotten_at_the_last_ready_for_query() {
    let who = who();
    let mut h = Harness::new(&who, &DenySecret);
    // An extended batch: the backend skips everything after the first error until Sync.
    let mut batch = parse("SELECT nope");
    batch.extend(parse("SELECT secret"));
    batch.extend(msg(frontend::SYNC, b""));
    let (to_b, _) = h.client(&batch);
    assert_eq!(frames(&to_b).len(), 3);
    assert_eq!(h.relay.denials.len(), 1);
    let mut answer = error("42601", "syntax error");
    answer.extend(ready(TxnStatus::Idle));
    h.backend(&answer);
    assert!(h.relay.denials.is_empty());
}

#[test]
fn a_failed_transaction_block_is_tracked_from_ready_for_query() {
    let who = who();
    let mut h = Harness::new(&who, &DenySecret);
    let (to_b, _) = h.client(&query("SELECT secret"));
    let m = marker(&sql_of(&frames(&to_b)[0].1));
    let mut answer = error("42703", &format!("column \"{m}\" does not exist"));
    answer.extend(ready(TxnStatus::Failed));
    h.backend(&answer);
    assert_eq!(h.relay.state.txn_status, TxnStatus::Failed);
    h.client(&query("ROLLBACK"));
    h.backend(&[complete("ROLLBACK"), ready(TxnStatus::Idle)].concat());
    assert_eq!(h.relay.state.txn_status, TxnStatus::Idle);
}

#[test]
fn pipelined_requests_are_counted_until_each_ready_for_query() {
    let who = who();
    let mut h = Harness::new(&who, &AllowAll);
    let mut bind = Vec::new();
    bind.extend(msg(frontend::BIND, b"\0\0\0\0\0\0\0\0"));
    bind.extend(msg(frontend::EXECUTE, b"\0\0\0\0\0"));
    let mut batch = parse("SELECT 1");
    batch.extend(&bind);
    // No Sync yet: the backend holds an unsynced batch.
    let (to_b, _) = h.client(&batch);
    assert_eq!(to_b, batch, "relayed untouched");
    assert!(h.relay.state.unsynced);
    assert_eq!(h.relay.state.in_flight, 0);
    let mut rest = msg(frontend::SYNC, b"");
    rest.extend(query("SELECT 2"));
    h.client(&rest);
    assert!(!h.relay.state.unsynced);
    assert_eq!(h.relay.state.in_flight, 2);
    h.backend(
        &[
            msg(b'1', b""),
            msg(b'2', b""),
            complete("SELECT 1"),
            ready(TxnStatus::Idle),
        ]
        .concat(),
    );
    assert_eq!(h.relay.state.in_flight, 1);
    assert!(!h.relay.state.backend_idle());
    h.backend(&[complete("SELECT 1"), ready(TxnStatus::Idle)].concat());
    assert!(h.relay.state.backend_idle());
}

#[test]
fn unknown_and_oversized_client_messages_end_the_session() {
    let who = who();
    let mut h = Harness::new(&who, &AllowAll);
    // An SSLRequest mid-session: refused on its first byte.
    let (to_b, go_on) = h.client(&[0, 0, 0, 8, 4, 210, 22, 47]);
    assert!(to_b.is_empty());
    assert!(!go_on);
    let mut h = Harness::new(&who, &AllowAll);
    let mut sync = vec![frontend::SYNC];
    sync.extend_from_slice(&20_000i32.to_be_bytes());
    let (to_b, go_on) = h.client(&sync);
    assert!(to_b.is_empty());
    assert!(!go_on);
}

pub(super) fn txn_harness<'a>(who: &'a Identity, policy: &'a dyn StatementPolicy) -> Harness<'a> {
    let mut h = Harness::new(who, policy);
    h.relay.txn = Some(TxnCtx::new(Vec::new(), None, 16));
    h
}

#[test]
fn a_transaction_mode_backend_is_releasable_only_at_idle_with_nothing_owed() {
    let who = who();
    let mut h = txn_harness(&who, &AllowAll);
    assert!(h.relay.releasable());
    h.client(&query("BEGIN"));
    assert!(!h.relay.releasable(), "an answer is owed");
    h.backend(&[complete("BEGIN"), ready(TxnStatus::InTransaction)].concat());
    assert!(!h.relay.releasable(), "inside a transaction block");
    h.client(&query("COMMIT"));
    h.backend(&complete("COMMIT"));
    assert!(!h.relay.releasable(), "ReadyForQuery still owed");
    h.backend(&ready(TxnStatus::Idle));
    assert!(h.relay.releasable());
}

#[test]
fn a_malformed_ready_for_query_keeps_the_backend_from_its_pool() {
    let who = who();
    let mut h = txn_harness(&who, &AllowAll);
    h.client(&query("SELECT 1"));
    h.backend(&[complete("SELECT 1"), msg(backend::READY_FOR_QUERY, b"")].concat());
    assert_eq!(h.relay.state.txn_status, TxnStatus::Failed);
    assert!(!h.relay.releasable(), "an empty ReadyForQuery is not idle");
    assert!(matches!(
        crate::frontend::finish::Leftover::of(&h.relay.state),
        crate::frontend::finish::Leftover::Synced(TxnStatus::Failed)
    ));
}

#[test]
fn a_pinned_or_unsynced_client_keeps_its_backend() {
    let who = who();
    let mut h = txn_harness(&who, &AllowAll);
    h.client(&msg(frontend::FLUSH, b""));
    assert!(
        !h.relay.releasable(),
        "extended-protocol messages without Sync"
    );
    h.client(&msg(frontend::SYNC, b""));
    h.backend(&ready(TxnStatus::Idle));
    assert!(h.relay.releasable());
    h.client(&query("LISTEN ch"));
    h.backend(&[complete("LISTEN"), ready(TxnStatus::Idle)].concat());
    assert!(!h.relay.releasable(), "LISTEN pins the client");
}

/// A scripted backend: answers each Query with `answer(sql)`; stops at EOF.
async fn fake_backend(mut s: DuplexStream, answer: impl Fn(&str) -> Vec<u8>) {
    let mut buf = BytesMut::new();
    loop {
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                break;
            }
            let frame = buf.split_to(1 + len);
            if frame[0] == frontend::QUERY {
                let reply = answer(&sql_of(&frame[5..]));
                if s.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads frames from the client's end until a ReadyForQuery (or EOF).
pub(super) async fn read_until_ready(s: &mut DuplexStream) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = BytesMut::new();
    loop {
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                break;
            }
            let frame = buf.split_to(1 + len);
            got.push((frame[0], frame[5..].to_vec()));
            if frame[0] == backend::READY_FOR_QUERY {
                return got;
            }
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(_) => {}
        }
    }
}

/// Runs `relay` over duplex streams: returns how the run ended. `client` drives the client's end.
pub(super) async fn run_duplex<F, Fut>(
    relay: &mut Relay<'_>,
    shutdown: bool,
    answer: impl Fn(&str) -> Vec<u8> + Send + 'static,
    client: F,
) -> RelayEnd
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (client_end, relay_client) = tokio::io::duplex(64 * 1024);
    let (relay_backend, backend_end) = tokio::io::duplex(64 * 1024);
    let backend_task = tokio::spawn(fake_backend(backend_end, answer));
    let client_task = tokio::spawn(client(client_end));
    let (_tx, mut rx) = watch::channel(shutdown);
    let target = Arc::new(BackendTarget {
        host: "127.0.0.1".into(),
        port: 1,
        dbname: "acme".into(),
        tls: None,
    });
    let (mut params, mut rbuf, mut statements, mut broken) = (
        BTreeMap::new(),
        BytesMut::new(),
        BackendStatements::default(),
        false,
    );
    let link = Link {
        params: &mut params,
        rbuf: &mut rbuf,
        statements: &mut statements,
        target: &target,
        key: BackendKey { pid: 1, secret: 2 },
        broken: &mut broken,
    };
    let mut cin = BytesMut::new();
    let end = relay
        .run_on(
            tokio::io::split(relay_client),
            tokio::io::split(relay_backend),
            &mut cin,
            link,
            &mut rx,
        )
        .await;
    client_task.await.unwrap();
    backend_task.abort();
    end
}

/// The fake backend's answer to a statement: a denial marker fails with 42703, anything else completes.
pub(super) fn answer(sql: &str) -> Vec<u8> {
    let mut out = match sql.strip_prefix("SELECT \"") {
        Some(rest) => error(
            "42703",
            &format!("column \"{}\" does not exist", rest.trim_end_matches('"')),
        ),
        None => complete("SELECT 1"),
    };
    out.extend(ready(TxnStatus::Idle));
    out
}

#[tokio::test]
async fn a_whole_session_over_duplex_streams_swaps_the_denial_and_ends_at_terminate() {
    let who = who();
    let mut relay = Relay::new(&who, &DenySecret, 1 << 20);
    let end = run_duplex(&mut relay, false, answer, |mut c| async move {
        c.write_all(&query("SELECT secret FROM t")).await.unwrap();
        let got = read_until_ready(&mut c).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, backend::ERROR_RESPONSE);
        assert_eq!(field(&got[0].1, b'C'), "42501");
        c.write_all(&query("SELECT 1")).await.unwrap();
        let got = read_until_ready(&mut c).await;
        assert_eq!(got[0].0, backend::COMMAND_COMPLETE);
        c.write_all(&msg(frontend::TERMINATE, b"")).await.unwrap();
    })
    .await;
    assert!(matches!(end, RelayEnd::Terminate), "{end:?}");
    assert!(relay.state.backend_idle());
}

#[tokio::test]
async fn a_transaction_mode_run_releases_its_backend_after_delivering_the_answer() {
    let who = who();
    let mut relay = Relay::new(&who, &AllowAll, 1 << 20);
    relay.txn = Some(TxnCtx::new(Vec::new(), None, 16));
    let end = run_duplex(&mut relay, false, answer, |mut c| async move {
        c.write_all(&query("SELECT 1")).await.unwrap();
        let got = read_until_ready(&mut c).await;
        let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"CZ");
    })
    .await;
    assert!(matches!(end, RelayEnd::Release), "{end:?}");
}

#[tokio::test]
async fn a_drain_ends_an_idle_session_with_57p01() {
    let who = who();
    let mut relay = Relay::new(&who, &AllowAll, 1 << 20);
    let end = run_duplex(&mut relay, true, answer, |mut c| async move {
        let got = read_until_ready(&mut c).await;
        assert_eq!(got.len(), 1);
        assert_eq!(field(&got[0].1, b'C'), "57P01");
    })
    .await;
    assert!(matches!(end, RelayEnd::Shutdown), "{end:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_ended_after_its_idle_timeout() {
    let who = who();
    let mut relay = Relay::new(&who, &AllowAll, 1 << 20);
    relay.idle.session = Some(std::time::Duration::from_secs(30));
    let end = run_duplex(&mut relay, false, answer, |mut c| async move {
        let got = read_until_ready(&mut c).await;
        assert_eq!(field(&got[0].1, b'C'), "57P05");
    })
    .await;
    assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
}
