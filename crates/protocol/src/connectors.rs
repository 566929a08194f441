//! The connectors REST API's bodies, with the JSON field names of the
//! reference system's API kept byte for byte. Additions beyond it are
//! optional fields, omitted when empty, so its clients keep working.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The stable `code`s of the error envelope. Clients match on these.
pub mod error_code {
    pub const MISSING_BEARER: &str = "missing_bearer";
    pub const INVALID_TOKEN: &str = "invalid_token";
    /// 503: the token authority (remote verifier) cannot answer; retry.
    pub const AUTH_UNAVAILABLE: &str = "auth_unavailable";
    /// 401 at `/bridge`: the capability token is malformed, has another
    /// header, or its signature does not match.
    pub const INVALID_CAPTOKEN: &str = "invalid_captoken";
    /// 401 at `/bridge`: the capability token's `exp` has passed; mint another.
    pub const CAPTOKEN_EXPIRED: &str = "captoken_expired";
    /// 401 at `/bridge`: the token's turn was revoked (`/api/admin/revoke-turn`).
    pub const TURN_REVOKED: &str = "turn_revoked";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const BAD_JSON: &str = "bad_json";
    pub const UNKNOWN_TOOL: &str = "unknown_tool";
    pub const BAD_ARGUMENTS: &str = "bad_arguments";
    pub const BAD_BASE64: &str = "bad_base64";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const ENV_NOT_FOUND: &str = "env_not_found";
    pub const SESSION_NOT_FOUND: &str = "session_not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const CONFLICT: &str = "conflict";
    /// 409 at executor register/connect: another executor with the same
    /// token holds a live link. The executor retries with its backoff (the
    /// old link is declared dead within the gateway's ping timeout if it is).
    pub const EXECUTOR_ALREADY_CONNECTED: &str = "executor_already_connected";
    pub const STDIN_CLOSED: &str = "stdin_closed";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// 431: the request's header section is larger than the gateway takes.
    pub const HEADERS_TOO_LARGE: &str = "headers_too_large";
    /// 414: the request's URI is longer than the gateway takes.
    pub const URI_TOO_LONG: &str = "uri_too_long";
    /// 503 without a more specific cause (the HTTP stack's own).
    pub const UNAVAILABLE: &str = "unavailable";
    pub const EXECUTOR_UNAVAILABLE: &str = "executor_unavailable";
    pub const EXECUTOR_ERROR: &str = "executor_error";
    pub const NOT_SUPPORTED_BY_EXECUTOR: &str = "not_supported_by_executor";
    /// 410: the executor forgot the process (its retention after exit ended).
    pub const SESSION_EXPIRED: &str = "session_expired";
    /// The executor restarted (or its session expired): the process is gone.
    pub const EXECUTOR_RESTARTED: &str = "executor_restarted";
    pub const NOT_A_TERMINAL: &str = "not_a_terminal";
    pub const GATEWAY_TIMEOUT: &str = "gateway_timeout";
    /// 403: the executor's policy (`--root`, `--read-only`, `--allow-tools`)
    /// refuses this; the message names the path and the root, or the limit.
    pub const POLICY_DENIED: &str = "policy_denied";
    /// 403: the environment's executor does not allow this tool
    /// (`--allow-tools`); envs/list does not show it.
    pub const TOOL_NOT_ALLOWED: &str = "tool_not_allowed";
    /// 429: the executor runs its `--max-processes` already; retry when one
    /// has exited.
    pub const TOO_MANY_PROCESSES: &str = "too_many_processes";
    pub const INTERNAL: &str = "internal";
    /// 429: the workspace's request rate is over its limit; see Retry-After.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 429: the workspace has as many live process sessions as allowed.
    pub const TOO_MANY_SESSIONS: &str = "too_many_sessions";
    /// 503: the audit record of the call cannot be written (`--audit fail-closed`).
    pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";
    /// 503: the gateway serves as many connections as it allows
    /// (`--max-connections`); the connection is closed. Retry shortly.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// 503: this gateway is draining (it is shutting down or restarting);
    /// retry, and a load balancer sends the retry to another replica.
    pub const DRAINING: &str = "draining";
    /// 503: the gateway's store cannot be reached (`/readyz`, and any call
    /// that needs the store while it is down).
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
    /// 422: this `Idempotency-Key` was used in the workspace for a
    /// different request (route, path or body) in the last 24 h.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    /// 409: the first request with this `Idempotency-Key` was cut off (its
    /// gateway stopped) before its answer was recorded, or ended 503 with
    /// its outcome unknown (the executor's link, or the replica holding it,
    /// went away after the request was sent); it is not done again. Check
    /// the result, then use a new key.
    pub const IDEMPOTENCY_KEY_IN_DOUBT: &str = "idempotency_key_in_doubt";
    /// 409: the request with this `Idempotency-Key` was done, but its answer
    /// (over 1 MiB) was not kept for replays; it is not done again.
    pub const IDEMPOTENCY_ANSWER_TOO_LARGE: &str = "idempotency_answer_too_large";
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// `POST /api/connectors/envs/list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvsListResponse {
    pub envs: Vec<ConnectorEnv>,
    /// Present when the request asked for a page (`limit`) and more
    /// environments follow: the `after` of the next page. Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /api/connectors/envs/list`'s body, every field optional: without
/// `limit` every connected environment is listed (the seed's answer).
/// Not in the seed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvsListRequest {
    /// At most this many environments (1 to 1000), in name order (byte
    /// order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only environments named after this one (the previous page's `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectorEnv {
    pub name: String,
    /// Always `"executor"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub is_default: bool,
    pub tools: Vec<ConnectorTool>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Which executor program serves this environment. Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorInfo>,
    /// The limits the executor's owner set; absent when none. Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInfo>,
}

