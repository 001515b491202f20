//! TOTP enrolments and recovery codes in the control database. Each one-time use is a single conditional
//! `UPDATE ... RETURNING`, so two instances racing on the same code cannot both win.

use uuid::Uuid;

use crate::control::{ControlDb, ControlError};

/// A stored enrolment (secret still encrypted).
#[derive(Clone)]
pub struct Enrolment {
    /// Sealed TOTP secret.
    pub sealed: Vec<u8>,
    /// Confirmation time (epoch seconds), once the first code was accepted.
    pub confirmed_at: Option<i64>,
}

impl ControlDb {
    /// Stores a new unconfirmed enrolment, replacing an unconfirmed one. False if one is already confirmed.
    pub async fn begin_enrolment(
        &self,
        user: Uuid,
        sealed: &[u8],
        now: i64,
    ) -> Result<bool, ControlError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO totp_enrolments AS e (user_id, secret_enc, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET secret_enc = $2, created_at = $3, last_step = NULL \
                 WHERE e.confirmed_at IS NULL",
                &[&user, &sealed, &now],
            )
            .await?;
        Ok(n > 0)
    }

    /// The user's enrolment, if any.
    pub async fn enrolment(&self, user: Uuid) -> Result<Option<Enrolment>, ControlError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT secret_enc, confirmed_at FROM totp_enrolments WHERE user_id = $1",
            &[&user],
        )
        .await?
        .map(|r| Enrolment {
            sealed: r.get(0),
            confirmed_at: r.get(1),
        }))
    }

    /// Confirms the enrolment whose secret is `sealed` with the code of `step`, and stores the recovery code
    /// MACs, replacing older codes. False if it was confirmed or replaced meanwhile.
    pub async fn confirm_enrolment(
        &self,
        user: Uuid,
        sealed: &[u8],
        step: i64,
        now: i64,
        macs: &[Vec<u8>],
    ) -> Result<bool, ControlError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE totp_enrolments SET confirmed_at = $3, last_step = $4 \
                 WHERE user_id = $1 AND secret_enc = $2 AND confirmed_at IS NULL",
                &[&user, &sealed, &now, &step],
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute("DELETE FROM recovery_codes WHERE user_id = $1", &[&user])
            .await?;
        for m in macs {
            tx.execute(
                "INSERT INTO recovery_codes (user_id, mac) VALUES ($1, $2)",
                &[&user, m],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Accepts the code of `step` if it is later than the last accepted one (replay protection across
    /// instances). False: this step (or a later one) was already used.
    pub async fn accept_step(&self, user: Uuid, step: i64) -> Result<bool, ControlError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE totp_enrolments SET last_step = $2 \
                 WHERE user_id = $1 AND confirmed_at IS NOT NULL AND (last_step IS NULL OR last_step < $2)",
                &[&user, &step],
            )
            .await?;
        Ok(n == 1)
    }

    /// Uses the unused recovery code of `user` whose MAC is `mac`, in one conditional `UPDATE`; false if
    /// there is none (wrong code, or used meanwhile).
    pub async fn use_recovery_mac(
        &self,
        user: Uuid,
        mac: &[u8],
        now: i64,
    ) -> Result<bool, ControlError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE recovery_codes SET used_at = $3 \
                 WHERE user_id = $1 AND mac = $2 AND used_at IS NULL",
                &[&user, &mac, &now],
            )
            .await?;
        Ok(n == 1)
    }

    /// Unused legacy recovery codes of a user (issued before codes were MACed): `(id, Argon2id hash)`.
    pub async fn legacy_recovery_codes(
        &self,
        user: Uuid,
    ) -> Result<Vec<(i64, String)>, ControlError> {
        let c = self.client().await?;
        Ok(c.query("SELECT id, hash FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL AND mac IS NULL AND hash IS NOT NULL ORDER BY id", &[&user])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Marks a recovery code used; false if it was used meanwhile.
    pub async fn use_recovery_code(&self, id: i64, now: i64) -> Result<bool, ControlError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE recovery_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
                &[&id, &now],
            )
            .await?;
        Ok(n == 1)
    }

    /// Removes the user's enrolment and recovery codes (after a recovery), so a new device can be enrolled.
    pub async fn reset_enrolment(&self, user: Uuid) -> Result<(), ControlError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("DELETE FROM totp_enrolments WHERE user_id = $1", &[&user])
            .await?;
        tx.execute("DELETE FROM recovery_codes WHERE user_id = $1", &[&user])
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
