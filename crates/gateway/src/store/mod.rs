//! The store layer (the bottom one: it names no other layer).
//!
//! The durable store: workspaces, proxy tokens, executors, process
//! sessions and (in [`audit`]) the audit log, in SQLite (sqlx, migrations
//! run at open).
//!
//! The store is opened in WAL mode with a busy timeout so that `execgate
//! admin` can change it while a gateway serves from the same data dir.
//! Nothing on a tool call's hot path writes here, except the one row that
//! a new exec_command session is.
//!
//! Two database files: `execgate.db` (everything but the audit log) and
//! `audit.db` (the audit log, written by its own task in batches). They are
//! apart because the hot-path lookups (`lookups`) stay valid only while
//! `execgate.db`'s files are unchanged: with the audit log inside it, every
//! call's record invalidated the next call's lookups, which then paid two
//! queries (0.1–0.35 ms per call; BENCHMARKS.md).

mod audit;
pub mod audit_log;
mod lookups;
mod metrics;

pub use audit::AuditQuery;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::secret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Workspace names: 1–64 of lowercase letters, digits, `-` and `_`.
pub fn validate_workspace_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid workspace name {name:?}: use 1-64 lowercase letters, digits, '-' or '_'"
        )))
    }
}

/// Environment names: 1–64 of letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit.
pub fn validate_env_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid environment name {name:?}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkspaceRow {
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProxyTokenRow {
    pub id: String,
    pub workspace: String,
    pub user_id: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExecutorRow {
    pub exe_id: String,
    pub workspace: String,
    pub name: String,
    pub is_default: bool,
    pub token_hash: String,
    pub registered_at: i64,
    pub last_seen_at: Option<i64>,
    pub connected_at: Option<i64>,
    pub disconnected_at: Option<i64>,
    pub os: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub sid: String,
    pub workspace: String,
    pub exe_id: String,
    pub process_id: String,
    pub command: String,
    pub created_at: i64,
    /// The executor session the process was started in (see migration 0002).
    pub executor_session_id: Option<String>,
    /// Unix ms after which the process is terminated (`max_runtime_ms`).
    pub deadline_at: Option<i64>,
}

/// The AWS SigV4 credentials of an executor that runs a stock codex. The
/// secret is stored as issued: verifying an HMAC signature needs it.
#[derive(Clone, sqlx::FromRow)]
pub struct SigV4Key {
    pub key_id: String,
    pub exe_id: String,
    pub secret: String,
}

impl std::fmt::Debug for SigV4Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigV4Key")
            .field("key_id", &self.key_id)
            .field("exe_id", &self.exe_id)
            .finish_non_exhaustive()
    }
}

/// What a proxy token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub workspace: String,
    pub user_id: Option<String>,
}

/// What the executor said about itself when it connected.
#[derive(Debug, Clone, Default)]
pub struct ConnectInfo {
    pub session_id: String,
    pub os: String,
    pub version: String,
    pub kind: String,
}

/// The store's main database file, in the data dir.
pub const MAIN_DB: &str = "execgate.db";
/// The audit log's database file, in the data dir.
pub const AUDIT_DB: &str = "audit.db";

