//! Forced 2FA: from a tenant's `live_since` + 7 days every user needs MFA. Before that, users without MFA
//! are admitted with a countdown notice; tenants may also require MFA at once (`require_mfa`).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer};

use crate::config::TenantConfig;

/// How long after going live users may still work without MFA.
pub const GRACE_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a tenant requires of a session's authentication, as of some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaRequirement {
    /// Test data only: MFA optional, no notice.
    Optional,
    /// MFA will be required at `deadline`; until then sessions without it get a notice.
    Grace {
        /// When MFA becomes mandatory.
        deadline: SystemTime,
        /// Whole days left, rounded up (1 on the last day).
        days_left: u64,
    },
    /// MFA is mandatory.
    Required,
}

impl MfaRequirement {
    /// The requirement of `tenant` at `now`.
    pub fn of(tenant: &TenantConfig, now: SystemTime) -> MfaRequirement {
        if tenant.require_mfa {
            return MfaRequirement::Required;
        }
        let Some(live) = tenant.live_since else {
            return MfaRequirement::Optional;
        };
        let deadline = live + GRACE_PERIOD;
        match deadline.duration_since(now) {
            Ok(left) if !left.is_zero() => MfaRequirement::Grace {
                deadline,
                days_left: left.as_secs().div_ceil(86_400),
            },
            _ => MfaRequirement::Required,
        }
    }

    /// Whether a login or session without a second factor is allowed.
    pub fn allows_without_mfa(self) -> bool {
        !matches!(self, MfaRequirement::Required)
    }

    /// The notice text for a session without MFA during the grace period.
    pub fn grace_notice(self) -> Option<String> {
        match self {
            MfaRequirement::Grace {
                deadline,
                days_left,
            } => Some(format!(
                "pgveil: two-factor authentication becomes mandatory for your organisation in {days_left} day{} \
                 ({}). Enrol now on the pgveil security page (Security -> Enable 2FA).",
                if days_left == 1 { "" } else { "s" },
                humantime::format_rfc3339_seconds(deadline),
            )),
            _ => None,
        }
    }
}

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
    use crate::ids::{SecretId, TenantId};

    fn tenant(live: Option<&str>, require: bool) -> TenantConfig {
        TenantConfig {
            id: TenantId::new("t"),
            secret: SecretId::new("s"),
            host: None,
            port: None,
            dbname: None,
            tls: Default::default(),
            ca_bundle: None,
            pool_size: None,
            max_clients: None,
            pool_mode: None,
            live_since: live.map(|l| parse_time(l).unwrap()),
            require_mfa: require,
        }
    }

    #[test]
    fn grace_countdown() {
        let t = tenant(Some("2026-03-01"), false);
        let day = |d: u64, h: u64| {
            parse_time("2026-03-01").unwrap() + Duration::from_secs(d * 86400 + h * 3600)
        };
        assert_eq!(
            MfaRequirement::of(&tenant(None, false), day(100, 0)),
            MfaRequirement::Optional
        );
        assert_eq!(
            MfaRequirement::of(&tenant(None, true), day(0, 0)),
            MfaRequirement::Required
        );
        let MfaRequirement::Grace { days_left, .. } = MfaRequirement::of(&t, day(0, 0)) else {
            panic!()
        };
        assert_eq!(days_left, 7);
        let MfaRequirement::Grace { days_left, .. } = MfaRequirement::of(&t, day(6, 1)) else {
            panic!()
        };
        assert_eq!(days_left, 1);
        assert!(
            MfaRequirement::of(&t, day(6, 1))
                .grace_notice()
                .unwrap()
                .contains("in 1 day (")
        );
        assert_eq!(MfaRequirement::of(&t, day(7, 0)), MfaRequirement::Required);
        assert_eq!(MfaRequirement::of(&t, day(30, 0)), MfaRequirement::Required);
    }

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
