//! The audit log: one record per tool call, process operation, file
//! transfer and bridge session, written to the store (table `audit`,
//! migration 0004) by one writer task, off the calls' path.
//!
//! **Recording.** An operation opens an [`AuditEntry`] with
//! [`Audit::begin`], fills in what it learns (environment, bytes, exit
//! code) through [`AuditEntry::record`], and sets its outcome with
//! [`AuditEntry::finish`]. The record is submitted when the entry is
//! dropped, so an operation abandoned half-way (the client went away and
//! its request future was dropped) is still recorded, as `cancelled`.
//!
//! **Writing.** Records go through a bounded queue ([`QUEUE`]) to one
//! writer task, which takes whatever is queued (up to [`MAX_BATCH`]),
//! waits up to [`LINGER`] for more unless a fail-closed call is waiting on
//! the batch, and writes it in one transaction: many records share a
//! commit, even when calls come one after another. (A commit per call was
//! about 40 % of the gateway's CPU per call at one client; BENCHMARKS.md,
//! session 5. The cost: a best-effort record reaches the disk up to
//! [`LINGER`] later.) If a batch fails, its records are retried one by
//! one, so one bad record does not take the others with it.
//!
//! **Modes.** `best-effort` (the default): nothing waits for the store; a
//! record that cannot be queued (queue full) or written (store failure) is
//! counted as lost ([`AuditStats::lost`], `GET /api/admin/stats`) with a
//! warning in the log, and the operation goes on. `fail-closed`: no
//! operation runs unrecorded. `begin` queues a `started` record and waits
//! until its commit is acknowledged (so concurrent calls share a commit);
//! if the queue is full, the write fails or the acknowledgement takes over
//! [`ACK_TIMEOUT`], the operation is refused, before it does anything,
//! with 503 `audit_unavailable`. The completion (outcome, bytes, duration)
//! then updates that row like a best-effort record: should that update be
//! lost, the row still says the operation was `started`.
//!
//! **What is kept.** Arguments only as SHA-256 and size: a tool call's
//! `arguments` object as compact JSON (keys sorted, as serde_json writes a
//! map), the bytes written to stdin, the body
//! of an upload (hashed while it streams), and for the other operations
//! their parameters as compact JSON. Error messages are not kept (they may
//! quote arguments), only error codes. `bytes_in` counts what the caller
//! sent (arguments, stdin, upload), `bytes_out` what it got back (the
//! tool result's text, output, download); `copy_path`, whose data never
//! passes the caller, counts the bytes it copied in both.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use execgate_protocol::admin::{AuditRecord as WireRecord, AuditStats};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::secret::sha256_hex;
use crate::store::{now_ms, Store};

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 8192;
/// Records written in one transaction, at most.
pub const MAX_BATCH: usize = 512;
/// How long the writer waits for more records to share a batch's commit,
/// when no fail-closed call is waiting on it.
pub const LINGER: Duration = Duration::from_millis(5);
/// How long a fail-closed call waits for its record's commit.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Seconds a client should wait after `audit_unavailable`.
const RETRY_AFTER_SECS: u64 = 2;

/// `--audit`: what happens when a record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditMode {
    /// Count it as lost and go on.
    #[default]
    BestEffort,
    /// Refuse the call (503 `audit_unavailable`).
    FailClosed,
}

impl AuditMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditMode::BestEffort => "best-effort",
            AuditMode::FailClosed => "fail-closed",
        }
    }
}

impl FromStr for AuditMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "best-effort" => Ok(AuditMode::BestEffort),
            "fail-closed" => Ok(AuditMode::FailClosed),
            other => Err(format!(
                "unknown audit mode {other:?}: use best-effort or fail-closed"
            )),
        }
    }
}

/// How the operation reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Rest,
    Mcp,
    Bridge,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Rest => "rest",
            Via::Mcp => "mcp",
            Via::Bridge => "bridge",
        }
    }
}

/// What kind of operation a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Process,
    File,
    Bridge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Process => "process",
            Kind::File => "file",
            Kind::Bridge => "bridge",
        }
    }
}

