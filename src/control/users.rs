//! Users, issued tokens and revocations in the control database.

use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{ControlDb, ControlError};
use crate::ids::{RoleName, TenantId};

/// A user who may obtain pgveil tokens.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Internal id.
    pub id: Uuid,
    /// Email: the login name and the token's `sub`.
    pub email: String,
    /// Tenant whose database the user's sessions reach.
    pub tenant: TenantId,
    /// Role the user's sessions run as.
    pub role: RoleName,
    /// Disabled users get no tokens and their sessions are refused and terminated.
    pub disabled: bool,
    /// Whether a TOTP enrolment is confirmed.
    pub mfa_enrolled: bool,
    /// Tokens issued before this time (epoch seconds) are refused.
    #[serde(skip)]
    pub tokens_valid_after: i64,
}

const USER_COLUMNS: &str = "u.id, u.email, u.tenant, u.role, u.disabled, \
     EXISTS (SELECT 1 FROM totp_enrolments e WHERE e.user_id = u.id AND e.confirmed_at IS NOT NULL), \
     u.tokens_valid_after";

fn user_from(row: &Row) -> User {
    User {
        id: row.get(0),
        email: row.get(1),
        tenant: TenantId::new(row.get::<_, String>(2)),
        role: RoleName::new(row.get::<_, String>(3)),
        disabled: row.get(4),
        mfa_enrolled: row.get(5),
        tokens_valid_after: row.get(6),
    }
}

/// What the proxies must refuse: loaded whole on every refresh (it stays small: revocations of unexpired
/// tokens, disabled users, per-user "tokens valid after" times).
#[derive(Debug, Default, Clone)]
pub struct RevocationRows {
    /// Revoked token ids that have not expired yet.
    pub jtis: Vec<String>,
    /// Emails of disabled users.
    pub disabled: Vec<String>,
    /// `(email, epoch seconds)`: tokens issued before are refused.
    pub valid_after: Vec<(String, i64)>,
}

impl ControlDb {
    /// Creates a user; `Ok(None)` if the email is taken.
    pub async fn create_user(
        &self,
        email: &str,
        tenant: &TenantId,
        role: &RoleName,
        now: i64,
    ) -> Result<Option<User>, ControlError> {
        let c = self.client().await?;
        let id = Uuid::new_v4();
        let n = c
            .execute(
                "INSERT INTO users (id, email, tenant, role, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (email) DO NOTHING",
                &[&id, &email, &tenant.as_str(), &role.as_str(), &now],
            )
            .await?;
        drop(c); // one pooled connection per request at a time (no pool exhaustion under load)
        if n == 0 {
            return Ok(None);
        }
        self.user(email).await
    }

    /// The user with this email (emails are stored trimmed and lower-cased; so is the lookup).
    pub async fn user(&self, email: &str) -> Result<Option<User>, ControlError> {
        let c = self.client().await?;
        let email = email.trim().to_lowercase();
        let row = c
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.email = $1"),
                &[&email],
            )
            .await?;
        Ok(row.as_ref().map(user_from))
    }

    /// Users, optionally of one tenant, by email.
    pub async fn users(&self, tenant: Option<&TenantId>) -> Result<Vec<User>, ControlError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users u WHERE $1::text IS NULL OR u.tenant = $1 ORDER BY u.email"
                ),
                &[&tenant.map(|t| t.as_str())],
            )
            .await?;
        Ok(rows.iter().map(user_from).collect())
    }

    /// Disables (or re-enables) a user; disabling also invalidates every token issued so far, including
    /// in the current second (`iat` has whole seconds, so tokens are valid from the next one).
    /// Returns false if there is no such user.
    pub async fn set_disabled(
        &self,
        email: &str,
        disabled: bool,
        now: i64,
    ) -> Result<bool, ControlError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE users SET disabled = $2, \
                 tokens_valid_after = CASE WHEN $2 THEN greatest(tokens_valid_after, $3::bigint + 1) ELSE tokens_valid_after END \
                 WHERE email = $1",
                &[&email, &disabled, &now],
            )
            .await?;
        Ok(n > 0)
    }

    /// Records an issued token (for audit and so admins can list and revoke it).
    pub async fn record_token(
        &self,
        jti: &str,
        user: Uuid,
        amr: &[String],
        issued_at: i64,
        expires_at: i64,
    ) -> Result<(), ControlError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO issued_tokens (jti, user_id, amr, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            &[&jti, &user, &amr, &issued_at, &expires_at],
        )
        .await?;
        Ok(())
    }

    /// Revokes a token id until `default_expiry` (after which the token is refused for expiry anyway), or the
    /// recorded expiry when the token was issued by the API. Revoking again only extends the expiry.
    pub async fn revoke_token(
        &self,
        jti: &str,
        now: i64,
        default_expiry: i64,
    ) -> Result<(), ControlError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO revoked_tokens (jti, revoked_at, expires_at) \
             VALUES ($1, $2, coalesce((SELECT expires_at FROM issued_tokens WHERE jti = $1), $3)) \
             ON CONFLICT (jti) DO UPDATE SET expires_at = greatest(revoked_tokens.expires_at, EXCLUDED.expires_at)",
            &[&jti, &now, &default_expiry],
        )
        .await?;
        Ok(())
    }

    /// Everything a proxy must refuse as of `now`.
    pub async fn revocations(&self, now: i64) -> Result<RevocationRows, ControlError> {
        let c = self.client().await?;
        let jtis = c
            .query(
                "SELECT jti FROM revoked_tokens WHERE expires_at + 60 > $1",
                &[&now],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = RevocationRows {
            jtis,
            ..Default::default()
        };
        for r in c
            .query("SELECT email, disabled, tokens_valid_after FROM users WHERE disabled OR tokens_valid_after > 0", &[])
            .await?
        {
            let email: String = r.get(0);
            if r.get::<_, bool>(1) {
                out.disabled.push(email.clone());
            }
            out.valid_after.push((email, r.get(2)));
        }
        Ok(out)
    }
}
