//! Points in time written in the config file (`live_since`): a date or an RFC 3339 time.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer};

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time (`Z` or a `+HH:MM` / `-HH:MM` offset).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    let bad = |e: String| format!("{s:?} is not a date (YYYY-MM-DD) or RFC 3339 time: {e}");
    if s.len() == 10 {
        return humantime::parse_rfc3339_weak(&format!("{s}T00:00:00"))
            .map_err(|e| bad(e.to_string()));
    }
    // Without a zone (not RFC 3339, accepted as before): UTC.
    let (local, offset) = split_offset(s).unwrap_or((s, 0));
    let t = humantime::parse_rfc3339_weak(local).map_err(|e| bad(e.to_string()))?;
    let shifted = if offset >= 0 {
        t.checked_sub(Duration::from_secs(offset as u64))
    } else {
        t.checked_add(Duration::from_secs(offset.unsigned_abs()))
    };
    shifted.ok_or_else(|| bad("out of range".into()))
}

/// Splits an RFC 3339 time into its local part and its UTC offset in seconds (east positive).
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(local) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Some((local, 0));
    }
    let at = s.len().checked_sub(6).filter(|i| s.is_char_boundary(*i))?;
    let (local, off) = s.split_at(at);
    let sign = match off.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = off[1..].split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && h >= 0 && m >= 0).then_some((local, sign * (h * 3600 + m * 60)))
}

/// serde helper for an optional date/time field.
pub fn deserialize_opt_time<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SystemTime>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_time(&s).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dates() {
        assert!(parse_time("2026-03-01").is_ok());
        assert!(parse_time("2026-03-01T12:30:00Z").is_ok());
        assert!(parse_time("March").is_err());
        assert_eq!(
            parse_time("2026-03-01T12:30:00+02:00").unwrap(),
            parse_time("2026-03-01T10:30:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2026-03-01T00:30:00-05:30").unwrap(),
            parse_time("2026-03-01T06:00:00Z").unwrap()
        );
        assert!(parse_time("2026-03-01T12:30:00+25:00").is_err());
    }
}
