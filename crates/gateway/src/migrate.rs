//! `execgate admin migrate --from DATA_DIR --to postgres://…`: a
//! single-machine store (SQLite) copied into an empty PostgreSQL store, so
//! that a user who outgrows one machine keeps their workspaces, tokens and
//! executors.
//!
//! Copied: workspaces, proxy tokens (their hashes), executors (with their
//! token hashes, session ids and SigV4 keys), process sessions, revoked
//! turns, the audit log (ids kept, so cursors stay valid), and the data
//! dir's admin token and capability-token secret (into `shared_secrets`,
//! so that tokens and capability tokens issued before keep working). All in
//! one PostgreSQL transaction: a failed copy leaves the target empty. The
//! target must hold no data; the source is only read (stop the gateway
//! first so that nothing changes while it is copied).

use std::path::Path;

use crate::auth::{admin_token, captoken::keyfile, shared_secrets};
use crate::store::audit_log::AuditRecord;
use crate::store::{Db, ExecutorRow, Result, Store, StoreError};

/// How many rows of each kind were copied.
#[derive(Debug, Default)]
pub struct Copied {
    pub workspaces: usize,
    pub tokens: usize,
    pub executors: usize,
    pub sigv4_keys: usize,
    pub sessions: usize,
    pub revoked_turns: usize,
    pub audit: usize,
    pub secrets: usize,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copied {} workspaces, {} proxy tokens, {} executors ({} SigV4 keys), {} process sessions, {} revoked turns, {} audit records, {} shared secrets",
            self.workspaces,
            self.tokens,
            self.executors,
            self.sigv4_keys,
            self.sessions,
            self.revoked_turns,
            self.audit,
            self.secrets
        )
    }
}

const TABLES: &[&str] = &[
    "workspaces",
    "proxy_tokens",
    "executors",
    "executor_sigv4_keys",
    "process_sessions",
    "revoked_turns",
    "audit",
    "shared_secrets",
];

type TokenTuple = (String, String, String, Option<String>, i64, Option<i64>);

type SessionTuple = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    bool,
    Option<i64>,
);