/// Stores made before the audit log had its own file keep it in
/// `execgate.db`'s table `audit`: copy its rows (ids kept, so cursors stay
/// valid) into `audit.db`, then drop it. Both steps are idempotent, so a
/// crash between the two commits (one per file) repeats the copy harmlessly
/// at the next start. Migration 0006 drops the table on fresh stores too.
async fn move_audit_log(main: &SqliteConnectOptions, audit_db: &Path) -> Result<()> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = main.connect().await?;
    let old: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit')",
    )
    .fetch_one(&mut conn)
    .await?;
    if old {
        let path = audit_db.to_str().ok_or_else(|| {
            StoreError::Invalid(format!(
                "data dir path is not UTF-8: {}",
                audit_db.display()
            ))
        })?;
        sqlx::query("ATTACH DATABASE ? AS audit_db")
            .bind(path)
            .execute(&mut conn)
            .await?;
        const COLUMNS: &str =
            "id, at, workspace, user_id, environment, exe_id, kind, method, via, \
             session_id, args_sha256, args_bytes, outcome, error_code, exit_code, duration_ms, \
             bytes_in, bytes_out";
        let mut tx = conn.begin().await?;
        sqlx::query(&format!(
            "INSERT OR IGNORE INTO audit_db.audit ({COLUMNS}) SELECT {COLUMNS} FROM main.audit"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DROP TABLE main.audit")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        sqlx::query("DETACH DATABASE audit_db")
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// `audit.db`: the audit log only (see the module docs).
    audit_pool: SqlitePool,
    /// Hot-path reads, kept until the database files change.
    lookups: std::sync::Arc<lookups::Lookups>,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` and migrates it.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        // The store holds SigV4 secrets in the clear (they must be to verify
        // HMAC signatures): only the owner may enter the data dir.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| StoreError::DataDir {
                    path: data_dir.to_owned(),
                    source,
                },
            )?;
        }
        let options = |file: &str| -> Result<SqliteConnectOptions> {
            Ok(SqliteConnectOptions::from_str("sqlite://")?
                .filename(data_dir.join(file))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true))
        };
        let audit_pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options(AUDIT_DB)?)
            .await?;
        sqlx::migrate!("./migrations_audit")
            .run(&audit_pool)
            .await?;
        let opts = options(MAIN_DB)?;
        move_audit_log(&opts, &data_dir.join(AUDIT_DB)).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let lookups = std::sync::Arc::new(lookups::Lookups::new(&data_dir.join(MAIN_DB)));
        Ok(Store {
            pool,
            audit_pool,
            lookups,
        })
    }

    /// The audit log's pool, for tests that tamper with it.
    #[cfg(test)]
    pub(crate) fn audit_pool(&self) -> &SqlitePool {
        &self.audit_pool
    }

    // ---- workspaces ----

    pub async fn create_workspace(&self, name: &str) -> Result<()> {
        validate_workspace_name(name)?;
        let res = sqlx::query("INSERT INTO workspaces (name, created_at) VALUES (?, ?)")
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "workspace {name:?} already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the workspace unless it exists.
    pub async fn ensure_workspace(&self, name: &str) -> Result<()> {
        validate_workspace_name(name)?;
        sqlx::query("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)")
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceRow>> {
        Ok(
            sqlx::query_as("SELECT name, created_at FROM workspaces ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn require_workspace(&self, name: &str) -> Result<()> {
        let found: Option<(String,)> = sqlx::query_as("SELECT name FROM workspaces WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!(
                "workspace {name:?} does not exist (create it with `execgate admin workspace create {name}`)"
            ))),
        }
    }

    // ---- proxy tokens ----

    /// Creates a proxy token and returns `(id, token)`. The token is not
    /// stored and cannot be shown again.
    pub async fn create_proxy_token(
        &self,
        workspace: &str,
        user_id: Option<&str>,
    ) -> Result<(String, String)> {
        self.require_workspace(workspace).await?;
        let id = secret::random_id("tok_", 8);
        let token = secret::random_token("egp_", 32);
        sqlx::query(
            "INSERT INTO proxy_tokens (id, token_hash, workspace, user_id, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(secret::sha256_hex(token.as_bytes()))
        .bind(workspace)
        .bind(user_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok((id, token))
    }

    pub async fn list_proxy_tokens(&self, workspace: Option<&str>) -> Result<Vec<ProxyTokenRow>> {
        Ok(sqlx::query_as(
            "SELECT id, workspace, user_id, created_at, revoked_at FROM proxy_tokens
             WHERE (?1 IS NULL OR workspace = ?1) ORDER BY created_at",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn revoke_proxy_token(&self, id: &str) -> Result<()> {
        let res = sqlx::query(
            "UPDATE proxy_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no live proxy token with id {id:?}"
            )));
        }
        Ok(())
    }

    /// Whether a proxy token id is live (exists and is not revoked).
    pub async fn proxy_token_is_live(&self, id: &str) -> Result<bool> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM proxy_tokens WHERE id = ? AND revoked_at IS NULL")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// The grant of a live proxy token, by the token itself.
    /// The live grant of a proxy token. Answered from memory while the
    /// database is unchanged since the last read (see `store::lookups`).
    pub async fn verify_proxy_token(&self, token: &str) -> Result<Option<TokenGrant>> {
        let hash = secret::sha256_hex(token.as_bytes());
        let generation = self.lookups.generation();
        if let Some(grant) = self.lookups.token(&hash, generation) {
            return Ok(grant);
        }
        let row = sqlx::query(
            "SELECT workspace, user_id FROM proxy_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let grant = row.map(|r| TokenGrant {
            workspace: r.get("workspace"),
            user_id: r.get("user_id"),
        });
        self.lookups.put_token(hash, generation, grant.clone());
        Ok(grant)
    }

    // ---- executors ----

    /// Registers an executor and returns `(exe_id, executor token)`.
    pub async fn add_executor(
        &self,
        workspace: &str,
        name: &str,
        is_default: bool,
    ) -> Result<(String, String)> {
        validate_env_name(name)?;
        self.require_workspace(workspace).await?;
        let exe_id = secret::random_id("exe_", 8);
        let token = executor_token(&exe_id);
        let mut tx = self.pool.begin().await?;
        if is_default {
            sqlx::query("UPDATE executors SET is_default = 0 WHERE workspace = ?")
                .bind(workspace)
                .execute(&mut *tx)
                .await?;
        }
        let res = sqlx::query(
            "INSERT INTO executors (exe_id, workspace, name, is_default, token_hash, registered_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&exe_id)
        .bind(workspace)
        .bind(name)
        .bind(is_default)
        .bind(secret::sha256_hex(token.as_bytes()))
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "workspace {workspace:?} already has an environment named {name:?}"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok((exe_id, token))
    }

    /// Registers an executor that authenticates with AWS SigV4 (a stock
    /// codex `exec-server --aws-sigv4`) and returns its key. The executor
    /// row also gets a bearer token, which is thrown away unseen.
    pub async fn add_sigv4_executor(
        &self,
        workspace: &str,
        name: &str,
        is_default: bool,
    ) -> Result<SigV4Key> {
        let (exe_id, _unused_token) = self.add_executor(workspace, name, is_default).await?;
        let key = SigV4Key {
            key_id: format!("AKEG{}", secret::random_id("", 8).to_uppercase()),
            exe_id,
            secret: secret::random_token("", 30),
        };
        let res = sqlx::query(
            "INSERT INTO executor_sigv4_keys (key_id, exe_id, secret, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.key_id)
        .bind(&key.exe_id)
        .bind(&key.secret)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        if let Err(e) = res {
            // An executor that cannot authenticate is of no use: undo it.
            let _ = self.remove_executor(workspace, &key.exe_id).await;
            return Err(e.into());
        }
        Ok(key)
    }

    /// The SigV4 key with this access key id.
    pub async fn sigv4_key(&self, key_id: &str) -> Result<Option<SigV4Key>> {
        Ok(sqlx::query_as(
            "SELECT key_id, exe_id, secret FROM executor_sigv4_keys WHERE key_id = ?",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Gives an executor a new token, invalidating the old one.
    pub async fn rotate_executor_token(&self, exe_id: &str) -> Result<String> {
        let token = executor_token(exe_id);
        let res = sqlx::query("UPDATE executors SET token_hash = ? WHERE exe_id = ?")
            .bind(secret::sha256_hex(token.as_bytes()))
            .bind(exe_id)
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no executor {exe_id:?}")));
        }
        Ok(token)
    }

    pub async fn list_executors(&self, workspace: Option<&str>) -> Result<Vec<ExecutorRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM executors WHERE (?1 IS NULL OR workspace = ?1) ORDER BY workspace, name",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn executor(&self, exe_id: &str) -> Result<Option<ExecutorRow>> {
        Ok(sqlx::query_as("SELECT * FROM executors WHERE exe_id = ?")
            .bind(exe_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Answered from memory while the database is unchanged since the last
    /// read (see `store::lookups`): every tool call makes this read.
    pub async fn executor_by_name(
        &self,
        workspace: &str,
        name: &str,
    ) -> Result<Option<ExecutorRow>> {
        let generation = self.lookups.generation();
        if let Some(row) = self.lookups.executor(workspace, name, generation) {
            return Ok(row);
        }
        let row: Option<ExecutorRow> =
            sqlx::query_as("SELECT * FROM executors WHERE workspace = ? AND name = ?")
                .bind(workspace)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        self.lookups
            .put_executor(workspace, name, generation, row.clone());
        Ok(row)
    }

    /// Every executor's id (`revocation::sweep_removed_executors`).
    pub async fn executor_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT exe_id FROM executors")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The database files' generation (see `store::lookups`): it changes
    /// with every commit, by any process.
    pub(crate) fn files_generation(&self) -> lookups::Generation {
        self.lookups.generation()
    }

    /// Removes an executor by name (or exe_id) within a workspace.
    pub async fn remove_executor(&self, workspace: &str, name_or_id: &str) -> Result<()> {
        let res =
            sqlx::query("DELETE FROM executors WHERE workspace = ? AND (name = ? OR exe_id = ?)")
                .bind(workspace)
                .bind(name_or_id)
                .bind(name_or_id)
                .execute(&self.pool)
                .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "workspace {workspace:?} has no environment {name_or_id:?}"
            )));
        }
        Ok(())
    }

    /// Makes `exe_id` its workspace's only default environment.
    pub async fn set_default_executor(&self, exe_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE executors SET is_default = (exe_id = ?1)
             WHERE workspace = (SELECT workspace FROM executors WHERE exe_id = ?1)",
        )
        .bind(exe_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn mark_connected(&self, exe_id: &str, info: &ConnectInfo) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE executors SET connected_at = ?, last_seen_at = ?, session_id = ?, os = ?, version = ?, kind = ?
             WHERE exe_id = ?",
        )
        .bind(now)
        .bind(now)
        .bind(&info.session_id)
        .bind(&info.os)
        .bind(&info.version)
        .bind(&info.kind)
        .bind(exe_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_disconnected(&self, exe_id: &str, last_seen_ms: i64) -> Result<()> {
        sqlx::query("UPDATE executors SET disconnected_at = ?, last_seen_at = ? WHERE exe_id = ?")
            .bind(now_ms())
            .bind(last_seen_ms)
            .bind(exe_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn touch_executor(&self, exe_id: &str, last_seen_ms: i64) -> Result<()> {
        sqlx::query("UPDATE executors SET last_seen_at = ? WHERE exe_id = ?")
            .bind(last_seen_ms)
            .bind(exe_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- process sessions ----

    pub async fn insert_session(&self, row: &SessionRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO process_sessions (sid, workspace, exe_id, process_id, command, created_at,
                                           executor_session_id, deadline_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.sid)
        .bind(&row.workspace)
        .bind(&row.exe_id)
        .bind(&row.process_id)
        .bind(&row.command)
        .bind(row.created_at)
        .bind(&row.executor_session_id)
        .bind(row.deadline_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_session(&self, sid: &str) -> Result<()> {
        sqlx::query("DELETE FROM process_sessions WHERE sid = ?")
            .bind(sid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The workspace's sessions, newest first, at most `limit`.
    pub async fn list_sessions(&self, workspace: &str, limit: u32) -> Result<Vec<SessionRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM process_sessions WHERE workspace = ? ORDER BY created_at DESC, sid LIMIT ?",
        )
        .bind(workspace)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sessions whose deadline has passed and was not enforced yet.
    pub async fn due_deadlines(&self, now: i64) -> Result<Vec<SessionRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM process_sessions
             WHERE deadline_at IS NOT NULL AND deadline_done = 0 AND deadline_at <= ?
             ORDER BY deadline_at LIMIT 100",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The earliest deadline not enforced yet.
    pub async fn next_deadline(&self) -> Result<Option<i64>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(deadline_at) FROM process_sessions
             WHERE deadline_at IS NOT NULL AND deadline_done = 0",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// Sets (or moves) a session's deadline; it will be enforced once.
    pub async fn set_deadline(&self, sid: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE process_sessions SET deadline_at = ?, deadline_done = 0 WHERE sid = ?")
            .bind(at)
            .bind(sid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn mark_deadline_done(&self, sid: &str) -> Result<()> {
        sqlx::query("UPDATE process_sessions SET deadline_done = 1 WHERE sid = ?")
            .bind(sid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The workspace's sessions not known to have ended (see migration
    /// 0004), of executors that still exist.
    pub async fn live_sessions(&self, workspace: &str) -> Result<Vec<SessionRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM process_sessions
             WHERE workspace = ? AND ended_at IS NULL AND exe_id IN (SELECT exe_id FROM executors)
             ORDER BY created_at, sid",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records that these sessions' processes ended (or were terminated).
    pub async fn mark_sessions_ended(&self, sids: &[String]) -> Result<()> {
        if sids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        for sid in sids {
            sqlx::query(
                "UPDATE process_sessions SET ended_at = ? WHERE sid = ? AND ended_at IS NULL",
            )
            .bind(now)
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn session(&self, sid: &str) -> Result<Option<SessionRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM process_sessions WHERE sid = ?")
                .bind(sid)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    // ---- capability-token turns (migration 0005) ----

    /// Whether workspace `name` exists.
    pub async fn workspace_exists(&self, name: &str) -> Result<bool> {
        match self.require_workspace(name).await {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Revokes every capability token of `turn_id`, for good. Idempotent:
    /// returns when the turn was (first) revoked, Unix ms.
    pub async fn revoke_turn(&self, turn_id: &str) -> Result<i64> {
        sqlx::query("INSERT OR IGNORE INTO revoked_turns (turn_id, revoked_at) VALUES (?, ?)")
            .bind(turn_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        let (at,): (i64,) =
            sqlx::query_as("SELECT revoked_at FROM revoked_turns WHERE turn_id = ?")
                .bind(turn_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(at)
    }

    /// Forgets the turns revoked before `revoked_before_ms` (Unix ms): once
    /// every token they could refuse has expired, they no longer matter
    /// (see `captoken::admin::REVOKED_TURN_RETENTION`). How many went.
    pub async fn prune_revoked_turns(&self, revoked_before_ms: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM revoked_turns WHERE revoked_at < ?")
            .bind(revoked_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }

    /// Backdates a revocation, for tests of pruning.
    #[cfg(test)]
    pub(crate) async fn set_turn_revoked_at_for_test(&self, turn_id: &str, at_ms: i64) {
        sqlx::query("UPDATE revoked_turns SET revoked_at = ? WHERE turn_id = ?")
            .bind(at_ms)
            .bind(turn_id)
            .execute(&self.pool)
            .await
            .expect("backdating a revoked turn");
    }

    /// Whether `turn_id` was revoked (an indexed read).
    pub async fn turn_revoked(&self, turn_id: &str) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT revoked_at FROM revoked_turns WHERE turn_id = ?")
                .bind(turn_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }
}

/// `{exe_id}.{secret}`; see `execgate_protocol::register::environment_id_from_token`.
fn executor_token(exe_id: &str) -> String {
    format!("{exe_id}.{}", secret::random_token("", 32))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn an_old_stores_audit_log_moves_to_its_own_file() {
        use sqlx::ConnectOptions;
        let (dir, store) = store().await;
        drop(store);
        // The layout before audit.db: the table in execgate.db, with rows.
        let mut old = SqliteConnectOptions::new()
            .filename(dir.path().join(MAIN_DB))
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(include_str!("../../migrations_audit/0001_audit.sql"))
            .execute(&mut old)
            .await
            .unwrap();
        for id in [7, 9] {
            sqlx::query(
                "INSERT INTO audit (id, at, workspace, kind, method, via, outcome)
                 VALUES (?, 1, 'w', 'tool', 'shell', 'rest', 'ok')",
            )
            .bind(id)
            .execute(&mut old)
            .await
            .unwrap();
        }
        drop(old);

        // Opened twice: the second open finds nothing left to move.
        drop(Store::open(dir.path()).await.unwrap());
        let store = Store::open(dir.path()).await.unwrap();
        let ids = |rows: Vec<crate::store::audit_log::AuditRecord>| -> Vec<i64> {
            rows.iter().map(|r| r.id).collect()
        };
        let rows = store.list_audit(&AuditQuery::default()).await.unwrap();
        assert_eq!(ids(rows), [7, 9]);
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'audit')")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert!(!left, "execgate.db still has the audit table");
        // Ids go on after the moved ones, so cursors stay valid.
        let rec = crate::store::audit_log::AuditRecord::new(
            "w",
            None,
            crate::store::audit_log::Via::Rest,
            crate::store::audit_log::Kind::Tool,
            "shell",
        );
        let new = store
            .write_audit(&[&crate::store::audit_log::Write::Insert(rec)])
            .await
            .unwrap();
        assert!(new[0] > 9, "{new:?}");
    }

    #[test]
    fn names() {
        assert!(validate_workspace_name("team-a_1").is_ok());
        for bad in ["", "Team", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_workspace_name(bad).is_err(), "{bad}");
        }
        assert!(validate_env_name("gpu-1").is_ok());
        assert!(validate_env_name("My.Laptop").is_ok());
        for bad in ["", "-x", "a b", "a/b"] {
            assert!(validate_env_name(bad).is_err(), "{bad}");
        }
    }

    fn session_row(sid: &str, created_at: i64, deadline_at: Option<i64>) -> SessionRow {
        SessionRow {
            sid: sid.into(),
            workspace: "w".into(),
            exe_id: "exe_1".into(),
            process_id: sid.into(),
            command: "[\"true\"]".into(),
            created_at,
            executor_session_id: Some("s1".into()),
            deadline_at,
        }
    }

    #[tokio::test]
    async fn sessions_list_newest_first_and_deadlines_fire_once() {
        let (_d, s) = store().await;
        s.insert_session(&session_row("a", 1, None)).await.unwrap();
        s.insert_session(&session_row("b", 2, Some(100)))
            .await
            .unwrap();
        s.insert_session(&session_row("c", 3, Some(50)))
            .await
            .unwrap();
        let sids: Vec<_> = s
            .list_sessions("w", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.sid)
            .collect();
        assert_eq!(sids, ["c", "b", "a"]);
        assert_eq!(s.list_sessions("w", 1).await.unwrap().len(), 1);
        assert!(s.list_sessions("other", 10).await.unwrap().is_empty());
        let row = s.session("b").await.unwrap().unwrap();
        assert_eq!(row.executor_session_id.as_deref(), Some("s1"));

        assert_eq!(s.next_deadline().await.unwrap(), Some(50));
        assert!(s.due_deadlines(49).await.unwrap().is_empty());
        let due: Vec<_> = s
            .due_deadlines(100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.sid)
            .collect();
        assert_eq!(due, ["c", "b"]);
        s.mark_deadline_done("c").await.unwrap();
        assert_eq!(s.next_deadline().await.unwrap(), Some(100));
        s.set_deadline("a", 10).await.unwrap();
        assert_eq!(s.next_deadline().await.unwrap(), Some(10));
        s.delete_session("a").await.unwrap();
        assert!(s.session("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn live_sessions_leave_out_ended_ones_and_removed_executors() {
        let (_d, s) = store().await;
        s.create_workspace("w").await.unwrap();
        let (exe, _) = s.add_executor("w", "laptop", false).await.unwrap();
        for sid in ["a", "b", "c"] {
            let mut row = session_row(sid, 1, None);
            row.exe_id = exe.clone();
            s.insert_session(&row).await.unwrap();
        }
        s.insert_session(&session_row("gone", 1, None))
            .await
            .unwrap();
        let live = |rows: Vec<SessionRow>| rows.into_iter().map(|r| r.sid).collect::<Vec<_>>();
        assert_eq!(live(s.live_sessions("w").await.unwrap()), ["a", "b", "c"]);
        s.mark_sessions_ended(&["b".into()]).await.unwrap();
        assert_eq!(live(s.live_sessions("w").await.unwrap()), ["a", "c"]);
        assert!(s.live_sessions("v").await.unwrap().is_empty());
        s.remove_executor("w", "laptop").await.unwrap();
        assert!(s.live_sessions("w").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn tokens_verify_until_revoked() {
        let (_d, s) = store().await;
        s.create_workspace("w").await.unwrap();
        assert!(matches!(
            s.create_workspace("w").await,
            Err(StoreError::Conflict(_))
        ));
        let (id, tok) = s.create_proxy_token("w", Some("u1")).await.unwrap();
        let grant = s.verify_proxy_token(&tok).await.unwrap().unwrap();
        assert_eq!(grant.workspace, "w");
        assert_eq!(grant.user_id.as_deref(), Some("u1"));
        assert!(s.verify_proxy_token("egp_nope").await.unwrap().is_none());
        s.revoke_proxy_token(&id).await.unwrap();
        assert!(s.verify_proxy_token(&tok).await.unwrap().is_none());
        assert!(s.revoke_proxy_token(&id).await.is_err());
        assert!(s.create_proxy_token("nope", None).await.is_err());
    }

    #[tokio::test]
    async fn sigv4_keys_belong_to_their_executor_and_go_with_it() {
        let (d, s) = store().await;
        s.create_workspace("w").await.unwrap();
        let key = s.add_sigv4_executor("w", "codex", false).await.unwrap();
        assert!(key.key_id.starts_with("AKEG") && key.key_id.len() == 20);
        assert!(key.secret.len() >= 40);
        let found = s.sigv4_key(&key.key_id).await.unwrap().unwrap();
        assert_eq!(
            (found.exe_id.as_str(), found.secret.as_str()),
            (key.exe_id.as_str(), key.secret.as_str())
        );
        assert!(!format!("{found:?}").contains(&key.secret));
        assert!(s.add_sigv4_executor("w", "codex", false).await.is_err());
        s.remove_executor("w", "codex").await.unwrap();
        assert!(s.sigv4_key(&key.key_id).await.unwrap().is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[tokio::test]
    async fn executors_unique_per_workspace_with_one_default() {
        let (_d, s) = store().await;
        s.create_workspace("w").await.unwrap();
        s.create_workspace("v").await.unwrap();
        let (a, tok) = s.add_executor("w", "laptop", true).await.unwrap();
        assert!(tok.starts_with(&format!("{a}.")));
        assert!(matches!(
            s.add_executor("w", "laptop", false).await,
            Err(StoreError::Conflict(_))
        ));
        s.add_executor("v", "laptop", false).await.unwrap();
        let (b, _) = s.add_executor("w", "gpu", true).await.unwrap();
        let rows = s.list_executors(Some("w")).await.unwrap();
        let defaults: Vec<_> = rows.iter().filter(|r| r.is_default).collect();
        assert_eq!(defaults.len(), 1);
        assert_eq!(defaults[0].exe_id, b);
        s.set_default_executor(&a).await.unwrap();
        assert!(s.executor(&a).await.unwrap().unwrap().is_default);
        assert!(!s.executor(&b).await.unwrap().unwrap().is_default);
        s.remove_executor("w", "gpu").await.unwrap();
        assert!(s.executor(&b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoked_turns_are_persisted_and_idempotent() {
        let (dir, store) = store().await;
        assert!(!store.turn_revoked("turn_a").await.unwrap());
        let at = store.revoke_turn("turn_a").await.unwrap();
        assert_eq!(store.revoke_turn("turn_a").await.unwrap(), at);
        assert!(store.turn_revoked("turn_a").await.unwrap());
        assert!(!store.turn_revoked("turn_b").await.unwrap());
        drop(store);
        let reopened = Store::open(dir.path()).await.unwrap();
        assert!(reopened.turn_revoked("turn_a").await.unwrap());
        assert!(!reopened.workspace_exists("nope").await.unwrap());
        reopened.create_workspace("w1").await.unwrap();
        assert!(reopened.workspace_exists("w1").await.unwrap());
    }
}
