//! The admin API (bearer admin key): creating, listing, disabling and enabling users. Token revocation is
//! in [`super::revoke`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::ApiState;
use super::routes::{ApiError, ApiResult, normalize_email};
use crate::control::epoch;
use crate::control::users::User;
use crate::ids::{RoleName, TenantId};
use crate::secret::ExposeSecret;

pub(crate) fn require_admin(st: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = st.admin_key.expose_secret().as_bytes();
    if expected.is_empty() || !bool::from(presented.as_bytes().ct_eq(expected)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin_unauthorized",
            "admin API key required",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct NewUser {
    email: String,
    tenant: TenantId,
    role: RoleName,
}

pub(crate) async fn create_user(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Json(u): Json<NewUser>,
) -> ApiResult<Response> {
    require_admin(&st, &headers)?;
    let email = normalize_email(&u.email);
    if !email.contains('@')
        || email.len() > 254
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "email is not valid",
        ));
    }
    if st.cfg.tenant(&u.tenant).is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_tenant",
            "tenant is not configured",
        ));
    }
    if !st.cfg.roles.contains(&u.role) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_role",
            "role is not configured",
        ));
    }
    let now = epoch((st.clock)()).map_err(ApiError::internal)?;
    match st
        .mfa
        .db()
        .create_user(&email, &u.tenant, &u.role, now)
        .await
        .map_err(ApiError::internal)?
    {
        Some(user) => Ok((StatusCode::CREATED, Json(user)).into_response()),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_exists",
            "a user with this email exists",
        )),
    }
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    tenant: Option<TenantId>,
}

pub(crate) async fn list_users(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<User>>> {
    require_admin(&st, &headers)?;
    Ok(Json(
        st.mfa
            .db()
            .users(q.tenant.as_ref())
            .await
            .map_err(ApiError::internal)?,
    ))
}

pub(crate) async fn disable(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    set_disabled(&st, &headers, &email, true).await
}

pub(crate) async fn enable(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    set_disabled(&st, &headers, &email, false).await
}

async fn set_disabled(
    st: &ApiState,
    headers: &HeaderMap,
    email: &str,
    disabled: bool,
) -> ApiResult<Json<serde_json::Value>> {
    require_admin(st, headers)?;
    let now = epoch((st.clock)()).map_err(ApiError::internal)?;
    if !st
        .mfa
        .db()
        .set_disabled(&normalize_email(email), disabled, now)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_user",
            "no such pgveil user",
        ));
    }
    tracing::info!(user = %email, disabled, "user updated by admin");
    apply_locally(st).await;
    Ok(Json(json!({ "email": email, "disabled": disabled })))
}

/// Applies a revocation to the proxy in this process at once (other instances follow within
/// `control.revocation_refresh`).
pub(crate) async fn apply_locally(st: &ApiState) {
    if let Some((cache, sessions)) = &st.local_proxy
        && let Err(e) = cache.refresh(sessions).await
    {
        tracing::warn!(error = %e, "local revocation refresh failed");
    }
}