/// An executor's policy as envs/list shows it (`execgate executor --root
/// --allow-tools --read-only --max-processes`). Every key is present; null
/// (or false) means no limit of that kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyInfo {
    /// File tools and cwds are confined to this directory.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub root: Option<String>,
    /// Only these tools can be called.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub allow_tools: Option<Vec<String>>,
    /// No file changes, no processes.
    pub read_only: bool,
    /// At most this many processes run at once.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_processes: Option<u32>,
    /// Every process runs in this sandbox (`--sandbox`); null: processes
    /// are not confined (they can write wherever the executor's user can).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub sandbox: Option<SandboxInfo>,
}

/// The kernel-enforced sandbox (Landlock) of an environment's processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxInfo {
    /// Processes change files only beneath these paths…
    pub write: Vec<String>,
    /// …and may always write these devices (`/dev/null`, terminals).
    pub devices: Vec<String>,
    /// Processes read only beneath these paths; null: everywhere.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub read: Option<Vec<String>>,
    /// `"deny"`: no TCP connect or bind; `"allow"`.
    pub net: String,
    /// The Landlock ABI of the executor's kernel.
    pub landlock_abi: u32,
    /// Landlock scopes in force (`abstract_unix_socket`, `signal`).
    pub scopes: Vec<String>,
}

/// What an executor said about itself in `initialize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutorInfo {
    /// `"execgate"` or `"codex"`.
    pub kind: String,
    pub version: String,
    pub os: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectorTool {
    pub name: String,
    pub description: String,
    /// `"core"` or `"custom"`.
    pub kind: String,
    /// A custom tool's JSON Schema for its `arguments`. Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
}

/// `POST /api/connectors/envs/{name}/tool/call`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolCallRequest {
    /// A core tool (`shell`, `read_file`, `write_file`, `apply_patch`,
    /// `exec_command`, `copy_path`, `list_dir`) or a custom tool of the
    /// environment.
    pub tool: String,
    /// The tool's arguments. Core tools: the `ShellArguments`,
    /// `ReadFileArguments`… schemas; custom tools: their `input_schema`
    /// in envs/list.
    #[serde(default)]
    pub arguments: serde_json::Map<String, Value>,
}

/// An MCP CallToolResult.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallToolResult {
    pub content: Vec<Content>,
    #[serde(
        rename = "structuredContent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub structured_content: Option<Value>,
    #[serde(rename = "isError", default)]
    pub is_error: bool,
}

impl CallToolResult {
    pub fn text(text: impl Into<String>, structured: Option<Value>, is_error: bool) -> Self {
        CallToolResult {
            content: vec![Content::text(text)],
            structured_content: structured,
            is_error,
        }
    }

    /// The text of the first content item, or "".
    pub fn first_text(&self) -> &str {
        self.content.first().map(|c| c.text.as_str()).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Content {
    /// Always `"text"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

impl Content {
    pub fn text(text: impl Into<String>) -> Self {
        Content {
            kind: "text".into(),
            text: text.into(),
        }
    }
}

/// `POST /api/connectors/processes/{sid}/stdin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StdinRequest {
    pub data_b64: String,
    /// Close the process's stdin after writing `data_b64`. Not in the seed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
}

/// Answer of `/stdin` and `/terminate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OkResponse {
    pub ok: bool,
}

/// Answer of `PUT /api/connectors/envs/{name}/files?path=P`. Not in the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadResponse {
    /// The path as given.
    pub path: String,
    pub bytes: u64,
    /// Hex SHA-256 of the bytes written, as verified on the executor's disk.
    pub sha256: String,
}

