//! The store's side of idempotency keys (table `idempotency_keys`,
//! `migrations/0008`; the logic is `crate::ops::idempotency`).
//!
//! A key is claimed by one statement, `INSERT … ON CONFLICT DO UPDATE …
//! WHERE expired … RETURNING`: it inserts a fresh row, or takes over an
//! expired one, and answers the row only to the one request that did, so
//! two requests (or two gateways on one database) racing on a key cannot
//! both run it. Every later write names the claim's random `claim_id`, so a
//! claim that lost its row (expired and taken over) cannot overwrite the
//! new owner's.

use super::{on_db, Result, Store};

/// A key's row as another request sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub fingerprint: String,
    pub body_sha256: Option<String>,
    /// `running`, `done`, `too_large` or `unknown` (it ended with its
    /// outcome unknown: `status` and `answer` hold that 503; no migration,
    /// the column is free text, and a replica that predates the state
    /// waits for it, then answers the key in doubt).
    pub state: String,
    pub status: Option<i64>,
    pub answer: Option<Vec<u8>>,
    /// When the claim last said it was alive (Unix ms).
    pub alive_at: i64,
}

/// What a finished claim records.
#[derive(Debug, Clone)]
pub struct IdempotencyAnswer<'a> {
    /// `done`, `too_large` or `unknown`.
    pub state: &'a str,
    pub status: i64,
    /// None for `too_large`.
    pub answer: Option<&'a [u8]>,
    pub body_sha256: Option<&'a str>,
}

impl Store {
    /// Claims `(workspace, key)` for `claim_id` unless a live (unexpired)
    /// row holds it: true when this call now owns the key.
    pub async fn claim_idempotency_key(
        &self,
        workspace: &str,
        key: &str,
        fingerprint: &str,
        claim_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool> {
        let row: Option<(String,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "INSERT INTO idempotency_keys
                 (workspace, idem_key, fingerprint, body_sha256, claim_id, state, status, answer,
                  created_at, alive_at, expires_at)
             VALUES ($1, $2, $3, NULL, $4, 'running', NULL, NULL, $5, $5, $6)
             ON CONFLICT (workspace, idem_key) DO UPDATE SET
                 fingerprint = excluded.fingerprint, body_sha256 = NULL,
                 claim_id = excluded.claim_id, state = 'running', status = NULL, answer = NULL,
                 created_at = excluded.created_at, alive_at = excluded.alive_at,
                 expires_at = excluded.expires_at
             WHERE idempotency_keys.expires_at <= $5
             RETURNING claim_id",
        )
        .bind(workspace)
        .bind(key)
        .bind(fingerprint)
        .bind(claim_id)
        .bind(now)
        .bind(expires_at)
        .fetch_optional(pool)
        .await)?;
        Ok(row.is_some_and(|(id,)| id == claim_id))
    }

    /// The live row of `(workspace, key)`, if any.
    pub async fn idempotency_key(
        &self,
        workspace: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<IdempotencyRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT fingerprint, body_sha256, state, status, answer, alive_at
             FROM idempotency_keys
             WHERE workspace = $1 AND idem_key = $2 AND expires_at > $3",
        )
        .bind(workspace)
        .bind(key)
        .bind(now)
        .fetch_optional(pool)
        .await)?)
    }

    /// Records the claim's answer; false when the claim no longer holds the
    /// row.
    pub async fn finish_idempotency_key(
        &self,
        workspace: &str,
        key: &str,
        claim_id: &str,
        answer: &IdempotencyAnswer<'_>,
        now: i64,
    ) -> Result<bool> {
        let affected = on_db!(&self.db, |pool| sqlx::query(
            "UPDATE idempotency_keys
             SET state = $4, status = $5, answer = $6, body_sha256 = $7, alive_at = $8
             WHERE workspace = $1 AND idem_key = $2 AND claim_id = $3",
        )
        .bind(workspace)
        .bind(key)
        .bind(claim_id)
        .bind(answer.state)
        .bind(answer.status)
        .bind(answer.answer)
        .bind(answer.body_sha256)
        .bind(now)
        .execute(pool)
        .await
        .map(|res| res.rows_affected()))?;
        Ok(affected > 0)
    }

    /// Gives the key up (its answer is not to be kept): the next request
    /// with it runs.
    pub async fn release_idempotency_key(
        &self,
        workspace: &str,
        key: &str,
        claim_id: &str,
    ) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM idempotency_keys WHERE workspace = $1 AND idem_key = $2 AND claim_id = $3",
        )
        .bind(workspace)
        .bind(key)
        .bind(claim_id)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// A running claim's heartbeat.
    pub async fn touch_idempotency_key(
        &self,
        workspace: &str,
        key: &str,
        claim_id: &str,
        now: i64,
    ) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE idempotency_keys SET alive_at = $4
             WHERE workspace = $1 AND idem_key = $2 AND claim_id = $3 AND state = 'running'",
        )
        .bind(workspace)
        .bind(key)
        .bind(claim_id)
        .bind(now)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Deletes the expired keys; how many went.
    pub async fn sweep_idempotency_keys(&self, now: i64) -> Result<u64> {
        Ok(on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM idempotency_keys WHERE expires_at <= $1"
        )
        .bind(now)
        .execute(pool)
        .await
        .map(|res| res.rows_affected()))?)
    }
}
