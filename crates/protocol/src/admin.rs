//! The admin API's bodies (`/api/admin/*`, behind the admin token), which
//! are also what `execgate admin … --json` prints. Times are RFC 3339 in
//! UTC; audit records carry unix milliseconds as well.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

/// `POST /api/admin/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    pub name: String,
}

/// A proxy token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyToken {
    pub id: String,
    pub workspace: String,
    pub user_id: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<ProxyToken>,
}

/// `POST /api/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub workspace: String,
    #[serde(default)]
    pub user_id: Option<String>,
}

/// The answer to `POST /api/admin/tokens`: the only time `token` is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    pub workspace: String,
    pub user_id: Option<String>,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executor {
    pub exe_id: String,
    pub workspace: String,
    pub name: String,
    pub is_default: bool,
    /// `execgate` or `codex`, once it has connected.
    pub kind: Option<String>,
    pub version: Option<String>,
    pub os: Option<String>,
    pub connected_at: Option<String>,
    pub disconnected_at: Option<String>,
    pub last_seen: Option<String>,
    /// Whether this gateway holds a live link to it now (the admin API
    /// knows; `execgate admin`, reading the store alone, leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutorList {
    pub executors: Vec<Executor>,
}

/// `POST /api/admin/executors`. The workspace is created if needed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddExecutor {
    pub workspace: String,
    pub name: String,
    #[serde(default)]
    pub default: bool,
    /// Issue AWS SigV4 credentials (for a stock codex) instead of a token.
    #[serde(default)]
    pub sigv4: bool,
}

/// The answer to `POST /api/admin/executors`: the only time its secret is
/// shown. Exactly one of `token` and `sigv4` is present.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddedExecutor {
    pub exe_id: String,
    pub workspace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<SigV4Credentials>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SigV4Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// One audited operation. Arguments are kept only as their SHA-256 and
/// size, never their bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Increasing; the cursor of `GET /api/admin/audit`.
    pub id: i64,
    /// When the operation started (RFC 3339, milliseconds).
    pub at: String,
    pub at_ms: i64,
    pub workspace: String,
    pub user_id: Option<String>,
    /// The environment's name and its exe_id, once known.
    pub environment: Option<String>,
    pub exe_id: Option<String>,
    /// `tool`, `process`, `file` or `bridge`.
    pub kind: String,
    /// The tool (`shell`, …) or operation (`stdin`, `output`, `terminate`,
    /// `signal`, `resize`, `stream`, `files.get`, `files.put`, `bridge`).
    pub method: String,
    /// `rest`, `mcp` or `bridge`.
    pub via: String,
    /// The process session acted on.
    pub session_id: Option<String>,
    pub args_sha256: Option<String>,
    pub args_bytes: Option<i64>,
    /// `ok`, `tool_error` (the tool ran and failed), `error` (see
    /// `error_code`), `cancelled` (the client went away first), or
    /// `started` (fail-closed mode: recorded before it ran, no outcome
    /// recorded yet).
    pub outcome: String,
    pub error_code: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// `GET /api/admin/audit`: oldest first; pass `next_cursor` as `cursor`
/// for the next page (absent on the last page).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
    /// Records this gateway could not write since it started (best-effort).
    pub lost_records: u64,
}

/// The audit writer of this gateway process, since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStats {
    /// `best-effort` or `fail-closed`.
    pub mode: String,
    pub written: u64,
    /// Records that could not be written (queue full or store failure);
    /// their operations ran.
    pub lost: u64,
    /// Calls refused with `audit_unavailable` (fail-closed mode).
    pub refused: u64,
    /// Records waiting to be written.
    pub queued: u64,
    /// Whether the last write succeeded.
    pub healthy: bool,
}

/// `GET /api/admin/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub audit: AuditStats,
}
