//! The session row of a new `exec_command`, written so that its fsync is
//! not on the answer's critical path, without giving up what the row
//! promises (issue 22, "calls at the floor"; BENCHMARKS.md).
//!
//! **What the row promises.** A process never runs without a row that
//! reaches it (the row is written before `process/start`), and a row the
//! client was told about (its `session_id`) survives a crash, power loss
//! included. With SQLite's default `synchronous = FULL` both came from one
//! commit that waited for an fsync of the WAL (0.3–0.5 ms on this VM)
//! before `process/start` was even sent.
//!
//! **How it is kept, cheaper.** On SQLite the row is committed on a
//! connection of its own with `synchronous = NORMAL`: the commit writes
//! its WAL frames to the kernel (so a crash of the gateway process, which
//! is what the first promise is about, cannot lose them) and returns
//! without an fsync. The caller then sends `process/start` and runs
//! [`Durable::wait`] (an fsync of the WAL file, on the blocking pool) *at
//! the same time*, and answers only once both are done: the fsync flushes
//! every frame written to that file so far, this row's included. It is
//! exact because SQLite only rewrites or removes a WAL after a checkpoint
//! that has synced it first (and, in NORMAL, syncs the database file after
//! it): whenever the fsync runs, the row's frames are either still in the
//! file it syncs or already durable in the database file. Should the WAL
//! be gone (every connection closed), the database file is synced instead.
//!
//! What changes: on a power loss (not a process crash) of the gateway's
//! host during that fsync, a process may have been started whose row is
//! lost; its client was not answered. On PostgreSQL the commit is durable
//! when it returns, and [`Durable::wait`] has nothing to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Result, SessionRow, Store, StoreError};

/// The connections that write session rows without an fsync (SQLite).
#[derive(Debug)]
pub(crate) struct SessionWriter {
    pool: SqlitePool,
    db: PathBuf,
    wal: PathBuf,
}

impl SessionWriter {
    /// A writer on the database file `db`, opened as `options` says
    /// (those of the store's main pool) but with `synchronous = NORMAL`.
    /// Connects lazily, on the first row.
    pub(crate) fn new(options: SqliteConnectOptions, db: &Path) -> SessionWriter {
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options.synchronous(SqliteSynchronous::Normal));
        SessionWriter {
            pool,
            db: db.to_owned(),
            wal: wal_of(db),
        }
    }
}

/// SQLite's WAL file of the database file `db`: `<db>-wal`.
fn wal_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// What still has to happen for an inserted row to survive a power loss
/// (see the module docs). Dropping it without waiting leaves the row to
/// the next commit's or checkpoint's fsync.
#[must_use = "the row is not durable until `wait` returns"]
#[derive(Debug)]
pub struct Durable(Option<(PathBuf, PathBuf)>);

impl Durable {
    /// Already durable (PostgreSQL, or a synced SQLite commit).
    pub fn done() -> Durable {
        Durable(None)
    }

    /// Whether there is nothing left to wait for.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// Makes the row durable: an fsync of the WAL file, on the blocking
    /// pool (or of the database file, when the WAL is gone).
    pub async fn wait(self) -> Result<()> {
        let Some((wal, db)) = self.0 else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || sync_wal(&wal, &db))
            .await
            .map_err(|e| std::io::Error::other(format!("the fsync task failed: {e}")))
            .and_then(|r| r)
            .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))
    }
}

/// Syncs `wal`, or `db` when there is no `wal` (see the module docs).
fn sync_wal(wal: &Path, db: &Path) -> std::io::Result<()> {
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::File::open(db)?.sync_all(),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Inserts a session row so that it survives a crash of this process
    /// at once, and a power loss once the returned [`Durable`] is waited
    /// for (see the module docs). Without a writer of its own (PostgreSQL)
    /// this is [`Store::insert_session`], durable on return.
    pub async fn insert_session_unsynced(&self, row: &SessionRow) -> Result<Durable> {
        let Some(writer) = &self.session_writer else {
            self.insert_session(row).await?;
            return Ok(Durable::done());
        };
        super::insert_session_on!(&writer.pool, row).await?;
        Ok(Durable(Some((writer.wal.clone(), writer.db.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{on_both, Fx};
    use super::*;

    fn row(sid: &str) -> SessionRow {
        SessionRow {
            sid: sid.into(),
            workspace: "w".into(),
            exe_id: "exe_1".into(),
            process_id: sid.into(),
            command: "[\"true\"]".into(),
            created_at: 7,
            executor_session_id: Some("s1".into()),
            deadline_at: Some(9),
        }
    }

    #[test]
    fn the_wal_is_the_database_file_with_a_suffix() {
        assert_eq!(
            wal_of(Path::new("/d/execgate.db")),
            PathBuf::from("/d/execgate.db-wal")
        );
    }

    #[test]
    fn syncing_falls_back_to_the_database_file_without_a_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let wal = wal_of(&db);
        // Neither: the error says so.
        assert!(sync_wal(&wal, &db).is_err());
        std::fs::write(&db, b"db").unwrap();
        sync_wal(&wal, &db).unwrap();
        std::fs::write(&wal, b"wal").unwrap();
        sync_wal(&wal, &db).unwrap();
    }

    on_both!(an_unsynced_row_reads_back_at_once_and_from_a_second_store);

    async fn an_unsynced_row_reads_back_at_once_and_from_a_second_store(fx: Fx) {
        let s = fx.open().await;
        let r = row("ps_1");
        let durable = s.insert_session_unsynced(&r).await.unwrap();
        assert_eq!(durable.is_done(), fx.is_postgres());
        // Visible before the fsync, to this store and to another one.
        let other = fx.open().await;
        for store in [&s, &other] {
            let got = store.session("ps_1").await.unwrap().expect("the row");
            assert_eq!(
                (
                    got.workspace.as_str(),
                    got.exe_id.as_str(),
                    got.command.as_str()
                ),
                ("w", "exe_1", "[\"true\"]")
            );
            assert_eq!(
                (
                    got.created_at,
                    got.deadline_at,
                    got.executor_session_id.as_deref()
                ),
                (7, Some(9), Some("s1"))
            );
        }
        durable.wait().await.unwrap();
        // A duplicate sid is refused, as by `insert_session`.
        assert!(s.insert_session_unsynced(&r).await.is_err());
        assert!(s.session("ps_1").await.unwrap().is_some());
    }
}
