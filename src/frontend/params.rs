//! Startup parameters a client sends (application_name, DateStyle, TimeZone, extra_float_digits,
//! client_encoding, search_path, `options=-c name=value`, ...) become `SET` statements on the backend that
//! serves the session. They are accepted, never rejected, except the few that would change who the session is
//! or how pgveil parses SQL.

use crate::proto::PgError;
use crate::proto::startup::StartupMessage;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Settings no client may set at startup: they change the session's identity or SQL parsing.
const PROTECTED: &[&str] = &[
    "role",
    "session_authorization",
    "standard_conforming_strings",
];

/// The settings requested by a startup message, in order, `options` expanded. Names are lower-cased.
pub fn requested_settings(msg: &StartupMessage) -> Result<Vec<(String, String)>, PgError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |name: &str, value: &str| -> Result<(), PgError> {
        let name = name.to_ascii_lowercase();
        if !valid_setting_name(&name) {
            return Err(PgError::unsupported_startup(format!(
                "invalid setting name {name:?}"
            )));
        }
        if PROTECTED.contains(&name.as_str())
            && !(name == "standard_conforming_strings" && value == "on")
        {
            return Err(PgError::startup_setting_refused(format!(
                "setting \"{name}\" at connection start is not allowed through pgveil"
            )));
        }
        out.retain(|(n, _)| n != &name);
        out.push((name, value.to_owned()));
        Ok(())
    };
    for (name, value) in &msg.params {
        if name.starts_with("_pq_.") || NOT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        push(name, value)?;
    }
    if let Some(options) = msg.get("options") {
        for (name, value) in parse_options(options)? {
            push(&name, &value)?;
        }
    }
    Ok(out)
}

/// Parses the `options` startup parameter: whitespace-separated `-c name=value` / `--name=value`, with
/// backslash escaping a following character (as libpq documents). Dashes in names become underscores, as in
/// the server.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            // The server splits on isspace(): \v too, which Rust's ASCII whitespace lacks.
            c if c.is_ascii_whitespace() || c == '\x0b' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let bad = |w: &str| {
        PgError::unsupported_startup(format!(
            "unsupported item {w:?} in the options startup parameter"
        ))
    };
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let assignment = if w == "-c" {
            it.next().ok_or_else(|| bad(w))?.as_str()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest
        } else if let Some(rest) = w.strip_prefix("--") {
            rest
        } else {
            return Err(bad(w));
        };
        let (name, value) = assignment.split_once('=').ok_or_else(|| bad(w))?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

fn valid_setting_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && name.len() <= 63
}

/// One statement applying validated settings with `pg_catalog.set_config(name, value, false)`, which takes
/// the value as the raw string a startup packet carries (`SET x TO 'a,b'` would instead turn the list
/// `search_path=a,b` into the single quoted name "a,b"). Literals are `E''` strings with `\` and `'` escaped,
/// which read the same whatever `standard_conforming_strings` says.
pub fn set_config_statement(settings: &[(&str, &str)]) -> String {
    let calls: Vec<String> = settings
        .iter()
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                e_literal(name),
                e_literal(value)
            )
        })
        .collect();
    format!("SELECT {}", calls.join(", "))
}

fn e_literal(value: &str) -> String {
    let mut sql = String::with_capacity(value.len() + 4);
    sql.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => sql.push_str("\\\\"),
            '\'' => sql.push_str("''"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn options_split_on_every_space_the_server_splits_on() {
        let got = parse_options("-c\x0bwork_mem=4MB\x0b-c\tsearch_path=app").unwrap();
        let want = [("work_mem", "4MB"), ("search_path", "app")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(got, want);
    }

    #[test]
    fn expands_options_and_keeps_common_params() {
        let m = msg(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "DBeaver 24"),
            ("DateStyle", "ISO"),
            (
                "options",
                "-c search_path=app,public --statement-timeout=5s -c\\ x=1 -cwork_mem=4MB",
            ),
            ("_pq_.command_protocol", "x"),
        ]);
        let got = requested_settings(&m).unwrap_err();
        // "-c\ x=1" makes the word "-c x=1", whose name " x" is invalid.
        assert_eq!(got.code(), "0A000");
        let m = msg(&[
            ("application_name", "DBeaver 24"),
            ("DateStyle", "ISO"),
            (
                "options",
                "-c search_path=app,public --statement-timeout=5s -cwork_mem=4MB -c a.b=x\\ y",
            ),
        ]);
        let got = requested_settings(&m).unwrap();
        assert_eq!(
            got,
            vec![
                ("application_name".into(), "DBeaver 24".into()),
                ("datestyle".into(), "ISO".into()),
                ("search_path".into(), "app,public".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "4MB".into()),
                ("a.b".into(), "x y".into()),
            ]
        );
    }

    #[test]
    fn refuses_identity_and_parsing_settings() {
        for (k, v) in [
            ("role", "postgres"),
            ("session_authorization", "x"),
            ("standard_conforming_strings", "off"),
        ] {
            assert_eq!(
                requested_settings(&msg(&[(k, v)])).unwrap_err().code(),
                "42501",
                "{k}"
            );
        }
        let opts = msg(&[("options", "-c role=postgres")]);
        assert_eq!(requested_settings(&opts).unwrap_err().code(), "42501");
        assert!(requested_settings(&msg(&[("standard_conforming_strings", "on")])).is_ok());
        assert!(requested_settings(&msg(&[("options", "-B 100")])).is_err());
    }

    #[test]
    fn set_config_statement_escapes() {
        assert_eq!(
            set_config_statement(&[("application_name", r"a'b\c"), ("search_path", "a,b")]),
            r"SELECT pg_catalog.set_config(E'application_name', E'a''b\\c', false), pg_catalog.set_config(E'search_path', E'a,b', false)"
        );
    }
}
