//! The MCP server at `/mcp`: MCP Streamable HTTP (the `rmcp` crate) in
//! front of the same tool code as the connectors REST API.
//!
//! **Transport.** rmcp's `StreamableHttpService`, stateless, answering
//! plain JSON: every POST carries one JSON-RPC message and is served on its
//! own. No MCP session lives in gateway memory, so nothing is lost on a
//! restart and any replica can answer; the price is no server-to-client
//! stream (GET answers 405), which these tools never need.
//!
//! **Auth.** An axum middleware runs the REST API's [`Caller`] extractor
//! before rmcp sees the request: a missing or bad token is 401 with the
//! error envelope, never a JSON-RPC answer. The caller rides in the HTTP
//! request's extensions, which rmcp hands to the handler in
//! `RequestContext::extensions` as `http::request::Parts`; the handler only
//! ever looks at that caller's workspace. rmcp's own HTTP refusals (Host not
//! allowed, wrong Accept, …) are plain text; the middleware turns them into
//! the envelope too, so every 4xx/5xx body stays the envelope.
//!
//! **Host check.** rmcp refuses `Host` headers outside an allow-list (DNS
//! rebinding). We allow the loopback names, the listen address, and the
//! host of `--public-url`. A gateway listening on every interface
//! (`0.0.0.0`) without `--public-url` cannot know the names it is reached
//! by, so there the check is off: the bearer token, which a rebinding page
//! does not have, is the protection.
//!
//! **Tools.** `tools/list` and the calls read the core tools' one registry,
//! [`tools::CORE_TOOLS`] (name, description, schema, call). `shell`,
//! `read_file`, `write_file`, `apply_patch`, `exec_command`, `copy_path`
//! and `list_dir` go through [`tools::call`] with the arguments unchanged, exactly as `POST
//! /envs/{name}/tool/call`, and return its CallToolResult; only the
//! defaults differ, because MCP's reader is a model (`Via::Mcp`): files and
//! output as text (`encoding` `auto`, `read_output` `utf-8`) and `shell`'s
//! output bounded (`max_output_bytes` 64 KiB). The MCP-only
//! `write_stdin`, `read_output` and `terminate` call the process operations
//! like the `/processes/{sid}/…` routes; `list_environments` answers what
//! envs/list does.
//!
//! **Progress.** A `tools/call` whose `_meta` carries a `progressToken`
//! gets `notifications/progress` while it runs: `shell` and custom tools
//! report their output as it arrives (`progress`: bytes of output so far;
//! `message`: the last line), at most five a second, and the rest just
//! before the answer. rmcp then answers the POST as an SSE stream (the
//! notifications, then the result) instead of one JSON body; `execgate
//! mcp` relays the events as they come. `read_output` answers as soon as
//! output arrives, so it has nothing to report in between.
//!
//! **Cancellation.** A call is cancelled when its client closes the POST
//! (the 2026-07-28 way, and what `execgate mcp` does on a
//! `notifications/cancelled` from its stdio client: rmcp then cancels the
//! handler's token), or when a `notifications/cancelled` POST names it (the
//! way of earlier protocol versions, which the stateless rmcp service
//! ignores: the middleware routes it, see [`Inflight`]; on a replica, one
//! that matches no call here is passed on to the other replicas, see
//! [`pass_on_cancel`]). Either way the
//! call's future is dropped, and a `shell` whose process still runs kills
//! its process group (`ops::tools::shell`'s drop guard).
//!
//! **Tasks** (the 2026-07-28 `io.modelcontextprotocol/tasks` extension,
//! advertised in the capabilities). A `shell` call whose request declares
//! the extension in its `_meta` capabilities runs as a process session and,
//! unless it ends within a second, is answered with a task (its id the
//! session's); `tasks/get`, `tasks/cancel` and `tasks/update` read and
//! write it in the store ([`crate::ops::tasks`]), so any replica answers
//! and a restart loses nothing. An unknown task, or another workspace's,
//! is -32602. Without the declaration a call is answered as before.
//!
//! **Environments.** `environment_id` names an environment; omitted, it is
//! the workspace's default one (or the only one). `copy_path` defaults to
//! its `source_environment_id`. A custom tool is listed once under its
//! own name, whichever environments offer it; omitted, `environment_id` is
//! the default environment if it offers the tool, else the only one that
//! does, else it is required (and the schema says so). A core tool's name
//! always wins over a custom tool's.
//!
//! **Errors**, from the operations' [`crate::ops::Error`] (as [`ApiError`]): an unknown tool is JSON-RPC
//! -32601; `bad_arguments`, `bad_request`, `bad_base64`, `env_not_found` and
//! an unknown `session_id` (or one of another workspace) are -32602 with the
//! field named (`arguments.timeout_ms: …`); a store failure is -32603.
//! Everything else (the executor is offline, a timeout, an expired
//! session, …) is a tool result with `isError: true`, its text the REST
//! error's message ("executor 'laptop' is not connected (last seen …)") and
//! `structuredContent` the REST error envelope.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use execgate_protocol::connectors::{error_code as code, CallToolResult, ConnectorEnv};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, CreateTaskResult, CustomRequest,
    CustomResult, DetailedTask, ErrorCode, ErrorData, GetTaskParams, GetTaskResult, Implementation,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, TaskPayload, TaskStatus, Tool, UpdateTaskParams,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::link::peer;
