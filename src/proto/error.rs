//! Errors shown to clients: an allowlist of named constructors with real SQLSTATEs. Internal detail (backend
//! hosts, secret ids, stack traces) goes to logs, never into these.

use bytes::{BufMut, BytesMut};

/// ERROR keeps the session; FATAL ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Statement-level error; the session continues.
    Error,
    /// The connection is closed after sending.
    Fatal,
}

/// An error (or notice) as the client will see it. The fields are private: the named constructors below are
/// the only way to make one, so nothing outside this allowlist of SQLSTATEs can reach a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// ERROR or FATAL.
    severity: Severity,
    /// Five-character SQLSTATE.
    code: &'static str,
    /// Primary message.
    message: String,
    /// Optional hint.
    hint: Option<String>,
}

impl PgError {
    fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// 28P01: the token (password) is invalid.
    pub fn invalid_password(message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, "28P01", message)
    }
    /// 28000: the identity is not allowed in (unknown tenant or role, TLS required, ...).
    pub fn invalid_authorization(message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, "28000", message)
    }
    /// 3D000: the startup `database` is not this tenant's.
    pub fn unknown_database(db: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "3D000",
            format!("database \"{db}\" does not exist"),
        )
    }
    /// 08P01: protocol violation (closes the connection).
    pub fn protocol_violation(message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, "08P01", message)
    }
    /// 0A000 FATAL: an unsupported protocol feature at startup.
    pub fn unsupported_startup(message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, "0A000", message)
    }
    /// 0A000: an unsupported feature within a session.
    pub fn feature_not_supported(message: impl Into<String>) -> Self {
        Self::new(Severity::Error, "0A000", message)
    }
    /// 53300: connection limits reached.
    pub fn too_many_connections(message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, "53300", message)
    }
    /// 08006: the tenant's database cannot be reached (FATAL at startup).
    pub fn backend_unavailable() -> Self {
        Self::new(
            Severity::Fatal,
            "08006",
            "could not connect to the tenant database",
        )
        .with_hint("The database may be down or restarting; try again shortly.")
    }
    /// 08006: the tenant database's credentials could not be obtained (secret store unreachable past the
    /// staleness bound, or the secret missing or malformed). Which secret, and why, goes to the log only.
    pub fn credentials_unavailable() -> Self {
        Self::new(
            Severity::Fatal,
            "08006",
            "could not connect to the tenant database: its credentials are unavailable",
        )
        .with_hint(
            "pgveil cannot read the tenant's credentials from its secret store; try again later.",
        )
    }
    /// 08006: the backend connection was lost in the middle of the session.
    pub fn backend_lost() -> Self {
        Self::new(
            Severity::Fatal,
            "08006",
            "lost connection to the tenant database",
        )
    }
    /// 42501: the statement is refused by policy (the session stays usable).
    pub fn insufficient_privilege(message: impl Into<String>) -> Self {
        Self::new(Severity::Error, "42501", message)
    }
    /// 42501 FATAL: a startup setting is refused by policy.
    pub fn startup_setting_refused(message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, "42501", message)
    }
    /// 22023 FATAL: the server refused a setting the client asked for at startup.
    pub fn invalid_startup_setting(message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, "22023", message)
    }
    /// 42P01: a relation the statement names does not exist (PostgreSQL's own wording, so clients that
    /// catch UndefinedTable keep working).
    pub fn undefined_table(name: &str) -> Self {
        Self::new(
            Severity::Error,
            "42P01",
            format!("relation \"{name}\" does not exist"),
        )
    }
    /// 42601: syntax error.
    pub fn syntax_error(message: impl Into<String>) -> Self {
        Self::new(Severity::Error, "42601", message)
    }
    /// 42P05: the client already has a prepared statement of this name.
    pub fn duplicate_prepared_statement(name: &str) -> Self {
        Self::new(
            Severity::Error,
            "42P05",
            format!("prepared statement \"{name}\" already exists"),
        )
    }
    /// 26000: the client has no prepared statement of this name.
    pub fn unknown_prepared_statement(name: &str) -> Self {
        Self::new(
            Severity::Error,
            "26000",
            format!("prepared statement \"{name}\" does not exist"),
        )
    }
    /// 26000: the client has no unnamed prepared statement.
    pub fn unnamed_statement_missing() -> Self {
        Self::new(
            Severity::Error,
            "26000",
            "unnamed prepared statement does not exist",
        )
    }
    /// 22021: text is not valid UTF-8 and cannot be inspected.
    pub fn invalid_encoding() -> Self {
        Self::new(
            Severity::Error,
            "22021",
            "invalid byte sequence for encoding \"UTF8\"",
        )
    }
    /// 54000: a message larger than the configured cap.
    pub fn message_too_large(limit: usize) -> Self {
        Self::new(
            Severity::Fatal,
            "54000",
            format!("message exceeds the {limit}-byte limit"),
        )
    }
    /// 57P05: the client sent nothing for `listen.client_idle_timeout` outside a transaction.
    pub fn idle_session_timeout() -> Self {
        Self::new(
            Severity::Fatal,
            "57P05",
            "terminating connection due to idle-session timeout",
        )
    }
    /// 25P03: the client sent nothing for `listen.idle_transaction_timeout` inside a transaction.
    pub fn idle_in_transaction_timeout() -> Self {
        Self::new(
            Severity::Fatal,
            "25P03",
            "terminating connection due to idle-in-transaction timeout",
        )
    }
    /// 57P01: pgveil is shutting down.
    pub fn shutting_down() -> Self {
        Self::new(
            Severity::Fatal,
            "57P01",
            "terminating connection: pgveil is shutting down",
        )
    }
    /// 0A000 FATAL: the role's effective masking policy or the tenant's catalog changed since this session
    /// prepared statements or opened cursors, which keep the old decision.
    pub fn policy_changed() -> Self {
        Self::new(
            Severity::Fatal,
            "0A000",
            "pgveil: the masking policy or the database schema changed since this session prepared statements \
             or opened cursors; they were decided under the old version and are not used (rule policy-version)",
        )
        .with_hint("Reconnect: new statements are decided under the new version.")
    }
    /// 0A000 FATAL: the backend reported a client_encoding or standard_conforming_strings other than the one
    /// pgveil parses SQL under; the backend is discarded.
    pub fn lexing_changed(name: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "0A000",
            format!(
                "pgveil: the database session changed {name}, which pgveil parses SQL under (UTF8, \
                 standard_conforming_strings on); the session is ended (rule lexing-watchdog)"
            ),
        )
    }
    /// 08006 FATAL: a backend's session defaults (set by the tenant, e.g. `ALTER ROLE ... SET`) differ from
    /// what pgveil decides statements under; the backend is discarded.
    pub fn backend_refused(what: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "08006",
            format!(
                "pgveil: the tenant database session has an unexpected {what} (a role or database setting?); \
                 the connection was refused (rule backend-settings)"
            ),
        )
        .with_hint("Try again; pgveil reloads the tenant's catalog.")
    }
    /// 53400 (configuration_limit_exceeded, PostgreSQL's code for a configured limit hit while a statement runs,
    /// as `temp_file_limit`): the exfiltration guard stopped the statement. `window`: of a window budget.
    pub fn guard_exceeded(budget: &str, limit: u64, window: Option<std::time::Duration>) -> Self {
        match window {
            None => Self::new(
                Severity::Error,
                "53400",
                format!(
                    "pgveil exfiltration guard: the statement returned more than {budget} = {limit} rows; \
                     it was cancelled"
                ),
            )
            .with_hint("Narrow the statement (WHERE, LIMIT) or fetch in smaller statements."),
            Some(w) => Self::new(
                Severity::Error,
                "53400",
                format!(
                    "pgveil exfiltration guard: this user's reads within the {} window exceeded {budget} = \
                     {limit}; the statement was cancelled",
                    humantime::format_duration(w)
                ),
            )
            .with_hint("Reads are allowed again when the window ends."),
        }
    }
    /// 53400 FATAL: a statement the guard stopped had already completed inside a transaction block, whose
    /// state then differs from the error the client was sent: the session is ended (backend discarded).
    pub fn guard_session_ended() -> Self {
        Self::new(
            Severity::Fatal,
            "53400",
            "pgveil exfiltration guard: the stopped statement had already completed and its transaction could \
             not be failed in step with the error; the session is ended (its transaction is rolled back)",
        )
    }
    /// XX000 FATAL: an invariant of pgveil's own code did not hold; the session is ended (details in the log).
    pub fn internal() -> Self {
        Self::new(Severity::Fatal, "XX000", "pgveil: internal error")
    }
    /// ERROR or FATAL.
    pub fn severity(&self) -> Severity {
        self.severity
    }
    /// The SQLSTATE.
    pub fn code(&self) -> &'static str {
        self.code
    }
    /// The primary message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    /// The primary message, taken out.
    pub fn into_message(self) -> String {
        self.message
    }
    /// Is this FATAL?
    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    /// Encodes as an `ErrorResponse` ('E') frame.
    pub fn encode(&self, out: &mut BytesMut) {
        encode_fields(
            b'E',
            self.severity_text(),
            self.code,
            &self.message,
            self.hint.as_deref(),
            out,
        );
    }

    /// Encodes as a `NoticeResponse` ('N') frame with severity NOTICE.
    pub fn encode_notice(code: &'static str, message: &str, out: &mut BytesMut) {
        encode_fields(b'N', "NOTICE", code, message, None, out);
    }

    fn severity_text(&self) -> &'static str {
        match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity_text(),
            self.code,
            self.message
        )
    }
}

