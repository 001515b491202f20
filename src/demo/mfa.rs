//! The demo's enrolled user: created in the control database and enrolled in TOTP through the same
//! [`MfaService`] the API uses, so `pgveil login` with a code from an authenticator app works at once.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use pgveil::api::first_factor::sign_assertion;
use pgveil::config::Config;
use pgveil::control::ControlDb;
use pgveil::ids::{RoleName, TenantId};
use pgveil::mfa::MfaService;
use pgveil::mfa::crypto::SecretBox;
use pgveil::mfa::throttle::ThrottleConfig;
use pgveil::mfa::totp::{TotpSecret, step_at};
use pgveil::secret::SecretStore;

/// Errors enrolling the demo user.
#[derive(Debug, thiserror::Error)]
pub enum DemoMfaError {
    /// The config has no `[control]`/`[api.webapp]`.
    #[error("the demo config has no control database or web-app first factor")]
    NotConfigured,
    /// The user exists already.
    #[error("user {0} exists already")]
    Exists(String),
    #[error(transparent)]
    Control(#[from] pgveil::control::ControlError),
    #[error(transparent)]
    Mfa(#[from] pgveil::mfa::MfaError),
    #[error(transparent)]
    Secret(#[from] pgveil::secret::SecretError),
    #[error(transparent)]
    Crypto(#[from] pgveil::mfa::crypto::CryptoError),
    #[error("the enrolment secret is not valid base32")]
    Base32,
}

/// What the demo prints for its enrolled user.
pub struct DemoUser {
    pub email: String,
    /// TOTP secret, base32, for an authenticator app (a demo secret: printed on purpose).
    pub secret_base32: String,
    /// The same as an `otpauth://` URI.
    pub otpauth_uri: String,
    /// Recovery codes (shown once, as at a real enrolment).
    pub recovery_codes: Vec<String>,
    /// A web-app assertion for the user (the first factor), valid for `ttl`.
    pub assertion: String,
}

/// Creates `email` in the control database and confirms a TOTP enrolment for it. The enrolment is confirmed
/// with the code of the previous 30-second step, so the current code is still unused for the first login.
pub async fn enroll_demo_user(
    cfg: &Config,
    secrets: &dyn SecretStore,
    email: &str,
    tenant: &TenantId,
    role: &RoleName,
    ttl: Duration,
) -> Result<DemoUser, DemoMfaError> {
    let (Some(control), Some(webapp)) = (
        cfg.control.as_ref(),
        cfg.api.as_ref().and_then(|a| a.webapp.as_ref()),
    ) else {
        return Err(DemoMfaError::NotConfigured);
    };
    let db = ControlDb::open(control, secrets).await?;
    let secret_box = SecretBox::from_secret(&secrets.fetch(&control.totp_key_secret).await?)?;
    let mfa = MfaService::new(db, secret_box, ThrottleConfig::default());
    let now = SystemTime::now();
    let epoch = pgveil::control::epoch(now)?;
    let user = mfa
        .db()
        .create_user(email, tenant, role, epoch)
        .await?
        .ok_or_else(|| DemoMfaError::Exists(email.to_owned()))?;
    let start = mfa.enroll(&user, now).await?;
    let bytes = data_encoding::BASE32_NOPAD
        .decode(start.secret_base32.as_bytes())
        .map_err(|_| DemoMfaError::Base32)?;
    let code = TotpSecret::from_bytes(bytes).code_at_step(step_at(now).saturating_sub(1));
    let recovery_codes = mfa
        .confirm(&user, &code, IpAddr::V4(Ipv4Addr::LOCALHOST), now)
        .await?;
    let key = secrets.fetch(&webapp.key_secret).await?;
    let assertion = sign_assertion(&key, email, now + ttl.min(webapp.max_age));
    Ok(DemoUser {
        email: email.to_owned(),
        secret_base32: start.secret_base32,
        otpauth_uri: start.otpauth_uri,
        recovery_codes,
        assertion,
    })
}
