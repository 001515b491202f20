//! The MFA operations the API exposes: enrol, confirm, check a second factor, recover. Every code check is
//! reserved against the user's budget before it runs (see [`super::throttle`]) and backs off per client IP,
//! and every one-time use is settled in the control database.

use std::net::IpAddr;
use std::time::SystemTime;

use super::crypto::{CryptoError, SecretBox};
use super::recovery::{self, RecoveryError};
use super::throttle::{Scope, ThrottleConfig, Throttled};
use super::totp::{TotpSecret, qr_codes};
use crate::control::users::User;
use crate::control::{ControlDb, ControlError, epoch};

/// Why an MFA operation failed. Never carries a code or a secret.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// The user has no confirmed TOTP enrolment.
    #[error("two-factor authentication is not set up for this user")]
    NotEnrolled,
    /// The user already has a confirmed enrolment (use recovery to replace it).
    #[error("two-factor authentication is already set up; use a recovery code to reset it")]
    AlreadyEnrolled,
    /// Wrong, stale or already used code.
    #[error("invalid or already used code")]
    InvalidCode,
    /// Too many failures: wait (or the scope is locked out).
    #[error("too many failed attempts; retry in {} s", .0.retry_after)]
    Throttled(Throttled),
    /// Control database problem.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A stored secret could not be decrypted.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A recovery code could not be checked (busy, or the check failed).
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
}