use crate::ops::environment::environment_argument;
use crate::ops::envs_list as api;
use crate::ops::revocation::Watch;
use crate::ops::state::{AppState, GatewayConfig};
use crate::ops::tasks;
use crate::ops::tools::progress::{with_progress, Progress};
use crate::ops::tools::{self, Call, WorkspaceContext};
use crate::store::audit_log::Via;

const INSTRUCTIONS: &str = "execgate runs commands and edits files on the machines \
    (environments) connected to this workspace. list_environments shows them and the \
    default one; every tool takes environment_id, defaulting to the default environment. \
    Long-running processes: exec_command, then write_stdin / read_output / terminate.";

/// The `/mcp` route, authenticated; merged into the API router.
pub fn router(state: &AppState) -> Router<AppState> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(state.config().max_body_bytes);
    let config = match allowed_hosts(state.config()) {
        Some(hosts) => config.with_allowed_hosts(hosts),
        None => config.disable_allowed_hosts(),
    };
    let inflight = Arc::new(Inflight::default());
    let server = McpServer {
        state: state.clone(),
        inflight: inflight.clone(),
    };
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let router =
        Router::new()
            .route_service("/mcp", service)
            .route_layer(middleware::from_fn_with_state(
                (state.clone(), inflight.clone()),
                authenticate,
            ));
    if state.cluster().is_none() {
        return router;
    }
    // A replica: the cancellations other replicas pass on.
    router.route(
        PEER_CANCEL_PATH,
        axum::routing::post(move |state, headers, body| {
            peer_cancel(state, inflight, headers, body)
        }),
    )
}

/// The `tools/call`s in flight, by (the SHA-256 of their bearer token,
/// their JSON-RPC id), so that a `notifications/cancelled` POST of a
/// protocol version before 2026-07-28 reaches its call: rmcp's stateless
/// service ignores client notifications. Without sessions, an id is only
/// unique per client; two clients sharing a token could have the same id
/// in flight at once, so a cancellation that names an id held by more than
/// one call cancels none.
#[derive(Default)]
pub(crate) struct Inflight {
    calls: Mutex<InflightCalls>,
    next: AtomicU64,
}

/// (token hash, JSON-RPC id) → each call's ticket and cancel switch.
type InflightCalls = HashMap<(String, String), Vec<(u64, tokio::sync::watch::Sender<bool>)>>;

/// A call's entry in [`Inflight`], removed when dropped.
struct InflightEntry {
    inflight: Arc<Inflight>,
    key: (String, String),
    ticket: u64,
    cancelled: tokio::sync::watch::Receiver<bool>,
}

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, InflightCalls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, token: &str, id: &Value) -> InflightEntry {
        let key = (crate::secret::sha256_hex(token.as_bytes()), id.to_string());
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.lock()
            .entry(key.clone())
            .or_default()
            .push((ticket, tx));
        InflightEntry {
            inflight: self.clone(),
            key,
            ticket,
            cancelled: rx,
        }
    }

    /// Cancels the one call of `token` with JSON-RPC id `id`; false if
    /// there is none, or more than one.
    fn cancel(&self, token: &str, id: &Value) -> bool {
        self.cancel_key(crate::secret::sha256_hex(token.as_bytes()), id.to_string())
    }

    /// [`Inflight::cancel`] by the token's SHA-256 (hex) and the id's JSON.
    fn cancel_key(&self, token_hash: String, id: String) -> bool {
        let key = (token_hash, id);
        match self.lock().get(&key).map(Vec::as_slice) {
            Some([(_, tx)]) => tx.send(true).is_ok(),
            _ => false,
        }
    }
}

