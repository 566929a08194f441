//! A workspace's roster — its executors' ids, names and default flag —
//! kept in memory for envs/list, which otherwise read every executor row
//! of the workspace on each call (50 ms for 10,000 rows on SQLite, before
//! listing any; BENCHMARKS.md, "Fleet").
//!
//! **Why it is exact.** Every change of those columns, by any process on
//! the store (another replica, `execgate admin`), bumps the one-row
//! counter `executor_roster.version` in the same transaction (triggers of
//! migration 0012, PostgreSQL 0007). A roster is used only while the
//! counter is the one read *before* the roster was: a change that races
//! with the read leaves the entry stale, never wrongly fresh. So each
//! envs/list costs one single-row read instead of the workspace's rows.
//!
//! `last_seen_at` rides along for the executors another replica holds
//! (envs/list shows the holder's last write for them): it changes without
//! bumping the counter, so an entry is also re-read after [`MAX_AGE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{on_db, Result, Store};

/// How long a roster's `last_seen_at` values may be reused (they are
/// written every `ping_interval`, 30 s, anyway).
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// Workspaces kept; past it the map is emptied (a rebuild each).
const CAPACITY: usize = 4096;

/// One executor of a workspace's roster.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RosterEntry {
    pub exe_id: String,
    pub name: String,
    pub is_default: bool,
    pub last_seen_at: Option<i64>,
}

/// A workspace's executors, ordered by name (byte order).
pub type Roster = Arc<Vec<RosterEntry>>;

/// The rosters read so far, each with the counter it was read under.
#[derive(Default)]
pub(crate) struct Rosters {
    map: Mutex<HashMap<String, (i64, Instant, Roster)>>,
}

impl Store {
    /// The executors of `workspace`, ordered by name: from memory while the
    /// store's roster counter has not moved (see the module docs).
    pub async fn roster(&self, workspace: &str) -> Result<Roster> {
        let version = self.roster_version().await?;
        if let Some((v, at, roster)) = self.rosters.map.lock().unwrap().get(workspace) {
            if *v == version && at.elapsed() < MAX_AGE {
                return Ok(roster.clone());
            }
        }
        let rows: Vec<RosterEntry> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT exe_id, name, is_default, last_seen_at FROM executors
             WHERE workspace = $1 ORDER BY name"
        )
        .bind(workspace)
        .fetch_all(pool)
        .await)?;
        let mut rows = rows;
        // Byte order, as SQLite's ORDER BY gives it (PostgreSQL's follows
        // the database's collation): envs/list's pages (`after`) rely on it.
        rows.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let roster = Arc::new(rows);
        let mut map = self.rosters.map.lock().unwrap();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(
            workspace.to_string(),
            (version, Instant::now(), roster.clone()),
        );
        Ok(roster)
    }

    /// The roster counter: it moves with every executor added, removed,
    /// renamed, moved or made default, by any process on the store (see
    /// the module docs). One single-row read.
    pub(crate) async fn roster_version(&self) -> Result<i64> {
        Ok(on_db!(&self.db, |pool| sqlx::query_scalar(
            "SELECT version FROM executor_roster WHERE id = 1"
        )
        .fetch_one(pool)
        .await)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{on_both, Fx};

    on_both!(the_roster_follows_every_change_of_the_executors,);
    on_both!(last_seen_is_recorded_for_many_executors_at_once,);

    /// `touch_executors` writes each executor's own time, across more than
    /// one batch, leaves the others alone, and ignores ids that are gone.
    async fn last_seen_is_recorded_for_many_executors_at_once(fx: Fx) {
        let store = fx.open().await;
        store.create_workspace("w").await.unwrap();
        let n = super::super::TOUCH_BATCH + 3;
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(
                store
                    .add_executor("w", &format!("e{i}"), false)
                    .await
                    .unwrap()
                    .0,
            );
        }
        let (untouched, _) = store.add_executor("w", "quiet", false).await.unwrap();
        let mut seen: Vec<(&str, i64)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), 1_000 + i as i64))
            .collect();
        seen.push(("exe_gone", 5));
        store.touch_executors(&seen).await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let row = store.executor(id).await.unwrap().unwrap();
            assert_eq!(row.last_seen_at, Some(1_000 + i as i64), "{i}");
        }
        let quiet = store.executor(&untouched).await.unwrap().unwrap();
        assert_eq!(quiet.last_seen_at, None);
        store.touch_executors(&[]).await.unwrap();
    }

    /// Adds, default changes and removals by another
    /// handle on the same store (another process, in effect) are all seen
    /// at the next read; last_seen writes are not roster changes.
    async fn the_roster_follows_every_change_of_the_executors(fx: Fx) {
        let (a, b) = (fx.open().await, fx.open().await);
        a.create_workspace("w").await.unwrap();
        let names = |r: &super::Roster| -> Vec<(String, bool)> {
            r.iter().map(|e| (e.name.clone(), e.is_default)).collect()
        };
        assert!(a.roster("w").await.unwrap().is_empty());
        let (x, _) = b.add_executor("w", "x", false).await.unwrap();
        b.add_executor("w", "a", true).await.unwrap();
        let first = a.roster("w").await.unwrap();
        assert_eq!(
            names(&first),
            [("a".to_string(), true), ("x".to_string(), false)]
        );
        // Unchanged: the same entry, not a re-read.
        b.touch_executors(&[(&x, 1234)]).await.unwrap();
        let again = a.roster("w").await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        b.set_default_executor(&x).await.unwrap();
        assert_eq!(
            names(&a.roster("w").await.unwrap()),
            [("a".to_string(), false), ("x".to_string(), true)]
        );
        b.remove_executor("w", "a").await.unwrap();
        assert_eq!(
            names(&a.roster("w").await.unwrap()),
            [("x".to_string(), true)]
        );
        // Another workspace's change moves the counter too; still exact.
        b.create_workspace("v").await.unwrap();
        b.add_executor("v", "y", false).await.unwrap();
        assert_eq!(a.roster("w").await.unwrap().len(), 1);
        assert_eq!(a.roster("v").await.unwrap().len(), 1);
    }
}
