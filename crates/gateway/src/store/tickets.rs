//! Connect tickets and spent SigV4 signatures shared by replicas
//! (migration 0009; PostgreSQL 0004).
//! A replica's register endpoint stores the ticket's SHA-256 here, and the
//! WebSocket upgrade on any replica takes it: single use (one `DELETE …
//! RETURNING`), expiring, one per executor. A single gateway keeps its
//! tickets in memory and never touches the table.

use super::{on_db, Result, Store};

impl Store {
    /// Stores ticket `ticket_hash` for `exe_id` until `expires_at`, in place
    /// of the executor's previous one; expired tickets go too.
    pub async fn put_connect_ticket(
        &self,
        ticket_hash: &str,
        exe_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        on_db!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM connect_tickets WHERE exe_id = $1 OR expires_at <= $2")
                .bind(exe_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO connect_tickets (ticket_hash, exe_id, expires_at) VALUES ($1, $2, $3)",
            )
            .bind(ticket_hash)
            .bind(exe_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await)?;
        Ok(())
    }

    /// Takes (deletes) ticket `ticket_hash`: its executor if it was there
    /// and unexpired at `now`. A second take of the same ticket, on any
    /// replica, answers `None`.
    pub async fn take_connect_ticket(&self, ticket_hash: &str, now: i64) -> Result<Option<String>> {
        let row: Option<(String, i64)> = on_db!(&self.db, |pool| sqlx::query_as(
            "DELETE FROM connect_tickets WHERE ticket_hash = $1 RETURNING exe_id, expires_at",
        )
        .bind(ticket_hash)
        .fetch_optional(pool)
        .await)?;
        Ok(row.and_then(|(exe_id, expires_at)| (expires_at > now).then_some(exe_id)))
    }

    /// Records SigV4 signature `signature_hash` as used until `expires_at`:
    /// false when any replica had already recorded it (a replay). Expired
    /// records go first.
    pub async fn spend_signature(
        &self,
        signature_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool> {
        let row: Option<(String,)> = on_db!(&self.db, |pool| async {
            sqlx::query("DELETE FROM spent_signatures WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            sqlx::query_as(
                "INSERT INTO spent_signatures (signature_hash, expires_at) VALUES ($1, $2)
                 ON CONFLICT (signature_hash) DO NOTHING RETURNING signature_hash",
            )
            .bind(signature_hash)
            .bind(expires_at)
            .fetch_optional(pool)
            .await
        }
        .await)?;
        Ok(row.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{on_both, Fx};

    on_both!(
        a_ticket_is_taken_once_by_any_store_and_expires,
        a_signature_is_spent_once_across_stores
    );

    async fn a_signature_is_spent_once_across_stores(fx: Fx) {
        let a = fx.open().await;
        let b = fx.open().await;
        assert!(a.spend_signature("s1", 1_000, 2_000).await.unwrap());
        assert!(!b.spend_signature("s1", 1_500, 2_500).await.unwrap());
        assert!(b.spend_signature("s2", 1_500, 2_500).await.unwrap());
        // Forgotten once expired (its SigV4 time window has passed by then).
        assert!(b.spend_signature("s1", 2_000, 3_000).await.unwrap());
    }

    async fn a_ticket_is_taken_once_by_any_store_and_expires(fx: Fx) {
        let a = fx.open().await;
        let b = fx.open().await;
        a.put_connect_ticket("h1", "exe_1", 1_000, 61_000)
            .await
            .unwrap();
        // Another replica takes it, once.
        assert_eq!(
            b.take_connect_ticket("h1", 2_000).await.unwrap().as_deref(),
            Some("exe_1")
        );
        assert_eq!(a.take_connect_ticket("h1", 2_000).await.unwrap(), None);
        // A new register replaces the executor's last ticket.
        a.put_connect_ticket("h2", "exe_1", 3_000, 63_000)
            .await
            .unwrap();
        a.put_connect_ticket("h3", "exe_1", 4_000, 64_000)
            .await
            .unwrap();
        assert_eq!(b.take_connect_ticket("h2", 5_000).await.unwrap(), None);
        assert_eq!(
            b.take_connect_ticket("h3", 5_000).await.unwrap().as_deref(),
            Some("exe_1")
        );
        // An expired ticket opens nothing (and is gone).
        a.put_connect_ticket("h4", "exe_2", 5_000, 6_000)
            .await
            .unwrap();
        assert_eq!(b.take_connect_ticket("h4", 6_000).await.unwrap(), None);
        assert_eq!(b.take_connect_ticket("h4", 1_000).await.unwrap(), None);
    }
}
