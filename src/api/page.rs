//! The security page: plain server-rendered HTML (no JavaScript) for "Security -> Enable 2FA": enrol with a
//! QR code, confirm with the first code, see the recovery codes once, and get a connection string for BI
//! tools. The first factor (web-app assertion or ID token) travels in hidden form fields rather than cookies,
//! so another site cannot forge a request (no ambient credential), and every response is `no-store` with a
//! strict Content-Security-Policy and no referrer.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::ApiState;
use super::first_factor::FirstFactorInput;
use super::routes::{self, ApiError, ClientIp};
use crate::mfa::SecondFactor;
use crate::mfa::totp::normalize_code;

pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/security", get(landing))
        .route("/security/enroll", post(enroll))
        .route("/security/confirm", post(confirm))
        .route("/security/login", post(login))
        .route("/security/recover", post(recover))
}

#[derive(Deserialize)]
struct PageForm {
    #[serde(default)]
    email: String,
    #[serde(flatten)]
    first: FirstFactorInput,
    #[serde(default)]
    code: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn hidden(f: &PageForm) -> String {
    format!(
        r#"<input type="hidden" name="email" value="{}"><input type="hidden" name="assertion" value="{}"><input type="hidden" name="id_token" value="{}">"#,
        esc(&f.email),
        esc(f.first.assertion.as_deref().unwrap_or("")),
        esc(f.first.id_token.as_deref().unwrap_or(""))
    )
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title} - pgveil security</title><style>
body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#1d2330}}
h1{{font-size:1.4rem}} .card{{border:1px solid #d5dae3;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}}
code,pre{{background:#f3f5f8;padding:.15rem .35rem;border-radius:4px;word-break:break-all;white-space:pre-wrap}}
button{{background:#2454d6;color:#fff;border:0;border-radius:6px;padding:.5rem 1rem;font-size:1rem;cursor:pointer}}
input[type=text]{{font-size:1.1rem;padding:.4rem;width:12rem;letter-spacing:.1em}} .err{{color:#b00020}}
ol.codes{{columns:2;font-family:monospace;font-size:1.05rem}} .qr svg,.qr img{{width:220px;height:220px}}
</style></head><body><h1>pgveil · Security</h1>{body}</body></html>"#
    );
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// "Try again in 1 second." / "... in 5 seconds."
fn retry_text(e: &ApiError) -> String {
    e.retry_after
        .map(|s| format!(" Try again in {s} second{}.", if s == 1 { "" } else { "s" }))
        .unwrap_or_default()
}

fn error_card(e: &ApiError) -> String {
    format!(
        r#"<p class="err" id="error" data-code="{code}">{msg}.{retry}</p>"#,
        code = e.code,
        msg = esc(&e.message),
        retry = retry_text(e)
    )
}

/// An error, with "Back" to the landing page (a GET that issues nothing: never a token).
fn error_page(f: &PageForm, e: ApiError) -> Response {
    let body = format!(
        r#"<div class="card">{err}
<form method="get" action="/security">{h}<button id="back">Back</button></form></div>"#,
        err = error_card(&e),
        h = hidden(f)
    );
    page(e.status, "Error", &body)
}

fn login_form(f: &PageForm, enrolled: bool) -> String {
    let code = if enrolled {
        r#"<p><label>Code from your authenticator app <input type="text" name="code" id="login-code" inputmode="numeric" autocomplete="one-time-code" maxlength="24"></label></p>
<p><small>Lost your device? Enter one of your recovery codes instead.</small></p>"#
    } else {
        ""
    };
    format!(
        r#"<div class="card"><h2>Connection string for BI tools</h2><form method="post" action="/security/login">{}{code}<button id="get-token">Get a connection string</button></form></div>"#,
        hidden(f)
    )
}

async fn landing(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Query(f): Query<PageForm>,
) -> Response {
    let (user, _) = match routes::authenticate_user(&st, &f.email, &f.first, ip.0).await {
        Ok(u) => u,
        Err(e) => return error_page(&f, e),
    };
    let status = if user.mfa_enrolled {
        "<p id=\"status\">Two-factor authentication is <b>on</b>.</p>".to_owned()
    } else {
        format!(
            r#"<p id="status">Two-factor authentication is <b>off</b>.</p><form method="post" action="/security/enroll">{}<button id="enable-2fa">Enable 2FA</button></form>"#,
            hidden(&f)
        )
    };
    let recover = if user.mfa_enrolled {
        format!(
            r#"<div class="card"><h2>Lost your device?</h2><form method="post" action="/security/recover">{}<p><label>Recovery code <input type="text" name="code" id="recovery-code" maxlength="24"></label></p><button>Reset 2FA</button></form></div>"#,
            hidden(&f)
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<p>Signed in as <b id="email">{}</b> (tenant {}, role {}).</p><div class="card"><h2>Two-factor authentication</h2>{status}</div>{}{recover}"#,
        esc(&user.email),
        esc(user.tenant.as_str()),
        esc(user.role.as_str()),
        login_form(&f, user.mfa_enrolled)
    );
    page(StatusCode::OK, "Security", &body)
}

async fn enroll(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Form(f): Form<PageForm>,
) -> Response {
    match routes::enroll(&st, &f.email, &f.first, ip.0).await {
        Ok(e) => enrol_page(&f, &e, None),
        Err(e) => error_page(&f, e),
    }
}

/// The enrolment step (QR code, secret, first code); `error` when a first code was refused.
fn enrol_page(f: &PageForm, e: &routes::EnrollOut, error: Option<ApiError>) -> Response {
    let (status, err) = match &error {
        Some(x) => (
            x.status,
            format!(r#"<div class="card">{}</div>"#, error_card(x)),
        ),
        None => (StatusCode::OK, String::new()),
    };
    let body = format!(
        r#"{err}<div class="card"><h2>1. Scan this QR code</h2><p>Use Okta Verify, Microsoft Authenticator, Google Authenticator or any TOTP app.</p>
<div class="qr"><img alt="QR code" src="data:image/png;base64,{png}"></div>
<p>Or type this secret: <code id="secret">{secret}</code></p></div>
<div class="card"><h2>2. Enter the first code</h2><form method="post" action="/security/confirm">{h}
<p><input type="text" name="code" id="confirm-code" inputmode="numeric" autocomplete="one-time-code" maxlength="9"></p><button id="confirm">Confirm</button></form></div>"#,
        png = e.qr_png_base64,
        secret = esc(&e.secret),
        h = hidden(f)
    );
    page(status, "Enable 2FA", &body)
}

async fn confirm(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Form(f): Form<PageForm>,
) -> Response {
    let codes = match routes::confirm(&st, &f.email, &f.first, &f.code, ip.0).await {
        Ok(c) => c,
        // A wrong first code: back to the same enrolment step (same secret), never to a login.
        Err(e) if matches!(e.code, "invalid_code" | "throttled" | "locked_out") => {
            return match routes::pending_enrolment(&st, &f.email, &f.first, ip.0).await {
                Ok(pending) => enrol_page(&f, &pending, Some(e)),
                Err(_) => error_page(&f, e),
            };
        }
        Err(e) => return error_page(&f, e),
    };
    let items: String = codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", esc(c)))
        .collect();
    let body = format!(
        r#"<div class="card"><h2>2FA is on</h2><p><b>Save these recovery codes now.</b> Each works once if you lose your device; they will not be shown again.</p>
<ol class="codes" id="recovery-codes">{items}</ol></div>{}"#,
        login_form(&f, true)
    );
    page(StatusCode::OK, "Recovery codes", &body)
}

async fn login(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Form(f): Form<PageForm>,
) -> Response {
    let code = f.code.trim();
    let digits = normalize_code(code);
    let second = match code.len() {
        0 => None,
        _ if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(SecondFactor::Totp(code))
        }
        _ => Some(SecondFactor::Recovery(code)),
    };
    let out = match routes::login(&st, &f.email, &f.first, second, ip.0).await {
        Ok(o) => o,
        Err(e) => return error_page(&f, e),
    };
    let warn = out
        .mfa_deadline_days
        .map(|d| format!(r#"<p class="err">Two-factor authentication becomes mandatory in {d} day(s): enable it now.</p>"#))
        .unwrap_or_default();
    let body = format!(
        r#"<div class="card"><h2>Your connection</h2>{warn}<p>Valid until {exp} (UTC). Use it as the database URL in Metabase, Tableau, DBeaver, Grafana, psql...</p>
<pre id="conn-url">{url}</pre>
<p>Or as separate fields: host <code>{host}</code>, port <code>{port}</code>, database <code>{db}</code>, user <code>{user}</code>, SSL required, password:</p>
<pre id="token">{token}</pre>
<p>Shell: <code>export PGPASSWORD='{token}'</code></p></div>"#,
        exp = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(out.expires_at.max(0) as u64)
        ),
        url = esc(&out.url),
        host = esc(&out.host),
        port = out.port,
        db = esc(&out.dbname),
        user = esc(&out.user),
        token = esc(&out.token),
    );
    page(StatusCode::OK, "Connection", &body)
}

async fn recover(
    State(st): State<Arc<ApiState>>,
    Extension(ip): Extension<ClientIp>,
    Form(f): Form<PageForm>,
) -> Response {
    if let Err(e) = routes::recover(&st, &f.email, &f.first, &f.code, ip.0).await {
        return error_page(&f, e);
    }
    let body = format!(
        r#"<div class="card"><p id="status">Your old device is removed. Enrol your new one now.</p><form method="post" action="/security/enroll">{}<button id="enable-2fa">Enable 2FA</button></form></div>"#,
        hidden(&f)
    );
    page(StatusCode::OK, "Recovered", &body)
}
