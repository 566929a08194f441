//! The store's side of MCP tasks (table `mcp_tasks`, `migrations/0011`;
//! the logic is `crate::ops::tasks`).
//!
//! A task is a process session (`process_sessions`, same id) plus this row.
//! The two terminal writes race safely: `finish_task` and `cancel_task`
//! each update only a row that neither has written yet, so the first one
//! wins and a task never turns from one terminal state into another.

use super::{on_db, Result, Store};

/// One task, as `tasks/get` reads it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TaskRow {
    /// The process session's `sid`.
    pub task_id: String,
    pub workspace: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub timeout_ms: i64,
    pub max_output_bytes: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The final CallToolResult (JSON), once seen.
    pub result: Option<String>,
}

impl Store {
    /// Records a task whose session row exists; deletes expired tasks first
    /// (the table's only sweep).
    pub async fn insert_task(&self, row: &TaskRow) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM mcp_tasks WHERE expires_at <= $1"
        )
        .bind(row.created_at)
        .execute(pool)
        .await
        .map(|_| ()))?;
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO mcp_tasks (task_id, workspace, created_at, expires_at, timeout_ms,
                                    max_output_bytes, cancelled_at, finished_at, result)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&row.task_id)
        .bind(&row.workspace)
        .bind(row.created_at)
        .bind(row.expires_at)
        .bind(row.timeout_ms)
        .bind(row.max_output_bytes)
        .bind(row.cancelled_at)
        .bind(row.finished_at)
        .bind(&row.result)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Task `task_id` of `workspace`, unless it expired by `now`. Another
    /// workspace's task is as absent as an unknown one.
    pub async fn task(&self, workspace: &str, task_id: &str, now: i64) -> Result<Option<TaskRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT * FROM mcp_tasks WHERE task_id = $1 AND workspace = $2 AND expires_at > $3"
        )
        .bind(task_id)
        .bind(workspace)
        .bind(now)
        .fetch_optional(pool)
        .await)?)
    }

    /// Records the task's final result unless it was cancelled or finished
    /// already: true when this call wrote it.
    pub async fn finish_task(&self, task_id: &str, at: i64, result: &str) -> Result<bool> {
        let done = on_db!(&self.db, |pool| sqlx::query(
            "UPDATE mcp_tasks SET finished_at = $1, result = $2
             WHERE task_id = $3 AND finished_at IS NULL AND cancelled_at IS NULL"
        )
        .bind(at)
        .bind(result)
        .bind(task_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// Records the task's cancellation unless it finished or was cancelled
    /// already: true when this call wrote it.
    pub async fn cancel_task(&self, task_id: &str, at: i64) -> Result<bool> {
        let done = on_db!(&self.db, |pool| sqlx::query(
            "UPDATE mcp_tasks SET cancelled_at = $1
             WHERE task_id = $2 AND finished_at IS NULL AND cancelled_at IS NULL"
        )
        .bind(at)
        .bind(task_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{on_both, Fx};
    use super::*;

    on_both!(
        tasks_are_workspace_scoped_and_expire,
        a_task_ends_once_finished_or_cancelled,
    );

    fn row(id: &str, workspace: &str, created_at: i64, expires_at: i64) -> TaskRow {
        TaskRow {
            task_id: id.into(),
            workspace: workspace.into(),
            created_at,
            expires_at,
            timeout_ms: 60_000,
            max_output_bytes: Some(1024),
            cancelled_at: None,
            finished_at: None,
            result: None,
        }
    }

    async fn tasks_are_workspace_scoped_and_expire(fx: Fx) {
        let store = fx.open().await;
        let a = row("ps_a", "w1", 1_000, 5_000);
        store.insert_task(&a).await.unwrap();
        assert_eq!(store.task("w1", "ps_a", 1_000).await.unwrap(), Some(a));
        // Another workspace's task is not there.
        assert_eq!(store.task("w2", "ps_a", 1_000).await.unwrap(), None);
        assert_eq!(store.task("w1", "ps_nope", 1_000).await.unwrap(), None);
        // Expired: absent, then deleted by the next creation.
        assert_eq!(store.task("w1", "ps_a", 5_000).await.unwrap(), None);
        store
            .insert_task(&row("ps_b", "w1", 6_000, 9_000))
            .await
            .unwrap();
        let left: Vec<(String,)> = on_db!(&store.db, |pool| sqlx::query_as(
            "SELECT task_id FROM mcp_tasks ORDER BY task_id"
        )
        .fetch_all(pool)
        .await)
        .unwrap();
        assert_eq!(left, vec![("ps_b".to_string(),)]);
        // A second replica reads the same rows.
        let other = fx.open().await;
        assert!(other.task("w1", "ps_b", 6_000).await.unwrap().is_some());
    }

    async fn a_task_ends_once_finished_or_cancelled(fx: Fx) {
        let store = fx.open().await;
        store
            .insert_task(&row("ps_f", "w", 1, 1_000_000))
            .await
            .unwrap();
        store
            .insert_task(&row("ps_c", "w", 1, 1_000_000))
            .await
            .unwrap();
        assert!(store.finish_task("ps_f", 10, "{\"r\":1}").await.unwrap());
        assert!(!store.finish_task("ps_f", 11, "{\"r\":2}").await.unwrap());
        assert!(!store.cancel_task("ps_f", 12).await.unwrap());
        let f = store.task("w", "ps_f", 20).await.unwrap().unwrap();
        assert_eq!(
            (f.finished_at, f.result.as_deref(), f.cancelled_at),
            (Some(10), Some("{\"r\":1}"), None)
        );
        assert!(store.cancel_task("ps_c", 13).await.unwrap());
        assert!(!store.cancel_task("ps_c", 14).await.unwrap());
        assert!(!store.finish_task("ps_c", 15, "{}").await.unwrap());
        let c = store.task("w", "ps_c", 20).await.unwrap().unwrap();
        assert_eq!(
            (c.cancelled_at, c.finished_at, c.result),
            (Some(13), None, None)
        );
    }
}
