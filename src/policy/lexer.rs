//! PostgreSQL's scanner (libpg_query's `scan_tokens`), safe for every input: the one way pgveil lexes SQL
//! text outside the parse tree (statement spans, cache keys, the transaction-mode pinning scan).

use pg_query::protobuf::ScanToken;

/// The tokens of `sql` as PostgreSQL's lexer splits them (comments included), or the scanner's error.
///
/// pg_query 18.1's `scan_tokens` builds a slice from the C scanner's token pointer, which is null when the
/// text holds no token at all: undefined behaviour (found by the `rewrite_check` fuzz target under cargo-afl,
/// whose debug assertions check it, with the input `" "`). Text of only whitespace as PostgreSQL's lexer
/// defines it (space, tab, newline, carriage return, form feed, vertical tab) has no token: it never reaches
/// the scanner.
pub fn scan_tokens(sql: &str) -> Result<Vec<ScanToken>, pg_query::Error> {
    if sql.bytes().all(is_pg_space) {
        return Ok(Vec::new());
    }
    pg_query::scan_tokens(sql)
}

/// Whitespace in PostgreSQL's lexer (`space [ \t\n\r\f\v]`).
fn is_pg_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_tokens_scans_to_nothing() {
        for sql in ["", " ", "  \t\n\r\x0c\x0b "] {
            assert!(scan_tokens(sql).unwrap().is_empty(), "{sql:?}");
        }
    }

    #[test]
    fn comments_and_words_are_tokens() {
        assert_eq!(scan_tokens(" -- hi").unwrap().len(), 1);
        assert_eq!(scan_tokens("\x0bSELECT 1").unwrap().len(), 2);
    }
}
