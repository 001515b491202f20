//! `[api]` with `[api.oidc]`, `[api.webapp]` and `[api.throttle]`: the HTTP API (enrolment, login, admin)
//! and how it checks first factors and throttles guesses.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::ids::SecretId;

/// Default API port (DESIGN.md "Interfaces").
pub const DEFAULT_API_PORT: u16 = 8432;

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port to listen on (TLS, with the `[tls]` certificate).
    #[serde(default = "default_addr")]
    pub addr: SocketAddr,
    /// Secret id of the admin API key.
    pub admin_key_secret: SecretId,
    /// Lifetime of tokens issued at login.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Host name clients use to reach the proxy (in connection strings); default `localhost`.
    #[serde(default = "default_public_host")]
    pub proxy_host: String,
    /// Proxy port clients use; default the proxy's listen port.
    #[serde(default)]
    pub proxy_port: Option<u16>,
    /// First factor: OIDC ID tokens from the company IdP.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// First factor: assertions signed by the trusted web-app.
    #[serde(default)]
    pub webapp: Option<WebappConfig>,
    /// Demo only: no first factor at all (logged loudly at start-up). Refused unless `PGVEIL_DEMO=1`.
    #[serde(default)]
    pub insecure_no_first_factor: bool,
    /// Brute-force throttling.
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Load balancers / reverse proxies (CIDRs) whose `Forwarded` / `X-Forwarded-For` headers name the
    /// client address the throttles count. Empty (default): the TCP peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `[api.oidc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Expected `iss` (the IdP's issuer URL).
    pub issuer: String,
    /// Expected audience: pgveil's client id at the IdP.
    pub audience: String,
    /// JWKS as a local JSON file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (HTTPS, verified against the system CA bundle); re-fetched every 10 minutes and when a token
    /// names an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Claim holding the user's email.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
}

/// `[api.webapp]`: the trusted web-app vouches for its users with signed assertions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebappConfig {
    /// Secret id of the HMAC-SHA256 key shared with the web-app.
    pub key_secret: SecretId,
    /// Longest accepted assertion lifetime.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

/// `[api.throttle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Second-factor guesses per user before a lockout (at most this many per lockout period).
    #[serde(default = "default_user_max")]
    pub user_max_failures: u32,
    /// Failures per client IP (in each of its two budgets) before each further one doubles a wait.
    #[serde(default = "default_ip_max")]
    pub ip_max_failures: u32,
    /// Wait after the first failure; doubled with each further failure.
    #[serde(default = "default_base", with = "humantime_serde")]
    pub base_backoff: Duration,
    /// Longest wait between attempts short of a lockout.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a lockout lasts.
    #[serde(default = "default_lockout", with = "humantime_serde")]
    pub lockout: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            user_max_failures: default_user_max(),
            ip_max_failures: default_ip_max(),
            base_backoff: default_base(),
            max_backoff: default_max_backoff(),
            lockout: default_lockout(),
        }
    }
}

impl ApiConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(o) = &mut self.oidc
            && let Some(p) = &mut o.jwks_file
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }

    /// Adds every problem with this section to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.oidc.is_none() && self.webapp.is_none() && !self.insecure_no_first_factor {
            problems.push("[api] needs a first factor: [api.oidc] and/or [api.webapp]".into());
        }
        if self.insecure_no_first_factor && !demo_mode() {
            problems.push(
                "api.insecure_no_first_factor is refused outside the demo (it issues tokens without any first \
                 factor; only `PGVEIL_DEMO=1` accepts it)"
                    .into(),
            );
        }
        if let Err(e) = parse_trusted_proxies(&self.trusted_proxies) {
            problems.push(format!("api.trusted_proxies: {e}"));
        }
        if let Some(o) = &self.oidc {
            o.validate(problems);
        }
        if self.token_ttl < Duration::from_secs(60)
            || self.token_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            problems.push("api.token_ttl must be between 1m and 7d".into());
        }
        if self.throttle.user_max_failures == 0 || self.throttle.ip_max_failures == 0 {
            problems.push("api.throttle: max failures must be at least 1".into());
        }
    }
}

impl OidcConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.jwks_file.is_none() == self.jwks_url.is_none() {
            problems.push("api.oidc: set exactly one of jwks_file and jwks_url".into());
        }
        if self.jwks_url.as_deref().is_some_and(|u| {
            !u.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        }) {
            problems.push("api.oidc.jwks_url must be an https:// URL".into());
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            problems.push("api.oidc: issuer and audience must be set".into());
        }
    }
}

/// Parses `api.trusted_proxies`: CIDRs (`10.0.0.0/8`) or single addresses; the error names the first bad
/// entry.
pub fn parse_trusted_proxies(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            IpNet::from_str(s.trim())
                .or_else(|_| IpAddr::from_str(s.trim()).map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
        })
        .collect()
}

/// Whether `PGVEIL_DEMO=1` is set (the only way to accept `api.insecure_no_first_factor`).
pub fn demo_mode() -> bool {
    std::env::var("PGVEIL_DEMO").as_deref() == Ok("1")
}

fn default_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT))
}
fn default_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_public_host() -> String {
    "localhost".into()
}
fn default_email_claim() -> String {
    "email".into()
}
fn default_max_age() -> Duration {
    Duration::from_secs(600)
}
fn default_user_max() -> u32 {
    5
}
fn default_ip_max() -> u32 {
    50
}
fn default_base() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}
fn default_lockout() -> Duration {
    Duration::from_secs(15 * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webapp_section_is_valid_and_oidc_needs_one_jwks_source() {
        let api: ApiConfig = toml::from_str(
            "admin_key_secret = \"pgveil/admin\"\n[webapp]\nkey_secret = \"pgveil/webapp\"\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        api.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let api: ApiConfig = toml::from_str(
            "admin_key_secret = \"a\"\n[oidc]\nissuer = \"https://idp\"\naudience = \"pgveil\"\n",
        )
        .unwrap();
        api.validate(&mut problems);
        assert_eq!(
            problems,
            ["api.oidc: set exactly one of jwks_file and jwks_url"]
        );
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        assert_eq!(
            parse_trusted_proxies(&["10.0.0.0/8".into(), " 192.0.2.1 ".into()])
                .unwrap()
                .len(),
            2
        );
        assert!(parse_trusted_proxies(&["nope".into()]).is_err());
    }
}
