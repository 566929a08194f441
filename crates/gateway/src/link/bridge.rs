//! One bridge session: relays a capability-token holder's JSON-RPC frames to
//! an executor over the gateway's own link, and the answers back.
//!
//! - **Request ids.** Each client request is sent with a fresh link id
//!   ([`Link::request_raw`]) and answered with the client's own id (any
//!   string or number, echoed unchanged), so the gateway's requests and
//!   every bridge's can never collide on the link.
//! - **Process ids.** The session has a random key; a client's process id
//!   `p` is `br-<key>-p` on the executor, rewritten on the way in and back
//!   in answers, error messages and notifications. The session remembers
//!   the ids its client started and refuses (-32600, like the executor's
//!   "unknown process") any process method naming another, so the gateway's
//!   processes and other bridges' are invisible. Only notifications of its
//!   own processes reach it (the link's [`Tap`]).
//! - **Methods.** `process/*` (start, read, write, signal, terminate,
//!   closeStdin, resize) and `fs/*` are forwarded; fs paths are scoped by
//!   the executor's own policy, as for the REST tools. `initialize` is
//!   answered locally (the link is initialized already; the answer carries
//!   the executor's `environmentInfo` and the session's own id), the
//!   `initialized` notification is ignored, `bridge/renewToken {token}`
//!   extends the session (below), anything else is -32601.
//! - **Deadlines.** Every forwarded request has a gateway-side deadline
//!   ([`deadline`]): `LinkConfig::bridge_request_timeout`
//!   (`--bridge-request-timeout-secs`, 60 s, the REST calls' own), a
//!   `process/read` its `waitMs` on top, as the REST `/output` long-poll.
//!   Past it the client gets -32603 with `data.code` `gateway_timeout`
//!   (a link that dropped: -32603 with `executor_unavailable`, then the
//!   close), the link forgets the id, and a late answer is dropped. An
//!   executor that is merely slow may still act on the request.
//! - **Lifetime.** The session ends when the client goes, when the token
//!   expires (close 4401) unless renewed, when its turn is revoked (close
//!   4403; through this gateway at once, otherwise seen by a store check
//!   every `bridge_recheck`), or when the executor link drops (close 1013).
//!   Then its still-running processes are terminated, and
//!   [`on_session_end`] gets the summary.
//! - **Renewal.** The gateway holds no capability token of its own; a long
//!   session stays alive only while its holder renews: `bridge/renewToken
//!   {token}` with a fresh token of the same workspace and turn moves the
//!   session's end to that token's `exp`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use execgate_protocol::connectors::error_code;
use execgate_protocol::exec::method;
use execgate_protocol::jsonrpc::{code as rpc_code, RpcError};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use crate::link::host::Host;
use crate::link::{Link, LinkError, Tap, TAP_PREFIX};
use crate::store::audit_log::AuditEntry;
use crate::store::now_ms;

/// Client requests in flight at once; past it the session stops reading
/// the socket until one is answered.
const MAX_IN_FLIGHT: usize = 64;
/// Frames waiting for the client's socket.
const OUT_QUEUE: usize = 256;
/// Notifications waiting for the session; more are dropped (the client
/// catches up with `process/read`, as with the executor's own queue).
const TAP_CAPACITY: usize = 1024;
/// How long the end of a session waits for a stuck client socket.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The longest `waitMs` of a `process/read` that its deadline allows for
/// (our executor waits at most 30 s).
const MAX_READ_WAIT: Duration = Duration::from_secs(600);

/// WebSocket close codes the session ends with.
pub mod close_code {
    /// The capability token expired (and was not renewed).
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// The token's turn was revoked.
    pub const TURN_REVOKED: u16 = 4403;
    /// The executor link dropped; reconnect when it is back.
    pub const EXECUTOR_GONE: u16 = 1013;
}

/// The process methods a bridge forwards; each names a `processId`.
const PROCESS_METHODS: &[&str] = &[
    method::PROCESS_START,
    method::PROCESS_READ,
    method::PROCESS_WRITE,
    method::PROCESS_SIGNAL,
    method::PROCESS_TERMINATE,
    method::PROCESS_CLOSE_STDIN,
    method::PROCESS_RESIZE,
];

