//! Forced 2FA: from a tenant's `live_since` + 7 days every user needs MFA. Before that, users without MFA
//! are admitted with a countdown notice; tenants may also require MFA at once (`require_mfa`).

use std::time::{Duration, SystemTime};

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
        MfaRequirement::at(tenant.live_since, tenant.require_mfa, now)
    }

    /// The requirement at `now` of a tenant live since `live_since` (if ever), or requiring MFA at once.
    pub fn at(
        live_since: Option<SystemTime>,
        require_mfa: bool,
        now: SystemTime,
    ) -> MfaRequirement {
        if require_mfa {
            return MfaRequirement::Required;
        }
        let Some(live) = live_since else {
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

pub use crate::config::parse_time;

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
}
