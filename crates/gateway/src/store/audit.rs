//! The store's side of the audit log (table `audit` in `audit.db`,
//! `migrations_audit/0001`):
//! batched writes for `crate::audit`'s writer task, and filtered reads for
//! `execgate admin audit` and `GET /api/admin/audit`.

use super::{Result, Store};
use crate::audit::{AuditRecord, Write};

/// Which records to read: oldest first, after the cursor.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    pub workspace: Option<String>,
    /// Records of operations started at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// Only records with a greater id (the previous page's last id).
    pub after_id: i64,
    pub limit: u32,
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            workspace: None,
            since_ms: None,
            after_id: 0,
            limit: 100,
        }
    }
}

impl Store {
    /// Writes records in one transaction; answers each one's row id. Any
    /// failure fails them all (nothing is committed).
    pub async fn write_audit(&self, writes: &[&Write]) -> Result<Vec<i64>> {
        let mut tx = self.audit_pool.begin().await?;
        let mut ids = Vec::with_capacity(writes.len());
        for w in writes {
            let id = match w {
                Write::Insert(r) => {
                    sqlx::query_scalar(
                        "INSERT INTO audit (at, workspace, user_id, environment, exe_id, kind, method, via,
                                            session_id, args_sha256, args_bytes, outcome, error_code,
                                            exit_code, duration_ms, bytes_in, bytes_out)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    )
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
                    .fetch_one(&mut *tx)
                    .await?
                }
                Write::Update(id, r) => {
                    // Who and what were written by the insert; the rest
                    // was learnt while the operation ran.
                    sqlx::query(
                        "UPDATE audit SET environment = ?, exe_id = ?, session_id = ?, args_sha256 = ?,
                                          args_bytes = ?, outcome = ?, error_code = ?, exit_code = ?,
                                          duration_ms = ?, bytes_in = ?, bytes_out = ?
                         WHERE id = ?",
                    )
                    .bind(&r.environment)
                    .bind(&r.exe_id)
                    .bind(&r.session_id)
                    .bind(&r.args_sha256)
                    .bind(r.args_bytes)
                    .bind(&r.outcome)
                    .bind(&r.error_code)
                    .bind(r.exit_code)
                    .bind(r.duration_ms)
                    .bind(r.bytes_in)
                    .bind(r.bytes_out)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    *id
                }
            };
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Records matching `q`, oldest first.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM audit
             WHERE (?1 IS NULL OR workspace = ?1) AND (?2 IS NULL OR at >= ?2) AND id > ?3
             ORDER BY id LIMIT ?4",
        )
        .bind(&q.workspace)
        .bind(q.since_ms)
        .bind(q.after_id)
        .bind(q.limit)
        .fetch_all(&self.audit_pool)
        .await?)
    }
}