/// A second factor presented at login.
pub enum SecondFactor<'a> {
    /// A 6-digit TOTP code.
    Totp(&'a str),
    /// A one-time recovery code.
    Recovery(&'a str),
}

/// What a new enrolment shows the user once.
pub struct EnrolmentStart {
    /// The secret, base32 (for typing into an app).
    pub secret_base32: String,
    /// `otpauth://` URI.
    pub otpauth_uri: String,
    /// QR code of the URI, SVG.
    pub qr_svg: String,
    /// QR code of the URI, PNG as base64.
    pub qr_png_base64: String,
}

/// MFA operations over the control database.
#[derive(Clone, Debug)]
pub struct MfaService {
    db: ControlDb,
    secret_box: SecretBox,
    throttle: ThrottleConfig,
}

impl MfaService {
    /// Builds the service.
    pub fn new(db: ControlDb, secret_box: SecretBox, throttle: ThrottleConfig) -> Self {
        Self {
            db,
            secret_box,
            throttle,
        }
    }

    /// The control database.
    pub fn db(&self) -> &ControlDb {
        &self.db
    }

    /// Starts (or restarts, while unconfirmed) a TOTP enrolment.
    pub async fn enroll(&self, user: &User, now: SystemTime) -> Result<EnrolmentStart, MfaError> {
        let secret = TotpSecret::generate();
        let sealed = self.secret_box.seal(secret.bytes(), user.id.as_bytes())?;
        if !self
            .db
            .begin_enrolment(user.id, &sealed, epoch(now)?)
            .await?
        {
            return Err(MfaError::AlreadyEnrolled);
        }
        let otpauth_uri = secret.otpauth_uri(&user.email);
        let (qr_svg, qr_png_base64) = qr_codes(&otpauth_uri).unwrap_or_default();
        Ok(EnrolmentStart {
            secret_base32: secret.base32(),
            otpauth_uri,
            qr_svg,
            qr_png_base64,
        })
    }

    /// Confirms an enrolment with its first valid code; returns the recovery codes (shown once).
    pub async fn confirm(
        &self,
        user: &User,
        code: &str,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<Vec<String>, MfaError> {
        let t = epoch(now)?;
        self.check_ip(ip, t).await?;
        let enrolment = self
            .db
            .enrolment(user.id)
            .await?
            .ok_or(MfaError::NotEnrolled)?;
        if enrolment.confirmed_at.is_some() {
            return Err(MfaError::AlreadyEnrolled);
        }
        self.reserve(user, t).await?;
        let secret = TotpSecret::from_bytes(
            self.secret_box
                .open(&enrolment.sealed, user.id.as_bytes())?,
        );
        let Some(step) = secret.matching_step(code, now) else {
            return Err(self.failed(user, ip, t).await);
        };
        let (codes, macs) = recovery::generate(&self.secret_box, user.id.as_bytes());
        if !self
            .db
            .confirm_enrolment(user.id, &enrolment.sealed, step as i64, t, &macs)
            .await?
        {
            return Err(self.failed(user, ip, t).await);
        }
        self.succeeded(user).await?;
        tracing::info!(user = %user.email, "TOTP enrolment confirmed");
        Ok(codes)
    }

    /// Checks a second factor; returns the `amr` value it earns (`otp` for TOTP, `mfa` for a recovery code).
    pub async fn verify(
        &self,
        user: &User,
        factor: SecondFactor<'_>,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<&'static str, MfaError> {
        let t = epoch(now)?;
        self.check_ip(ip, t).await?;
        let enrolment = self.db.enrolment(user.id).await?;
        if enrolment.as_ref().and_then(|e| e.confirmed_at).is_none() {
            return Err(MfaError::NotEnrolled);
        }
        self.reserve(user, t).await?;
        let ok = match factor {
            SecondFactor::Totp(code) => {
                let sealed = enrolment.map(|e| e.sealed).unwrap_or_default();
                let secret =
                    TotpSecret::from_bytes(self.secret_box.open(&sealed, user.id.as_bytes())?);
                match secret.matching_step(code, now) {
                    Some(step) => self.db.accept_step(user.id, step as i64).await?,
                    None => false,
                }
            }
            SecondFactor::Recovery(code) => self.use_recovery_code(user, code, t).await?,
        };
        if !ok {
            return Err(self.failed(user, ip, t).await);
        }
        self.succeeded(user).await?;
        Ok(match factor {
            SecondFactor::Totp(_) => "otp",
            SecondFactor::Recovery(_) => "mfa",
        })
    }

    /// Uses a recovery code to remove the enrolment, so the user can enrol a new device.
    pub async fn recover(
        &self,
        user: &User,
        code: &str,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<(), MfaError> {
        let t = epoch(now)?;
        self.check_ip(ip, t).await?;
        self.reserve(user, t).await?;
        if !self.use_recovery_code(user, code, t).await? {
            return Err(self.failed(user, ip, t).await);
        }
        self.db.reset_enrolment(user.id).await?;
        self.succeeded(user).await?;
        tracing::info!(user = %user.email, "enrolment reset with a recovery code");
        Ok(())
    }

    /// Counts a refused first factor against the client IP's unauthenticated budget; returns the error to
    /// report (a back-off, once the budget is spent).
    pub async fn first_factor_failed(
        &self,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<Option<Throttled>, MfaError> {
        let t = epoch(now)?;
        let scope = Scope::Unauthenticated(ip);
        if let Some(th) = self.throttle.check(&self.db, &scope, t).await? {
            return Ok(Some(th));
        }
        self.throttle.fail(&self.db, &scope, t).await?;
        Ok(None)
    }

    /// The secret of the user's unconfirmed enrolment, shown again when a first code was wrong.
    pub async fn pending_enrolment(&self, user: &User) -> Result<EnrolmentStart, MfaError> {
        let enrolment = self
            .db
            .enrolment(user.id)
            .await?
            .ok_or(MfaError::NotEnrolled)?;
        if enrolment.confirmed_at.is_some() {
            return Err(MfaError::AlreadyEnrolled);
        }
        let secret = TotpSecret::from_bytes(
            self.secret_box
                .open(&enrolment.sealed, user.id.as_bytes())?,
        );
        let otpauth_uri = secret.otpauth_uri(&user.email);
        let (qr_svg, qr_png_base64) = qr_codes(&otpauth_uri).unwrap_or_default();
        Ok(EnrolmentStart {
            secret_base32: secret.base32(),
            otpauth_uri,
            qr_svg,
            qr_png_base64,
        })
    }

    /// One recovery code check: a MAC lookup, or (codes issued before MACs) the bounded legacy check.
    async fn use_recovery_code(&self, user: &User, code: &str, t: i64) -> Result<bool, MfaError> {
        let Some(mac) = recovery::lookup_mac(&self.secret_box, user.id.as_bytes(), code) else {
            return Ok(false);
        };
        if self.db.use_recovery_mac(user.id, &mac, t).await? {
            return Ok(true);
        }
        let rows = self.db.legacy_recovery_codes(user.id).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let (ids, hashes): (Vec<i64>, Vec<String>) = rows.into_iter().unzip();
        match recovery::find_legacy_match(code, hashes).await? {
            Some(i) => Ok(self.db.use_recovery_code(ids[i], t).await?),
            None => Ok(false),
        }
    }

    /// Refuses the attempt while the client IP is backing off.
    async fn check_ip(&self, ip: IpAddr, t: i64) -> Result<(), MfaError> {
        match self.throttle.check(&self.db, &Scope::Ip(ip), t).await? {
            Some(th) => Err(MfaError::Throttled(th)),
            None => Ok(()),
        }
    }

    /// Reserves one guess against the user's budget (counted as a failure until it succeeds).
    async fn reserve(&self, user: &User, t: i64) -> Result<(), MfaError> {
        let scope = Scope::User(user.email.clone());
        match self.throttle.reserve(&self.db, &scope, t).await? {
            Ok(_) => Ok(()),
            Err(th) => Err(MfaError::Throttled(th)),
        }
    }

    /// Refunds the reserved guess after a success.
    async fn succeeded(&self, user: &User) -> Result<(), MfaError> {
        self.throttle
            .clear(&self.db, &Scope::User(user.email.clone()))
            .await?;
        Ok(())
    }

    /// Records a failure for the IP (the user's was reserved before the check); returns the error to report.
    async fn failed(&self, user: &User, ip: IpAddr, t: i64) -> MfaError {
        tracing::info!(user = %user.email, client = %ip, "second factor refused");
        if let Err(e) = self.throttle.fail(&self.db, &Scope::Ip(ip), t).await {
            return e.into();
        }
        MfaError::InvalidCode
    }
}
