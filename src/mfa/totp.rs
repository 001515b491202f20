//! TOTP (RFC 6238) as every common authenticator app implements it: HMAC-SHA1, 6 digits, 30-second steps.
//! Codes are accepted for the current step and one step either side; which step matched is returned so the
//! caller can refuse replays (a step at or before the last accepted one). Comparisons are constant-time and
//! codes are never logged or put into errors.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use rand::RngExt;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

/// Seconds per time step.
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: usize = 6;
/// Steps accepted either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// Bytes of a newly generated secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
/// Issuer shown in authenticator apps.
pub const ISSUER: &str = "pgveil";

/// A TOTP shared secret. `Debug` never shows it.
#[derive(Clone)]
pub struct TotpSecret(Vec<u8>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([REDACTED])")
    }
}

impl TotpSecret {
    /// A fresh random secret.
    pub fn generate() -> TotpSecret {
        let bytes: [u8; SECRET_LEN] = rand::rng().random();
        TotpSecret(bytes.to_vec())
    }

    /// Wraps raw secret bytes (as decrypted from the control database).
    pub fn from_bytes(bytes: Vec<u8>) -> TotpSecret {
        TotpSecret(bytes)
    }

    /// The raw bytes (to be encrypted before storage).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// RFC 4648 base32 without padding, as typed into an authenticator app.
    pub fn base32(&self) -> String {
        data_encoding::BASE32_NOPAD.encode(&self.0)
    }

    fn totp(&self) -> TOTP {
        TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 0, STEP_SECS, self.0.clone())
    }

    /// The code for a time step (for tests and the demo; never logged).
    pub fn code_at_step(&self, step: u64) -> String {
        self.totp().generate(step * STEP_SECS)
    }

    /// The `otpauth://` URI for a QR code: issuer `pgveil`, account = the user's email.
    pub fn otpauth_uri(&self, account: &str) -> String {
        let label = format!("{ISSUER}:{account}");
        format!(
            "otpauth://totp/{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            urlencoding::encode(&label),
            self.base32(),
            urlencoding::encode(ISSUER),
        )
    }

    /// The step whose code equals `code`, among the current step at `now` and one either side; the latest
    /// one if several match. Every candidate is computed and compared in constant time.
    pub fn matching_step(&self, code: &str, now: SystemTime) -> Option<u64> {
        let code = normalize_code(code);
        let code = code.as_str();
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = step_at(now);
        let totp = self.totp();
        let mut found = None;
        for step in now.saturating_sub(SKEW_STEPS)..=now + SKEW_STEPS {
            let expected = totp.generate(step * STEP_SECS);
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                found = Some(step);
            }
        }
        found
    }
}

/// A code as typed: apps show `798 155` (sometimes `798-155`), so spaces and dashes are dropped.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect()
}

/// The time step containing `t`.
pub fn step_at(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        / STEP_SECS
}

/// A QR code for `uri`, as an SVG document and as a PNG (base64).
pub fn qr_codes(uri: &str) -> Option<(String, String)> {
    let code =
        qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build();
    let img = code
        .render::<image::Luma<u8>>()
        .min_dimensions(220, 220)
        .build();
    let mut png = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .ok()?;
    Some((svg, base64::engine::general_purpose::STANDARD.encode(png)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA1 secret "12345678901234567890", truncated to 6 digits.
        let s = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        assert_eq!(s.code_at_step(59 / 30), "287082");
        assert_eq!(s.code_at_step(1111111109 / 30), "081804");
        assert_eq!(s.code_at_step(20000000000 / 30), "353130");
    }

    #[test]
    fn window_is_plus_minus_one_step() {
        let s = TotpSecret::generate();
        let now = at(1_700_000_015);
        let cur = step_at(now);
        assert_eq!(s.matching_step(&s.code_at_step(cur), now), Some(cur));
        assert_eq!(
            s.matching_step(&s.code_at_step(cur - 1), now),
            Some(cur - 1)
        );
        assert_eq!(
            s.matching_step(&s.code_at_step(cur + 1), now),
            Some(cur + 1)
        );
        assert_eq!(s.matching_step(&s.code_at_step(cur - 2), now), None);
        assert_eq!(s.matching_step(&s.code_at_step(cur + 2), now), None);
        let spaced = format!(
            "{} {}",
            &s.code_at_step(cur)[..3],
            &s.code_at_step(cur)[3..]
        );
        assert_eq!(s.matching_step(&spaced, now), Some(cur), "as apps show it");
        assert_eq!(s.matching_step(&format!(" {spaced}\u{a0}"), now), Some(cur));
        assert_eq!(s.matching_step("12345", now), None);
        assert_eq!(s.matching_step("abcdef", now), None);
    }

    #[test]
    fn uri_and_qr() {
        let s = TotpSecret::from_bytes(vec![0; 20]);
        let uri = s.otpauth_uri("alice@acme.example");
        assert_eq!(
            uri,
            "otpauth://totp/pgveil%3Aalice%40acme.example?secret=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&issuer=pgveil&algorithm=SHA1&digits=6&period=30"
        );
        let (svg, png) = qr_codes(&uri).unwrap();
        assert!(svg.contains("<svg"));
        assert!(png.starts_with("iVBOR"), "PNG magic");
        assert_eq!(format!("{s:?}"), "TotpSecret([REDACTED])");
    }
}