impl InflightEntry {
    async fn cancelled(&mut self) {
        let _ = self.cancelled.wait_for(|c| *c).await;
    }
}

impl Drop for InflightEntry {
    fn drop(&mut self) {
        let mut calls = self.inflight.lock();
        if let Some(entries) = calls.get_mut(&self.key) {
            entries.retain(|(t, _)| *t != self.ticket);
            if entries.is_empty() {
                calls.remove(&self.key);
            }
        }
    }
}

/// A `notifications/cancelled` message's `requestId`, if `body` is one.
fn cancelled_request_id(body: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Notification {
        method: String,
        #[serde(default)]
        id: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        params: Option<Value>,
    }
    let n: Notification = serde_json::from_slice(body).ok()?;
    if n.method != "notifications/cancelled" || n.id.is_some() {
        return None;
    }
    match n.params?.get("requestId")? {
        id @ (Value::String(_) | Value::Number(_)) => Some(id.clone()),
        _ => None,
    }
}

/// The `Host` names MCP answers to, or None for any (see the module header).
fn allowed_hosts(config: &GatewayConfig) -> Option<Vec<String>> {
    let ip = config.listen.ip();
    if ip.is_unspecified() && config.public_url.is_none() {
        return None;
    }
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !ip.is_unspecified() {
        hosts.push(ip.to_string());
    }
    if let Some(host) = config.public_url.as_deref().and_then(url_host) {
        hosts.push(host);
    }
    Some(hosts)
}

/// `gateway.example` of `https://gateway.example:6060/x`.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority: axum::http::uri::Authority = authority.parse().ok()?;
    Some(authority.host().to_string())
}

/// Authenticates before rmcp sees the request (see the module header).
async fn authenticate(
    State((state, inflight)): State<(AppState, Arc<Inflight>)>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    parts.extensions.insert(caller);
    if parts.method != axum::http::Method::POST || !is_json(&parts.headers) {
        // rmcp answers these (GET: 405; another Content-Type: 415).
        let resp = next.run(Request::from_parts(parts, body)).await;
        return envelope_transport_refusal(resp).await;
    }
    // rmcp answers HTTP 415 to any body it cannot parse as a JSON-RPC
    // message, which an MCP client cannot tell from a wrong Content-Type.
    // JSON-RPC has codes for both cases, so the body is checked here first.
    let limit = state.config().max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the limit of {limit} bytes"),
            )
            .into_response()
        }
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return jsonrpc_refusal(
            Value::Null,
            ErrorCode::PARSE_ERROR,
            format!("Parse error: the body is not JSON: {e}"),
        );
    }
    if let Some(id) = cancelled_request_id(&body) {
        if let Ok(token) = crate::http::extract::bearer_token(&parts.headers) {
            if inflight.cancel(token, &id) {
                tracing::debug!(%id, "MCP call cancelled by notifications/cancelled");
            } else if state.cluster().is_some() {
                // Not here: the call may run on another replica.
                tokio::spawn(pass_on_cancel(
                    state.clone(),
                    crate::secret::sha256_hex(token.as_bytes()),
                    id.to_string(),
                ));
            }
        }
    }
    let resp = next
        .run(Request::from_parts(
            parts,
            axum::body::Body::from(body.clone()),
        ))
        .await;
    if resp.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        // The Content-Type was JSON and so was the body: rmcp refused the
        // message itself (not an object, a batch, no `jsonrpc: "2.0"`, …).
        return jsonrpc_refusal(
            request_id(&body),
            ErrorCode::INVALID_REQUEST,
            "Invalid Request: the body is not a JSON-RPC 2.0 request, notification or response (one message per POST, no batches)".into(),
        );
    }
    envelope_transport_refusal(resp).await
}

/// Where a replica passes on a `notifications/cancelled` that matched no
/// call of its own, to the other replicas (a call runs on the replica its
/// `tools/call` reached, which a load balancer chooses).
pub const PEER_CANCEL_PATH: &str = "/peer/v1/cancel";
/// How long passing a cancellation on to one replica may take.
const PEER_CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The body of [`PEER_CANCEL_PATH`]: the call's token, hashed, and its id.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerCancel {
    /// SHA-256 (hex) of the bearer token of the call.
    token_hash: String,
    /// The JSON-RPC id, as JSON (`3`, `"x"`).
    id: String,
}

