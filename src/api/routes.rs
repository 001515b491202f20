//! Routes and handlers. The operations are written once ([`enroll`], [`confirm`], [`login`], [`recover`]) and
//! used by both the JSON API and the security page.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::first_factor::FirstFactorInput;
use super::{ApiState, admin};
use crate::control::epoch;
use crate::control::users::User;
use crate::ids::UserId;
use crate::mfa::policy::MfaRequirement;
use crate::mfa::recovery::RecoveryError;
use crate::mfa::{MfaError, SecondFactor};

/// The client's IP address, inserted by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// An API error: HTTP status, stable code, message (never a secret, code or token).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Seconds to wait (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API internal error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "service temporarily unavailable",
        )
    }
}

impl From<MfaError> for ApiError {
    fn from(e: MfaError) -> Self {
        match e {
            MfaError::NotEnrolled => {
                ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string())
            }
            MfaError::AlreadyEnrolled => {
                ApiError::new(StatusCode::CONFLICT, "already_enrolled", e.to_string())
            }
            MfaError::InvalidCode => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_code", e.to_string())
            }
            MfaError::Throttled(t) => ApiError {
                retry_after: Some(t.retry_after.max(1)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    if t.locked { "locked_out" } else { "throttled" },
                    e.to_string(),
                )
            },
            MfaError::Recovery(RecoveryError::Busy) => ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many recovery code checks in progress; try again shortly",
                )
            },
            other => ApiError::internal(other),
        }
    }
}

/// Emails are stored lower-cased and trimmed; lookups use the same form.
pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/security") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/enroll", post(enroll_json))
        .route("/v1/enroll/confirm", post(confirm_json))
        .route("/v1/login", post(login_json))
        .route("/v1/recover", post(recover_json))
        .route(
            "/v1/admin/users",
            post(admin::create_user).get(admin::list_users),
        )
        .route("/v1/admin/users/{email}/disable", post(admin::disable))
        .route("/v1/admin/users/{email}/enable", post(admin::enable))
        .route("/v1/admin/tokens/revoke", post(super::revoke::admin_revoke))
        .merge(super::page::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every API response: tokens, codes and secrets must never be cached (`no-store`), the API is
/// only ever reached over TLS (HSTS), and no response is content-sniffed. Handlers may set stricter ones.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    r
}

// ---- operations -----------------------------------------------------------------------------------

/// Checks the first factor and finds the (enabled) user.
pub(crate) async fn authenticate_user(
    st: &ApiState,
    email: &str,
    first: &FirstFactorInput,
    ip: IpAddr,
) -> ApiResult<(User, Option<&'static str>)> {
    let now = (st.clock)();
    // The first factor is checked before any IP budget: a client that presents a valid one is never held
    // back by failures of others behind the same address (garbage only slows down more garbage).
    let amr = match st.first.verify(first, email, now).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(client = %ip, reason = %e, "first factor refused");
            if let Some(th) = st.mfa.first_factor_failed(ip, now).await? {
                return Err(MfaError::Throttled(th).into());
            }
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "first_factor_invalid",
                "first factor refused",
            ));
        }
    };
    let user = st
        .mfa
        .db()
        .user(&normalize_email(email))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_user", "no such pgveil user")
        })?;
    if user.disabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "user_disabled",
            "this user is disabled",
        ));
    }
    Ok((user, amr))
}

/// What a new enrolment returns.
#[derive(Serialize)]
pub(crate) struct EnrollOut {
    pub otpauth_uri: String,
    pub secret: String,
    pub qr_svg: String,
    pub qr_png_base64: String,
}

pub(crate) async fn enroll(
    st: &ApiState,
    email: &str,
    first: &FirstFactorInput,
    ip: IpAddr,
) -> ApiResult<EnrollOut> {
    let (user, _) = authenticate_user(st, email, first, ip).await?;
    let e = st.mfa.enroll(&user, (st.clock)()).await?;
    Ok(EnrollOut {
        otpauth_uri: e.otpauth_uri,
        secret: e.secret_base32,
        qr_svg: e.qr_svg,
        qr_png_base64: e.qr_png_base64,
    })
}

/// The unconfirmed enrolment shown again after a wrong first code (same secret).
pub(crate) async fn pending_enrolment(
    st: &ApiState,
    email: &str,
    first: &FirstFactorInput,
    ip: IpAddr,
) -> ApiResult<EnrollOut> {
    let (user, _) = authenticate_user(st, email, first, ip).await?;
    let e = st.mfa.pending_enrolment(&user).await?;
    Ok(EnrollOut {
        otpauth_uri: e.otpauth_uri,
        secret: e.secret_base32,
        qr_svg: e.qr_svg,
        qr_png_base64: e.qr_png_base64,
    })
}

pub(crate) async fn confirm(
    st: &ApiState,
    email: &str,
    first: &FirstFactorInput,
    code: &str,
    ip: IpAddr,
) -> ApiResult<Vec<String>> {
    let (user, _) = authenticate_user(st, email, first, ip).await?;
    Ok(st.mfa.confirm(&user, code, ip, (st.clock)()).await?)
}

pub(crate) async fn recover(
    st: &ApiState,
    email: &str,
    first: &FirstFactorInput,
    code: &str,
    ip: IpAddr,
) -> ApiResult<()> {
    let (user, _) = authenticate_user(st, email, first, ip).await?;
    Ok(st.mfa.recover(&user, code, ip, (st.clock)()).await?)
}

