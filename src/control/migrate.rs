//! Versioned schema migrations, applied in order inside one transaction under an advisory lock.

use tokio_postgres::Client;

use super::ControlError;

/// Advisory lock key taken while migrating (arbitrary, fixed: "pgveil" in ASCII).
const MIGRATION_LOCK: i64 = 0x7067_7665_696c;

/// `(version, SQL)`: append only; never edit a released migration.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE users (
    id          uuid PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    tenant      text NOT NULL,
    role        text NOT NULL,
    disabled    boolean NOT NULL DEFAULT false,
    created_at  bigint NOT NULL,
    -- tokens issued before this time (epoch seconds) are refused
    tokens_valid_after bigint NOT NULL DEFAULT 0
);
CREATE TABLE totp_enrolments (
    user_id      uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    -- AES-256-GCM: 12-byte nonce || ciphertext || tag; associated data = user id
    secret_enc   bytea NOT NULL,
    created_at   bigint NOT NULL,
    confirmed_at bigint,
    -- last accepted 30-second time step (replay protection)
    last_step    bigint
);
CREATE TABLE recovery_codes (
    id       bigserial PRIMARY KEY,
    user_id  uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hash     text NOT NULL,
    used_at  bigint
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id) WHERE used_at IS NULL;
CREATE TABLE issued_tokens (
    jti        text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    amr        text[] NOT NULL,
    issued_at  bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE TABLE revoked_tokens (
    jti        text PRIMARY KEY,
    revoked_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE TABLE auth_throttle (
    scope         text PRIMARY KEY,
    failures      integer NOT NULL,
    next_allowed  bigint NOT NULL,
    locked_until  bigint
);
"#,
)];

/// Applies every migration not yet recorded in `schema_migrations`.
pub async fn migrate(client: &mut Client) -> Result<(), ControlError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Every instance start runs this; the "already exists, skipping" NOTICE would be logged each time.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying control database migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
