//! Transaction mode: the exact reading of a statement's session effects, from libpg_query's parse tree, for the
//! statements the fast scan ([`super::sqlscan`]) cannot read conclusively.
//!
//! The fast scan matches whole words in the raw text. Two spellings hide words from it: Unicode escapes in
//! identifiers and strings (`U&"pg_t\0065mp"`, `U&"set\005fconfig"`) and backslash escapes in `E''` strings
//! (a `DO` body or an `EXECUTE`d string spelled `E'pg_\x61dvisory_lock(1)'`). For text containing `&` or `\`,
//! the statement is parsed with the PostgreSQL grammar, which decodes both, and every decoded name and string
//! in the tree goes through the same word rules; statement kinds come from the tree's node types. A statement
//! that does not parse fails on the server too, so it changes nothing and the fast scan's result stands.

use serde_json::Value;

use super::sqlscan::{SqlEffects, scan_words};

/// `DeclareCursorStmt.options` bit for `WITH HOLD` (`CURSOR_OPT_HOLD` in parsenodes.h).
const CURSOR_OPT_HOLD: i64 = 0x0020;

/// Whether the fast scan may miss a word in `sql` (escapes that only the real lexer decodes).
pub fn inconclusive(sql: &[u8]) -> bool {
    sql.iter().any(|&b| b == b'&' || b == b'\\')
}

/// Adds the effects the parse tree of `sql` shows to `fx` (nothing when it does not parse).
pub fn add_effects(sql: &[u8], fx: &mut SqlEffects) {
    let Ok(text) = std::str::from_utf8(sql) else {
        return;
    };
    // Decoding, converting and walking the tree recurse per nesting level: deep statements get a deep stack
    // (a runtime thread's 2 MiB would overflow and abort the process).
    if crate::policy::rewrite::stack::deep_enough(text, || add_parsed(text, fx)).is_none() {
        fx.settings = true;
        fx.pins = fx.pins.or(Some("statement pgveil could not inspect"));
    }
}

/// The error PostgreSQL's grammar gives `sql` when it rejects the text as a syntax error (`None`: it parses, or
/// fails otherwise, e.g. too deep). The server parses a whole Query or Parse text before running any of it,
/// so such text changes nothing there either.
pub fn syntax_error(sql: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(sql).ok()?;
    let error =
        crate::policy::rewrite::stack::deep_enough(text, || match pg_query::parse(text, 0) {
            Err(pg_query::Error::Parse(message)) => Some(message),
            _ => None,
        })??;
    (!error.contains("stack depth")).then_some(error)
}

fn add_parsed(text: &str, fx: &mut SqlEffects) {
    let Ok(parsed) = pg_query::parse(text, 0) else {
        return;
    };
    let Ok(tree) = serde_json::to_value(&parsed.protobuf) else {
        // Cannot be read: on the safe side, as if it changed settings and pinned.
        fx.settings = true;
        fx.pins = fx.pins.or(Some("statement pgveil could not inspect"));
        return;
    };
    walk(&tree, fx);
}

fn walk(v: &Value, fx: &mut SqlEffects) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                node(k, child, fx);
                walk(child, fx);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| walk(i, fx)),
        Value::String(s) => scan_words(s.as_bytes(), fx),
        _ => {}
    }
}

fn node(key: &str, v: &Value, fx: &mut SqlEffects) {
    let pin = |fx: &mut SqlEffects, why| fx.pins = fx.pins.or(Some(why));
    match key {
        "VariableSetStmt" | "DoStmt" | "CallStmt" => fx.settings = true,
        "DiscardStmt" | "DeallocateStmt" => {
            fx.settings = true;
            fx.drops_statements = true;
        }
        "PrepareStmt" => pin(fx, "SQL PREPARE"),
        "ListenStmt" => pin(fx, "LISTEN"),
        "LoadStmt" => pin(fx, "LOAD"),
        "DeclareCursorStmt"
            if v["options"]
                .as_i64()
                .is_some_and(|o| o & CURSOR_OPT_HOLD != 0) =>
        {
            pin(fx, "cursor WITH HOLD")
        }
        "relpersistence" if v.as_str() == Some("t") => pin(fx, "temporary object"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::sqlscan::scan;
    use super::syntax_error;

    #[test]
    fn syntax_errors_are_told_from_text_that_parses() {
        assert_eq!(syntax_error(b"EXECUTE pgveil_ps_1"), None);
        assert_eq!(syntax_error(br#"DEALLOCATE U&"\0070gveil_ps_2""#), None);
        let e = syntax_error(b"EXECUTE pgveil_ps_1; SELECTCT 1").unwrap();
        assert!(e.contains("syntax error at or near \"SELECTCT\""), "{e}");
        let e = syntax_error(br#"EXECUTE U&"pgveil\005fps"#).unwrap();
        assert!(e.contains("unterminated quoted identifier"), "{e}");
        assert_eq!(syntax_error(b"\xff"), None, "not UTF-8: not decided here");
    }

    #[test]
    fn escaped_spellings_are_read_exactly() {
        let s = |sql: &str| scan(sql.as_bytes());
        assert_eq!(
            s(r#"CREATE TABLE U&"pg_t\0065mp".t AS SELECT 1 AS x"#).pins,
            Some("temporary object")
        );
        assert!(s(r#"SELECT U&"set\005fconfig"('application_name', 'x', false)"#).settings);
        assert_eq!(
            s(r#"SELECT U&"pg_advisory\005flock"(1)"#).pins,
            Some("session advisory lock")
        );
        assert_eq!(
            s(r"DO E'BEGIN PERFORM pg_\x61dvisory_lock(7); END'").pins,
            Some("session advisory lock")
        );
        assert!(s(r#"EXECUTE U&"pgveil\005fps\005f1""#).reserved);
        // Ordinary statements with `&` keep no effects.
        assert_eq!(s("SELECT 5 & 3, ARRAY[1] && ARRAY[1]"), Default::default());
    }

    #[test]
    fn deep_statements_do_not_overflow_the_stack() {
        // One byte per nesting level (cargo-afl's sqlscan finding), and `&` so the tree is read; this test
        // thread's 2 MiB stack is an event loop's. Each is read or refused by the grammar; an overflow
        // aborts the test binary.
        for levels in [500, 840, 2040, 4395, 9_000, 50_000] {
            let sql = format!(
                "SELECT 5 & 3 WHERE 2 IN (1,{}1) AND set_config('a', 'b', false) = ''",
                "+".repeat(levels)
            );
            let fx = scan(sql.as_bytes());
            assert!(fx.settings, "{levels}: {fx:?}");
        }
    }
}