/// The `outcome` values.
pub mod outcome {
    pub const OK: &str = "ok";
    /// The tool ran and failed (`isError:true`).
    pub const TOOL_ERROR: &str = "tool_error";
    /// Refused or failed; `error_code` says why.
    pub const ERROR: &str = "error";
    /// The client went away before the operation finished.
    pub const CANCELLED: &str = "cancelled";
    /// Fail-closed mode: recorded before running; no outcome recorded yet.
    pub const STARTED: &str = "started";
}

/// One audit record, as stored (see the module header for what it keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRecord {
    /// Assigned by the store; 0 before.
    pub id: i64,
    /// Unix ms when the operation started.
    pub at: i64,
    pub workspace: String,
    pub user_id: Option<String>,
    pub environment: Option<String>,
    pub exe_id: Option<String>,
    pub kind: String,
    pub method: String,
    pub via: String,
    pub session_id: Option<String>,
    pub args_sha256: Option<String>,
    pub args_bytes: Option<i64>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

impl AuditRecord {
    /// A record of an operation starting now.
    pub fn new(workspace: &str, user_id: Option<&str>, via: Via, kind: Kind, method: &str) -> Self {
        AuditRecord {
            at: now_ms(),
            workspace: workspace.to_string(),
            user_id: user_id.map(str::to_string),
            kind: kind.as_str().to_string(),
            method: method.to_string(),
            via: via.as_str().to_string(),
            outcome: outcome::STARTED.to_string(),
            ..Default::default()
        }
    }

    pub fn with_environment(mut self, name: &str) -> Self {
        self.environment = Some(name.to_string());
        self
    }

    pub fn with_session(mut self, sid: &str) -> Self {
        self.session_id = Some(sid.to_string());
        self
    }

    /// Arguments given as a JSON value: its compact JSON is hashed.
    pub fn with_args_json(mut self, args: &impl Serialize) -> Self {
        self.set_args_json(args);
        self
    }

    pub fn set_args_json(&mut self, args: &impl Serialize) {
        let bytes = serde_json::to_vec(args).unwrap_or_default();
        self.set_args(&bytes);
    }

    /// Arguments given as bytes (stdin data).
    pub fn set_args(&mut self, data: &[u8]) {
        self.set_args_digest(sha256_hex(data), data.len() as u64);
    }

    /// Arguments hashed elsewhere (an upload, while it streamed).
    pub fn set_args_digest(&mut self, sha256_hex: String, len: u64) {
        self.args_sha256 = Some(sha256_hex);
        self.args_bytes = Some(clamp(len));
    }

    /// The environment the operation runs in (its name and exe_id).
    pub fn set_environment(&mut self, name: &str, exe_id: &str) {
        self.environment = Some(name.to_string());
        self.exe_id = Some(exe_id.to_string());
    }

    pub fn add_bytes_in(&mut self, n: u64) {
        self.bytes_in = self.bytes_in.saturating_add(clamp(n));
    }

    pub fn add_bytes_out(&mut self, n: u64) {
        self.bytes_out = self.bytes_out.saturating_add(clamp(n));
    }

    /// As the admin API and `execgate admin audit --json` show it.
    pub fn to_wire(&self) -> WireRecord {
        WireRecord {
            id: self.id,
            at: rfc3339_ms(self.at),
            at_ms: self.at,
            workspace: self.workspace.clone(),
            user_id: self.user_id.clone(),
            environment: self.environment.clone(),
            exe_id: self.exe_id.clone(),
            kind: self.kind.clone(),
            method: self.method.clone(),
            via: self.via.clone(),
            session_id: self.session_id.clone(),
            args_sha256: self.args_sha256.clone(),
            args_bytes: self.args_bytes,
            outcome: self.outcome.clone(),
            error_code: self.error_code.clone(),
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// `--since` / `?since=`: RFC 3339 (`2025-05-01T12:00:00Z`), a time ago
/// (`90s`, `15m`, `2h`, `7d`), or unix milliseconds. Answers unix ms.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "since {s:?}: give an RFC 3339 time (2025-05-01T12:00:00Z), a time ago (90s, 15m, 2h, 7d) or unix milliseconds"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|_| bad());
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad());
    }
    let (n, unit) = s.split_at(s.len() - 1);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .filter(|ago| *ago >= 0)
        .map(|ago| now_ms.saturating_sub(ago))
        .ok_or_else(bad)
}

