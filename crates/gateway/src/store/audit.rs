//! The store's side of the audit log (table `audit` in `audit.db`,
//! `migrations_audit/0001`; on PostgreSQL in the one database, `migrations_pg`):
//! batched writes for `crate::store::audit_log`'s writer task, and filtered reads for
//! `execgate admin audit` and `GET /api/admin/audit`.

use super::{on_audit_db, Db, Result, Store};
use crate::store::audit_log::{AuditRecord, Write};

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
    ///
    /// The inserts go as one multi-row `INSERT` per [`INSERT_ROWS`] rows:
    /// sqlx runs every statement on its connection's worker thread, two
    /// thread hand-offs each, and a statement per record (with `BEGIN` and
    /// `COMMIT` around them) made a batch of n records n + 2 round trips.
    /// Up to [`INSERT_ROWS`] inserts alone are one statement and need no
    /// explicit transaction: a statement is atomic.
    pub async fn write_audit(&self, writes: &[&Write]) -> Result<Vec<i64>> {
        let lone_insert =
            writes.len() <= INSERT_ROWS && writes.iter().all(|w| matches!(w, Write::Insert(_)));
        match &self.db {
            Db::Sqlite { audit, .. } => {
                if lone_insert {
                    let mut conn = audit.acquire().await?;
                    return Ok(sqlite::write_rows(&mut conn, writes).await?);
                }
                let mut tx = audit.begin().await?;
                let ids = sqlite::write_rows(&mut tx, writes).await?;
                tx.commit().await?;
                Ok(ids)
            }
            Db::Postgres(pool) => {
                if lone_insert {
                    let mut conn = pool.acquire().await?;
                    return Ok(postgres::write_rows(&mut conn, writes).await?);
                }
                let mut tx = pool.begin().await?;
                let ids = postgres::write_rows(&mut tx, writes).await?;
                tx.commit().await?;
                Ok(ids)
            }
        }
    }

    /// Records matching `q`, oldest first.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        Ok(on_audit_db!(&self.db, |pool| sqlx::query_as(
            "SELECT * FROM audit
             WHERE (CAST($1 AS TEXT) IS NULL OR workspace = $1)
               AND (CAST($2 AS BIGINT) IS NULL OR at >= $2) AND id > $3
             ORDER BY id LIMIT $4",
        )
        .bind(&q.workspace)
        .bind(q.since_ms)
        .bind(q.after_id)
        .bind(i64::from(q.limit))
        .fetch_all(pool)
        .await)?)
    }
}

/// Rows per multi-row `INSERT`: 17 parameters each, well under SQLite's
/// limit of 32,766 parameters per statement (and PostgreSQL's 65,535).
const INSERT_ROWS: usize = 256;

/// The writes, once per driver (`$db`: its sqlx database type).
macro_rules! audit_writes {
    ($module:ident, $db:ty) => {
        mod $module {
            use super::INSERT_ROWS;
            use crate::store::audit_log::{AuditRecord, Write};

            type Conn = <$db as sqlx::Database>::Connection;

            /// The inserts of `writes` as multi-row `INSERT`s, then its updates;
            /// answers each write's row id.
            pub(super) async fn write_rows(
                conn: &mut Conn,
                writes: &[&Write],
            ) -> std::result::Result<Vec<i64>, sqlx::Error> {
                let inserts: Vec<(usize, &AuditRecord)> = writes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| match w {
                        Write::Insert(r) => Some((i, r)),
                        Write::Update(..) => None,
                    })
                    .collect();
                let mut ids = vec![0i64; writes.len()];
                for chunk in inserts.chunks(INSERT_ROWS) {
                    let mut new_ids = insert_rows(conn, chunk.iter().map(|(_, r)| *r)).await?;
                    // RETURNING answers in no set order; the rows were inserted in
                    // VALUES order, each with an id above all before it
                    // (AUTOINCREMENT; an identity column on PostgreSQL), so
                    // ascending ids are that order.
                    new_ids.sort_unstable();
                    if new_ids.len() != chunk.len() {
                        return Err(sqlx::Error::Protocol(format!(
                            "an audit insert of {} rows answered {} ids",
                            chunk.len(),
                            new_ids.len()
                        )));
                    }
                    for ((i, _), id) in chunk.iter().zip(new_ids) {
                        ids[*i] = id;
                    }
                }
                for (i, w) in writes.iter().enumerate() {
                    if let Write::Update(id, r) = w {
                        update_row(conn, *id, r).await?;
                        ids[i] = *id;
                    }
                }
                Ok(ids)
            }

            /// One `INSERT … VALUES (…), (…) RETURNING id`; the ids in no set order.
            async fn insert_rows<'r>(
                conn: &mut Conn,
                rows: impl Iterator<Item = &'r AuditRecord>,
            ) -> std::result::Result<Vec<i64>, sqlx::Error> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO audit (at, workspace, user_id, environment, exe_id, kind, method, via,
                                        session_id, args_sha256, args_bytes, outcome, error_code,
                                        exit_code, duration_ms, bytes_in, bytes_out) ",
                );
                q.push_values(rows, |mut b, r| {
                    b.push_bind(r.at)
                        .push_bind(&r.workspace)
                        .push_bind(&r.user_id)
                        .push_bind(&r.environment)
                        .push_bind(&r.exe_id)
                        .push_bind(&r.kind)
                        .push_bind(&r.method)
                        .push_bind(&r.via)
                        .push_bind(&r.session_id)
                        .push_bind(&r.args_sha256)
                        .push_bind(r.args_bytes)
                        .push_bind(&r.outcome)
                        .push_bind(&r.error_code)
                        .push_bind(r.exit_code)
                        .push_bind(r.duration_ms)
                        .push_bind(r.bytes_in)
                        .push_bind(r.bytes_out);
                });
                q.push(" RETURNING id");
                q.build_query_scalar().fetch_all(&mut *conn).await
            }

            /// Completes a row written earlier as `started` (fail-closed mode): who
            /// and what were written then; the rest was learnt while the operation ran.
            async fn update_row(
                conn: &mut Conn,
                id: i64,
                r: &AuditRecord,
            ) -> std::result::Result<(), sqlx::Error> {
                sqlx::query(
                    "UPDATE audit SET environment = $1, exe_id = $2, session_id = $3, args_sha256 = $4,
                                      args_bytes = $5, outcome = $6, error_code = $7, exit_code = $8,
                                      duration_ms = $9, bytes_in = $10, bytes_out = $11
                     WHERE id = $12",
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
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
        }
    };
}

audit_writes!(sqlite, sqlx::Sqlite);
audit_writes!(postgres, sqlx::Postgres);
