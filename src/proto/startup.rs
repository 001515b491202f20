//! The untagged startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest. They are
//! read (length capped) by [`crate::net::Framed::read_startup`] and decoded here.

use super::error::PgError;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const PROTOCOL_MAJOR_3: i32 = 3;

/// A decoded startup-phase packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    /// SSLRequest: the client wants TLS.
    SslRequest,
    /// GSSENCRequest: we answer 'N'.
    GssEncRequest,
    /// CancelRequest with the key the client was given.
    Cancel {
        /// Process id part of the key.
        pid: i32,
        /// Secret part of the key.
        secret: i32,
    },
    /// StartupMessage.
    Startup(StartupMessage),
}

/// StartupMessage parameters.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct StartupMessage {
    /// Minor protocol version the client asked for.
    pub minor: i32,
    /// Parameters in the order sent (user, database, options, application_name, GUCs, `_pq_.` options).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// Value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes the body of a startup-phase packet (after its length word).
pub fn decode_startup(body: &[u8]) -> Result<StartupPacket, PgError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(PgError::protocol_violation(
            "invalid length of startup packet",
        ));
    };
    match i32::from_be_bytes(*code) {
        SSL_REQUEST if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if rest.len() == 8 => match rest.as_chunks::<4>() {
            ([pid, secret], []) => Ok(StartupPacket::Cancel {
                pid: i32::from_be_bytes(*pid),
                secret: i32::from_be_bytes(*secret),
            }),
            _ => Err(PgError::protocol_violation("invalid startup packet")),
        },
        v if v >> 16 == PROTOCOL_MAJOR_3 => {
            decode_params(v & 0xffff, rest).map(StartupPacket::Startup)
        }
        v if v >> 16 < 1234 => Err(PgError::unsupported_startup(format!(
            "unsupported frontend protocol {}.{}: server supports 3.0",
            v >> 16,
            v & 0xffff
        ))),
        _ => Err(PgError::protocol_violation("invalid startup packet")),
    }
}

fn decode_params(minor: i32, mut rest: &[u8]) -> Result<StartupMessage, PgError> {
    let bad = || PgError::protocol_violation("invalid startup packet layout");
    let mut params = Vec::new();
    loop {
        let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
        if end == 0 {
            if rest.len() != 1 {
                return Err(bad());
            }
            break;
        }
        let name = std::str::from_utf8(&rest[..end])
            .map_err(|_| bad())?
            .to_owned();
        rest = &rest[end + 1..];
        let vend = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
        let value = String::from_utf8(rest[..vend].to_vec())
            .map_err(|_| PgError::protocol_violation("startup parameters must be valid UTF-8"))?;
        rest = &rest[vend + 1..];
        if params.iter().any(|(k, _)| k == &name) {
            return Err(PgError::protocol_violation(format!(
                "duplicate startup parameter {name:?}"
            )));
        }
        params.push((name, value));
    }
    Ok(StartupMessage { minor, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn decodes_startup_params() {
        let p = decode_startup(&packet(196608, b"user\0u\0database\0d\0\0")).unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!()
        };
        assert_eq!(m.get("user"), Some("u"));
        assert_eq!(m.get("database"), Some("d"));
        assert_eq!(m.minor, 0);
    }

    #[test]
    fn rejects_garbage() {
        for short in [&b""[..], b"\0", b"\0\x03\0"] {
            let e = decode_startup(short).unwrap_err();
            assert_eq!(e.code(), "08P01");
        }
        assert!(decode_startup(&packet(196608, b"user\0u\0database")).is_err());
        assert!(decode_startup(&packet(196608, b"user\0u\0\0junk")).is_err());
        assert!(decode_startup(&packet(0x0102_0304, b"")).is_err());
        assert!(decode_startup(&packet(196608, b"a\0b\0a\0c\0\0")).is_err());
        assert_eq!(
            decode_startup(&packet(80877103, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert!(matches!(
            decode_startup(&packet(80877102, &[0, 0, 0, 1, 0, 0, 0, 2])).unwrap(),
            StartupPacket::Cancel { pid: 1, secret: 2 }
        ));
    }
}