/// What the writer does with one record.
pub enum Write {
    Insert(AuditRecord),
    /// Completes a `started` row (fail-closed mode).
    Update(i64, AuditRecord),
}

struct Op {
    write: Write,
    /// A fail-closed `begin` waiting for the row id (or why it failed).
    ack: Option<oneshot::Sender<Result<i64, String>>>,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    lost: AtomicU64,
    refused: AtomicU64,
    unhealthy: AtomicBool,
    last_warning: Mutex<Option<Instant>>,
}

impl Counters {
    /// Counts `n` lost records, with a warning at most every 10 s.
    fn lose(&self, n: u64, why: &str) {
        let total = self.lost.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last_warning.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(lost_total = total, "audit records lost: {why}");
        }
    }
}

struct Shared {
    tx: mpsc::Sender<Op>,
    mode: AuditMode,
    counters: Arc<Counters>,
}

/// The audit log's handle; cheap to clone.
#[derive(Clone)]
pub struct Audit(Arc<Shared>);

impl Audit {
    /// Starts the writer task (it lives as long as the runtime).
    pub fn start(store: Store, mode: AuditMode) -> Audit {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(writer(store, rx, counters.clone()));
        Audit(Arc::new(Shared { tx, mode, counters }))
    }

    /// Opens the record of an operation about to run. Best-effort: at
    /// once. Fail-closed: once its `started` row is committed, or 503
    /// `audit_unavailable` (see the module header).
    pub async fn begin(&self, mut rec: AuditRecord) -> Result<AuditEntry, AuditUnavailable> {
        rec.outcome = outcome::STARTED.to_string();
        let mut entry = AuditEntry {
            audit: self.clone(),
            rec,
            row: None,
            started: Instant::now(),
            finished: false,
            submitted: false,
        };
        if self.0.mode == AuditMode::BestEffort {
            return Ok(entry);
        }
        // Nothing to write when this fails: the call was refused.
        entry.submitted = true;
        let refuse = |why: String| {
            self.0.counters.refused.fetch_add(1, Ordering::Relaxed);
            AuditUnavailable {
                message: format!("the call was refused because its audit record cannot be written ({why}); nothing ran, retry later"),
                retry_after: RETRY_AFTER_SECS,
            }
        };
        let (ack, acked) = oneshot::channel();
        let op = Op {
            write: Write::Insert(entry.rec.clone()),
            ack: Some(ack),
        };
        if self.0.tx.try_send(op).is_err() {
            return Err(refuse("the audit queue is full".into()));
        }
        match tokio::time::timeout(ACK_TIMEOUT, acked).await {
            Ok(Ok(Ok(id))) => {
                entry.row = Some(id);
                entry.submitted = false;
                Ok(entry)
            }
            Ok(Ok(Err(e))) => Err(refuse(format!("the store refused it: {e}"))),
            Ok(Err(_)) => Err(refuse("the audit writer stopped".into())),
            Err(_) => Err(refuse(format!(
                "the store did not commit it within {} s",
                ACK_TIMEOUT.as_secs()
            ))),
        }
    }

    fn submit(&self, write: Write) {
        let op = Op { write, ack: None };
        if self.0.tx.try_send(op).is_err() {
            self.0.counters.lose(1, "the audit queue is full");
        }
    }

    pub fn stats(&self) -> AuditStats {
        let c = &self.0.counters;
        AuditStats {
            mode: self.0.mode.as_str().to_string(),
            written: c.written.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            queued: (QUEUE - self.0.tx.capacity()) as u64,
            healthy: !c.unhealthy.load(Ordering::Relaxed),
        }
    }
}

/// `--audit fail-closed` refused an operation: its record cannot be
/// written (`audit_unavailable` to the caller, who may retry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuditUnavailable {
    pub message: String,
    /// Seconds before a retry may succeed.
    pub retry_after: u64,
}

/// An error with a stable code, as an audit record's `error_code` keeps it
/// (the store names no error type of the layers above).
pub trait ErrorCode {
    fn error_code(&self) -> &str;
}

