//! Builders and decoders for the few messages pgveil creates or inspects. Everything else is relayed raw.

use bytes::{BufMut, BytesMut};

/// The tags of both directions in one namespace, as before [`super::tags`] named them by direction. Kept for
/// the startup and backend-reset code and the fuzz targets until they move to `tags::frontend` and
/// `tags::backend`; new code names a tag by the side that sends it.
pub mod tag {
    pub use crate::proto::tags::backend::{
        AUTHENTICATION, BACKEND_KEY_DATA, BIND_COMPLETE, CLOSE_COMPLETE, COMMAND_COMPLETE,
        ERROR_RESPONSE, NOTICE_RESPONSE, PARAMETER_STATUS, PARSE_COMPLETE, READY_FOR_QUERY,
    };
    pub use crate::proto::tags::frontend::{
        BIND, EXECUTE, FUNCTION_CALL, PARSE, PASSWORD, QUERY, SYNC, TERMINATE,
    };
}

fn frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    body(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut BytesMut, s: &[u8]) {
    out.extend_from_slice(s);
    out.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    frame(out, tag::AUTHENTICATION, |b| b.put_i32(0));
}

/// AuthenticationCleartextPassword: asks the client for its password (the pgveil token).
pub fn auth_cleartext(out: &mut BytesMut) {
    frame(out, tag::AUTHENTICATION, |b| b.put_i32(3));
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    frame(out, tag::PARAMETER_STATUS, |b| {
        cstr(b, name.as_bytes());
        cstr(b, value.as_bytes());
    });
}

/// BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    frame(out, tag::BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    frame(out, tag::READY_FOR_QUERY, |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: we speak 3.0 and none of the `_pq_.` options the client asked for.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unsupported: &[String]) {
    frame(out, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unsupported.len() as i32);
        for o in unsupported {
            cstr(b, o.as_bytes());
        }
    });
}

/// Simple Query.
pub fn query(out: &mut BytesMut, sql: &str) {
    frame(out, tag::QUERY, |b| cstr(b, sql.as_bytes()));
}

/// Parse.
pub fn parse(out: &mut BytesMut, name: &[u8], sql: &str, param_types: &[u8]) {
    frame(out, tag::PARSE, |b| {
        cstr(b, name);
        cstr(b, sql.as_bytes());
        b.extend_from_slice(param_types);
    });
}

/// Parse from a raw definition (`sql\0` followed by the parameter-type section), under `name`.
pub fn parse_def(out: &mut BytesMut, name: &[u8], def: &[u8]) {
    frame(out, tag::PARSE, |b| {
        cstr(b, name);
        b.extend_from_slice(def);
    });
}

/// Close of a statement (`kind` b'S') or portal (b'P').
pub fn close(out: &mut BytesMut, kind: u8, name: &[u8]) {
    frame(out, b'C', |b| {
        b.put_u8(kind);
        cstr(b, name);
    });
}

/// Describe of a statement (`kind` b'S') or portal (b'P').
pub fn describe(out: &mut BytesMut, kind: u8, name: &[u8]) {
    frame(out, b'D', |b| {
        b.put_u8(kind);
        cstr(b, name);
    });
}

/// Bind with a replaced statement name; `rest` is everything after the statement name, untouched.
pub fn bind_renamed(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    frame(out, tag::BIND, |b| {
        cstr(b, portal);
        cstr(b, statement);
        b.extend_from_slice(rest);
    });
}

/// A decoded Bind payload's names; `rest` is formats, parameters and result formats, untouched.
pub struct BindMsg<'a> {
    /// Portal name.
    pub portal: &'a [u8],
    /// Statement name.
    pub statement: &'a [u8],
    /// The remainder of the payload.
    pub rest: &'a [u8],
}

/// Decodes the names of a Bind payload.
pub fn decode_bind(payload: &[u8]) -> Option<BindMsg<'_>> {
    let (portal, rest) = read_cstr(payload)?;
    let (statement, rest) = read_cstr(rest)?;
    Some(BindMsg {
        portal,
        statement,
        rest,
    })
}

/// Decodes a Describe or Close payload: kind (`S` or `P`) and name.
pub fn decode_target(payload: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = payload.split_first()?;
    let (name, rest) = read_cstr(rest)?;
    (rest.is_empty() && matches!(kind, b'S' | b'P')).then_some((kind, name))
}

/// Bind of the unnamed statement to the unnamed portal, no parameters, text results.
pub fn bind_unnamed(out: &mut BytesMut) {
    frame(out, tag::BIND, |b| {
        cstr(b, b"");
        cstr(b, b"");
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
}

/// Execute of the unnamed portal, all rows.
pub fn execute_unnamed(out: &mut BytesMut) {
    frame(out, tag::EXECUTE, |b| {
        cstr(b, b"");
        b.put_i32(0);
    });
}

/// Sync.
pub fn sync(out: &mut BytesMut) {
    frame(out, tag::SYNC, |_| {});
}

/// Terminate.
pub fn terminate(out: &mut BytesMut) {
    frame(out, tag::TERMINATE, |_| {});
}

/// Reads a NUL-terminated string from the front of `buf`, returning it and the rest.
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// A decoded Parse payload: statement name, SQL text and the raw parameter-type section.
pub struct ParseMsg<'a> {
    /// Statement name (empty = unnamed).
    pub name: &'a [u8],
    /// SQL text, as sent.
    pub sql: &'a [u8],
    /// `int16 count` followed by `int32` OIDs, untouched.
    pub param_types: &'a [u8],
}

/// Decodes a Parse payload.
pub fn decode_parse(payload: &[u8]) -> Option<ParseMsg<'_>> {
    let (name, rest) = read_cstr(payload)?;
    let (sql, rest) = read_cstr(rest)?;
    if rest.len() < 2 {
        return None;
    }
    let n = i16::from_be_bytes([rest[0], rest[1]]);
    if n < 0 || rest.len() != 2 + 4 * n as usize {
        return None;
    }
    Some(ParseMsg {
        name,
        sql,
        param_types: rest,
    })
}

/// Decodes a Query payload into its SQL text.
pub fn decode_query(payload: &[u8]) -> Option<&[u8]> {
    let (sql, rest) = read_cstr(payload)?;
    rest.is_empty().then_some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roundtrip() {
        let mut out = BytesMut::new();
        parse(&mut out, b"s1", "select $1", &[0, 1, 0, 0, 0, 23]);
        let m = decode_parse(&out[5..]).unwrap();
        assert_eq!(m.name, b"s1");
        assert_eq!(m.sql, b"select $1");
        assert_eq!(m.param_types, &[0, 1, 0, 0, 0, 23]);
        assert!(decode_parse(&out[5..out.len() - 1]).is_none());
    }

    #[test]
    fn query_decode_rejects_trailing_bytes() {
        assert_eq!(decode_query(b"select 1\0"), Some(&b"select 1"[..]));
        assert_eq!(decode_query(b"select 1\0x"), None);
        assert_eq!(decode_query(b"select 1"), None);
    }
}
