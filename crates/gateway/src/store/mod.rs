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
//!
//! **Or PostgreSQL** (`execgate serve --database-url`, [`Store::open_postgres`]):
//! one database for everything, audit log included (`migrations_pg`), so
//! that several gateways can share it. [`Store`] holds an enum `Db` of
//! the two pools and every method runs one body through `on_db!`, a match
//! whose arms type-check the same code once per driver: one SQL text per
//! query (`$N` placeholders, and only what both engines accept), with
//! per-dialect code only where they differ (SQLite's move of an old audit
//! table; the audit writes, generated per driver by a macro). Enum and
//! macro rather than a trait with two implementations: the two would be
//! the same code twice, and every branch's new queries would have to be
//! written twice. What differs between the backends besides is how the
//! hot-path lookups learn of changes (`lookups`, `invalidate`) and where
//! the secrets every replica shares are kept (`shared_secret`).

mod audit;
pub mod audit_log;
mod duties;
mod health;
mod idempotency;
pub mod invalidate;
pub mod leases;
pub(crate) mod lookups;
mod metrics;
pub mod roster;
mod session_cap;
mod sessions;
pub use session_cap::WorkspaceLock;
mod tasks;
#[cfg(test)]
pub(crate) mod testing;
mod tickets;

pub use audit::AuditQuery;
pub use idempotency::{IdempotencyAnswer, IdempotencyRow};
pub use tasks::TaskRow;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

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
    /// The store cannot be reached (see `lookups`, "When the store cannot
    /// be reached").
    #[error("the store cannot be reached: {0}")]
    Unavailable(String),
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// Whether this is the store being out of reach (a connection refused
    /// or lost, no connection within the pool's timeout, the server shutting
    /// down), as opposed to a failed statement.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => db_unreachable(e),
            _ => false,
        }
    }
}

fn db_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL's connection_exception (08…) and operator
        // intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03
        // cannot connect now).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Runs a hot-path read `read` as `attempt` says (see
