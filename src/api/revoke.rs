//! `POST /v1/admin/tokens/revoke`: revoke one token, by `jti` or by the token itself.
//!
//! A revocation must outlive the token. Its expiry is, in order: the recorded expiry of a token the API
//! issued; the `exp` of the token when the token itself is sent; otherwise now + `auth.max_token_ttl` plus
//! the verifier's skew allowances, since no token with a longer lifetime is accepted (tokens `pgveil token
//! mint` made, whose `jti` pgveil never saw). A repeated revocation only ever extends the expiry.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use super::admin::{apply_locally, require_admin};
use super::routes::{ApiError, ApiResult};
use crate::control::epoch;
use crate::token::{EXP_LEEWAY_SECS, MAX_IAT_SKEW_SECS, MAX_TOKEN_LEN};

#[derive(Deserialize)]
pub(super) struct RevokeBody {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
struct Unverified {
    jti: String,
    exp: i64,
}

/// `jti` and `exp` of a token, read without checking its signature: the admin vouches for it, and a
/// revocation can only ever refuse more.
fn unverified_claims(token: &str) -> Option<Unverified> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

pub(super) async fn admin_revoke(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Json(b): Json<RevokeBody>,
) -> ApiResult<Json<serde_json::Value>> {
    require_admin(&st, &headers)?;
    let now = epoch((st.clock)()).map_err(ApiError::internal)?;
    let max_ttl = i64::try_from(st.cfg.auth.max_token_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    let horizon = now + max_ttl + MAX_IAT_SKEW_SECS + EXP_LEEWAY_SECS;
    let (jti, expiry) = match (b.jti, b.token.as_deref()) {
        (Some(jti), None) if !jti.is_empty() => (jti, horizon),
        (None, Some(t)) => {
            let c = unverified_claims(t).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "token is malformed")
            })?;
            (
                c.jti,
                c.exp.saturating_add(EXP_LEEWAY_SECS).clamp(now, horizon),
            )
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "send jti or token",
            ));
        }
    };
    st.mfa
        .db()
        .revoke_token(&jti, now, expiry)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(jti = %jti, "token revoked by admin");
    apply_locally(&st).await;
    Ok(Json(json!({ "jti": jti, "revoked": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jti_and_exp_without_a_key() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"jti":"j-1","exp":1900000000,"sub":"x"}"#);
        let c = unverified_claims(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!((c.jti.as_str(), c.exp), ("j-1", 1_900_000_000));
        assert!(unverified_claims("garbage").is_none());
    }
}
