//! Whether the store answers: the readiness check's query (`/readyz`).

use super::{on_db, Store, StoreError};

impl Store {
    /// A query that touches the database and nothing else. The caller
    /// bounds how long it may take.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Closes the main pool, as a lost database would leave it: for the
    /// readiness tests.
    #[cfg(test)]
    pub(crate) async fn close_for_tests(&self) {
        on_db!(&self.db, |pool| pool.close().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_open_store_answers_the_ping() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.ping().await.unwrap();
        store.close_for_tests().await;
        assert!(store.ping().await.is_err());
    }
}