/// `lookups::Attempt`), recording whether the store answered.
async fn guarded<T, F>(lookups: &lookups::Lookups, read: F) -> Result<T>
where
    F: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
{
    let now = now_ms();
    let r = match lookups.attempt(now) {
        // Bounded too: with the server gone, the pool retries connecting
        // for its whole acquire timeout (10 s), and the first read of an
        // outage waited that long before the grace below answered it,
        // longer than a replica's lease (docs/replicas.md, "Store outage").
        lookups::Attempt::Read => match tokio::time::timeout(lookups::READ_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        },
        lookups::Attempt::Probe => match tokio::time::timeout(lookups::PROBE_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        },
        lookups::Attempt::Skip => {
            return Err(StoreError::Unavailable("known down; being probed".into()))
        }
    };
    match r {
        Ok(v) => {
            lookups.store_up();
            Ok(v)
        }
        Err(e) if db_unreachable(&e) => {
            lookups.store_down(now_ms());
            Err(StoreError::Unavailable(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

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

/// The two backends. Every method runs one body against whichever pool
/// through [`on_db!`]: the match's two arms type-check the same code once
/// per driver, so the SQL is written once (in `$N` placeholders and the
/// dialect both accept) and differs only where the engines do.
#[derive(Clone)]
pub(crate) enum Db {
    /// `execgate.db` (everything but the audit log) and `audit.db`.
    Sqlite { main: SqlitePool, audit: SqlitePool },
    /// One database for everything, the audit log included.
    Postgres(PgPool),
}

/// Executors whose `last_seen` one statement records at most
/// ([`Store::touch_executors`]).
const TOUCH_BATCH: usize = 2_000;

/// Runs `$body` with `$pool` bound to the main pool of either backend.
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite { main: $pool, .. } => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
/// As [`on_db!`], with the audit log's pool.
macro_rules! on_audit_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite { audit: $pool, .. } => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_audit_db;
/// The insert of a session row on `pool` (either backend's): shared by
/// [`Store::insert_session`] and the unsynced writer (`store/sessions.rs`).
macro_rules! insert_session_on {
    ($pool:expr, $row:expr) => {
        sqlx::query(
            "INSERT INTO process_sessions (sid, workspace, exe_id, process_id, command, created_at,
                                           executor_session_id, deadline_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&$row.sid)
        .bind(&$row.workspace)
        .bind(&$row.exe_id)
        .bind(&$row.process_id)
        .bind(&$row.command)
        .bind($row.created_at)
        .bind(&$row.executor_session_id)
        .bind($row.deadline_at)
        .execute($pool)
    };
}
pub(crate) use insert_session_on;
#[allow(unused_imports)]
pub(crate) use on_db;

/// A write that changes what `lookups` answer says so to the other
/// replicas, in its own transaction: `NOTIFY` on PostgreSQL (delivered at
/// commit, and only if it commits); nothing on SQLite, whose lookups see
/// any commit in the files.
pub(crate) trait Hint {
    async fn hint(&mut self, hint: &str) -> std::result::Result<(), sqlx::Error>;
}

impl Hint for sqlx::SqliteConnection {
    async fn hint(&mut self, _hint: &str) -> std::result::Result<(), sqlx::Error> {
        Ok(())
    }
}

impl Hint for sqlx::PgConnection {
    async fn hint(&mut self, hint: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(invalidate::CHANNEL)
            .bind(hint)
            .execute(&mut *self)
            .await?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    /// Hot-path reads, kept until the database changes.
    lookups: std::sync::Arc<lookups::Lookups>,
    /// Workspaces' rosters for envs/list (`store/roster.rs`).
    rosters: std::sync::Arc<roster::Rosters>,
    /// SQLite: session rows written without an fsync on the answer's path
    /// (`store/sessions.rs`).
    session_writer: Option<std::sync::Arc<sessions::SessionWriter>>,
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
        let session_writer = sessions::SessionWriter::new(opts.clone(), &data_dir.join(MAIN_DB));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let lookups = std::sync::Arc::new(lookups::Lookups::files(&data_dir.join(MAIN_DB)));
        Ok(Store {
            db: Db::Sqlite {
                main: pool,
                audit: audit_pool,
            },
            lookups,
            rosters: Default::default(),
            session_writer: Some(std::sync::Arc::new(session_writer)),
        })
    }

    /// Connects to the PostgreSQL store at `url` (`postgres://…`) and
    /// migrates it (`migrations_pg`; concurrent starts of several replicas
    /// are serialized by sqlx's advisory lock). Starts the task that
    /// listens for other replicas' invalidation hints (see
    /// [`invalidate`]); call it within a Tokio runtime.
    pub async fn open_postgres(url: &str) -> Result<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations_pg").run(&pool).await?;
        let lookups = std::sync::Arc::new(lookups::Lookups::notified());
        invalidate::listen(pool.clone(), lookups.clone()).await?;
        Ok(Store {
            db: Db::Postgres(pool),
            lookups,
            rosters: Default::default(),
            session_writer: None,
        })
    }

    /// `open_postgres` with a `postgres://` URL, else `open` of `data_dir`.
    pub async fn open_either(database_url: Option<&str>, data_dir: &Path) -> Result<Store> {
        match database_url {
            Some(url) => Store::open_postgres(url).await,
            None => Store::open(data_dir).await,
        }
    }

    /// Whether this store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// The audit log's pool, for tests that tamper with it.
    #[cfg(test)]
    pub(crate) fn audit_db(&self) -> &Db {
        &self.db
    }

    /// Something that `lookups` answer changed (this process's write, or
    /// another replica's hint): the hint, `*` when unknown (see
    /// [`invalidate`]). Backend-neutral: on SQLite only this process's
    /// writes are announced.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.lookups.subscribe()
    }

    /// After a local write that changes lookups: forget, announce.
    fn changed(&self, hint: &str) {
        self.lookups.invalidate(hint);
    }

    // ---- workspaces ----

    pub async fn create_workspace(&self, name: &str) -> Result<()> {
        validate_workspace_name(name)?;
        let res = on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO workspaces (name, created_at) VALUES ($1, $2)"
        )
        .bind(name)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|_| ()));
        match res {
            Ok(()) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "workspace {name:?} already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the workspace unless it exists.
    pub async fn ensure_workspace(&self, name: &str) -> Result<()> {
        validate_workspace_name(name)?;
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO workspaces (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        )
        .bind(name)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT name, created_at FROM workspaces ORDER BY name"
        )
        .fetch_all(pool)
        .await)?)
    }

    async fn require_workspace(&self, name: &str) -> Result<()> {
        let found: Option<(String,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT name FROM workspaces WHERE name = $1"
        )
        .bind(name)
        .fetch_optional(pool)
        .await)?;
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
        let hint = format!("token:{id}");
        on_db!(&self.db, |pool| {
            async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO proxy_tokens (id, token_hash, workspace, user_id, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&id)
            .bind(secret::sha256_hex(token.as_bytes()))
            .bind(workspace)
            .bind(user_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            // A rejection of this very token may be cached (it was tried
            // before it existed).
            tx.hint(&hint).await?;
            tx.commit().await
        }
        .await
        })?;
        self.changed(&hint);
        Ok((id, token))
    }

    pub async fn list_proxy_tokens(&self, workspace: Option<&str>) -> Result<Vec<ProxyTokenRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT id, workspace, user_id, created_at, revoked_at FROM proxy_tokens
             WHERE (CAST($1 AS TEXT) IS NULL OR workspace = $1) ORDER BY created_at, id",
        )
        .bind(workspace)
        .fetch_all(pool)
        .await)?)
    }

    pub async fn revoke_proxy_token(&self, id: &str) -> Result<()> {
        let hint = format!("token:{id}");
        let affected = on_db!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            let res = sqlx::query(
                "UPDATE proxy_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.hint(&hint).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(res.rows_affected())
        }
        .await)?;
        self.changed(&hint);
        if affected == 0 {
            return Err(StoreError::NotFound(format!(
                "no live proxy token with id {id:?}"
            )));
        }
        Ok(())
    }

    /// Whether a proxy token id is live (exists and is not revoked).
    pub async fn proxy_token_is_live(&self, id: &str) -> Result<bool> {
        let row: Option<(String,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT id FROM proxy_tokens WHERE id = $1 AND revoked_at IS NULL"
        )
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        Ok(row.is_some())
    }

    /// The live grant of a proxy token, by the token itself. Answered from
    /// memory while the database is unchanged since the last read (see
    /// `store::lookups`).
    pub async fn verify_proxy_token(&self, token: &str) -> Result<Option<TokenGrant>> {
        let hash = secret::sha256_hex(token.as_bytes());
        let generation = self.lookups.generation();
        if let Some(grant) = self.lookups.token(&hash, generation) {
            return Ok(grant);
        }
        let read = guarded(
            &self.lookups,
            on_db!(&self.db, |pool| {
                Box::pin(
                    sqlx::query_as(
                "SELECT workspace, user_id FROM proxy_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
            )
            .bind(&hash)
            .fetch_optional(pool),
                ) as futures_util::future::BoxFuture<'_, _>
            }),
        )
        .await;
        let row: Option<(String, Option<String>)> = match read {
            Ok(row) => row,
            Err(e) if e.is_unavailable() => {
                return match self.lookups.last_token(&hash) {
                    Some(grant) => Ok(Some(grant)),
                    None => Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let grant = row.map(|(workspace, user_id)| TokenGrant { workspace, user_id });
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
        let hint = format!("executor:{exe_id}");
        let res = on_db!(&self.db, |pool| {
            async {
            let mut tx = pool.begin().await?;
            if is_default {
                sqlx::query("UPDATE executors SET is_default = FALSE WHERE workspace = $1")
                    .bind(workspace)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO executors (exe_id, workspace, name, is_default, token_hash, registered_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&exe_id)
            .bind(workspace)
            .bind(name)
            .bind(is_default)
            .bind(secret::sha256_hex(token.as_bytes()))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.hint(&hint).await?;
            tx.commit().await
        }
        .await
        });
        match res {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "workspace {workspace:?} already has an environment named {name:?}"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.changed(&hint);
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
        let res = on_db!(&self.db, |pool| {
            sqlx::query(
            "INSERT INTO executor_sigv4_keys (key_id, exe_id, secret, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.key_id)
        .bind(&key.exe_id)
        .bind(&key.secret)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|_| ())
        });
        if let Err(e) = res {
            // An executor that cannot authenticate is of no use: undo it.
            let _ = self.remove_executor(workspace, &key.exe_id).await;
            return Err(e.into());
        }
        Ok(key)
    }

    /// The SigV4 key with this access key id.
    pub async fn sigv4_key(&self, key_id: &str) -> Result<Option<SigV4Key>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT key_id, exe_id, secret FROM executor_sigv4_keys WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(pool)
        .await)?)
    }

    /// Gives an executor a new token, invalidating the old one.
    pub async fn rotate_executor_token(&self, exe_id: &str) -> Result<String> {
        let token = executor_token(exe_id);
        let hint = format!("executor:{exe_id}");
        let affected = on_db!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            let res = sqlx::query("UPDATE executors SET token_hash = $1 WHERE exe_id = $2")
                .bind(secret::sha256_hex(token.as_bytes()))
                .bind(exe_id)
                .execute(&mut *tx)
                .await?;
            tx.hint(&hint).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(res.rows_affected())
        }
        .await)?;
        self.changed(&hint);
        if affected == 0 {
            return Err(StoreError::NotFound(format!("no executor {exe_id:?}")));
        }
        Ok(token)
    }

    pub async fn list_executors(&self, workspace: Option<&str>) -> Result<Vec<ExecutorRow>> {
        Ok(on_db!(&self.db, |pool| {
            sqlx::query_as(
            "SELECT * FROM executors WHERE (CAST($1 AS TEXT) IS NULL OR workspace = $1) ORDER BY workspace, name",
        )
        .bind(workspace)
        .fetch_all(pool)
        .await
        })?)
    }

    pub async fn executor(&self, exe_id: &str) -> Result<Option<ExecutorRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT * FROM executors WHERE exe_id = $1"
        )
        .bind(exe_id)
        .fetch_optional(pool)
        .await)?)
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
        let read = guarded(
            &self.lookups,
            on_db!(&self.db, |pool| {
                Box::pin(
                    sqlx::query_as("SELECT * FROM executors WHERE workspace = $1 AND name = $2")
                        .bind(workspace)
                        .bind(name)
                        .fetch_optional(pool),
                ) as futures_util::future::BoxFuture<'_, _>
            }),
        )
        .await;
        let row: Option<ExecutorRow> = match read {
            Ok(row) => row,
            Err(e) if e.is_unavailable() => {
                return match self.lookups.last_executor(workspace, name) {
                    Some(row) => Ok(Some(row)),
                    None => Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        self.lookups
            .put_executor(workspace, name, generation, row.clone());
        Ok(row)
    }

    /// Every executor's id (`revocation::sweep_removed_executors`).
    pub async fn executor_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT exe_id FROM executors"
        )
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Removes an executor by name (or exe_id) within a workspace.
    pub async fn remove_executor(&self, workspace: &str, name_or_id: &str) -> Result<()> {
        let hint = format!("executor-removed:{workspace}/{name_or_id}");
        let affected = on_db!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            let res = sqlx::query(
                "DELETE FROM executors WHERE workspace = $1 AND (name = $2 OR exe_id = $2)",
            )
            .bind(workspace)
            .bind(name_or_id)
            .execute(&mut *tx)
            .await?;
            tx.hint(&hint).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(res.rows_affected())
        }
        .await)?;
        self.changed(&hint);
        if affected == 0 {
            return Err(StoreError::NotFound(format!(
                "workspace {workspace:?} has no environment {name_or_id:?}"
            )));
        }
        Ok(())
    }

    /// Makes `exe_id` its workspace's only default environment.
    pub async fn set_default_executor(&self, exe_id: &str) -> Result<()> {
        let hint = format!("executor:{exe_id}");
        on_db!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE executors SET is_default = (exe_id = $1)
                 WHERE workspace = (SELECT workspace FROM executors WHERE exe_id = $1)",
            )
            .bind(exe_id)
            .execute(&mut *tx)
            .await?;
            tx.hint(&hint).await?;
            tx.commit().await
        }
        .await)?;
        self.changed(&hint);
        Ok(())
    }

    /// Records a link's start. Announced: the executor's cached row (its
    /// session id) changes.
    pub async fn mark_connected(&self, exe_id: &str, info: &ConnectInfo) -> Result<()> {
        let now = now_ms();
        let hint = format!("executor:{exe_id}");
        on_db!(&self.db, |pool| {
            async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE executors SET connected_at = $1, last_seen_at = $1, session_id = $2, os = $3, version = $4, kind = $5
                 WHERE exe_id = $6",
            )
            .bind(now)
            .bind(&info.session_id)
            .bind(&info.os)
            .bind(&info.version)
            .bind(&info.kind)
            .bind(exe_id)
            .execute(&mut *tx)
            .await?;
            tx.hint(&hint).await?;
            tx.commit().await
        }
        .await
        })?;
        self.changed(&hint);
        Ok(())
    }

    pub async fn mark_disconnected(&self, exe_id: &str, last_seen_ms: i64) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE executors SET disconnected_at = $1, last_seen_at = $2 WHERE exe_id = $3"
        )
        .bind(now_ms())
        .bind(last_seen_ms)
        .bind(exe_id)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Records when each of `seen`'s executors (`exe_id`, Unix ms) was last
    /// seen: one statement per [`TOUCH_BATCH`] of them (the executors a
    /// replica holds, every ping interval), not one per executor. The
    /// pairs travel as one JSON text, which both backends read as rows.
    pub async fn touch_executors(&self, seen: &[(&str, i64)]) -> Result<()> {
        for batch in seen.chunks(TOUCH_BATCH) {
            let rows = serde_json::to_string(batch)
                .map_err(|e| StoreError::Invalid(format!("last_seen rows not encodable: {e}")))?;
            match &self.db {
                Db::Sqlite { main, .. } => {
                    sqlx::query(
                        "UPDATE executors SET last_seen_at = v.ts
                         FROM (SELECT json_extract(value, '$[0]') AS id,
                                      json_extract(value, '$[1]') AS ts
                               FROM json_each($1)) AS v
                         WHERE executors.exe_id = v.id",
                    )
                    .bind(&rows)
                    .execute(main)
                    .await?;
                }
                Db::Postgres(pool) => {
                    sqlx::query(
                        "UPDATE executors AS e SET last_seen_at = v.ts
                         FROM (SELECT r->>0 AS id, (r->>1)::BIGINT AS ts
                               FROM json_array_elements($1::json) AS r) AS v
                         WHERE e.exe_id = v.id",
                    )
                    .bind(&rows)
                    .execute(pool)
                    .await?;
                }
            }
        }
        Ok(())
    }

    // ---- process sessions ----

    pub async fn insert_session(&self, row: &SessionRow) -> Result<()> {
        on_db!(&self.db, |pool| insert_session_on!(pool, row)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn delete_session(&self, sid: &str) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM process_sessions WHERE sid = $1"
        )
        .bind(sid)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// The workspace's sessions, newest first, at most `limit`.
    pub async fn list_sessions(&self, workspace: &str, limit: u32) -> Result<Vec<SessionRow>> {
        Ok(on_db!(&self.db, |pool| {
            sqlx::query_as(
            "SELECT * FROM process_sessions WHERE workspace = $1 ORDER BY created_at DESC, sid LIMIT $2",
        )
        .bind(workspace)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        })?)
    }

    /// Sessions whose deadline has passed and was not enforced yet.
    pub async fn due_deadlines(&self, now: i64) -> Result<Vec<SessionRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT * FROM process_sessions
             WHERE deadline_at IS NOT NULL AND deadline_done = FALSE AND deadline_at <= $1
             ORDER BY deadline_at LIMIT 100",
        )
        .bind(now)
        .fetch_all(pool)
        .await)?)
    }

    /// The earliest deadline not enforced yet.
    pub async fn next_deadline(&self) -> Result<Option<i64>> {
        let row: (Option<i64>,) = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT MIN(deadline_at) FROM process_sessions
             WHERE deadline_at IS NOT NULL AND deadline_done = FALSE",
        )
        .fetch_one(pool)
        .await)?;
        Ok(row.0)
    }

    /// Sets (or moves) a session's deadline; it will be enforced once.
    pub async fn set_deadline(&self, sid: &str, at: i64) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE process_sessions SET deadline_at = $1, deadline_done = FALSE,
                                         deadline_claimed_until = NULL WHERE sid = $2"
        )
        .bind(at)
        .bind(sid)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    pub async fn mark_deadline_done(&self, sid: &str) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE process_sessions SET deadline_done = TRUE WHERE sid = $1"
        )
        .bind(sid)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// The workspace's sessions not known to have ended (see migration
    /// 0004), of executors that still exist.
    pub async fn live_sessions(&self, workspace: &str) -> Result<Vec<SessionRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT * FROM process_sessions
             WHERE workspace = $1 AND ended_at IS NULL AND exe_id IN (SELECT exe_id FROM executors)
             ORDER BY created_at, sid",
        )
        .bind(workspace)
        .fetch_all(pool)
        .await)?)
    }

    /// Records that these sessions' processes ended (or were terminated).
    pub async fn mark_sessions_ended(&self, sids: &[String]) -> Result<()> {
        if sids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        on_db!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            for sid in sids {
                sqlx::query(
                    "UPDATE process_sessions SET ended_at = $1 WHERE sid = $2 AND ended_at IS NULL",
                )
                .bind(now)
                .bind(sid)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await)?;
        Ok(())
    }

    pub async fn session(&self, sid: &str) -> Result<Option<SessionRow>> {
        Ok(on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT * FROM process_sessions WHERE sid = $1"
        )
        .bind(sid)
        .fetch_optional(pool)
        .await)?)
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
        let hint = format!("turn:{turn_id}");
        let at = on_db!(&self.db, |pool| {
            async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO revoked_turns (turn_id, revoked_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(turn_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            let (at,): (i64,) =
                sqlx::query_as("SELECT revoked_at FROM revoked_turns WHERE turn_id = $1")
                    .bind(turn_id)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.hint(&hint).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(at)
        }
        .await
        })?;
        self.changed(&hint);
        Ok(at)
    }

    /// Forgets the turns revoked before `revoked_before_ms` (Unix ms): once
    /// every token they could refuse has expired, they no longer matter
    /// (see `captoken::admin::REVOKED_TURN_RETENTION`). How many went.
    pub async fn prune_revoked_turns(&self, revoked_before_ms: i64) -> Result<u64> {
        let res = on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM revoked_turns WHERE revoked_at < $1"
        )
        .bind(revoked_before_ms)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(res)
    }

    /// Backdates a revocation, for tests of pruning.
    #[cfg(test)]
    pub(crate) async fn set_turn_revoked_at_for_test(&self, turn_id: &str, at_ms: i64) {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE revoked_turns SET revoked_at = $1 WHERE turn_id = $2"
        )
        .bind(at_ms)
        .bind(turn_id)
        .execute(pool)
        .await
        .map(|_| ()))
        .expect("backdating a revoked turn");
    }

    /// Whether `turn_id` was revoked (an indexed read).
    pub async fn turn_revoked(&self, turn_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT revoked_at FROM revoked_turns WHERE turn_id = $1"
        )
        .bind(turn_id)
        .fetch_optional(pool)
        .await)?;
        Ok(row.is_some())
    }

    // ---- secrets every replica shares (PostgreSQL) ----

    /// The shared secret `name` (`admin-token`, `cap-token-secret`): the
    /// stored one, or `generate()`'s, stored by the first replica to ask.
    /// Race-free: every replica inserts its candidate with `ON CONFLICT DO
    /// NOTHING`, then all read the one that won.
    pub async fn shared_secret(
        &self,
        name: &str,
        generate: impl FnOnce() -> String,
    ) -> Result<String> {
        let candidate = generate();
        let value: (String,) = on_db!(&self.db, |pool| async {
            sqlx::query(
                "INSERT INTO shared_secrets (name, value, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(&candidate)
            .bind(now_ms())
            .execute(pool)
            .await?;
            sqlx::query_as("SELECT value FROM shared_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await
        }
        .await)?;
        Ok(value.0)
    }
}

pub use invalidate::ANYTHING;

/// The next hint from [`Store::changes`] (`*` when some were missed), or
/// never once they have closed.
pub async fn next_change(changes: &mut Option<tokio::sync::broadcast::Receiver<String>>) -> String {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let Some(rx) = changes else {
            return std::future::pending().await;
        };
        match rx.recv().await {
            Ok(hint) => return hint,
            Err(RecvError::Lagged(_)) => return ANYTHING.to_string(),
            Err(RecvError::Closed) => *changes = None,
        }
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
    use super::testing::{on_both, Fx};
    use super::*;

    on_both!(
        sessions_list_newest_first_and_deadlines_fire_once,
        live_sessions_leave_out_ended_ones_and_removed_executors,
        tokens_verify_until_revoked,
        sigv4_keys_belong_to_their_executor_and_go_with_it,
        executors_unique_per_workspace_with_one_default,
        revoked_turns_are_persisted_and_idempotent,
        shared_secrets_are_set_once,
    );

    /// migrations_pg keeps the schema SQLite's migrations make: the same
    /// tables with the same columns (plus PostgreSQL's shared_secrets), so
    /// that one SQL text serves both. A guard against drift when a branch
    /// adds a migration to one side only.
    #[tokio::test]
    async fn the_postgres_schema_has_sqlites_tables_and_columns() {
        use std::collections::BTreeSet;
        let Some(url) = execgate_testkit::pg::database("the_postgres_schema") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let lite = Store::open(dir.path()).await.unwrap();
        let pg = Store::open_postgres(&url).await.unwrap();
        let (Db::Sqlite { main, audit }, Db::Postgres(pool)) = (&lite.db, &pg.db) else {
            unreachable!()
        };
        let mut lite_columns = BTreeSet::new();
        for db in [main, audit] {
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
            )
            .fetch_all(db)
            .await
            .unwrap();
            for (table,) in tables {
                let columns: Vec<(String,)> =
                    sqlx::query_as("SELECT name FROM pragma_table_info($1)")
                        .bind(&table)
                        .fetch_all(db)
                        .await
                        .unwrap();
                lite_columns.extend(columns.into_iter().map(|(c,)| (table.clone(), c)));
            }
        }
        let pg_columns: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'
               AND table_name <> 'shared_secrets'",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        assert!(lite_columns.len() > 40, "{lite_columns:?}");
        assert_eq!(
            pg_columns.difference(&lite_columns).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "in PostgreSQL's schema only"
        );
        assert_eq!(
            lite_columns.difference(&pg_columns).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "in SQLite's schema only"
        );
    }

    /// The first replica's candidate wins; the others read it.
    async fn shared_secrets_are_set_once(fx: Fx) {
        if !fx.is_postgres() {
            return; // SQLite keeps them in files of the data dir.
        }
        let (a, b) = (fx.open().await, fx.open().await);
        let first = a.shared_secret("k", || "one".into()).await.unwrap();
        let second = b.shared_secret("k", || "two".into()).await.unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
    }

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
                .fetch_one(match &store.db {
                    Db::Sqlite { main, .. } => main,
                    Db::Postgres(_) => unreachable!(),
                })
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

    async fn sessions_list_newest_first_and_deadlines_fire_once(fx: Fx) {
        let s = fx.open().await;
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

    async fn live_sessions_leave_out_ended_ones_and_removed_executors(fx: Fx) {
        let s = fx.open().await;
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

    async fn tokens_verify_until_revoked(fx: Fx) {
        let s = fx.open().await;
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

    async fn sigv4_keys_belong_to_their_executor_and_go_with_it(fx: Fx) {
        let s = fx.open().await;
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
        if !fx.is_postgres() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(fx.dir.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    async fn executors_unique_per_workspace_with_one_default(fx: Fx) {
        let s = fx.open().await;
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

    async fn revoked_turns_are_persisted_and_idempotent(fx: Fx) {
        let store = fx.open().await;
        assert!(!store.turn_revoked("turn_a").await.unwrap());
        let at = store.revoke_turn("turn_a").await.unwrap();
        assert_eq!(store.revoke_turn("turn_a").await.unwrap(), at);
        assert!(store.turn_revoked("turn_a").await.unwrap());
        assert!(!store.turn_revoked("turn_b").await.unwrap());
        drop(store);
        let reopened = fx.open().await;
        assert!(reopened.turn_revoked("turn_a").await.unwrap());
        assert!(!reopened.workspace_exists("nope").await.unwrap());
        reopened.create_workspace("w1").await.unwrap();
        assert!(reopened.workspace_exists("w1").await.unwrap());
    }
}