/// What a cancellation's peer signature covers (in place of the exe_id of
/// a channel's).
fn cancel_subject(token_hash: &str, id: &str) -> String {
    format!("cancel:{token_hash}:{id}")
}

/// Passes a cancellation on to every other live replica (a heartbeat
/// within 3 s), signed with the cluster secret; at most one of them runs
/// the call. Best effort, like the notification itself.
async fn pass_on_cancel(state: AppState, token_hash: String, id: String) {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let Some(cluster) = state.cluster() else {
        return;
    };
    let peers = match cluster.other_live_replicas(state.store()).await {
        Ok(peers) => peers,
        Err(e) => {
            tracing::debug!("a cancellation not passed on: the replicas cannot be read: {e}");
            return;
        }
    };
    let http = HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(PEER_CANCEL_TIMEOUT)
            .build()
            .unwrap_or_default()
    });
    let subject = cancel_subject(&token_hash, &id);
    let body = PeerCancel { token_hash, id };
    let sends = peers.iter().map(|url| {
        let ts = crate::store::now_ms();
        let signature = peer::sign(
            cluster.config.secret.expose(),
            &cluster.replica_id,
            &subject,
            ts,
        );
        http.post(format!("{url}{PEER_CANCEL_PATH}"))
            .header(peer::REPLICA_HEADER, &cluster.replica_id)
            .header(peer::TIME_HEADER, ts.to_string())
            .header(peer::SIGNATURE_HEADER, signature)
            .json(&body)
            .send()
    });
    for (url, result) in peers
        .iter()
        .zip(futures_util::future::join_all(sends).await)
    {
        match result {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => {
                tracing::debug!(peer = %url, status = %resp.status(), "a cancellation passed on was refused")
            }
            Err(e) => tracing::debug!(peer = %url, "a cancellation could not be passed on: {e}"),
        }
    }
}

/// `POST /peer/v1/cancel` (a replica only): a cancellation another replica
/// passes on, authenticated by the cluster secret; 200 `{"cancelled":
/// bool}`.
async fn peer_cancel(
    State(state): State<AppState>,
    inflight: Arc<Inflight>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<PeerCancel>,
) -> Response {
    let Some(cluster) = state.cluster() else {
        return ApiError::not_found("this gateway is not a replica").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = peer::verify(
        cluster.config.secret.expose(),
        header(peer::REPLICA_HEADER),
        header(peer::TIME_HEADER),
        header(peer::SIGNATURE_HEADER),
        &cancel_subject(&body.token_hash, &body.id),
        crate::store::now_ms(),
    ) {
        tracing::warn!("a cancellation from a peer refused: {why}");
        return ApiError::new(StatusCode::UNAUTHORIZED, code::INVALID_TOKEN, why).into_response();
    }
    let cancelled = inflight.cancel_key(body.token_hash, body.id);
    if cancelled {
        tracing::debug!("MCP call cancelled by a notifications/cancelled another replica received");
    }
    axum::Json(serde_json::json!({ "cancelled": cancelled })).into_response()
}

/// Whether the Content-Type is `application/json` (parameters aside), as
/// rmcp requires.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The message's `id` if it is one JSON-RPC allows (a string or a number),
/// else null, as JSON-RPC 2.0 asks when the id cannot be determined.
fn request_id(body: &[u8]) -> Value {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(default)]
        id: Value,
    }
    match serde_json::from_slice::<Id>(body) {
        Ok(Id {
            id: id @ (Value::String(_) | Value::Number(_)),
        }) => id,
        _ => Value::Null,
    }
}

/// A message that is not a JSON-RPC message at all: HTTP 400, as the MCP
/// Streamable HTTP transport asks of input the server cannot accept, with a
/// JSON-RPC error response as the body. Its `error` object has `code` (the
/// JSON-RPC number) and `message`, the envelope's fields.
fn jsonrpc_refusal(id: Value, code: ErrorCode, message: String) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code.0, "message": message},
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// rmcp's plain-text HTTP refusals as the error envelope. JSON answers
/// (JSON-RPC errors included) pass unchanged.
async fn envelope_transport_refusal(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error_code = match status {
        StatusCode::FORBIDDEN => code::FORBIDDEN,
        StatusCode::METHOD_NOT_ALLOWED => code::METHOD_NOT_ALLOWED,
        StatusCode::PAYLOAD_TOO_LARGE => code::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => code::UNSUPPORTED_MEDIA_TYPE,
        s if s.is_server_error() => code::INTERNAL,
        _ => code::BAD_REQUEST,
    };
    let mut out =
        ApiError::new(status, error_code, format!("MCP transport: {text}")).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

#[derive(Clone)]
struct McpServer {
    state: AppState,
    inflight: Arc<Inflight>,
}

/// The caller the middleware authenticated.
fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    context
        .extensions
        .get::<Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| {
            ErrorData::internal_error(
                "the request reached MCP without an authenticated caller",
                None,
            )
        })
}