/// `GET /api/connectors/processes/{sid}/output?since=N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputResponse {
    pub chunks: Vec<OutputChunk>,
    /// Null while the process runs.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub exit_code: Option<i32>,
    pub session_alive: bool,
    pub truncated: bool,
    pub lost_bytes: u64,
    /// Output was lost but the gateway cannot say how much: the executor (a
    /// stock codex) does not count evicted bytes, and the gateway did not see
    /// all of them go by (it restarted since). `truncated` is then true and
    /// `lost_bytes` is 0 and means nothing. Not in the seed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost_bytes_unknown: bool,
    /// Pass as `since` to read on from here; it also skips past the exit
    /// and close events, so a long-poll waits instead of answering at once.
    /// Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_since: Option<u64>,
    /// Why the session can say no more, when that is not a normal exit:
    /// `executor_restarted`. Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputChunk {
    /// `"stdout"`, `"stderr"`, or `"pty"` for a tty process.
    pub stream: String,
    /// The bytes, standard base64: always with the default encoding
    /// (`base64`); absent when `text` holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// The bytes as text, with `encoding=auto` (valid UTF-8) or
    /// `encoding=utf-8`; then consecutive chunks of one stream come joined,
    /// under the last one's seq. Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// With `text`: `"utf-8"` (the text is the bytes) or `"utf-8-escaped"`
    /// (the bytes were not UTF-8: each byte of an invalid sequence is
    /// `\xNN`, each backslash `\\`). Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    pub seq: u64,
}

/// `POST /api/connectors/processes/{sid}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    pub cols: u16,
    pub rows: u16,
}

/// A signal for `POST /api/connectors/processes/{sid}/signal`; it goes to the
/// whole process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SignalName {
    /// SIGINT.
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGKILL.
    Kill,
    /// SIGHUP.
    Hangup,
}

impl SignalName {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::Interrupt => "interrupt",
            SignalName::Terminate => "terminate",
            SignalName::Kill => "kill",
            SignalName::Hangup => "hangup",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: SignalName,
}

/// `GET /api/connectors/processes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessListResponse {
    pub processes: Vec<ProcessInfo>,
}

/// One exec_command session of the workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessInfo {
    pub sid: String,
    /// The environment's name.
    pub env: String,
    /// The argv it was started with.
    pub command: Vec<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// As in `/output`: true while more output may come. Null when the
    /// executor is not connected, so the gateway cannot know.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub session_alive: Option<bool>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub exit_code: Option<i32>,
    /// `running`, `exited`, `expired` (the executor forgot it after its
    /// retention), `executor_restarted`, or `executor_unavailable` (not
    /// connected: `session_alive` and `exit_code` are unknown).
    pub status: String,
}

/// `structuredContent` of the `shell` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShellOutput {
    pub stdout: String,
    pub stderr: String,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// Output the executor dropped before the gateway could read it. Not in the seed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_bytes: u64,
    /// Output beyond what `shell` captures (see its docs). Not in the seed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_bytes: u64,
    /// With a `max_output_bytes` budget (MCP's default): the bytes of
    /// output left out of the middle of `stdout` and `stderr`, which then
    /// hold a head, a marker line saying how many bytes were left out and
    /// how to read them, and a tail. Not in the seed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_bytes: u64,
    /// The budget the answer was cut to, when it was cut. Not in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `structuredContent` of the `exec_command` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecCommandOutput {
    pub session_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_matches_seed_shape() {
        let env = ConnectorEnv {
            name: "laptop".into(),
            kind: "executor".into(),
            is_default: true,
            tools: vec![ConnectorTool {
                name: "shell".into(),
                description: "d".into(),
                kind: "core".into(),
                input_schema: None,
            }],
            last_seen: None,
            executor: None,
            policy: None,
        };
        assert_eq!(
            serde_json::to_value(&env).unwrap(),
            json!({"name":"laptop","type":"executor","is_default":true,
                   "tools":[{"name":"shell","description":"d","kind":"core"}]})
        );
    }

    #[test]
    fn policy_shows_every_key_with_null_for_no_limit() {
        let p = PolicyInfo {
            root: Some("/srv/p".into()),
            allow_tools: None,
            read_only: false,
            max_processes: Some(2),
            sandbox: None,
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"root":"/srv/p","allow_tools":null,"read_only":false,"max_processes":2,"sandbox":null})
        );
    }

    #[test]
    fn output_keeps_null_exit_code() {
        let out = OutputResponse {
            chunks: vec![],
            exit_code: None,
            session_alive: true,
            truncated: false,
            lost_bytes: 0,
            lost_bytes_unknown: false,
            next_since: None,
            error: None,
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"chunks":[],"exit_code":null,"session_alive":true,"truncated":false,"lost_bytes":0})
        );
    }

    #[test]
    fn call_tool_result_uses_mcp_names() {
        let r = CallToolResult::text("hi", Some(json!({"a":1})), false);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"content":[{"type":"text","text":"hi"}],"structuredContent":{"a":1},"isError":false})
        );
    }
}
