//! Replicas and executor leases (migration 0007; PostgreSQL 0002): who holds
//! which executor's link, with a fencing epoch. Only a gateway started as a
//! replica (`--advertise-url`, `--cluster-secret-file`) reads or writes
//! these tables; a single gateway never touches them.
//!
//! SQL that SQLite (≥ 3.35) and PostgreSQL both accept: `$N` placeholders,
//! `ON CONFLICT … DO UPDATE`, `RETURNING`, BIGINT milliseconds.

use super::{on_db, Result, Store};

/// One executor's lease, with its holder's last heartbeat (`None` when the
/// holder's row is gone).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseRow {
    pub exe_id: String,
    pub replica_id: String,
    pub peer_url: String,
    pub epoch: i64,
    pub expires_at: i64,
    pub heartbeat_at: Option<i64>,
}

/// An executor another replica holds: its lease's epoch and the holder's
/// copy of its handshake's environmentInfo (JSON).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeasedInfo {
    pub epoch: i64,
    pub environment_info: Option<String>,
}

/// One replica, and how many executors it holds by an unexpired lease.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReplicaRow {
    pub replica_id: String,
    pub peer_url: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub executors: i64,
}

impl Store {
    /// Records that replica `replica_id` (reachable at `peer_url`) is alive
    /// at `now`; the first call creates its row.
    pub async fn replica_heartbeat(
        &self,
        replica_id: &str,
        peer_url: &str,
        now: i64,
    ) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO replicas (replica_id, peer_url, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $3)
             ON CONFLICT (replica_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                                                    peer_url = excluded.peer_url",
        )
        .bind(replica_id)
        .bind(peer_url)
        .bind(now)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Takes executor `exe_id`'s lease for `replica_id` until `expires_at`,
    /// whoever held it: one statement, the epoch one more than the last
    /// holder's (1 for the first), with the executor's `environment_info`
    /// (JSON). Returns the new epoch.
    pub async fn take_lease(
        &self,
        exe_id: &str,
        replica_id: &str,
        peer_url: &str,
        expires_at: i64,
        environment_info: Option<&str>,
    ) -> Result<i64> {
        let (epoch,): (i64,) = on_db!(&self.db, |pool| sqlx::query_as(
            "INSERT INTO executor_leases (exe_id, replica_id, peer_url, epoch, expires_at,
                                          environment_info)
             VALUES ($1, $2, $3, 1, $4, $5)
             ON CONFLICT (exe_id) DO UPDATE SET replica_id = excluded.replica_id,
                                                peer_url = excluded.peer_url,
                                                epoch = executor_leases.epoch + 1,
                                                expires_at = excluded.expires_at,
                                                environment_info = excluded.environment_info
             RETURNING epoch",
        )
        .bind(exe_id)
        .bind(replica_id)
        .bind(peer_url)
        .bind(expires_at)
        .bind(environment_info)
        .fetch_one(pool)
        .await)?;
        Ok(epoch)
    }

    /// Extends to `expires_at` every lease `replica_id` holds that has not
    /// lapsed at `now` and expires by `due` (one statement); returns the
    /// renewed `(exe_id, epoch)`s. A lease another replica took, or one
    /// that lapsed, is never among them: once it was due, its holder must
    /// stop serving that executor. `due` = `i64::MAX` renews them all.
    ///
    /// Why only those due: renewing every lease every beat rewrote each
    /// row every second, 30,000 row versions a second for a fleet of
    /// 30,000 (BENCHMARKS.md, "Session 13"), which bloated the table and
    /// kept PostgreSQL and the replicas busy while nothing happened.
    pub async fn renew_leases(
        &self,
        replica_id: &str,
        now: i64,
        due: i64,
        expires_at: i64,
    ) -> Result<Vec<(String, i64)>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "UPDATE executor_leases SET expires_at = $1
             WHERE replica_id = $2 AND expires_at > $3 AND expires_at <= $4
             RETURNING exe_id, epoch",
        )
        .bind(expires_at)
        .bind(replica_id)
        .bind(now)
        .bind(due)
        .fetch_all(pool)
        .await)?)
    }

    /// Gives up `exe_id`'s lease when it is still `replica_id`'s at
    /// `epoch` (never a newer holder's): it lapses at once. The row stays,
    /// so that the next holder's epoch is still one more. Whether it was.
    pub async fn release_lease(&self, exe_id: &str, replica_id: &str, epoch: i64) -> Result<bool> {
        let affected = on_db!(&self.db, |pool| sqlx::query(
            "UPDATE executor_leases SET expires_at = 0
             WHERE exe_id = $1 AND replica_id = $2 AND epoch = $3",
        )
        .bind(exe_id)
        .bind(replica_id)
        .bind(epoch)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(affected > 0)
    }

    /// Executor `exe_id`'s lease, if any.
    pub async fn lease(&self, exe_id: &str) -> Result<Option<LeaseRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT l.exe_id, l.replica_id, l.peer_url, l.epoch, l.expires_at, r.heartbeat_at
             FROM executor_leases l LEFT JOIN replicas r ON r.replica_id = l.replica_id
             WHERE l.exe_id = $1",
        )
        .bind(exe_id)
        .fetch_optional(pool)
        .await)?)
    }

    /// How many leases `replica_id` holds unexpired at `now`.
    pub async fn count_leases(&self, replica_id: &str, now: i64) -> Result<i64> {
        let (n,): (i64,) = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT count(*) FROM executor_leases WHERE replica_id = $1 AND expires_at > $2",
        )
        .bind(replica_id)
        .bind(now)
        .fetch_one(pool)
        .await)?;
        Ok(n)
    }

    /// The executors that replicas other than `replica_id` hold by a lease
    /// unexpired at `now`, with their epochs.
    pub async fn leased_elsewhere(&self, replica_id: &str, now: i64) -> Result<Vec<(String, i64)>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT exe_id, epoch FROM executor_leases
             WHERE replica_id <> $1 AND expires_at > $2",
        )
        .bind(replica_id)
        .bind(now)
        .fetch_all(pool)
        .await)?)
    }

    /// Executor `exe_id`'s lease epoch and the environmentInfo its holder
    /// wrote.
    pub async fn leased_info(&self, exe_id: &str) -> Result<Option<LeasedInfo>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT epoch, environment_info FROM executor_leases WHERE exe_id = $1"
        )
        .bind(exe_id)
        .fetch_optional(pool)
        .await)?)
    }

    /// Every lease, by exe_id.
    pub async fn list_leases(&self) -> Result<Vec<LeaseRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT l.exe_id, l.replica_id, l.peer_url, l.epoch, l.expires_at, r.heartbeat_at
             FROM executor_leases l LEFT JOIN replicas r ON r.replica_id = l.replica_id
             ORDER BY l.exe_id",
        )
        .fetch_all(pool)
        .await)?)
    }

    /// Every replica, newest heartbeat first, with the executors each holds
    /// by a lease unexpired at `now`.
    pub async fn list_replicas(&self, now: i64) -> Result<Vec<ReplicaRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT r.replica_id, r.peer_url, r.started_at, r.heartbeat_at,
                    (SELECT COUNT(*) FROM executor_leases l
                     WHERE l.replica_id = r.replica_id AND l.expires_at > $1) AS executors
             FROM replicas r ORDER BY r.heartbeat_at DESC, r.replica_id",
        )
        .bind(now)
        .fetch_all(pool)
        .await)?)
    }

    /// Forgets replicas silent since before `before`: a replica's row is
    /// per process start, so restarts leave old ones behind. Leases stay
    /// (one row per executor), so epochs only grow.
    pub async fn prune_replicas(&self, before: i64) -> Result<u64> {
        Ok(on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM replicas WHERE heartbeat_at < $1"
        )
        .bind(before)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{on_both, Fx};
    use super::*;

    on_both!(leases_move_with_a_growing_epoch_and_lapse);

    async fn leases_move_with_a_growing_epoch_and_lapse(fx: Fx) {
        let s = fx.open().await;
        s.replica_heartbeat("ra", "http://a", 1_000).await.unwrap();
        s.replica_heartbeat("rb", "http://b", 1_000).await.unwrap();
        assert_eq!(
            s.take_lease("e1", "ra", "http://a", 11_000, None)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.take_lease("e2", "ra", "http://a", 11_000, None)
                .await
                .unwrap(),
            1
        );
        // Renewal: one statement for all of ra's that are due.
        assert!(s
            .renew_leases("ra", 2_000, 10_999, 12_000)
            .await
            .unwrap()
            .is_empty());
        let mut renewed = s.renew_leases("ra", 2_000, 11_000, 12_000).await.unwrap();
        renewed.sort();
        assert_eq!(renewed, vec![("e1".into(), 1), ("e2".into(), 1)]);
        // rb takes e1: epoch 2, and ra no longer renews it.
        assert_eq!(
            s.take_lease("e1", "rb", "http://b", 13_000, None)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            s.renew_leases("ra", 3_000, i64::MAX, 13_000).await.unwrap(),
            vec![("e2".into(), 1)]
        );
        let l = s.lease("e1").await.unwrap().unwrap();
        assert_eq!((l.replica_id.as_str(), l.epoch), ("rb", 2));
        assert_eq!(l.heartbeat_at, Some(1_000));
        assert_eq!(
            s.leased_elsewhere("ra", 3_000).await.unwrap(),
            vec![("e1".to_string(), 2)]
        );
        assert_eq!(s.count_leases("ra", 3_000).await.unwrap(), 1);
        assert_eq!(s.count_leases("rb", 3_000).await.unwrap(), 1);
        assert_eq!(s.count_leases("ra", 13_000).await.unwrap(), 0);
        // A lapsed lease is not renewed.
        assert!(s
            .renew_leases("ra", 20_000, i64::MAX, 30_000)
            .await
            .unwrap()
            .is_empty());
        // ra's stale release does not remove rb's lease.
        assert!(!s.release_lease("e1", "ra", 1).await.unwrap());
        assert!(s.release_lease("e1", "rb", 2).await.unwrap());
        let l = s.lease("e1").await.unwrap().unwrap();
        assert_eq!((l.epoch, l.expires_at), (2, 0));
        assert!(s.leased_elsewhere("ra", 3_000).await.unwrap().is_empty());
        // The next holder's epoch still grows.
        assert_eq!(
            s.take_lease("e1", "ra", "http://a", 14_000, None)
                .await
                .unwrap(),
            3
        );

        s.replica_heartbeat("ra", "http://a2", 5_000).await.unwrap();
        let list = s.list_replicas(6_000).await.unwrap();
        assert_eq!(list[0].replica_id, "ra");
        assert_eq!(list[0].peer_url, "http://a2");
        assert_eq!(list[0].executors, 2);
        assert_eq!(list[1].executors, 0);
        assert_eq!(s.prune_replicas(2_000).await.unwrap(), 1);
        assert_eq!(s.list_replicas(6_000).await.unwrap().len(), 1);

        // The holder's copy of the handshake, for the others.
        s.take_lease(
            "e4",
            "rc",
            "http://c",
            13_000,
            Some(r#"{"cwd":"file:///"}"#),
        )
        .await
        .unwrap();
        assert_eq!(
            s.leased_info("e4").await.unwrap().unwrap(),
            LeasedInfo {
                epoch: 1,
                environment_info: Some(r#"{"cwd":"file:///"}"#.into())
            }
        );
        assert!(s.leased_info("nope").await.unwrap().is_none());
    }
}
