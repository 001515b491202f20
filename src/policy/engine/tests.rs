//! The masking engine: audit events, cache sharing, staleness.
use super::*;
use crate::policy::catalog::fixture;

/// An engine with the example policy (policies/payments.toml) and the fixture catalog for `acme`.
fn engine() -> (MaskingEngine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("payments.toml"),
        include_str!("../../../policies/payments.toml"),
    )
    .expect("write policy");
    let e = MaskingEngine::new(dir.path()).expect("policy");
    e.set_tenant(
        TenantId::new("acme"),
        TenantState {
            catalog: fixture::catalog(),
            key: Some(PseudonymKey::new(b"unit-test-key")),
        },
    );
    (e, dir)
}

/// A log sink for a test subscriber.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn audit_events_have_decision_rule_and_masked_columns_but_never_literals() {
    let (e, _dir) = engine();
    let (t, r) = (TenantId::new("acme"), RoleName::new("analyst"));
    let capture = Capture::default();
    let sink = capture.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(sub, || {
        for sql in [
            "SELECT email FROM payers WHERE full_name = 'Zqx-literal-1'",
            "SELECT email FROM payers WHERE full_name = 'Zqx-literal-2'", // from the plan
            "SELECT email FROM payers WHERE full_name = 'Zqx-literal-2'", // exact cache
            "SELECT * FROM pg_stats WHERE tablename = 'Zqx-literal-3'",
            "SELECT 'Zqx-literal-4' FROM WHERE",
            "SELECT 1 + 1",
        ] {
            e.check_cached(sql, &t, &r);
        }
    });
    let out = String::from_utf8(capture.0.lock().clone()).expect("utf-8");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("pgveil::audit"))
        .collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(
        !out.contains("Zqx-literal"),
        "a literal reached the audit log:\n{out}"
    );
    for l in &lines[..3] {
        assert!(
            l.contains("rewritten") && l.contains("public.payers.email"),
            "{l}"
        );
        assert!(l.contains("fingerprint="), "{l}");
    }
    assert!(
        lines[3].contains("refused")
            && lines[3].contains("denied-relation")
            && lines[3].contains("42501")
    );
    assert!(
        lines[4].contains("refused")
            && lines[4].contains("rule=\"parse\"")
            && lines[4].contains("42601")
    );
    assert!(lines[5].contains("allowed"), "{}", lines[5]);
}

#[test]
fn statements_differing_only_in_comments_share_cache_entries() {
    let (e, _dir) = engine();
    let (t, r) = (TenantId::new("acme"), RoleName::new("analyst"));
    let plain = |sql: &str| e.decide(sql, &t, &r).0;
    let want_masked = match plain("SELECT email FROM payers  WHERE id = 5") {
        Decision::Rewrite(s) => s,
        other => panic!("no rewrite: {other:?}"),
    };
    for i in 0..1000 {
        let masked = format!("SELECT email FROM payers /* trace={i} */ WHERE id = 5");
        match e.check_cached(&masked, &t, &r) {
            Decision::Rewrite(got) => {
                // The client's own comment is kept; the rest is the uncommented statement's rewrite.
                assert_eq!(got.replace(&format!("/* trace={i} */"), ""), want_masked);
            }
            other => panic!("{masked}: {other:?}"),
        }
        let allowed = format!("-- request {i}\nSELECT 1 + 1");
        assert!(matches!(e.check_cached(&allowed, &t, &r), Decision::Allow));
        let refused = format!("SELECT * FROM pg_stats /* {i} */");
        assert!(matches!(
            e.check_cached(&refused, &t, &r),
            Decision::Deny(_)
        ));
        // Comment markers inside a literal are not comments: the literal is, and masking holds.
        let literal = format!("SELECT email FROM payers WHERE full_name = '/* {i} */'");
        assert!(
            matches!(e.check_cached(&literal, &t, &r), Decision::Rewrite(s) if s.contains(&format!("'/* {i} */'")))
        );
    }
    let entries = e.cache.len() + e.plans.len();
    assert!(entries <= 8, "{entries} cache entries for 4 statements");
    // A comment cannot change the decision: a commented-out masked column is no column, a comment cannot
    // end a statement early, and a cached answer is the uncached one.
    for sql in [
        "SELECT 1 /* , email FROM payers */",
        "SELECT email /* x */ FROM payers -- ; SELECT 1",
        "SELECT email /* x */ FROM payers -- ; SELECT 2",
        "SELECT /* */ full_name, email FROM payers /* y */ WHERE id = 9",
    ] {
        let cached = format!("{:?}", e.check_cached(sql, &t, &r));
        assert_eq!(cached, format!("{:?}", plain(sql)), "{sql}");
    }
    assert!(matches!(
        e.check_cached("SELECT 1 /* , email FROM payers */", &t, &r),
        Decision::Allow
    ));
}

#[test]
fn a_stale_catalog_refuses_until_a_load_that_started_after_the_change() {
    let (e, _dir) = engine();
    let (t, r) = (TenantId::new("acme"), RoleName::new("analyst"));
    let sql = "SELECT email FROM payers WHERE id = 1";
    assert!(matches!(e.check_cached(sql, &t, &r), Decision::Rewrite(_)));
    let before_change = e.generation.load(Ordering::Acquire);
    e.schema_changed_in(&t);
    // Neither the exact-text cache nor the literal-normalized plan answers for a stale catalog.
    assert!(matches!(e.check_cached(sql, &t, &r), Decision::Deny(_)));
    let other = "SELECT email FROM payers WHERE id = 2";
    assert!(matches!(e.check_cached(other, &t, &r), Decision::Deny(_)));
    // A load that started before the change does not make it current.
    e.loaded(&t, before_change);
    assert!(e.is_stale(&t));
    assert!(matches!(e.check_cached(sql, &t, &r), Decision::Deny(_)));
    e.loaded(&t, e.generation.load(Ordering::Acquire));
    assert!(!e.is_stale(&t));
    // The refusals were not cached under the (unchanged) catalog version.
    assert!(matches!(e.check_cached(sql, &t, &r), Decision::Rewrite(_)));
    assert!(matches!(
        e.check_cached(other, &t, &r),
        Decision::Rewrite(_)
    ));
    assert_eq!(e.stats.refused.load(Ordering::Relaxed), 3);
    assert_eq!(e.stats.schema_changes.load(Ordering::Relaxed), 1);
}