pub async fn sqlite_to_postgres(from: &Path, to: &str) -> Result<Copied> {
    if !from.join(crate::store::MAIN_DB).is_file() {
        return Err(StoreError::Invalid(format!(
            "{} holds no execgate store ({} is missing)",
            from.display(),
            crate::store::MAIN_DB
        )));
    }
    let source = Store::open(from).await?;
    let target = Store::open_postgres(to).await?;
    let (Db::Sqlite { main, audit }, Db::Postgres(pg)) = (&source.db, &target.db) else {
        unreachable!("opened as SQLite and PostgreSQL");
    };
    for table in TABLES {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pg)
            .await?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "the target store is not empty (table {table} has {n} rows): migrate copies into an empty database only"
            )));
        }
    }
    let mut c = Copied::default();
    let mut tx = pg.begin().await?;

    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, created_at FROM workspaces")
        .fetch_all(main)
        .await?;
    for (name, created_at) in &rows {
        sqlx::query("INSERT INTO workspaces (name, created_at) VALUES ($1, $2)")
            .bind(name)
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
    }
    c.workspaces = rows.len();

    let rows: Vec<TokenTuple> = sqlx::query_as(
        "SELECT id, token_hash, workspace, user_id, created_at, revoked_at FROM proxy_tokens",
    )
    .fetch_all(main)
    .await?;
    for r in &rows {
        sqlx::query(
            "INSERT INTO proxy_tokens (id, token_hash, workspace, user_id, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.0)
        .bind(&r.1)
        .bind(&r.2)
        .bind(&r.3)
        .bind(r.4)
        .bind(r.5)
        .execute(&mut *tx)
        .await?;
    }
    c.tokens = rows.len();

    let rows: Vec<ExecutorRow> = sqlx::query_as("SELECT * FROM executors")
        .fetch_all(main)
        .await?;
    for e in &rows {
        sqlx::query(
            "INSERT INTO executors (exe_id, workspace, name, is_default, token_hash, registered_at,
                                    last_seen_at, connected_at, disconnected_at, os, version, kind,
                                    session_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&e.exe_id)
        .bind(&e.workspace)
        .bind(&e.name)
        .bind(e.is_default)
        .bind(&e.token_hash)
        .bind(e.registered_at)
        .bind(e.last_seen_at)
        .bind(e.connected_at)
        .bind(e.disconnected_at)
        .bind(&e.os)
        .bind(&e.version)
        .bind(&e.kind)
        .bind(&e.session_id)
        .execute(&mut *tx)
        .await?;
    }
    c.executors = rows.len();

    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT key_id, exe_id, secret, created_at FROM executor_sigv4_keys")
            .fetch_all(main)
            .await?;
    for r in &rows {
        sqlx::query(
            "INSERT INTO executor_sigv4_keys (key_id, exe_id, secret, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&r.0)
        .bind(&r.1)
        .bind(&r.2)
        .bind(r.3)
        .execute(&mut *tx)
        .await?;
    }
    c.sigv4_keys = rows.len();

    let rows: Vec<SessionTuple> = sqlx::query_as(
        "SELECT sid, workspace, exe_id, process_id, command, created_at, executor_session_id,
                deadline_at, deadline_done, ended_at FROM process_sessions",
    )
    .fetch_all(main)
    .await?;
    for r in &rows {
        sqlx::query(
            "INSERT INTO process_sessions (sid, workspace, exe_id, process_id, command, created_at,
                                           executor_session_id, deadline_at, deadline_done, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&r.0)
        .bind(&r.1)
        .bind(&r.2)
        .bind(&r.3)
        .bind(&r.4)
        .bind(r.5)
        .bind(&r.6)
        .bind(r.7)
        .bind(r.8)
        .bind(r.9)
        .execute(&mut *tx)
        .await?;
    }
    c.sessions = rows.len();

    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT turn_id, revoked_at FROM revoked_turns")
        .fetch_all(main)
        .await?;
    for (turn, at) in &rows {
        sqlx::query("INSERT INTO revoked_turns (turn_id, revoked_at) VALUES ($1, $2)")
            .bind(turn)
            .bind(at)
            .execute(&mut *tx)
            .await?;
    }
    c.revoked_turns = rows.len();

    // The audit log, a page at a time, ids kept.
    let mut after = 0i64;
    loop {
        let page: Vec<AuditRecord> =
            sqlx::query_as("SELECT * FROM audit WHERE id > $1 ORDER BY id LIMIT 1000")
                .bind(after)
                .fetch_all(audit)
                .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            sqlx::query(
                "INSERT INTO audit (id, at, workspace, user_id, environment, exe_id, kind, method,
                                    via, session_id, args_sha256, args_bytes, outcome, error_code,
                                    exit_code, duration_ms, bytes_in, bytes_out)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            )
            .bind(r.id)
            .bind(r.at)
            .bind(&r.workspace)
            .bind(&r.user_id)
            .bind(&r.environment)
            .bind(&r.exe_id)
            .bind(&r.kind)
            .bind(&r.method)
            .bind(&r.via)
            .bind(&r.session_id)
            .bind(&r.args_sha256)
            .bind(r.args_bytes)
            .bind(&r.outcome)
            .bind(&r.error_code)
            .bind(r.exit_code)
            .bind(r.duration_ms)
            .bind(r.bytes_in)
            .bind(r.bytes_out)
            .execute(&mut *tx)
            .await?;
        }
        c.audit += page.len();
    }
    // New records go on after the copied ids.
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('audit', 'id'), GREATEST((SELECT MAX(id) FROM audit), 1))",
    )
    .execute(&mut *tx)
    .await?;

    // The data dir's secrets, when it has them.
    let secrets = [
        (
            shared_secrets::ADMIN_TOKEN,
            from.join(admin_token::FILE_NAME),
        ),
        (
            shared_secrets::CAP_TOKEN_SECRET,
            from.join(keyfile::FILE_NAME),
        ),
    ];
    for (name, path) in secrets {
        let value = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::DataDir { path, source }),
        };
        if value.is_empty() {
            continue;
        }
        sqlx::query("INSERT INTO shared_secrets (name, value, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(value)
            .bind(crate::store::now_ms())
            .execute(&mut *tx)
            .await?;
        c.secrets += 1;
    }
    tx.commit().await?;
    Ok(c)
}
