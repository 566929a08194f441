//! Claims of cluster duties (migration 0010; PostgreSQL 0005): a due
//! deadline is enforced by one replica at a time. The claim is one
//! `UPDATE … RETURNING` (both backends), with an expiry so that a claimer
//! that dies leaves the deadline to another replica.

use super::{on_db, Result, Store};

impl Store {
    /// Claims session `sid`'s deadline until `until` if it is due at `now`,
    /// not done, and not claimed (or its claim lapsed): true if claimed.
    pub async fn claim_deadline(&self, sid: &str, now: i64, until: i64) -> Result<bool> {
        let row: Option<(String,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "UPDATE process_sessions SET deadline_claimed_until = $2
             WHERE sid = $1 AND deadline_done = FALSE AND deadline_at IS NOT NULL
               AND deadline_at <= $3
               AND (deadline_claimed_until IS NULL OR deadline_claimed_until <= $3)
             RETURNING sid",
        )
        .bind(sid)
        .bind(until)
        .bind(now)
        .fetch_optional(pool)
        .await)?;
        Ok(row.is_some())
    }

    /// Gives a claim up (the deadline could not be enforced yet), so that
    /// the next look, on any replica, tries again.
    pub async fn release_deadline(&self, sid: &str) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE process_sessions SET deadline_claimed_until = NULL WHERE sid = $1"
        )
        .bind(sid)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{on_both, Fx};

    on_both!(a_deadline_is_claimed_once_until_done_or_lapsed);

    async fn a_deadline_is_claimed_once_until_done_or_lapsed(fx: Fx) {
        let a = fx.open().await;
        let b = fx.open().await;
        a.create_workspace("w1").await.unwrap();
        let (exe_id, _) = a.add_executor("w1", "x", false).await.unwrap();
        a.insert_session(&crate::store::SessionRow {
            sid: "s1".into(),
            workspace: "w1".into(),
            exe_id,
            process_id: "p1".into(),
            command: "sleep".into(),
            created_at: 1,
            executor_session_id: None,
            deadline_at: None,
        })
        .await
        .unwrap();
        // Not due: nothing to claim.
        a.set_deadline("s1", 5_000).await.unwrap();
        assert!(!a.claim_deadline("s1", 4_000, 9_000).await.unwrap());
        // Due: one replica claims it.
        assert!(a.claim_deadline("s1", 5_000, 10_000).await.unwrap());
        assert!(!b.claim_deadline("s1", 6_000, 11_000).await.unwrap());
        // The claimer died: its claim lapses, another takes it.
        assert!(b.claim_deadline("s1", 10_000, 15_000).await.unwrap());
        // Released (not enforced yet): free again at once.
        b.release_deadline("s1").await.unwrap();
        assert!(a.claim_deadline("s1", 10_001, 15_000).await.unwrap());
        // Done: never claimed again.
        a.mark_deadline_done("s1").await.unwrap();
        assert!(!b.claim_deadline("s1", 20_000, 25_000).await.unwrap());
        // A deadline set again is claimable again.
        a.set_deadline("s1", 21_000).await.unwrap();
        assert!(b.claim_deadline("s1", 21_000, 26_000).await.unwrap());
    }
}
