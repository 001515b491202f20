//! Which settings an inspected role may change, and to which values. Three kinds of settings matter to the
//! masking trust boundary (DESIGN.md "Trust boundary"):
//! - **Lexing.** pgveil parses SQL as UTF-8 with `standard_conforming_strings = on`. In a client-only
//!   multi-byte encoding (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) a lead byte can swallow a following backslash
//!   or quote, so the server would lex the same bytes into other tokens than pgveil did: a full masking
//!   bypass. So `client_encoding` is decided by an **allowlist**: only names PostgreSQL resolves to UTF8, with
//!   its own canonicalization (`clean_encoding_name`: keep ASCII letters and digits, lower-cased; then its
//!   alias table `pg_encname_tbl`, where only `unicode` and `utf8` are UTF8 — `windows932` is SJIS), and
//!   `standard_conforming_strings` only to a value PostgreSQL parses as true. `SQL_ASCII` (what psql sends
//!   under a `C` locale) is allowed too when the server encoding is UTF8 (or SQL_ASCII): PostgreSQL then
//!   converts nothing (`pg_any_to_server` only validates SQL_ASCII client text as the server encoding, and
//!   `pg_server_to_any` returns server text as it is), so the server lexes exactly the bytes it would lex
//!   under UTF8. Under another server encoding the bytes would be read as that encoding without conversion
//!   (a name pgveil reads as `é` would be `Ã©` to the server), so it is refused there, and wherever the
//!   server encoding is not known (fail closed).
//! - **Echo channels.** Rewritten statements can embed key material (pseudonym HMAC pads); messages below
//!   NOTICE echo statement text (`parse <unnamed>: ...`) and plans (`debug_print_plan`). So
//!   `client_min_messages` may only be `notice`, `warning` or `error`, and the `debug_*`, `trace_*`,
//!   `log_*`, library-loading and extension-logging settings are refused.
//! - **Identity and name resolution** (`role`, `session_authorization`, `search_path`, ...): refused.

/// Settings an inspected role may never change (any value).
const PROTECTED: &[&str] = &[
    "search_path",
    "role",
    "session_authorization",
    "backslash_quote",
    "session_replication_role",
    "row_security",
    "plpgsql.extra_errors",
    "local_preload_libraries",
    "session_preload_libraries",
];

/// Setting name prefixes refused the same way: they make the server print statements or plans
/// (`debug_print_parse`, `debug_print_plan`, `trace_*`, `log_*`, `auto_explain.*`, `pg_stat_statements.*`).
const PROTECTED_PREFIXES: &[&str] = &[
    "debug_",
    "trace_",
    "log_",
    "auto_explain.",
    "pg_stat_statements.",
];

/// The values of `client_min_messages` an inspected role may choose: none below NOTICE.
const MESSAGE_LEVELS: &[&str] = &["notice", "warning", "error"];

/// Why setting `name` to `value` is refused for an inspected role, if it is. `value` is `None` when it is not a
/// single constant (then settings whose value matters are refused: fail closed). Names are compared as
/// PostgreSQL compares them (case-insensitive). `server_encoding` is the tenant database's, when known.
pub fn refusal(name: &str, value: Option<&str>, server_encoding: Option<&str>) -> Option<String> {
    let name = name.to_ascii_lowercase();
    if PROTECTED.contains(&name.as_str()) || PROTECTED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Some(format!("setting \"{name}\" is protected"));
    }
    match name.as_str() {
        "client_encoding"
            if !value.is_some_and(|v| client_encoding_allowed(v, server_encoding)) =>
        {
            Some(
                "client_encoding must be UTF8 (or SQL_ASCII on a UTF8 database) for this role (pgveil parses SQL as UTF-8; rule client-encoding)"
                    .to_owned(),
            )
        }
        "standard_conforming_strings" if !value.is_some_and(parses_as_true) => Some(
            "standard_conforming_strings must stay on (pgveil parses SQL with it on)".to_owned(),
        ),
        "client_min_messages"
            if !value.is_some_and(|v| {
                MESSAGE_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(v))
            }) =>
        {
            Some(
                "client_min_messages may only be notice, warning or error (lower levels echo statement text)"
                    .to_owned(),
            )
        }
        _ => None,
    }
}