fn encode_fields(
    tag: u8,
    severity: &str,
    code: &str,
    message: &str,
    hint: Option<&str>,
    out: &mut BytesMut,
) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    let mut field = |t: u8, v: &str| {
        out.put_u8(t);
        // A NUL inside a field would end it early; PgError texts are ours, but be safe.
        out.extend_from_slice(v.replace('\0', "").as_bytes());
        out.put_u8(0);
    };
    field(b'S', severity);
    field(b'V', severity);
    field(b'C', code);
    field(b'M', message);
    if let Some(h) = hint {
        field(b'H', h);
    }
    out.put_u8(0);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Reads the fields of an `ErrorResponse`/`NoticeResponse` payload (after tag and length).
pub fn parse_fields(payload: &[u8]) -> Vec<(u8, &[u8])> {
    let mut fields = Vec::new();
    let mut rest = payload;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        fields.push((t, &tail[..end]));
        rest = &tail[end + 1..];
    }
    fields
}

/// Fields of an `ErrorResponse`/`NoticeResponse` that are kept as the backend sent them for roles with masked
/// columns: they are proven free of row data. Severity (`S`, `V`), SQLSTATE (`C`), the primary message (`M`),
/// the cursor position in the client's statement (`P`), the names of the schema object involved (`s`, `t`,
/// `c`, `d`, `n`: identifiers from the catalog) and the server source location (`F`, `L`, `R`).
/// Everything else can quote values: DETAIL (`Failing row contains (...)`), CONTEXT/WHERE (`W`: `JSON data,
/// line 1: ...` quotes the document being parsed), HINT (`H`), the internal query and position (`q`, `p`:
/// the rewritten statement, which can hold key material), and any field a later PostgreSQL adds.
const KEPT_FIELDS: &[u8] = b"SVCMPstcdnFLR";

