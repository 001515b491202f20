use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

fn session() -> Arc<SessionInfo> {
    Arc::new(SessionInfo {
        client: "127.0.0.1:5000".into(),
        user: UserId::new("bob@acme.example"),
        startup_user: "bob".into(),
        tenant: TenantId::new("acme"),
        role: RoleName::new("analyst"),
    })
}

fn statement(rows: u64) -> Event {
    Event::Statement {
        session: session(),
        at: SystemTime::now(),
        tag: Some(AuditTag {
            fingerprint: "0123456789abcdef".into(),
            decision: "rewritten",
            code: "",
            rule: "",
            masked: vec!["public.payers.email -> email".to_owned()].into(),
        }),
        rows,
        duration: Duration::from_micros(1500),
        outcome: Outcome::Complete,
        code: None,
    }
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn file_sink_writes_every_event_and_reopens_after_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let a = Auditor::start(&AuditConfig {
        file: Some(path.clone()),
        queue: 1024,
    })
    .unwrap();
    for i in 0..500 {
        a.record(statement(i));
    }
    assert!(a.flush_blocking(Duration::from_secs(10)));
    let got = lines(&path);
    assert_eq!(got.len(), 500);
    let v = &got[7];
    assert_eq!(v["target"], "pgveil::audit");
    assert_eq!(v["span"]["user"], "bob@acme.example");
    assert_eq!(v["span"]["client"], "127.0.0.1:5000");
    let f = &v["fields"];
    assert_eq!(
        (&f["tenant"], &f["role"], &f["decision"], &f["rows"]),
        (
            &"acme".into(),
            &"analyst".into(),
            &"rewritten".into(),
            &7.into()
        )
    );
    assert_eq!(f["duration_us"], 1500);
    assert_eq!(f["fingerprint"], "0123456789abcdef");
    // Rotation: the file is moved away, SIGHUP reopens the path.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    a.record(statement(1));
    assert!(a.flush_blocking(Duration::from_secs(10)));
    a.reopen();
    a.record(statement(2));
    a.record(statement(3));
    assert!(a.flush_blocking(Duration::from_secs(10)));
    assert_eq!(lines(&rotated).len(), 501);
    let fresh = lines(&path);
    assert_eq!(fresh.len(), 2);
    assert_eq!(fresh[1]["fields"]["rows"], 3);
    assert_eq!(a.dropped(), 0);
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (a, rx) = Auditor::detached(4);
    for i in 0..10 {
        a.record(statement(i));
    }
    assert_eq!(a.dropped(), 6);
    let sink = writer::Sink::file(path.clone()).unwrap();
    let flag = a.reopen.clone();
    let t = std::thread::spawn(move || writer::run(rx, sink, flag));
    drop(a);
    t.join().unwrap();
    let got = lines(&path);
    assert_eq!(got.len(), 4);
    assert_eq!(got[3]["fields"]["rows"], 3);
}

/// A file record's exact JSON line (written straight from the event's fields): the shape of a tracing JSON
/// event in the session span, with sorted keys.
#[test]
fn file_record_is_the_tracing_json_shape() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_633_600_123_456);
    let mut e = statement(42);
    if let Event::Statement { at: a, .. } = &mut e {
        *a = at;
    }
    let mut out = Vec::new();
    writer::write_record(&mut out, &e).unwrap();
    let line = String::from_utf8(out).unwrap();
    let span = r#"{"client":"127.0.0.1:5000","name":"session","role":"analyst","startup_user":"bob","tenant":"acme","user":"bob@acme.example"}"#;
    let expected = format!(
        r#"{{"fields":{{"code":"","decision":"rewritten","duration_us":1500,"error":"","fingerprint":"0123456789abcdef","masked":"[\"public.payers.email -> email\"]","message":"statement","outcome":"complete","role":"analyst","rows":42,"rule":"","tenant":"acme"}},"level":"INFO","span":{span},"spans":[{span}],"target":"pgveil::audit","timestamp":"2025-12-02T00:00:00.123456Z"}}"#
    );
    assert_eq!(line, format!("{expected}\n"));

    let trip = Event::GuardTrip {
        session: session(),
        at,
        budget: "max_rows",
        limit: 1000,
        window: Some(Duration::from_secs(3600)),
        tag: None,
    };
    let mut out = Vec::new();
    writer::write_record(&mut out, &trip).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["fields"],
        serde_json::json!({"budget": "max_rows", "fingerprint": "", "limit": 1000,
            "message": "exfiltration guard tripped", "role": "analyst", "tenant": "acme", "window": "1h"})
    );
    assert_eq!(v["level"], "WARN");
}
