//! Checks of the config and the policy alone (no database): token lifetimes, MFA never required for a
//! tenant, and policy roles that see no class raw yet may write.

use std::time::{Duration, SystemTime};

use super::{Finding, Severity};
use crate::config::{Config, TenantConfig};
use crate::mfa::policy::MfaRequirement;
use crate::policy::file::{Policy, RawSet};
use crate::policy::kinds::StatementKind;

/// Statement kinds that change rows.
const WRITE_KINDS: &[StatementKind] = &[
    StatementKind::Insert,
    StatementKind::Update,
    StatementKind::Delete,
    StatementKind::Merge,
    StatementKind::CopyFrom,
];

/// Config-wide checks: token lifetimes above `max_ttl`.
pub fn config_checks(cfg: &Config, max_ttl: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    let long = |setting: &str, ttl: Duration, what: &str| {
        Finding::new(
            Severity::Medium,
            "long-token-ttl",
            None,
            setting,
            format!(
                "{setting} is {}, above the threshold of {}: {what}",
                humantime::format_duration(ttl),
                humantime::format_duration(max_ttl)
            ),
            format!(
                "set {setting} to at most {} (a working day is usual), or pass a higher --max-token-ttl if \
                 this is deliberate",
                humantime::format_duration(max_ttl)
            ),
        )
    };
    if cfg.auth.max_token_ttl > max_ttl {
        out.push(long(
            "auth.max_token_ttl",
            cfg.auth.max_token_ttl,
            "tokens this old are still accepted, so a leaked token stays usable that long (unless revoked)",
        ));
    }
    if let Some(api) = &cfg.api
        && api.token_ttl > max_ttl
    {
        out.push(long(
            "api.token_ttl",
            api.token_ttl,
            "every login through the API issues a token valid that long",
        ));
    }
    out
}

/// Checks of one tenant's config and of the policy as it applies to the tenant.
pub fn tenant_checks(t: &TenantConfig, policy: Option<&Policy>, now: SystemTime) -> Vec<Finding> {
    let mut out = Vec::new();
    match MfaRequirement::of(t, now) {
        MfaRequirement::Required => {}
        MfaRequirement::Optional => out.push(Finding::new(
            Severity::High,
            "mfa-never-required",
            Some(&t.id),
            "tenant config",
            "neither live_since nor require_mfa is set: users of this tenant never need a second factor \
             (right only for a tenant holding test data)",
            "set live_since = \"YYYY-MM-DD\" (MFA required 7 days later) or require_mfa = true in the tenant's \
             [[tenant]] section",
        )),
        MfaRequirement::Grace {
            deadline,
            days_left,
        } => out.push(Finding::new(
            Severity::Info,
            "mfa-grace-period",
            Some(&t.id),
            "tenant config",
            format!(
                "MFA becomes mandatory in {days_left} day(s) ({}); until then users without it get in with a \
                 notice",
                humantime::format_rfc3339_seconds(deadline)
            ),
            "none needed; set require_mfa = true to end the grace period now",
        )),
    }
    if let Some(p) = policy {
        out.extend(writing_roles(t, p));
    }
    out
}

/// Roles that see no class raw (every classified column masked) but may run write statements: a write
/// whose values come from masked reads stores masked values (`UPDATE ... SET email = (SELECT email ...)`,
/// `INSERT ... SELECT`), destroying the real data.
fn writing_roles(t: &TenantConfig, policy: &Policy) -> Vec<Finding> {
    let mut roles: Vec<_> = policy.roles().cloned().collect();
    roles.sort();
    let mut out = Vec::new();
    for role in roles {
        let Some(eff) = policy.effective(&t.id, &role) else {
            continue;
        };
        let sees_none = matches!(&eff.role.raw, RawSet::Some(s) if s.is_empty());
        if eff.role.unrestricted || !sees_none {
            continue;
        }
        let mut writes: Vec<&str> = WRITE_KINDS
            .iter()
            .filter(|k| eff.role.statements.contains(*k))
            .map(|k| k.name())
            .collect();
        writes.sort();
        if writes.is_empty() {
            continue;
        }
        out.push(Finding::new(
            Severity::Medium,
            "masked-role-writes",
            Some(&t.id),
            format!("policy role {role}"),
            format!(
                "role {role} sees no classification raw but may run {}: values it copies from masked \
                 columns are stored masked, overwriting or duplicating real data with masks",
                writes.join(", ")
            ),
            format!(
                "remove the write kinds from [roles.{role}] statements (or the tenant override), or give the \
                 role raw access to the classes it must write"
            ),
        ));
    }
    out
}