/// The request's bearer token (the middleware has checked it).
fn bearer(context: &RequestContext<RoleServer>) -> Option<&str> {
    let parts = context.extensions.get::<Parts>()?;
    crate::http::extract::bearer_token(&parts.headers).ok()
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("execgate", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller(&context)?;
        let envs = api::connected_envs(&self.state, &caller)
            .await
            .map_err(|e| ErrorData::internal_error(e.message, None))?;
        let mut tools: Vec<Tool> = tools::CORE_TOOLS
            .iter()
            .map(|t| Tool::new(t.name, t.description, t.input_schema()))
            .collect();
        tools.extend(
            custom_tools(&envs)
                .iter()
                .map(|(name, offers)| custom_tool(name, offers)),
        );
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&context)?;
        // For a long-poll (read_output with wait_ms), which re-checks it.
        let watch = bearer(&context).map(|t| Watch::new(&self.state, t, &caller.workspace));
        let arguments = request.arguments.unwrap_or_default();
        // A client that declares the tasks extension gets a `shell` call
        // answered with a task (see the module header); any other call, and
        // any call of a client that does not, as before.
        if request.name == "shell"
            && context
                .client_capabilities()
                .is_some_and(|caps| caps.supports_tasks())
        {
            // Closing the request cancels it, until it is answered (the
            // process then ends: `tasks::start_shell`'s guard).
            return tokio::select! {
                answer = self.start_shell_task(&caller, arguments) => answer,
                () = context.ct.cancelled() => Err(request_cancelled()),
            };
        }
        let mut entry = match (bearer(&context), serde_json::to_value(&context.id)) {
            (Some(token), Ok(id)) => Some(self.inflight.register(token, &id)),
            _ => None,
        };
        // On the heap: see `call`'s note on the size of a tool call's future.
        let call = Box::pin(self.call(&caller, &request.name, arguments, watch));
        // Progress, when asked for (see the module docs): updates go out
        // in order, all before the answer.
        let with_progress = async {
            let Some(token) = context.meta.get_progress_token() else {
                return call.await;
            };
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<tools::progress::ProgressUpdate>();
            let peer = context.peer.clone();
            let forward = async move {
                while let Some(update) = rx.recv().await {
                    let param =
                        ProgressNotificationParam::new(token.clone(), update.output_bytes as f64)
                            .with_message(update.message);
                    if let Err(e) = peer.notify_progress(param).await {
                        tracing::debug!("MCP progress notification not sent: {e}");
                    }
                }
            };
            let (outcome, ()) = tokio::join!(with_progress(Progress(tx), call), forward);
            outcome
        };
        // Cancelled: the call's future is dropped (a running shell's
        // process group is killed).
        let cancelled = async {
            match entry.as_mut() {
                Some(entry) => entry.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            outcome = with_progress => outcome,
            () = context.ct.cancelled() => return Err(request_cancelled()),
            () = cancelled => return Err(request_cancelled()),
        };
        answer(outcome).map(Into::into)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let caller = caller(&context)?;
        let task = tasks::get(&self.state, &caller, &request.task_id)
            .await
            .map_err(task_error)?;
        Ok(GetTaskResult::new(detailed_task(task)?))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let caller = caller(&context)?;
        tasks::update(&self.state, &caller, &request.task_id)
            .await
            .map_err(task_error)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let caller = caller(&context)?;
        tasks::cancel(&self.state, &caller, &request.task_id)
            .await
            .map_err(task_error)
    }

    /// rmcp parses a request whose method it knows but whose params do not
    /// fit (`tools/call` with `name: 5`) as a custom request of that method;
    /// JSON-RPC calls that -32602 Invalid params, not -32601.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        Err(custom_request_error(&request.method, request.params))
    }
}

