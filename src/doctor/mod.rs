//! `pgveil doctor`: checks each tenant's database, connected with the tenant's own credentials exactly as the
//! pool connects, and the config and policy around it, for settings that weaken what pgveil guarantees. Each
//! finding has a severity, a stable code, the object it is about, what is wrong and how to fix it.
//!
//! Checks by concern: [`privileges`] (the backend role's attributes and ownerships, CREATE rights, other
//! databases of the cluster), [`extensions`] (installed extensions against the policy's trusted list),
//! [`transport`] (backend TLS mode, the authentication method the server asked for), [`pii`] (columns whose
//! name and type look like personal data that no policy rule classifies, judged with the catalog snapshot and
//! the policy's own classification) and [`settings`] (checks of the config and policy alone: roles that write
//! without seeing any class raw, MFA never required, long token lifetimes). [`report`] renders the result.
//! No row of any table is read.

pub mod extensions;
pub mod pii;
pub mod privileges;
mod probe;
pub mod report;
pub mod settings;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::ids::TenantId;
use crate::policy::file::Policy;
use crate::route::Router;

/// How serious a finding is. `High` makes `pgveil doctor` exit with status 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to fix.
    Info,
    /// Defence in depth.
    Low,
    /// Weakens a guarantee; fix soon.
    Medium,
    /// Breaks a guarantee or cannot be verified; CI should fail.
    High,
}

impl Severity {
    /// The lowercase name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// Stable identifier (README "Doctor" lists them).
    pub code: &'static str,
    /// The tenant, or `None` for the config and policy as a whole.
    pub tenant: Option<TenantId>,
    /// What it is about (a role, a relation, a column, a setting).
    pub object: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl Finding {
    /// A finding about `tenant` (or the whole config with `None`).
    pub fn new(
        severity: Severity,
        code: &'static str,
        tenant: Option<&TenantId>,
        object: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            code,
            tenant: tenant.cloned(),
            object: object.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this tenant (config-wide checks still run).
    pub tenant: Option<TenantId>,
    /// Token lifetimes above this are reported.
    pub max_token_ttl: Duration,
    /// Limit on all checks of one tenant (connect, queries).
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tenant: None,
            max_token_ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why the doctor could not run at all (a tenant it cannot reach is a finding, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `--tenant` names no tenant of the config.
    #[error("tenant {0} is not in the config")]
    UnknownTenant(TenantId),
    /// The routing table (backend TLS files) could not be built.
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    /// The policy files are invalid.
    #[error(transparent)]
    Policy(#[from] crate::policy::file::PolicyError),
}

/// The findings of one run, sorted: config-wide first, then by tenant, most severe first.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Tenants checked.
    pub tenants: Vec<TenantId>,
    /// Findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any finding is `High`.
    pub fn has_high(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::High)
    }

    /// How many findings have `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }
}

/// Runs every check on the tenants of `cfg` (or the one `opts.tenant` names).
pub async fn run(cfg: &Config, opts: &Options) -> Result<Report, DoctorError> {
    let tenants: Vec<&crate::config::TenantConfig> = match &opts.tenant {
        Some(id) => vec![
            cfg.tenant(id)
                .ok_or_else(|| DoctorError::UnknownTenant(id.clone()))?,
        ],
        None => cfg.tenants.iter().collect(),
    };
    let policy = match &cfg.policy {
        Some(pc) => Some(Policy::load(&pc.dir)?),
        None => None,
    };
    let router = Router::from_config(cfg)?;
    let now = std::time::SystemTime::now();
    let mut findings = settings::config_checks(cfg, opts.max_token_ttl);
    if policy.is_none() {
        findings.push(Finding::new(
            Severity::Medium,
            "no-policy",
            None,
            "[policy]",
            "the config has no [policy] section: no column is masked for any role",
            "add a [policy] section with policy files (README \"Masking\")",
        ));
    }
    let secrets: Arc<dyn crate::secret::SecretStore> =
        crate::secret::store_from_config(&cfg.secrets, false).await;
    for t in &tenants {
        findings.extend(settings::tenant_checks(t, policy.as_ref(), now));
        let Some(route) = router.tenant(&t.id) else {
            continue;
        };
        let live = tokio::time::timeout(
            opts.timeout,
            probe::check_tenant(t, route, &*secrets, policy.as_ref()),
        )
        .await
        .unwrap_or_else(|_| {
            vec![Finding::new(
                Severity::High,
                "unreachable",
                Some(&t.id),
                "database",
                format!(
                    "the checks did not finish within {}",
                    humantime::format_duration(opts.timeout)
                ),
                "make the database reachable from this host, or raise --timeout",
            )]
        });
        findings.extend(live);
    }
    findings.sort_by(|a, b| {
        (&a.tenant, std::cmp::Reverse(a.severity), a.code, &a.object).cmp(&(
            &b.tenant,
            std::cmp::Reverse(b.severity),
            b.code,
            &b.object,
        ))
    });
    Ok(Report {
        tenants: tenants.iter().map(|t| t.id.clone()).collect(),
        findings,
    })
}

#[cfg(test)]
mod tests;