/// The bridge's own method: renew the session with a fresh token.
pub const RENEW_TOKEN: &str = "bridge/renewToken";

/// What a bridge session did, handed to [`on_session_end`].
#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub workspace: String,
    pub user_id: Option<String>,
    pub exe_id: String,
    pub turn_id: String,
    /// The session's key (its process ids are `br-<key>-…` on the executor).
    pub key: String,
    pub duration: Duration,
    /// Requests the client sent (answered locally, forwarded or refused).
    pub methods_called: u64,
    /// Bytes of the client's frames, and of the frames sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Processes still running at the end, terminated by the gateway.
    pub processes_terminated: usize,
    pub end: End,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    ClientGone,
    TokenExpired,
    TurnRevoked,
    LinkLost(String),
}

/// Closes a bridge session's audit record (opened before the upgrade, see
/// `bridge::Grant::audit`; none under `skip_audit`): its bytes each way, and
/// why it ended. The session is one record, kind and method `bridge`, its
/// turn id as `session_id`. Runs on the session's task after the socket is
/// closed; the write is queued, never awaited.
pub fn on_session_end(summary: &SessionSummary, audit: Option<AuditEntry>) {
    tracing::info!(
        workspace = %summary.workspace,
        user = summary.user_id.as_deref().unwrap_or("-"),
        exe_id = %summary.exe_id,
        turn_id = %summary.turn_id,
        key = %summary.key,
        duration_ms = summary.duration.as_millis() as u64,
        methods = summary.methods_called,
        bytes_in = summary.bytes_in,
        bytes_out = summary.bytes_out,
        terminated = summary.processes_terminated,
        end = ?summary.end,
        "bridge session ended"
    );
    let Some(mut entry) = audit else { return };
    entry.record().add_bytes_in(summary.bytes_in);
    entry.record().add_bytes_out(summary.bytes_out);
    match &summary.end {
        End::ClientGone => entry.succeed(),
        End::TokenExpired => entry.fail(error_code::CAPTOKEN_EXPIRED),
        End::TurnRevoked => entry.fail(error_code::TURN_REVOKED),
        End::LinkLost(_) => entry.fail(error_code::EXECUTOR_UNAVAILABLE),
    }
    // Dropping the entry submits it.
}

/// What the session tasks share.
struct Shared {
    link: Arc<Link>,
    /// `br-<key>-`
    prefix: String,
    /// The client's process ids this session started → still running.
    procs: Mutex<HashMap<String, bool>>,
    out: mpsc::Sender<Out>,
    bytes_out: AtomicU64,
    /// `LinkConfig::bridge_request_timeout`.
    request_timeout: Duration,
}

enum Out {
    Frame(String),
    /// Send this close frame (if any), then close the socket.
    Close(Option<CloseFrame>),
}

/// What a capability token grants a bridge session (its claims, as the
/// auth layer verified them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnClaims {
    pub turn_id: String,
    pub workspace_id: String,
    pub user_id: Option<String>,
    /// Seconds since the epoch.
    pub exp: i64,
    pub skip_audit: Option<bool>,
}

/// What an authorized bridge request may use.
pub struct Grant {
    pub claims: TurnClaims,
    pub link: Arc<Link>,
    /// The session's audit record, opened before the upgrade so that
    /// `--audit fail-closed` can refuse the session (503) when it cannot be
    /// written; `None` for a token with the `skip_audit` claim.
    pub audit: Option<AuditEntry>,
}