/// A task's metadata on the wire (its status is set from the payload).
fn wire_task(task: &tasks::Task) -> rmcp::model::Task {
    let mut out = rmcp::model::Task::new(
        task.task_id.clone(),
        TaskStatus::Working,
        crate::ops::environment::rfc3339(task.created_at_ms),
        crate::ops::environment::rfc3339(task.updated_at_ms),
    )
    .with_ttl_ms(task.ttl_ms)
    .with_poll_interval_ms(task.poll_interval_ms);
    if let Some(message) = &task.status_message {
        out = out.with_status_message(message.clone());
    }
    out
}

/// `tasks/get`'s answer: the task with its result once it ended. A call
/// that ends in a JSON-RPC error (as `tools/call` would answer it) is a
/// `failed` task; a result, `isError` ones included, a `completed` one.
fn detailed_task(task: tasks::Task) -> Result<DetailedTask, ErrorData> {
    let wire = wire_task(&task);
    let object = |v: Value| match v {
        Value::Object(map) => Ok(map),
        other => Err(ErrorData::internal_error(
            format!("a task's payload is not an object: {other}"),
            None,
        )),
    };
    let payload = match task.state {
        tasks::TaskState::Working => TaskPayload::Working,
        tasks::TaskState::Cancelled => TaskPayload::Cancelled,
        tasks::TaskState::Done(outcome) => match answer(outcome.map_err(ApiError::from)) {
            Ok(result) => TaskPayload::Completed {
                result: object(serde_json::to_value(result).unwrap_or_default())?,
            },
            Err(error) => TaskPayload::Failed {
                error: object(serde_json::to_value(error).unwrap_or_default())?,
            },
        },
    };
    Ok(DetailedTask::new(wire, payload))
}

/// A `tasks/*` request's error: an unknown task (or another workspace's,
/// or an expired one) is -32602, as the specification asks; a store that
/// cannot be reached, -32603.
fn task_error(e: crate::ops::Error) -> ErrorData {
    let e = ApiError::from(e);
    let data = Some(json!(e.envelope()));
    match e.code {
        code::SESSION_NOT_FOUND => ErrorData::invalid_params(e.message, data),
        _ => ErrorData::internal_error(e.message, data),
    }
}

/// The error of a cancelled call (its client no longer waits for it).
fn request_cancelled() -> ErrorData {
    ErrorData::new(ErrorCode::INTERNAL_ERROR, "the request was cancelled", None)
}

/// The MCP methods a client may call that rmcp parses into typed requests:
/// a request for one of them that reaches `on_custom_request` has params
/// that did not fit.
const KNOWN_CLIENT_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "completion/complete",
    "logging/setLevel",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "resources/directory/read",
    "subscriptions/listen",
    "tools/call",
    "tools/list",
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
    "skills/list",
    "skills/get",
];

/// -32602 for a known method whose params did not parse (naming the field
/// for the methods this server serves), else -32601.
fn custom_request_error(method: &str, params: Option<Value>) -> ErrorData {
    if !KNOWN_CLIENT_METHODS.contains(&method) {
        return ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("method not found: {method:?}"),
            None,
        );
    }
    /// `params.name: invalid type: …`, or `params: …` at the root.
    fn why<T: serde::de::DeserializeOwned>(params: Option<Value>) -> Option<String> {
        let params = params.unwrap_or(Value::Null);
        serde_path_to_error::deserialize::<_, T>(params)
            .err()
            .map(|e| {
                let at_root = matches!(e.path().to_string().as_str(), "." | "");
                let msg = crate::http::extract::describe(e.path(), e.inner());
                if at_root {
                    format!("params: {msg}")
                } else {
                    format!("params.{msg}")
                }
            })
    }
    let detail = match method {
        "tools/call" => why::<CallToolRequestParams>(params),
        "initialize" => why::<rmcp::model::InitializeRequestParams>(params),
        "tools/list" => why::<Option<PaginatedRequestParams>>(params),
        "tasks/get" => why::<GetTaskParams>(params),
        "tasks/cancel" => why::<CancelTaskParams>(params),
        "tasks/update" => why::<UpdateTaskParams>(params),
        _ => None,
    };
    ErrorData::invalid_params(
        match detail {
            Some(d) => format!("invalid params for {method}: {d}"),
            None => format!("invalid params for {method}"),
        },
        None,
    )
}

