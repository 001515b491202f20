//! Masking functions: quoting, HMAC, session-independent text, bounded shares, type checks.
use super::*;

fn text() -> ColumnType<'static> {
    ColumnType {
        sql_type: "text",
        family: TypeFamily::Text,
        base: "text",
    }
}

#[test]
fn literals_are_quoted() {
    assert_eq!(quote_literal("a'b\\c"), "'a''b\\c'");
    assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    let e = MaskFn::Redact {
        replacement: "x'); DROP TABLE t; --".into(),
    }
    .expression("\"c\"", text(), None)
    .unwrap();
    assert!(e.contains("'x''); DROP TABLE t; --'"), "{e}");
}

#[test]
fn hmac_matches_rfc4231_case_2() {
    let k = PseudonymKey::new(b"Jefe");
    assert_eq!(
        k.hmac_hex(b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert!(!format!("{k:?}").contains("Jefe"));
}

#[test]
fn text_forms_do_not_depend_on_session_settings() {
    let ty = |sql_type: &'static str, family, base: &'static str| ColumnType {
        sql_type,
        family,
        base,
    };
    let key = PseudonymKey::new(b"k");
    let p = MaskFn::Pseudonym { length: 16 };
    let e = |t| p.expression("\"c\"", t, Some(&key)).unwrap();
    let tz = e(ty(
        "timestamp with time zone",
        TypeFamily::Timestamp,
        "timestamptz",
    ));
    assert!(
        tz.contains("pg_catalog.timezone('UTC'") && tz.contains("to_char"),
        "{tz}"
    );
    assert!(e(ty("date", TypeFamily::Date, "date")).contains("'YYYY-MM-DD'"));
    assert!(
        e(ty("double precision", TypeFamily::Number, "float8")).contains("::pg_catalog.numeric")
    );
    assert!(e(ty("bytea", TypeFamily::Other, "bytea")).contains("encode(\"c\", 'hex')"));
    assert!(e(ty("interval", TypeFamily::Other, "interval")).contains("to_char(\"c\""));
    // Types whose text follows a setting pgveil cannot pin are refused, not guessed.
    for (t, f, b) in [
        ("money", TypeFamily::Number, "money"),
        ("mood", TypeFamily::Other, "mood"),
    ] {
        assert!(
            p.expression("\"c\"", ty(t, f, b), Some(&key)).is_err(),
            "{t}"
        );
    }
    let g = MaskFn::Generalize(Generalize::Year)
        .expression(
            "\"c\"",
            ty(
                "timestamp with time zone",
                TypeFamily::Timestamp,
                "timestamptz",
            ),
            None,
        )
        .unwrap();
    assert!(
        g.contains("pg_catalog.timezone('UTC', pg_catalog.date_trunc('year'"),
        "{g}"
    );
}

#[test]
fn functions_keep_a_bounded_share() {
    let partial = MaskFn::Partial {
        first: 2,
        last: 3,
        fill: "****".into(),
    }
    .expression("\"c\"", text(), None)
    .unwrap();
    assert!(
        partial.contains(">= 10 THEN"),
        "at most half shown: {partial}"
    );
    let pan = MaskFn::Pan { hide_length: true }
        .expression("\"c\"", text(), None)
        .unwrap();
    assert!(
        pan.contains("'************' ||") && !pan.contains("repeat"),
        "{pan}"
    );
    let email = MaskFn::Email { mask_domain: true }
        .expression("\"c\"", text(), None)
        .unwrap();
    assert!(
        email.contains("'****@****'") && !email.contains("substring"),
        "{email}"
    );
    let json = ColumnType {
        sql_type: "jsonb",
        family: TypeFamily::Json,
        base: "jsonb",
    };
    let j = MaskFn::JsonKeys {
        paths: vec![vec!["payer".into(), "Email".into()]],
        replacement: "x".into(),
        case_insensitive: true,
    }
    .expression("\"c\"", json, None)
    .unwrap();
    assert!(
        j.contains("WITH RECURSIVE") && j.contains("= 'email'") && j.contains("= 'payer'"),
        "{j}"
    );
}

#[test]
fn wrong_types_are_errors() {
    let date = ColumnType {
        sql_type: "date",
        family: TypeFamily::Date,
        base: "date",
    };
    assert!(
        MaskFn::Generalize(Generalize::Step(10))
            .expression("\"d\"", date, None)
            .is_err()
    );
    assert!(
        MaskFn::Generalize(Generalize::Year)
            .expression("\"d\"", date, None)
            .is_ok()
    );
    assert_eq!(
        MaskFn::Pseudonym { length: 16 }.expression("\"d\"", date, None),
        Err(MaskError::NoKey)
    );
}