/// Serves one upgraded bridge socket until the session ends.
pub(crate) async fn run(state: Host, grant: Grant, socket: WebSocket) {
    let started = Instant::now();
    let Grant {
        claims,
        link,
        audit,
    } = grant;
    let key = crate::secret::random_id("", 6);
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let shared = Arc::new(Shared {
        link: link.clone(),
        prefix: format!("{TAP_PREFIX}{key}-"),
        procs: Mutex::new(HashMap::new()),
        out: out_tx.clone(),
        bytes_out: AtomicU64::new(0),
        request_timeout: state.config().bridge_request_timeout,
    });

    let ping_every = state.config().ping_interval;
    let writer_shared = shared.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        loop {
            tokio::select! {
                out = out_rx.recv() => match out {
                    Some(Out::Frame(text)) => {
                        writer_shared.bytes_out.fetch_add(text.len() as u64, Ordering::Relaxed);
                        if sink.send(WsMessage::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    Some(Out::Close(frame)) => {
                        if let Some(frame) = frame {
                            let _ = sink.send(WsMessage::Close(Some(frame))).await;
                        }
                        break;
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    let forwarder = tokio::spawn(forward_notifications(
        shared.clone(),
        link.tap(&key, TAP_CAPACITY),
    ));

    let mut session = Session {
        state: state.clone(),
        shared: shared.clone(),
        claims,
        key: key.clone(),
        exp_ms: 0,
        tasks: JoinSet::new(),
        methods: 0,
        bytes_in: 0,
    };
    session.exp_ms = session.claims.exp.saturating_mul(1000);
    let end = session.serve(&mut stream).await;

    // Stop relaying: answers still in flight are dropped (their link ids
    // forgotten), and so are notifications.
    session.tasks.abort_all();
    forwarder.abort();
    let close = match &end {
        End::ClientGone => None,
        End::TokenExpired => Some(close_frame(
            close_code::TOKEN_EXPIRED,
            "capability token expired; renew it with bridge/renewToken before exp",
        )),
        End::TurnRevoked => Some(close_frame(
            close_code::TURN_REVOKED,
            "the capability token's turn was revoked",
        )),
        End::LinkLost(reason) => Some(close_frame(
            close_code::EXECUTOR_GONE,
            &format!("executor '{}' disconnected: {reason}", link.name),
        )),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, out_tx.send(Out::Close(close))).await;
    drop(out_tx);
    drop(stream);
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }

    let running: Vec<String> = shared
        .procs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, running)| **running)
        .map(|(pid, _)| format!("{}{pid}", shared.prefix))
        .collect();
    let processes_terminated = if link.is_closed() { 0 } else { running.len() };
    if processes_terminated > 0 {
        // The processes belonged to this session, which nobody can resume:
        // left running they would be unreachable.
        let link = link.clone();
        tokio::spawn(async move {
            for pid in running {
                if let Err(e) = link
                    .request_value(
                        method::PROCESS_TERMINATE,
                        json!({ "processId": pid }),
                        Duration::from_secs(5),
                    )
                    .await
                {
                    tracing::warn!(exe_id = %link.exe_id, "could not terminate bridged process {pid}: {e}");
                }
            }
        });
    }

    let summary = SessionSummary {
        workspace: session.claims.workspace_id.clone(),
        user_id: session.claims.user_id.clone(),
        exe_id: link.exe_id.clone(),
        turn_id: session.claims.turn_id.clone(),
        key,
        duration: started.elapsed(),
        methods_called: session.methods,
        bytes_in: session.bytes_in,
        bytes_out: shared.bytes_out.load(Ordering::Relaxed),
        processes_terminated,
        end,
    };
    on_session_end(&summary, audit);
}

/// A close frame; the reason is cut to the 123 bytes a close frame holds.
fn close_frame(code: u16, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_string().into(),
    }
}

/// The session's notifications, rewritten back to the client's ids.
async fn forward_notifications(shared: Arc<Shared>, mut tap: Tap) {
    while let Some((method, mut params)) = tap.recv().await {
        if let Some(pid) = params.get("processId").and_then(Value::as_str) {
            let Some(own) = pid.strip_prefix(&shared.prefix) else {
                continue;
            };
            let own = own.to_string();
            if method == method::PROCESS_CLOSED {
                if let Some(running) = shared.procs.lock().unwrap().get_mut(&own) {
                    *running = false;
                }
            }
            params["processId"] = Value::String(own);
        }
        let frame = json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string();
        if shared.out.send(Out::Frame(frame)).await.is_err() {
            return;
        }
    }
}

struct Session {
    state: Host,
    shared: Arc<Shared>,
    claims: TurnClaims,
    key: String,
    /// When the session's token expires, Unix ms.
    exp_ms: i64,
    tasks: JoinSet<()>,
    methods: u64,
    bytes_in: u64,
}

/// What to do with one client frame.
#[derive(Debug, PartialEq)]
enum Incoming {
    /// Answer this at once (a local answer or a refusal).
    Reply(Value),
    /// Send to the executor; answer with `id`. `fresh_start` is the client
    /// process id a `process/start` just claimed (released if it fails).
    Forward {
        id: Value,
        method: String,
        params: Value,
        fresh_start: Option<String>,
    },
    Initialize(Value),
    Renew {
        id: Value,
        token: String,
    },
    /// Notifications and stray responses: nothing to answer.
    Ignore,
}

impl Session {
    async fn serve(&mut self, stream: &mut SplitStream<WebSocket>) -> End {
        let mut revocations = Some(self.state.revoked_turns().subscribe());
        let mut recheck = tokio::time::interval(self.state.config().bridge_recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        let expiry = tokio::time::sleep(self.until_exp());
        tokio::pin!(expiry);
        let link = self.shared.link.clone();
        loop {
            tokio::select! {
                frame = stream.next(), if self.tasks.len() < MAX_IN_FLIGHT => {
                    let msg = match frame {
                        Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => m,
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return End::ClientGone,
                        Some(Ok(_)) => continue,
                    };
                    let bytes: &[u8] = match &msg {
                        WsMessage::Text(t) => t.as_bytes(),
                        WsMessage::Binary(b) => b,
                        _ => unreachable!("only data frames get here"),
                    };
                    self.bytes_in += bytes.len() as u64;
                    let incoming = classify(bytes, &self.shared.prefix, &self.shared.procs);
                    if !matches!(incoming, Incoming::Ignore) {
                        self.methods += 1;
                    }
                    match incoming {
                        Incoming::Ignore => {}
                        Incoming::Reply(frame) => self.send(frame).await,
                        Incoming::Initialize(id) => {
                            let frame = response(id, Ok(self.initialize_result()));
                            self.send(frame).await;
                        }
                        Incoming::Forward { id, method, params, fresh_start } => {
                            self.tasks.spawn(forward(self.shared.clone(), id, method, params, fresh_start));
                        }
                        Incoming::Renew { id, token } => {
                            let (answer, end) = self.renew(&token).await;
                            self.send(response(id, answer)).await;
                            if let Some(end) = end {
                                return end;
                            }
                            expiry.as_mut().reset(tokio::time::Instant::now() + self.until_exp());
                        }
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = link.closed() => {
                    return End::LinkLost(link.close_reason().unwrap_or("link closed").to_string());
                }
                _ = &mut expiry => {
                    if now_ms() >= self.exp_ms {
                        return End::TokenExpired;
                    }
                    expiry.as_mut().reset(tokio::time::Instant::now() + self.until_exp());
                }
                _ = recheck.tick() => {
                    if self.revoked_in_store().await {
                        return End::TurnRevoked;
                    }
                }
                r = recv_revocation(&mut revocations) => match r {
                    Ok(turn) if turn == self.claims.turn_id => return End::TurnRevoked,
                    Ok(_) => {}
                    // Missed some: ask the store.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.revoked_in_store().await {
                            return End::TurnRevoked;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => revocations = None,
                },
            }
        }
    }

    fn until_exp(&self) -> Duration {
        Duration::from_millis((self.exp_ms - now_ms()).max(0) as u64)
    }

    async fn revoked_in_store(&self) -> bool {
        match self.state.store().turn_revoked(&self.claims.turn_id).await {
            Ok(revoked) => revoked,
            Err(e) => {
                // The store is down: keep the session; the next check retries.
                tracing::warn!("bridge: could not check turn {}: {e}", self.claims.turn_id);
                false
            }
        }
    }

    async fn send(&self, frame: Value) {
        let _ = self.shared.out.send(Out::Frame(frame.to_string())).await;
    }

    /// `initialize`, answered from the link's handshake.
    fn initialize_result(&self) -> Value {
        let info = self
            .shared
            .link
            .handshake()
            .and_then(|h| serde_json::to_value(&h.info).ok())
            .unwrap_or(Value::Null);
        json!({
            "sessionId": format!("{TAP_PREFIX}{}", self.key),
            "environmentInfo": info,
        })
    }

    /// `bridge/renewToken`: a fresh token of the same workspace and turn
    /// moves the session's end to its `exp`. Returns the answer, and the
    /// end of the session when the turn turns out to be revoked.
    async fn renew(&mut self, token: &str) -> (Result<Value, RpcError>, Option<End>) {
        let claims = match self.state.verify_captoken(token) {
            Ok(c) => c,
            Err(e) => return (Err(RpcError::invalid_params(e)), None),
        };
        if claims.workspace_id != self.claims.workspace_id || claims.turn_id != self.claims.turn_id
        {
            return (
                Err(RpcError::invalid_params(format!(
                    "a renewal token must be for workspace {:?} and turn {:?}, like the session's",
                    self.claims.workspace_id, self.claims.turn_id
                ))),
                None,
            );
        }
        if self.revoked_in_store().await {
            return (
                Err(RpcError::invalid_params("the turn was revoked")),
                Some(End::TurnRevoked),
            );
        }
        self.exp_ms = claims.exp.saturating_mul(1000);
        self.claims.exp = claims.exp;
        (Ok(json!({ "exp": claims.exp })), None)
    }
}

async fn recv_revocation(
    rx: &mut Option<broadcast::Receiver<String>>,
) -> Result<String, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends one client request over the link and answers it with the
/// client's id.
async fn forward(
    shared: Arc<Shared>,
    id: Value,
    method: String,
    params: Value,
    fresh_start: Option<String>,
) {
    let timeout = deadline(&method, &params, shared.request_timeout);
    let answer = match shared.link.request_raw(&method, params, timeout).await {
        Ok(Ok(mut result)) => {
            strip_process_id(&mut result, &shared.prefix);
            Ok(result)
        }
        Ok(Err(mut e)) => {
            if let Some(pid) = fresh_start {
                shared.procs.lock().unwrap().remove(&pid);
            }
            e.message = e.message.replace(&shared.prefix, "");
            Err(e)
        }
        // The started process may yet run: its id stays claimed, so the
        // session's end terminates it.
        Err(e @ LinkError::Timeout { .. }) => Err(gateway_error(&e, error_code::GATEWAY_TIMEOUT)),
        // The link is gone: the session closes with 1013 right after.
        Err(e) => Err(gateway_error(&e, error_code::EXECUTOR_UNAVAILABLE)),
    };
    let _ = shared
        .out
        .send(Out::Frame(response(id, answer).to_string()))
        .await;
}

/// The gateway-side deadline of a forwarded request: `default`, and a
/// `process/read`'s `waitMs` (at most [`MAX_READ_WAIT`]) on top.
pub(crate) fn deadline(method: &str, params: &Value, default: Duration) -> Duration {
    let wait = match method {
        method::PROCESS_READ => params.get("waitMs").and_then(Value::as_u64).unwrap_or(0),
        _ => 0,
    };
    default + Duration::from_millis(wait).min(MAX_READ_WAIT)
}

/// The gateway's own failure of a forwarded request: -32603, with the
/// REST API's error code (`gateway_timeout`, `executor_unavailable`) as
/// `data.code`.
pub(crate) fn gateway_error(e: &LinkError, code: &str) -> RpcError {
    let mut error = RpcError::internal(e.to_string());
    error.data = Some(json!({ "code": code }));
    error
}

fn strip_process_id(v: &mut Value, prefix: &str) {
    if let Some(Value::String(pid)) = v.get_mut("processId") {
        if let Some(own) = pid.strip_prefix(prefix) {
            *pid = own.to_string();
        }
    }
}

/// A JSON-RPC response with the client's id, as given.
fn response(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
    }
}

/// Decides what one client frame is, rewriting process ids into the
/// session's namespace (`prefix`) and claiming the ids `process/start`
/// names in `procs` (locked only for that, not while parsing).
fn classify(frame: &[u8], prefix: &str, procs: &Mutex<HashMap<String, bool>>) -> Incoming {
    let refuse = |id: Value, code: i64, message: String| {
        Incoming::Reply(response(id, Err(RpcError::new(code, message))))
    };
    let value: Value = match serde_json::from_slice(frame) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                Value::Null,
                rpc_code::PARSE_ERROR,
                format!("invalid JSON: {e}"),
            )
        }
    };
    let mut obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return refuse(
                Value::Null,
                rpc_code::INVALID_REQUEST,
                "batches are not supported; send one request per frame".into(),
            )
        }
        _ => {
            return refuse(
                Value::Null,
                rpc_code::INVALID_REQUEST,
                "a JSON-RPC message must be an object".into(),
            )
        }
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    let Some(method) = obj.remove("method") else {
        // A response: the executor never calls the client through us.
        return Incoming::Ignore;
    };
    if id.is_null() {
        // A notification (`initialized`, or anything else): no answer.
        return Incoming::Ignore;
    }
    if !(id.is_string() || id.is_number()) {
        return refuse(
            Value::Null,
            rpc_code::INVALID_REQUEST,
            "id must be a string or a number".into(),
        );
    }
    let Value::String(method) = method else {
        return refuse(
            id,
            rpc_code::INVALID_REQUEST,
            "method must be a string".into(),
        );
    };
    let mut params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p) => p,
    };
    match method.as_str() {
        method::INITIALIZE => Incoming::Initialize(id),
        RENEW_TOKEN => match params.get("token").and_then(Value::as_str) {
            Some(token) => Incoming::Renew {
                id,
                token: token.to_string(),
            },
            None => refuse(
                id,
                rpc_code::INVALID_PARAMS,
                "params.token (a capability token) is required".into(),
            ),
        },
        m if PROCESS_METHODS.contains(&m) => {
            let Some(pid) = params
                .get("processId")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
            else {
                return refuse(
                    id,
                    rpc_code::INVALID_PARAMS,
                    "params.processId (a non-empty string) is required".into(),
                );
            };
            let mut fresh_start = None;
            let mut procs = procs.lock().unwrap();
            if m == method::PROCESS_START {
                if !procs.contains_key(&pid) {
                    procs.insert(pid.clone(), true);
                    fresh_start = Some(pid.clone());
                }
            } else if !procs.contains_key(&pid) {
                return refuse(
                    id,
                    rpc_code::INVALID_REQUEST,
                    format!("unknown process {pid}: this bridge session did not start it"),
                );
            }
            params["processId"] = Value::String(format!("{prefix}{pid}"));
            Incoming::Forward {
                id,
                method,
                params,
                fresh_start,
            }
        }
        m if m.starts_with("fs/") => Incoming::Forward {
            id,
            method,
            params,
            fresh_start: None,
        },
        m => refuse(
            id,
            rpc_code::METHOD_NOT_FOUND,
            format!("method {m} is not available through the bridge; it serves process/* and fs/*"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_code(i: &Incoming) -> i64 {
        match i {
            Incoming::Reply(v) => v["error"]["code"].as_i64().unwrap(),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn process_ids_are_rewritten_and_claimed() {
        let procs = Mutex::new(HashMap::new());
        let start =
            br#"{"id":"a","method":"process/start","params":{"processId":"p1","argv":["true"]}}"#;
        let Incoming::Forward {
            id,
            method,
            params,
            fresh_start,
        } = classify(start, "br-k-", &procs)
        else {
            panic!()
        };
        assert_eq!(id, json!("a"));
        assert_eq!(method, "process/start");
        assert_eq!(params, json!({"processId":"br-k-p1","argv":["true"]}));
        assert_eq!(fresh_start.as_deref(), Some("p1"));
        assert_eq!(procs.lock().unwrap().get("p1"), Some(&true));
        // Starting it again is the executor's business (a duplicate), and
        // does not claim it afresh.
        let Incoming::Forward { fresh_start, .. } = classify(start, "br-k-", &procs) else {
            panic!()
        };
        assert_eq!(fresh_start, None);

        let read = br#"{"id":7,"method":"process/read","params":{"processId":"p1","afterSeq":0}}"#;
        let Incoming::Forward { id, params, .. } = classify(read, "br-k-", &procs) else {
            panic!()
        };
        assert_eq!(id, json!(7));
        assert_eq!(params["processId"], "br-k-p1");

        // Someone else's process (the gateway's, another bridge's, or one
        // spelled with the prefix) is unknown here.
        for other in ["ps_1234", "sh_1", "br-k-p1", "br-x-p1"] {
            let f = format!(
                r#"{{"id":1,"method":"process/terminate","params":{{"processId":"{other}"}}}}"#
            );
            let r = classify(f.as_bytes(), "br-k-", &procs);
            assert_eq!(error_code(&r), rpc_code::INVALID_REQUEST, "{other}");
        }
        let r = classify(
            br#"{"id":1,"method":"process/read","params":{}}"#,
            "br-k-",
            &procs,
        );
        assert_eq!(error_code(&r), rpc_code::INVALID_PARAMS);
    }

    #[test]
    fn methods_ids_and_framing() {
        let procs = Mutex::new(HashMap::new());
        let c = |f: &str| classify(f.as_bytes(), "br-k-", &procs);
        assert!(matches!(
            c(r#"{"id":1.5,"method":"fs/readFile","params":{"path":"file:///x"}}"#),
            Incoming::Forward { id, .. } if id == json!(1.5)
        ));
        assert_eq!(
            c(r#"{"id":2,"method":"initialize","params":{}}"#),
            Incoming::Initialize(json!(2))
        );
        assert_eq!(
            c(r#"{"method":"initialized","params":{}}"#),
            Incoming::Ignore
        );
        assert_eq!(c(r#"{"id":3,"result":{}}"#), Incoming::Ignore);
        assert_eq!(
            c(r#"{"id":4,"method":"bridge/renewToken","params":{"token":"t"}}"#),
            Incoming::Renew {
                id: json!(4),
                token: "t".into()
            }
        );
        assert_eq!(
            error_code(&c(r#"{"id":4,"method":"bridge/renewToken"}"#)),
            rpc_code::INVALID_PARAMS
        );
        for m in ["shutdown", "process/list", "exec/anything"] {
            let r = c(&format!(r#"{{"id":5,"method":"{m}"}}"#));
            assert_eq!(error_code(&r), rpc_code::METHOD_NOT_FOUND, "{m}");
        }
        assert_eq!(error_code(&c("{nope")), rpc_code::PARSE_ERROR);
        assert_eq!(error_code(&c("[]")), rpc_code::INVALID_REQUEST);
        assert_eq!(error_code(&c("3")), rpc_code::INVALID_REQUEST);
        assert_eq!(
            error_code(&c(r#"{"id":{},"method":"fs/readFile"}"#)),
            rpc_code::INVALID_REQUEST
        );
        assert_eq!(
            error_code(&c(r#"{"id":1,"method":5}"#)),
            rpc_code::INVALID_REQUEST
        );
    }

    #[test]
    fn deadlines_are_the_default_and_a_reads_wait() {
        let d = Duration::from_secs(60);
        let read = |p: Value| deadline(method::PROCESS_READ, &p, d);
        assert_eq!(read(json!({"processId": "p"})), d);
        assert_eq!(
            read(json!({"processId": "p", "waitMs": 1500})),
            d + Duration::from_millis(1500)
        );
        assert_eq!(read(json!({"waitMs": u64::MAX})), d + MAX_READ_WAIT);
        assert_eq!(read(json!({"waitMs": "soon"})), d);
        // Only a read waits.
        assert_eq!(
            deadline(method::FS_READ_FILE, &json!({"waitMs": 9000}), d),
            d
        );
        let e = gateway_error(
            &LinkError::Timeout {
                name: "laptop".into(),
                method: "fs/readFile".into(),
                after: d,
            },
            execgate_protocol::connectors::error_code::GATEWAY_TIMEOUT,
        );
        assert_eq!(e.code, rpc_code::INTERNAL_ERROR);
        assert_eq!(e.data, Some(json!({"code": "gateway_timeout"})));
    }

    #[test]
    fn answers_keep_the_client_id_and_lose_the_prefix() {
        let mut v = json!({"processId":"br-k-p1","sandboxType":"none"});
        strip_process_id(&mut v, "br-k-");
        assert_eq!(v["processId"], "p1");
        assert_eq!(
            response(json!("a"), Ok(json!(1))),
            json!({"jsonrpc":"2.0","id":"a","result":1})
        );
        assert_eq!(
            response(json!(1), Err(RpcError::invalid_request("no"))),
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"no"}})
        );
        let f = close_frame(1013, &"é".repeat(100));
        assert!(f.reason.as_str().len() <= 123);
    }
}