impl McpServer {
    async fn call(
        &self,
        caller: &Caller,
        name: &str,
        arguments: Map<String, Value>,
        watch: Option<Watch>,
    ) -> Result<CallToolResult, ApiError> {
        let state = &self.state;
        let Some(core) = tools::core_tool(name) else {
            return self.call_custom(caller, name, arguments).await;
        };
        match core.call {
            Call::OnEnvironment(_) => {
                let env = match environment_arg(&arguments)? {
                    Some(env) => env,
                    None if name == "copy_path" => match arguments.get("source_environment_id") {
                        Some(Value::String(src)) => src.clone(),
                        // Let the REST parser name the problem.
                        _ => default_environment(state, caller).await?,
                    },
                    None => default_environment(state, caller).await?,
                };
                let link = environment_argument(state, caller, &env);
                // Boxed: a tool call's future is large (in debug builds it overflowed
                // a worker's 2 MiB stack once progress and cancellation wrapped it).
                Ok(Box::pin(tools::call(
                    state,
                    caller,
                    Via::Mcp,
                    &env,
                    link,
                    name,
                    arguments,
                ))
                .await?)
            }
            Call::InWorkspace(call) => {
                let ctx = WorkspaceContext {
                    state,
                    caller,
                    via: Via::Mcp,
                    watch,
                };
                Ok(call(ctx, arguments).await?)
            }
        }
    }

    /// `shell` as a task (the tasks extension; `crate::ops::tasks`): the
    /// process starts as an exec_command session and the call answers with
    /// the task, or with the result when the command ended within a second
    /// or the executor refused to start it.
    async fn start_shell_task(
        &self,
        caller: &Caller,
        arguments: Map<String, Value>,
    ) -> Result<CallToolResponse, ErrorData> {
        let state = &self.state;
        let started = async {
            let env = match environment_arg(&arguments)? {
                Some(env) => env,
                None => default_environment(state, caller).await?,
            };
            let link = environment_argument(state, caller, &env);
            Ok::<_, ApiError>(
                Box::pin(tasks::start_shell(state, caller, &env, link, arguments)).await?,
            )
        }
        .await;
        match started {
            Ok(tasks::Started::Task(task)) => Ok(CallToolResponse::Task(CreateTaskResult::new(
                wire_task(&task),
            ))),
            Ok(tasks::Started::Answered(result)) => answer(Ok(result)).map(Into::into),
            Err(e) => answer(Err(e)).map(Into::into),
        }
    }

    /// A custom tool of one of the workspace's connected environments.
    async fn call_custom(
        &self,
        caller: &Caller,
        name: &str,
        arguments: Map<String, Value>,
    ) -> Result<CallToolResult, ApiError> {
        let state = &self.state;
        let env = match environment_arg(&arguments)? {
            Some(env) => env,
            None => {
                let envs = api::connected_envs(state, caller).await?;
                let customs = custom_tools(&envs);
                let Some(offers) = customs.get(name) else {
                    let mut known: Vec<String> = tools::CORE_TOOLS
                        .iter()
                        .map(|t| t.name.to_string())
                        .collect();
                    known.extend(customs.into_keys());
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        code::UNKNOWN_TOOL,
                        format!(
                            "unknown tool {name:?}; this workspace has: {}",
                            known.join(", ")
                        ),
                    ));
                };
                match home(offers) {
                    Some(offer) => offer.env.clone(),
                    None => {
                        let names: Vec<&str> = offers.iter().map(|o| o.env.as_str()).collect();
                        return Err(ApiError::bad_arguments(format!(
                            "arguments.environment_id: is required: tool {name:?} is offered by {} and the default environment does not offer it",
                            names.join(", ")
                        )));
                    }
                }
            }
        };
        // With an explicit environment_id, the REST path decides: it knows
        // the environment's tools, and answers unknown_tool when it lacks it.
        let link = environment_argument(state, caller, &env);
        // Boxed: a tool call's future is large (in debug builds it overflowed
        // a worker's 2 MiB stack once progress and cancellation wrapped it).
        Ok(Box::pin(tools::call(
            state,
            caller,
            Via::Mcp,
            &env,
            link,
            name,
            arguments,
        ))
        .await?)
    }
}

/// `arguments.environment_id`, if given.
fn environment_arg(arguments: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match arguments.get("environment_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_arguments(format!(
            "arguments.environment_id: must be an environment's name (a non-empty string), not {other}"
        ))),
    }
}