/// A login's result: the token and ready-to-use connection details.
#[derive(Serialize)]
pub(crate) struct LoginOut {
    pub token: String,
    pub jti: String,
    pub expires_at: i64,
    pub amr: Vec<String>,
    pub user: String,
    pub tenant: String,
    pub role: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub url: String,
    pub mfa_deadline_days: Option<u64>,
}

pub(crate) async fn login(
    st: &ApiState,
    email: &str,
    first: &FirstFactorInput,
    second: Option<SecondFactor<'_>>,
    ip: IpAddr,
) -> ApiResult<LoginOut> {
    let (user, first_amr) = authenticate_user(st, email, first, ip).await?;
    let now = (st.clock)();
    let tenant = st.cfg.tenant(&user.tenant).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown_tenant",
            "the user's tenant is not served here",
        )
    })?;
    let req = MfaRequirement::of(tenant, now);
    let mut amr: Vec<String> = first_amr.map(str::to_owned).into_iter().collect();
    if let Some(method) = second_factor(st, &user, second, &req, ip, now).await? {
        amr.push(method.to_owned());
    }
    let iat = epoch(now).map_err(ApiError::internal)?;
    not_just_revoked(&user, iat)?;
    let ttl = st.api.token_ttl.min(st.cfg.auth.max_token_ttl);
    let (token, claims) = st
        .signer
        .mint_with_claims(
            &UserId::new(&user.email),
            &user.tenant,
            &user.role,
            amr.clone(),
            ttl,
            now,
        )
        .map_err(ApiError::internal)?;
    st.mfa
        .db()
        .record_token(&claims.jti, user.id, &amr, iat, claims.exp)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(user = %user.email, amr = ?amr, "token issued");
    let mfa_deadline_days = match req {
        MfaRequirement::Grace { days_left, .. } if !claims.has_mfa() => Some(days_left),
        _ => None,
    };
    let dbname = tenant
        .dbname
        .clone()
        .unwrap_or_else(|| user.tenant.to_string());
    let url = connect_url(st, &user.email, &token, &dbname);
    Ok(LoginOut {
        token,
        jti: claims.jti,
        expires_at: claims.exp,
        amr,
        user: user.email,
        tenant: user.tenant.to_string(),
        role: user.role.to_string(),
        host: st.api.proxy_host.clone(),
        port: st.proxy_port,
        dbname,
        url,
        mfa_deadline_days,
    })
}

/// The second factor's method (`totp` or `recovery`) when one was given and verified; none when the user
/// may log in without one (not enrolled, inside the tenant's grace period).
async fn second_factor(
    st: &ApiState,
    user: &User,
    second: Option<SecondFactor<'_>>,
    req: &MfaRequirement,
    ip: IpAddr,
    now: std::time::SystemTime,
) -> ApiResult<Option<&'static str>> {
    match second {
        Some(f) => Ok(Some(st.mfa.verify(user, f, ip, now).await?)),
        None if user.mfa_enrolled => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "code_required",
            "a TOTP code or recovery code is required",
        )),
        None if !req.allows_without_mfa() => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "mfa_enrolment_required",
            "two-factor authentication is required for this tenant: enrol an authenticator app first",
        )),
        None => Ok(None),
    }
}

/// Refuses a login within the second the user's tokens were revoked (re-enabled within the second it was
/// disabled): a token stamped with this second would be refused.
fn not_just_revoked(user: &User, iat: i64) -> ApiResult<()> {
    if iat < user.tokens_valid_after {
        return Err(ApiError {
            retry_after: Some((user.tokens_valid_after - iat) as u64),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "this user's tokens were just revoked; try again in a second",
            )
        });
    }
    Ok(())
}

/// The URL a client connects to the proxy with: the token is the password.
fn connect_url(st: &ApiState, email: &str, token: &str, dbname: &str) -> String {
    format!(
        "postgresql://{}:{}@{}:{}/{}?sslmode=require",
        urlencoding::encode(email),
        urlencoding::encode(token),
        st.api.proxy_host,
        st.proxy_port,
        urlencoding::encode(dbname)
    )
}

// ---- JSON handlers ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct EmailAndFactor {
    email: String,
    #[serde(flatten)]
    first: FirstFactorInput,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

async fn enroll_json(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Json(b): Json<EmailAndFactor>,
) -> ApiResult<Json<EnrollOut>> {
    Ok(Json(enroll(&st, &b.email, &b.first, ip.0).await?))
}

async fn confirm_json(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Json(b): Json<EmailAndFactor>,
) -> ApiResult<Json<serde_json::Value>> {
    let code = b
        .code
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "code is required"))?;
    let codes = confirm(&st, &b.email, &b.first, code, ip.0).await?;
    Ok(Json(json!({ "recovery_codes": codes })))
}

async fn login_json(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Json(b): Json<EmailAndFactor>,
) -> ApiResult<Json<LoginOut>> {
    let second = match (b.code.as_deref(), b.recovery_code.as_deref()) {
        (Some(c), None) => Some(SecondFactor::Totp(c)),
        (None, Some(r)) => Some(SecondFactor::Recovery(r)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "send code or recovery_code, not both",
            ));
        }
    };
    Ok(Json(login(&st, &b.email, &b.first, second, ip.0).await?))
}

async fn recover_json(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Json(b): Json<EmailAndFactor>,
) -> ApiResult<Json<serde_json::Value>> {
    let code = b.recovery_code.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "recovery_code is required",
        )
    })?;
    recover(&st, &b.email, &b.first, code, ip.0).await?;
    Ok(Json(
        json!({ "status": "enrolment_reset", "next": "POST /v1/enroll to enrol a new device" }),
    ))
}