/// The open record of one operation; submitted when dropped (see the
/// module header).
pub struct AuditEntry {
    audit: Audit,
    rec: AuditRecord,
    /// Its `started` row (fail-closed mode).
    row: Option<i64>,
    started: Instant,
    finished: bool,
    submitted: bool,
}

impl AuditEntry {
    /// The record, to fill in as the operation learns things.
    pub fn record(&mut self) -> &mut AuditRecord {
        &mut self.rec
    }

    /// `ok`, or `error` with the error's code.
    pub fn finish<T, E: ErrorCode>(&mut self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.succeed(),
            Err(e) => self.fail(e.error_code()),
        }
    }

    pub fn succeed(&mut self) {
        self.set(outcome::OK, None);
    }

    pub fn fail(&mut self, error_code: &str) {
        self.set(outcome::ERROR, Some(error_code));
    }

    /// `tool_error`: the tool ran and failed.
    pub fn tool_failed(&mut self) {
        self.set(outcome::TOOL_ERROR, None);
    }

    fn set(&mut self, outcome: &str, error_code: Option<&str>) {
        self.rec.outcome = outcome.to_string();
        self.rec.error_code = error_code.map(str::to_string);
        self.finished = true;
    }
}

impl Drop for AuditEntry {
    fn drop(&mut self) {
        if self.submitted {
            return;
        }
        if !self.finished {
            self.rec.outcome = outcome::CANCELLED.to_string();
        }
        self.rec.duration_ms = clamp(self.started.elapsed().as_millis() as u64);
        let rec = std::mem::take(&mut self.rec);
        self.audit.submit(match self.row {
            Some(id) => Write::Update(id, rec),
            None => Write::Insert(rec),
        });
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Op>, counters: Arc<Counters>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        gather(&mut rx, &mut batch).await;
        // A fail-closed call that stopped waiting was refused: its row
        // must not appear.
        batch.retain(|op| !op.ack.as_ref().is_some_and(|a| a.is_closed()));
        write_batch(&store, &mut batch, &counters).await;
        batch.clear();
    }
}