/// The workspace's default environment: the one marked default, or the
/// only one.
async fn default_environment(state: &AppState, caller: &Caller) -> Result<String, ApiError> {
    let rows = state
        .store()
        .list_executors(Some(&caller.workspace))
        .await?;
    if let Some(row) = rows.iter().find(|r| r.is_default) {
        return Ok(row.name.clone());
    }
    match rows.as_slice() {
        [only] => Ok(only.name.clone()),
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::ENV_NOT_FOUND,
            format!(
                "arguments.environment_id: workspace {:?} has no environments yet",
                caller.workspace
            ),
        )),
        many => Err(ApiError::bad_arguments(format!(
            "arguments.environment_id: is required: workspace {:?} has no default environment; name one of: {}",
            caller.workspace,
            many.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The gateway's outcome as MCP's (the mapping is in the module header).
fn answer(
    outcome: Result<CallToolResult, ApiError>,
) -> Result<rmcp::model::CallToolResult, ErrorData> {
    let result = match outcome {
        Ok(result) => result,
        Err(e) => {
            let data = Some(json!(e.envelope()));
            match e.code {
                code::UNKNOWN_TOOL => {
                    return Err(ErrorData::new(ErrorCode::METHOD_NOT_FOUND, e.message, data))
                }
                code::BAD_ARGUMENTS
                | code::BAD_REQUEST
                | code::BAD_JSON
                | code::BAD_BASE64
                | code::ENV_NOT_FOUND
                | code::SESSION_NOT_FOUND => {
                    return Err(ErrorData::invalid_params(e.message, data))
                }
                code::INTERNAL => return Err(ErrorData::internal_error(e.message, data)),
                _ => CallToolResult::text(e.message.clone(), data, true),
            }
        }
    };
    // The REST type is already an MCP CallToolResult on the wire. 2026-07-28
    // wants `resultType`; rmcp drops it again for older protocol versions.
    let mut result: rmcp::model::CallToolResult = serde_json::to_value(&result)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            ErrorData::internal_error(format!("tool result does not convert: {e}"), None)
        })?;
    result.result_type = Some(rmcp::model::ResultType::COMPLETE);
    Ok(result)
}

/// One environment's offer of a custom tool.
struct Offer {
    env: String,
    is_default: bool,
    description: String,
    schema: Value,
}

/// The connected environments' custom tools by name, each with the
/// environments that offer it (in name order). Names of core MCP tools are
/// left out: a core tool always wins.
fn custom_tools(envs: &[ConnectorEnv]) -> BTreeMap<String, Vec<Offer>> {
    let mut out: BTreeMap<String, Vec<Offer>> = BTreeMap::new();
    for env in envs {
        for tool in &env.tools {
            if tool.kind != "custom" || tools::core_tool(&tool.name).is_some() {
                continue;
            }
            out.entry(tool.name.clone()).or_default().push(Offer {
                env: env.name.clone(),
                is_default: env.is_default,
                description: tool.description.clone(),
                schema: tool
                    .input_schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"})),
            });
        }
    }
    out
}

/// Where a custom tool runs when `environment_id` is omitted.
fn home(offers: &[Offer]) -> Option<&Offer> {
    offers.iter().find(|o| o.is_default).or(match offers {
        [only] => Some(only),
        _ => None,
    })
}

/// A custom tool as MCP lists it: the schema of the environment it runs in
/// by default (else the first that offers it) plus `environment_id`.
fn custom_tool(name: &str, offers: &[Offer]) -> Tool {
    let shown = home(offers).unwrap_or(&offers[0]);
    let envs: Vec<&str> = offers.iter().map(|o| o.env.as_str()).collect();
    let mut input_schema = match &shown.schema {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    input_schema.insert("type".into(), json!("object"));
    let properties = input_schema
        .entry("properties")
        .or_insert_with(|| json!({}));
    if let Value::Object(properties) = properties {
        // A tool whose own schema declares environment_id keeps its meaning.
        properties.entry("environment_id").or_insert_with(|| {
            json!({
                "type": "string",
                "enum": envs,
                "description": "The environment to run in. Default: the default environment if it offers this tool, else the only one that does."
            })
        });
    }
    if home(offers).is_none() {
        let required = input_schema.entry("required").or_insert_with(|| json!([]));
        if let Value::Array(required) = required {
            if !required.iter().any(|r| r == "environment_id") {
                required.push(json!("environment_id"));
            }
        }
    }
    let mut description = shown.description.clone();
    if offers.len() > 1 {
        description.push_str(&format!(
            " (offered by {}: environment_id picks one)",
            envs.join(", ")
        ));
    }
    Tool::new(name.to_string(), description, input_schema)
}

#[cfg(test)]
mod tests;