/// PostgreSQL's `clean_encoding_name`: ASCII letters and digits only, lower-cased.
pub fn clean_encoding_name(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether PostgreSQL resolves `name` to the UTF8 encoding: its cleaned form is one of the two UTF8 entries of
/// `pg_encname_tbl` (`unicode`, `utf8`), and the name is shorter than NAMEDATALEN as `pg_char_to_encoding`
/// requires.
pub fn is_utf8_encoding(name: &str) -> bool {
    name.len() < 64 && matches!(clean_encoding_name(name).as_str(), "utf8" | "unicode")
}

/// Whether PostgreSQL resolves `name` to SQL_ASCII (`pg_encname_tbl` has one entry, `sqlascii`).
pub fn is_sql_ascii_encoding(name: &str) -> bool {
    name.len() < 64 && clean_encoding_name(name) == "sqlascii"
}

/// Whether a server of encoding `server_encoding` (as it reports it: `UTF8`, `SQL_ASCII`, ...) lexes SQL_ASCII
/// client text exactly as UTF8 client text: no conversion happens in either case.
fn sql_ascii_is_transparent(server_encoding: Option<&str>) -> bool {
    matches!(server_encoding, Some("UTF8" | "SQL_ASCII"))
}

/// Whether an inspected role may use client encoding `name` on a server of encoding `server_encoding`.
pub fn client_encoding_allowed(name: &str, server_encoding: Option<&str>) -> bool {
    is_utf8_encoding(name)
        || (is_sql_ascii_encoding(name) && sql_ascii_is_transparent(server_encoding))
}

/// Whether PostgreSQL's `parse_bool` reads `value` as true (`on`, `1`, and case-insensitive prefixes of `true`
/// and `yes`).
pub fn parses_as_true(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    v == "on" || v == "1" || (!v.is_empty() && ("true".starts_with(&v) || "yes".starts_with(&v)))
}

/// Whether a value reported by the backend (ParameterStatus) is what pgveil parses under: `client_encoding`
/// `UTF8` (or `SQL_ASCII` when the reported `server_encoding` makes it the same bytes) and
/// `standard_conforming_strings` `on`. Other parameters are not judged (`true`).
pub fn reported_value_ok(name: &str, value: &str, server_encoding: Option<&str>) -> bool {
    match name {
        "client_encoding" => {
            value == "UTF8" || (value == "SQL_ASCII" && sql_ascii_is_transparent(server_encoding))
        }
        "standard_conforming_strings" => value == "on",
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_encoding_is_an_allowlist_with_postgres_canonicalization() {
        for ok in ["UTF8", "utf-8", "Unicode", "U.T.F-8", " utf8 ", "UNICODE"] {
            assert!(refusal("client_encoding", Some(ok), None).is_none(), "{ok}");
        }
        // SQL_ASCII: no conversion, so the same bytes as UTF8 on a UTF8 (or SQL_ASCII) server only.
        for ok in ["SQL_ASCII", "sql-ascii", "SqlAscii"] {
            for server in ["UTF8", "SQL_ASCII"] {
                assert!(
                    refusal("client_encoding", Some(ok), Some(server)).is_none(),
                    "{ok} on {server}"
                );
            }
            for server in [None, Some("LATIN1"), Some("EUC_JP")] {
                assert!(
                    refusal("client_encoding", Some(ok), server).is_some(),
                    "{ok} on {server:?}"
                );
            }
        }
        // Every client-only multi-byte encoding under every alias PostgreSQL knows, some single-byte ones,
        // spellings with punctuation, and non-constant values.
        for bad in [
            "SJIS",
            "Shift_JIS",
            "mskanji",
            "win932",
            "windows932",
            "Windows-932",
            "WINDOWS_936",
            "windows949",
            "windows950",
            "cp932",
            "BIG5",
            "GBK",
            "UHC",
            "GB18030",
            "JOHAB",
            "SHIFT_JIS_2004",
            "LATIN1",
            "SQL_ASCII_7",
            "ascii",
            "utf16",
            "",
        ] {
            assert!(
                refusal("client_encoding", Some(bad), Some("UTF8")).is_some(),
                "{bad}"
            );
        }
        assert!(refusal("CLIENT_ENCODING", None, Some("UTF8")).is_some());
        assert!(!is_utf8_encoding(&format!("utf8{}", "-".repeat(70))));
    }

    #[test]
    fn standard_conforming_strings_only_on() {
        for ok in ["on", "ON", "true", "t", "TRU", "yes", "y", "1"] {
            assert!(
                refusal("standard_conforming_strings", Some(ok), None).is_none(),
                "{ok}"
            );
        }
        for bad in ["off", "o", "0", "false", "no", "", "onn"] {
            assert!(
                refusal("standard_conforming_strings", Some(bad), None).is_some(),
                "{bad}"
            );
        }
        assert!(refusal("standard_conforming_strings", None, None).is_some());
    }

    #[test]
    fn message_levels_and_echo_settings() {
        for ok in ["notice", "WARNING", "error"] {
            assert!(
                refusal("client_min_messages", Some(ok), None).is_none(),
                "{ok}"
            );
        }
        for bad in ["debug2", "DEBUG", "log", "debug5", "info", ""] {
            assert!(
                refusal("client_min_messages", Some(bad), None).is_some(),
                "{bad}"
            );
        }
        for name in [
            "debug_print_plan",
            "Debug_Print_Parse",
            "debug_pretty_print",
            "trace_notify",
            "log_statement",
            "auto_explain.log_min_duration",
            "local_preload_libraries",
            "search_path",
        ] {
            assert!(refusal(name, Some("on"), None).is_some(), "{name}");
        }
        for name in ["application_name", "work_mem", "DateStyle", "TimeZone"] {
            assert!(refusal(name, Some("x"), None).is_none(), "{name}");
        }
    }

    #[test]
    fn reported_values() {
        let utf8 = Some("UTF8");
        assert!(reported_value_ok("client_encoding", "UTF8", utf8));
        assert!(!reported_value_ok("client_encoding", "SJIS", utf8));
        assert!(reported_value_ok("client_encoding", "SQL_ASCII", utf8));
        assert!(!reported_value_ok(
            "client_encoding",
            "SQL_ASCII",
            Some("LATIN1")
        ));
        assert!(!reported_value_ok("client_encoding", "SQL_ASCII", None));
        assert!(reported_value_ok("standard_conforming_strings", "on", utf8));
        assert!(!reported_value_ok(
            "standard_conforming_strings",
            "off",
            utf8
        ));
        assert!(reported_value_ok("TimeZone", "UTC", utf8));
    }
}
