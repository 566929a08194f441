//! The per-workspace session cap across replicas (`ops::limits`): on
//! PostgreSQL, the step from counting a workspace's live sessions to
//! inserting the new session's row is serialized across every replica by a
//! transaction-scoped advisory lock keyed by the workspace
//! (`pg_advisory_xact_lock(CLASS, hashtext(workspace))`), so the cap holds
//! exactly. The lock's transaction does nothing else: the count and the
//! insert run on other connections, the insert commits before the lock is
//! let go, and the lock goes with the transaction (its end, or its
//! connection's), never later. Two workspaces whose names hash alike only
//! wait for each other. On SQLite there is one gateway per database, and
//! the in-memory lock of `ops::limits` is enough: nothing here.

use sqlx::{Postgres, Transaction};

use super::{Db, Result, Store};

/// The advisory lock's first key ("EGSC"): the class of locks that are
/// workspaces' session caps. Two-key advisory locks do not overlap the
/// one-key ones (sqlx's migration lock).
const CLASS: i32 = 0x4547_5343;

/// A workspace's session-cap lock, held until [`WorkspaceLock::release`]
/// (or dropped: then its transaction is rolled back in the background).
pub struct WorkspaceLock {
    tx: Option<Transaction<'static, Postgres>>,
}

impl WorkspaceLock {
    /// Lets the lock go (ends its transaction).
    pub async fn release(mut self) {
        if let Some(tx) = self.tx.take() {
            if let Err(e) = tx.rollback().await {
                // The connection is closed then, and the lock with it.
                tracing::warn!("releasing a workspace's session lock: {e}");
            }
        }
    }
}

impl Drop for WorkspaceLock {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.rollback().await;
                });
            }
        }
    }
}

impl Store {
    /// Takes `workspace`'s session-cap lock across replicas (waiting for
    /// the replica that holds it); None on SQLite, which needs none.
    pub async fn lock_workspace_sessions(&self, workspace: &str) -> Result<Option<WorkspaceLock>> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(None);
        };
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(CLASS)
            .bind(workspace)
            .execute(&mut *tx)
            .await?;
        Ok(Some(WorkspaceLock { tx: Some(tx) }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{on_both, Fx};

    on_both!(a_workspace_lock_is_held_until_released);

    async fn a_workspace_lock_is_held_until_released(fx: Fx) {
        let store = fx.open().await;
        let Some(first) = store.lock_workspace_sessions("w").await.unwrap() else {
            assert!(!store.is_postgres(), "PostgreSQL takes a lock");
            return;
        };
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.lock_workspace_sessions("w").await })
        };
        // Another workspace is not held up.
        let other = store.lock_workspace_sessions("w2").await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the second lock waits for the first");
        first.release().await;
        let second = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the second lock once the first is released")
            .unwrap()
            .unwrap()
            .unwrap();
        // Dropped (not released): the lock goes in the background.
        drop(second);
        let third =
            tokio::time::timeout(Duration::from_secs(5), store.lock_workspace_sessions("w"))
                .await
                .expect("a dropped lock is let go");
        third.unwrap().unwrap().release().await;
        other.release().await;
    }
}
