//! What the metrics endpoint reads from the store at scrape time.

use crate::store::{on_db, Result, Store};

impl Store {
    /// Process sessions in the index, by status: `live` (not known to have
    /// ended) and `ended`. One query per scrape, none on a call's path.
    pub async fn count_sessions_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT CASE WHEN ended_at IS NULL THEN 'live' ELSE 'ended' END AS status, COUNT(*)
             FROM process_sessions GROUP BY 1",
        )
        .fetch_all(pool)
        .await)?)
    }
}