/// Re-encodes an `ErrorResponse`/`NoticeResponse` frame (tag, length, fields) keeping only [`KEPT_FIELDS`]:
/// a DETAIL is replaced by `replacement`, every other field outside the allowlist is dropped. `None` when the
/// frame has nothing to withhold (forward it as is).
pub fn replace_detail(frame: &[u8], replacement: &str) -> Option<BytesMut> {
    let tag = *frame.first()?;
    let fields = parse_fields(frame.get(5..)?);
    if fields.iter().all(|(t, _)| KEPT_FIELDS.contains(t)) {
        return None;
    }
    let mut out = BytesMut::with_capacity(frame.len());
    out.put_u8(tag);
    out.put_i32(0);
    for (t, v) in fields {
        let v = match t {
            b'D' => replacement.as_bytes(),
            t if KEPT_FIELDS.contains(&t) => v,
            _ => continue,
        };
        out.put_u8(t);
        out.extend_from_slice(v);
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_is_replaced_and_other_fields_kept() {
        let mut raw = BytesMut::new();
        raw.put_u8(b'E');
        raw.put_i32(0);
        for (t, v) in [
            (b'S', "ERROR"),
            (b'C', "23502"),
            (b'M', "null value"),
            (b'D', "Failing row contains (1, secret)"),
            (b'n', "payers_name_nn"),
            (b'W', "JSON data, line 1: {\"email\": \"secret"),
            (b'H', "hint quoting secret"),
            (b'q', "SELECT 'secret'"),
            (b'p', "8"),
        ] {
            raw.put_u8(t);
            raw.extend_from_slice(v.as_bytes());
            raw.put_u8(0);
        }
        raw.put_u8(0);
        let len = (raw.len() - 1) as i32;
        raw[1..5].copy_from_slice(&len.to_be_bytes());
        let out = replace_detail(&raw, "withheld").expect("has detail");
        assert_eq!(
            i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
        let fields = parse_fields(&out[5..]);
        assert_eq!(fields.len(), 5);
        assert!(fields.iter().all(|(t, _)| !b"WHqp".contains(t)));
        assert!(fields.contains(&(b'D', b"withheld".as_slice())));
        assert!(fields.contains(&(b'n', b"payers_name_nn".as_slice())));
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
        let mut plain = BytesMut::new();
        PgError::syntax_error("x").encode(&mut plain);
        assert!(replace_detail(&plain, "withheld").is_none());
    }

    #[test]
    fn error_response_roundtrip() {
        let mut out = BytesMut::new();
        PgError::unknown_database("x")
            .with_hint("h")
            .encode(&mut out);
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, out.len());
        let fields = parse_fields(&out[5..]);
        assert!(fields.contains(&(b'C', &b"3D000"[..])));
        assert!(fields.contains(&(b'S', &b"FATAL"[..])));
        assert!(fields.contains(&(b'H', &b"h"[..])));
    }
}