/// Adds to `batch` what arrives within [`LINGER`], so that it shares one
/// commit; at once when the batch is full, when the queue closed, or when a
/// fail-closed call waits on a record of the batch (it waits for nothing
/// else).
async fn gather(rx: &mut mpsc::Receiver<Op>, batch: &mut Vec<Op>) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut awaited = batch.iter().any(|op| op.ack.is_some());
    while !awaited && batch.len() < MAX_BATCH {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(op)) => {
                awaited = op.ack.is_some();
                batch.push(op);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

async fn write_batch(store: &Store, batch: &mut Vec<Op>, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    let writes: Vec<&Write> = batch.iter().map(|op| &op.write).collect();
    let all = store.write_audit(&writes).await;
    let results: Vec<Result<i64, String>> = match all {
        Ok(ids) => ids.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 => vec![Err(e.to_string())],
        Err(_) => {
            // One by one, so that one bad record loses only itself.
            let mut out = Vec::with_capacity(batch.len());
            for op in batch.iter() {
                out.push(match store.write_audit(&[&op.write]).await {
                    Ok(ids) => Ok(ids[0]),
                    Err(e) => Err(e.to_string()),
                });
            }
            out
        }
    };
    let mut failed = 0;
    let mut last_error = String::new();
    for (op, result) in batch.drain(..).zip(results) {
        match &result {
            Ok(_) => {
                counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                last_error.clone_from(e);
                // A refused fail-closed call lost nothing: it did not run.
                if op.ack.is_none() {
                    failed += 1;
                }
            }
        }
        if let Some(ack) = op.ack {
            let _ = ack.send(result);
        }
    }
    counters
        .unhealthy
        .store(!last_error.is_empty(), Ordering::Relaxed);
    if failed > 0 {
        counters.lose(failed, &format!("the store failed: {last_error}"));
    } else if !last_error.is_empty() {
        tracing::warn!("an audit record could not be written: {last_error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{on_both, Fx};

    #[test]
    fn since_forms() {
        let now = 10_000_000_000;
        assert_eq!(parse_since("90s", now), Ok(now - 90_000));
        assert_eq!(parse_since("15m", now), Ok(now - 900_000));
        assert_eq!(parse_since("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_since("1d", now), Ok(now - 86_400_000));
        assert_eq!(parse_since("1700000000123", now), Ok(1_700_000_000_123));
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20.5+01:00", now),
            Ok(1_700_000_000_500)
        );
        for bad in ["", "x", "5w", "-5m", "m", "2023-13-01"] {
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn times_keep_milliseconds() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn arguments_are_kept_as_digest_and_size() {
        let (workspace, user_id) = ("w", Some("u"));
        let r = AuditRecord::new(workspace, user_id, Via::Mcp, Kind::Tool, "shell")
            .with_args_json(&serde_json::json!({"command": ["echo", "hunter2"]}));
        let json = br#"{"command":["echo","hunter2"]}"#;
        assert_eq!(r.args_sha256.as_deref(), Some(sha256_hex(json).as_str()));
        assert_eq!(r.args_bytes, Some(json.len() as i64));
        assert!(!format!("{r:?}").contains("hunter2"));
        assert_eq!((r.via.as_str(), r.kind.as_str()), ("mcp", "tool"));
        assert_eq!(r.user_id.as_deref(), Some("u"));
        // Keys sorted: the digest does not depend on the sender's order.
        let args: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": [2]}"#).unwrap();
        let sorted =
            AuditRecord::new(workspace, user_id, Via::Rest, Kind::Tool, "x").with_args_json(&args);
        assert_eq!(
            sorted.args_sha256.as_deref(),
            Some(sha256_hex(br#"{"a":[2],"b":1}"#).as_str())
        );
    }

    on_both!(
        a_batch_answers_each_write_its_own_row,
        best_effort_writes_in_the_background_and_counts_losses,
        fail_closed_records_before_running_and_refuses_when_it_cannot,
    );

    fn rec(method: &str) -> AuditRecord {
        AuditRecord::new("w", None, Via::Rest, Kind::Process, method)
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn block_inserts(store: &Store) {
        match store.audit_db() {
            crate::store::Db::Sqlite { audit, .. } => {
                sqlx::query(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit blocked'); END",
                )
                .execute(audit)
                .await
                .unwrap();
            }
            crate::store::Db::Postgres(pool) => {
                sqlx::raw_sql(
                    "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS
                         $$ BEGIN RAISE EXCEPTION 'audit blocked'; END $$;
                     CREATE TRIGGER no_audit BEFORE INSERT ON audit
                         FOR EACH ROW EXECUTE FUNCTION no_audit();",
                )
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    /// The writer waits a moment for more records to share a commit, but
    /// not when a fail-closed call waits on the batch.
    #[tokio::test]
    async fn a_batch_lingers_for_company_unless_a_call_waits_on_it() {
        let op = |ack| Op {
            write: Write::Insert(rec("x")),
            ack,
        };
        let (tx, mut rx) = mpsc::channel(8);
        let mut batch = vec![op(None)];
        // Sent once `gather` waits (the test's runtime has one thread: the
        // spawned task runs only when `gather` yields), so it arrives during
        // the linger. A sleep here raced LINGER's 5 ms on a loaded machine.
        let late = tokio::spawn({
            let tx = tx.clone();
            async move {
                tx.send(op(None)).await.unwrap();
            }
        });
        gather(&mut rx, &mut batch).await;
        late.await.unwrap();
        assert_eq!(batch.len(), 2, "the record sent within LINGER joined");

        let (ack, _acked) = oneshot::channel();
        let mut batch = vec![op(Some(ack))];
        tx.send(op(None)).await.unwrap();
        let started = Instant::now();
        gather(&mut rx, &mut batch).await;
        assert_eq!(batch.len(), 1, "nothing gathered while a call waits");
        assert!(started.elapsed() < LINGER);
    }

    /// A batch's ids answer its writes in order, whether its inserts fit
    /// one statement or not, and with updates among them.
    async fn a_batch_answers_each_write_its_own_row(fx: Fx) {
        let store = fx.open().await;
        let all = |store: &Store| {
            let store = store.clone();
            async move {
                store
                    .list_audit(&crate::store::AuditQuery {
                        limit: 1000,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
            }
        };
        // More inserts than one statement takes.
        let recs: Vec<Write> = (0..300)
            .map(|i| Write::Insert(rec(&format!("m{i}"))))
            .collect();
        let ids = store
            .write_audit(&recs.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        let rows = all(&store).await;
        assert_eq!(rows.len(), 300);
        for (i, id) in ids.iter().enumerate() {
            let row = rows.iter().find(|r| r.id == *id).unwrap();
            assert_eq!(row.method, format!("m{i}"), "write {i} got row {id}");
        }
        // Inserts and an update of an earlier row, in one batch.
        let mut done = rec("m7");
        done.outcome = outcome::OK.to_string();
        let batch = [
            Write::Insert(rec("a")),
            Write::Update(ids[7], done),
            Write::Insert(rec("b")),
        ];
        let got = store
            .write_audit(&batch.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(got[1], ids[7]);
        let rows = all(&store).await;
        let method_of = |id: i64| rows.iter().find(|r| r.id == id).unwrap().method.clone();
        assert_eq!(
            (method_of(got[0]), method_of(got[2])),
            ("a".into(), "b".into())
        );
        let updated = rows.iter().find(|r| r.id == ids[7]).unwrap();
        assert_eq!(updated.outcome, outcome::OK);
        // A failing batch writes nothing.
        block_inserts(&store).await;
        let batch = [Write::Insert(rec("c")), Write::Insert(rec("d"))];
        assert!(store
            .write_audit(&batch.iter().collect::<Vec<_>>())
            .await
            .is_err());
        assert_eq!(all(&store).await.len(), 302);
    }

    async fn best_effort_writes_in_the_background_and_counts_losses(fx: Fx) {
        let store = fx.open().await;
        let audit = Audit::start(store.clone(), AuditMode::BestEffort);
        for i in 0..50 {
            let mut e = audit.begin(rec("stdin")).await.unwrap();
            e.record().add_bytes_in(i);
            if i % 2 == 0 {
                e.succeed();
            }
        }
        until("50 records", || audit.stats().written == 50).await;
        let rows = store
            .list_audit(&crate::store::AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 50);
        assert_eq!(rows[0].outcome, outcome::OK);
        assert_eq!(rows[1].outcome, outcome::CANCELLED);
        assert_eq!(rows[49].bytes_in, 49);
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id));

        block_inserts(&store).await;
        let mut e = audit.begin(rec("output")).await.unwrap();
        e.succeed();
        drop(e);
        until("a lost record", || audit.stats().lost == 1).await;
        let s = audit.stats();
        assert!(!s.healthy);
        assert_eq!(
            (s.written, s.refused, s.mode.as_str()),
            (50, 0, "best-effort")
        );
    }

    async fn fail_closed_records_before_running_and_refuses_when_it_cannot(fx: Fx) {
        let store = fx.open().await;
        let audit = Audit::start(store.clone(), AuditMode::FailClosed);
        let mut e = audit.begin(rec("terminate")).await.unwrap();
        // Committed before the operation runs.
        let rows = store.list_audit(&Default::default()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, outcome::STARTED);
        e.record().exit_code = Some(3);
        e.fail("executor_unavailable");
        drop(e);
        until("the completion", || audit.stats().written == 2).await;
        let rows = store.list_audit(&Default::default()).await.unwrap();
        assert_eq!(rows.len(), 1, "the completion updates the row");
        assert_eq!(rows[0].outcome, outcome::ERROR);
        assert_eq!(rows[0].error_code.as_deref(), Some("executor_unavailable"));
        assert_eq!(rows[0].exit_code, Some(3));

        block_inserts(&store).await;
        // As the caller sees it: through ops' error into the HTTP answer.
        let err = crate::http::error::ApiError::from(crate::ops::Error::from(
            audit.begin(rec("stdin")).await.err().unwrap(),
        ));
        use axum::http::StatusCode;
        use execgate_protocol::connectors::error_code as code;
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code, code::AUDIT_UNAVAILABLE);
        assert!(err.retry_after.is_some());
        let s = audit.stats();
        assert_eq!((s.refused, s.lost, s.healthy), (1, 0, false));
        assert_eq!(
            store.list_audit(&Default::default()).await.unwrap().len(),
            1
        );
    }
}
