//! `execgate mcp`: MCP over stdio for clients that launch a local command
//! (Claude Desktop, Codex's `mcp_servers`, IDEs), relayed to a gateway's
//! `/mcp` (`--url`/`EXECGATE_URL`, `--token`/`EXECGATE_TOKEN`).
//!
//! **Design: a relay, not a second MCP server.** Each newline-delimited
//! JSON-RPC message read from stdin is POSTed unchanged to `<url>/mcp`, and
//! every JSON-RPC message the gateway answers (a JSON body, or the events of
//! an SSE body) is written to stdout, one per line. The tool list, the
//! results and the errors are therefore those of `/mcp` byte for byte: there
//! is no second tool table, schema or error mapping to keep in step with the
//! gateway's, and a gateway newer than this binary (new tools, new protocol
//! versions, progress notifications on an SSE answer) needs no new
//! `execgate mcp`. The alternative, an rmcp stdio server whose tools call
//! the gateway, would re-declare every tool and re-map every error, and
//! would answer with this binary's idea of the tools rather than the
//! gateway's.
//!
//! **HTTP.** Every POST carries `Authorization: Bearer`, `Content-Type:
//! application/json` and `Accept: application/json, text/event-stream`, as
//! Streamable HTTP asks. `MCP-Protocol-Version` is what an HTTP client would
//! send: the request's own `_meta` version (2026-07-28 clients stamp each
//! request), else the version the `initialize` answer negotiated, else none
//! (the server then assumes 2025-03-26). From 2026-07-28 on, the SEP-2243
//! headers that the gateway checks against the body are derived from it:
//! `Mcp-Method`, `Mcp-Name`, and `Mcp-Param-*` for tool arguments whose
//! schema (remembered from the `tools/list` answers that passed through)
//! carries `x-mcp-header`. An `Mcp-Session-Id` the gateway hands out is sent
//! back (today's gateway is stateless and hands out none). Connecting gives
//! up after 10 s; an answer has no time limit (a `shell` call may run for
//! minutes: the client's own timeout and cancellation decide).
//!
//! **Concurrency.** Each message is forwarded on its own task, on its own
//! HTTP request, and its answer is written when it comes: a long `shell`
//! call holds up nothing behind it. One writer task owns stdout, so
//! messages never interleave; stdout carries protocol only (logs go to
//! stderr). Messages of any size: lines are read whole, whatever their
//! length (the gateway's body limit answers 413, relayed as an error).
//!
//! **Cancellation.** `notifications/cancelled` is forwarded, and the
//! relay drops the HTTP request of the call it names: the gateway's rmcp
//! service cancels a stateless request's handler when its client
//! disconnects. No answer is written for a cancelled request, as MCP asks.
//!
//! **Failures are answers.** A request the gateway does not answer with a
//! JSON-RPC message gets a JSON-RPC error from the relay, never silence:
//! [`GATEWAY_UNREACHABLE`] (-32000) when the gateway cannot be reached or
//! its answer breaks off, [`GATEWAY_REFUSED`] (-32001) when it refuses the
//! HTTP request itself (401 `invalid_token`, 413, 429, …; `data` is its
//! error envelope plus `http_status`). Each is also said on stderr.
//! Notifications and responses have no answer to carry an error: stderr
//! only.
//!
//! **Lifetime.** At the end of stdin the relay stops reading, writes the
//! answers of the requests still in flight, and exits 0 (a client that
//! will not wait closes stdin and then signals, per the MCP stdio
//! lifecycle). Stdout closed: exit 0 at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::Args;
use futures_util::future::{abortable, AbortHandle};
use futures_util::StreamExt;
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// JSON-RPC error code of a request the gateway did not answer: it cannot
/// be reached, or its answer broke off.
pub const GATEWAY_UNREACHABLE: i64 = -32000;
/// JSON-RPC error code of a request whose HTTP request the gateway refused
/// (a bad token, a body over its limit, a rate limit, …).
pub const GATEWAY_REFUSED: i64 = -32001;

/// The `_meta` key of a 2026-07-28 request's protocol version.
const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The first protocol version with the SEP-2243 headers.
const STANDARD_HEADERS_VERSION: &str = "2026-07-28";

#[derive(Args, Debug)]
pub struct McpArgs {
    /// The gateway's base URL (`/mcp` is appended).
    #[arg(long, env = "EXECGATE_URL", default_value = execgate_client::DEFAULT_URL)]
    pub url: String,
    /// A proxy token of the workspace whose environments the tools reach.
    #[arg(long, env = "EXECGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub async fn run(a: McpArgs) -> anyhow::Result<i32> {
    let token = a.token.filter(|t| !t.is_empty()).ok_or_else(|| {
        anyhow::anyhow!(
            "EXECGATE_TOKEN is not set: give the proxy token that `execgate up` or \
             `execgate admin token create` printed (EXECGATE_TOKEN or --token)"
        )
    })?;
    let relay = Arc::new(Relay::new(&a.url, token)?);
    tracing::info!(
        "execgate mcp: relaying MCP on stdin/stdout to {}",
        relay.endpoint
    );

    let (out, rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_stdout(rx));
    tokio::select! {
        read = read_stdin(&relay, out) => read.context("reading stdin")?,
        written = &mut writer => {
            if let Ok(Err(e)) = written {
                tracing::info!("execgate mcp: stdout is closed ({e}); exiting");
            }
            return Ok(0);
        }
    }
    // stdin ended: the writer ends once the requests in flight have
    // answered (each holds a sender).
    if let Err(e) = writer.await? {
        tracing::info!("execgate mcp: stdout is closed ({e}); exiting");
    }
    Ok(0)
}

/// Reads messages until the end of stdin and forwards each on its own task.
async fn read_stdin(relay: &Arc<Relay>, out: Out) -> std::io::Result<()> {
    let mut stdin = BufReader::with_capacity(64 * 1024, tokio::io::stdin());
    loop {
        let mut line = Vec::new();
        if stdin.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        while line.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        relay.dispatch(line, &out);
    }
}

/// The one writer of stdout: each message is one line.
async fn write_stdout(mut rx: mpsc::UnboundedReceiver<Vec<u8>>) -> std::io::Result<()> {
    let mut stdout = tokio::io::stdout();
    while let Some(line) = rx.recv().await {
        stdout.write_all(&line).await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// Where messages for stdout go, each with its newline.
type Out = mpsc::UnboundedSender<Vec<u8>>;

struct Relay {
    http: reqwest::Client,
    endpoint: String,
    token: String,
    state: Mutex<Negotiated>,
    /// The requests in flight by JSON-RPC id, to drop on cancellation.
    inflight: Mutex<HashMap<String, (u64, AbortHandle)>>,
    next_ticket: AtomicU64,
}

/// What the relay learns from the traffic, to send the headers an HTTP
/// client would.
#[derive(Default)]
struct Negotiated {
    /// The initialize answer's version, or the last request `_meta`'s.
    protocol_version: Option<String>,
    session_id: Option<String>,
    /// Tool input schemas from `tools/list` answers (for `Mcp-Param-*`).
    tool_schemas: HashMap<String, Value>,
}

/// A request the gateway did not answer with a JSON-RPC message.
#[derive(Debug)]
struct RelayError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RelayError {
    fn answer(&self, id: Value) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        json!({"jsonrpc": "2.0", "id": id, "error": error})
    }
}

impl Relay {
    fn new(url: &str, token: String) -> anyhow::Result<Relay> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            // The gateway closes a connection idle for 10 s; dropping ours
            // sooner keeps a request from meeting one it is just closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Relay {
            http,
            endpoint: format!("{}/mcp", url.trim_end_matches('/')),
            token,
            state: Mutex::default(),
            inflight: Mutex::default(),
            next_ticket: AtomicU64::new(0),
        })
    }

    /// Forwards one message from stdin on its own task.
    fn dispatch(self: &Arc<Self>, line: Vec<u8>, out: &Out) {
        let parsed: Option<Value> = serde_json::from_slice(&line).ok();
        let message = Message::of(parsed.as_ref());
        if message.method == Some("notifications/cancelled") {
            if let Some(id) = parsed.as_ref().and_then(|m| m.pointer("/params/requestId")) {
                self.cancel(id);
            }
        }
        let key = message.is_request().then(|| id_key(message.id));
        let relay = self.clone();
        let out = out.clone();
        let forward = async move { relay.forward(line, parsed, out).await };
        let Some(key) = key else {
            tokio::spawn(forward);
            return;
        };
        let (forward, handle) = abortable(forward);
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lock(&self.inflight).insert(key.clone(), (ticket, handle));
        let relay = self.clone();
        tokio::spawn(async move {
            let _ = forward.await;
            let mut inflight = lock(&relay.inflight);
            if inflight.get(&key).is_some_and(|(t, _)| *t == ticket) {
                inflight.remove(&key);
            }
        });
    }

    /// Drops the HTTP request of request `id`, if it is in flight.
    fn cancel(&self, id: &Value) {
        if let Some((_, handle)) = lock(&self.inflight).remove(&id_key(Some(id))) {
            tracing::debug!("execgate mcp: request {id} cancelled by the client");
            handle.abort();
        }
    }

    /// POSTs one message and writes the gateway's answers; a request that
    /// gets no JSON-RPC answer gets the relay's error.
    async fn forward(&self, line: Vec<u8>, parsed: Option<Value>, out: Out) {
        let message = Message::of(parsed.as_ref());
        // Not JSON: the gateway answers the parse error (id null).
        let wants_answer = parsed.is_none() || message.is_request();
        let outcome = self.exchange(line, parsed.as_ref(), &message, &out).await;
        let error = match outcome {
            Ok(true) => return,
            Ok(false) if !wants_answer => return,
            Ok(false) => RelayError {
                code: GATEWAY_UNREACHABLE,
                message: format!(
                    "the gateway at {} ended its answer without a JSON-RPC response",
                    self.endpoint
                ),
                data: None,
            },
            Err(e) => e,
        };
        let what = message.method.unwrap_or("a message");
        tracing::warn!("execgate mcp: {what}: {}", error.message);
        if wants_answer {
            let id = message.id.cloned().unwrap_or(Value::Null);
            let _ = out.send(line_of(&error.answer(id), None));
        }
    }

    /// One HTTP exchange: Ok(whether a JSON-RPC response was written).
    async fn exchange(
        &self,
        line: Vec<u8>,
        parsed: Option<&Value>,
        message: &Message<'_>,
        out: &Out,
    ) -> Result<bool, RelayError> {
        let mut req = self
            .http
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        for (name, value) in self.headers_for(parsed) {
            req = req.header(name, value);
        }
        let resp = req
            .body(line)
            .send()
            .await
            .map_err(|e| self.unreachable("cannot reach the gateway", &e))?;
        if let Some(sid) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            lock(&self.state).session_id = Some(sid.to_string());
        }
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if status.is_success() && content_type == "text/event-stream" {
            return self.relay_events(resp, message.method, out).await;
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.unreachable("the gateway's answer broke off", &e))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            if status.is_success() {
                // 202 Accepted: a notification or a response.
                return Ok(false);
            }
            return Err(self.refused(status, &body));
        }
        match serde_json::from_slice::<Value>(&body) {
            // A JSON-RPC message whatever the status (the gateway's 400 for
            // a message that is not one carries its JSON-RPC error).
            Ok(answer) if answer.get("jsonrpc").is_some() => {
                Ok(self.emit(&answer, Some(&body), message.method, out))
            }
            _ if !status.is_success() => Err(self.refused(status, &body)),
            _ => Err(RelayError {
                code: GATEWAY_UNREACHABLE,
                message: format!(
                    "the gateway at {} answered HTTP {status} with something that is not a JSON-RPC message: {}",
                    self.endpoint,
                    excerpt(&body)
                ),
                data: None,
            }),
        }
    }

    /// Writes each event of an SSE answer as it arrives.
    async fn relay_events(
        &self,
        resp: reqwest::Response,
        method: Option<&str>,
        out: &Out,
    ) -> Result<bool, RelayError> {
        let mut stream = resp.bytes_stream();
        let mut events = SseParser::default();
        let mut answered = false;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| self.unreachable("the gateway's event stream broke off", &e))?;
            for data in events.push(&chunk) {
                answered |= self.emit_data(&data, method, out)?;
            }
        }
        if let Some(data) = events.finish() {
            answered |= self.emit_data(&data, method, out)?;
        }
        Ok(answered)
    }

    fn emit_data(&self, data: &str, method: Option<&str>, out: &Out) -> Result<bool, RelayError> {
        let answer: Value = serde_json::from_str(data).map_err(|e| RelayError {
            code: GATEWAY_UNREACHABLE,
            message: format!(
                "the gateway at {} sent an event that is not JSON ({e}): {}",
                self.endpoint,
                excerpt(data.as_bytes())
            ),
            data: None,
        })?;
        Ok(self.emit(&answer, Some(data.as_bytes()), method, out))
    }

    /// Writes one message from the gateway (its own bytes when they are one
    /// line); true if it is a response or an error.
    fn emit(&self, answer: &Value, raw: Option<&[u8]>, method: Option<&str>, out: &Out) -> bool {
        self.observe(method, answer);
        let _ = out.send(line_of(answer, raw));
        answer.get("method").is_none()
            && (answer.get("result").is_some() || answer.get("error").is_some())
    }

    /// Learns the negotiated version and the tool schemas from answers.
    fn observe(&self, method: Option<&str>, answer: &Value) {
        let mut state = lock(&self.state);
        match method {
            Some("initialize") => {
                if let Some(v) = answer
                    .pointer("/result/protocolVersion")
                    .and_then(Value::as_str)
                {
                    state.protocol_version = Some(v.to_string());
                }
            }
            Some("tools/list") => {
                let tools = answer.pointer("/result/tools").and_then(Value::as_array);
                for tool in tools.into_iter().flatten() {
                    if let (Some(name), Some(schema)) = (
                        tool.get("name").and_then(Value::as_str),
                        tool.get("inputSchema"),
                    ) {
                        state.tool_schemas.insert(name.to_string(), schema.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// The MCP headers an HTTP client would send with this message.
    fn headers_for(&self, parsed: Option<&Value>) -> Vec<(HeaderName, HeaderValue)> {
        let mut state = lock(&self.state);
        let mut out = Vec::new();
        let mut push = |name: &str, value: &str| {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                out.push((name, value));
            }
        };
        if let Some(sid) = &state.session_id {
            push("Mcp-Session-Id", sid);
        }
        let Some(message) = parsed.filter(|m| m.is_object()) else {
            return out;
        };
        let method = message.get("method").and_then(Value::as_str);
        if method == Some("initialize") {
            return out;
        }
        let meta_version = message
            .pointer("/params/_meta")
            .and_then(|m| m.get(META_PROTOCOL_VERSION))
            .and_then(Value::as_str);
        if let Some(v) = meta_version {
            state.protocol_version = Some(v.to_string());
        }
        let Some(version) = state.protocol_version.clone() else {
            return out;
        };
        push("MCP-Protocol-Version", &version);
        let Some(method) = method else {
            return out;
        };
        if version.as_str() < STANDARD_HEADERS_VERSION {
            return out;
        }
        for (name, value) in standard_headers(method, message.get("params"), &state.tool_schemas) {
            push(&name, &value);
        }
        out
    }

    fn unreachable(&self, what: &str, e: &reqwest::Error) -> RelayError {
        RelayError {
            code: GATEWAY_UNREACHABLE,
            message: format!("{what} at {}: {}", self.endpoint, error_chain(e)),
            data: None,
        }
    }

    /// The gateway's HTTP refusal (its error envelope) as the relay's error.
    fn refused(&self, status: reqwest::StatusCode, body: &[u8]) -> RelayError {
        let envelope = serde_json::from_slice::<Value>(body).ok();
        let code = envelope
            .as_ref()
            .and_then(|e| e.pointer("/error/code"))
            .and_then(Value::as_str);
        let text = envelope
            .as_ref()
            .and_then(|e| e.pointer("/error/message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| excerpt(body));
        let mut message = match code {
            Some(code) => format!(
                "the gateway at {} refused the request: HTTP {} {code}: {text}",
                self.endpoint,
                status.as_u16()
            ),
            None => format!(
                "the gateway at {} refused the request: HTTP {}: {text}",
                self.endpoint,
                status.as_u16()
            ),
        };
        if status == reqwest::StatusCode::UNAUTHORIZED {
            message.push_str(
                " (check EXECGATE_TOKEN or --token: a proxy token of the workspace, as \
                 `execgate up` or `execgate admin token create` printed it)",
            );
        }
        let mut data = match envelope {
            Some(Value::Object(map)) => Value::Object(map),
            _ => json!({}),
        };
        data["http_status"] = json!(status.as_u16());
        RelayError {
            code: GATEWAY_REFUSED,
            message,
            data: Some(data),
        }
    }
}

/// What the relay needs to know of a message from the client.
struct Message<'a> {
    method: Option<&'a str>,
    id: Option<&'a Value>,
}

impl<'a> Message<'a> {
    fn of(parsed: Option<&'a Value>) -> Message<'a> {
        Message {
            method: parsed.and_then(|m| m.get("method")).and_then(Value::as_str),
            id: parsed.and_then(|m| m.get("id")),
        }
    }

    /// A request (a method and an id), which is owed an answer.
    fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some()
    }
}

fn id_key(id: Option<&Value>) -> String {
    id.map(Value::to_string).unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One line of stdout: `raw` when it is the message on one line, else the
/// message re-serialized (which escapes any newline inside strings).
fn line_of(message: &Value, raw: Option<&[u8]>) -> Vec<u8> {
    let mut line = match raw.map(<[u8]>::trim_ascii) {
        Some(raw) if !raw.contains(&b'\n') && !raw.contains(&b'\r') => raw.to_vec(),
        _ => serde_json::to_vec(message).expect("a JSON value serializes"),
    };
    line.push(b'\n');
    line
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// `client error (Connect): tcp connect error: Connection refused …`: the
/// causes of a reqwest error (whose own text only repeats the URL).
fn error_chain(e: &dyn std::error::Error) -> String {
    let Some(first) = e.source() else {
        return e.to_string();
    };
    let mut text = first.to_string();
    let mut source = first.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The SEP-2243 headers of a request or notification (2026-07-28 and
/// later), as rmcp's client derives them: `Mcp-Method`, `Mcp-Name` and the
/// `Mcp-Param-*` of annotated tool arguments.
fn standard_headers(
    method: &str,
    params: Option<&Value>,
    tool_schemas: &HashMap<String, Value>,
) -> Vec<(String, String)> {
    let mut out = vec![("Mcp-Method".to_string(), method.to_string())];
    let name_key = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    let name = name_key
        .and_then(|k| params.and_then(|p| p.get(k)))
        .and_then(Value::as_str);
    if let Some(name) = name {
        out.push(("Mcp-Name".to_string(), encode_header_value(name)));
    }
    if method != "tools/call" {
        return out;
    }
    let (Some(schema), Some(arguments)) = (
        name.and_then(|n| tool_schemas.get(n)),
        params.and_then(|p| p.get("arguments")),
    ) else {
        return out;
    };
    let mut annotations = Vec::new();
    param_annotations(schema.get("properties"), &mut Vec::new(), &mut annotations);
    for (path, header) in annotations {
        let value = path.iter().try_fold(arguments, |v, key| v.get(key));
        let value = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => continue,
        };
        out.push((format!("Mcp-Param-{header}"), encode_header_value(&value)));
    }
    out
}

/// Every non-empty `x-mcp-header` along `properties` chains: (path, header).
fn param_annotations(
    properties: Option<&Value>,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    let Some(Value::Object(properties)) = properties else {
        return;
    };
    for (name, schema) in properties {
        path.push(name.clone());
        if let Some(Value::String(header)) = schema.get("x-mcp-header") {
            if !header.is_empty() {
                out.push((path.clone(), header.clone()));
            }
        }
        param_annotations(schema.get("properties"), path, out);
        path.pop();
    }
}

/// A header value as SEP-2243 encodes it: as is, or `=?base64?…?=` when it
/// could not travel as one (edge spaces, controls, non-ASCII, or the
/// sentinel's own shape).
fn encode_header_value(value: &str) -> String {
    let needs_base64 = !value.is_empty()
        && (value.starts_with([' ', '\t'])
            || value.ends_with([' ', '\t'])
            || value.chars().any(|c| !(' '..='~').contains(&c))
            || (value.starts_with("=?base64?") && value.ends_with("?=")));
    if needs_base64 {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    } else {
        value.to_string()
    }
}

/// The `data` of server-sent events, fed chunk by chunk.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    /// How far `buf` has been searched for a newline.
    scanned: usize,
    data: Option<String>,
}

impl SseParser {
    /// The data of every event completed by `chunk`.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(n) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + n;
            let mut line = &self.buf[start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if let Some(data) = Self::line(line, &mut self.data) {
                events.push(data);
            }
            start = end + 1;
            self.scanned = start;
        }
        self.buf.drain(..start);
        self.scanned -= start;
        events
    }

    /// The data of an event left without its closing blank line.
    fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if let Some(data) = Self::line(rest.strip_suffix(b"\r").unwrap_or(&rest), &mut self.data) {
            return Some(data);
        }
        self.data.take().filter(|d| !d.is_empty())
    }

    /// One line of the stream; the event's data when it is the blank line
    /// that ends an event with data.
    fn line(line: &[u8], data: &mut Option<String>) -> Option<String> {
        if line.is_empty() {
            return data.take().filter(|d| !d.is_empty());
        }
        if line.starts_with(b":") {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        if field == b"data" {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let data = data.get_or_insert_with(String::new);
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(&String::from_utf8_lossy(value));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_anywhere() {
        let stream = b"id: 0\nretry: 3000\ndata:\n\n: keep-alive\n\nevent: message\r\ndata: {\"a\":1}\r\n\r\ndata: {\"b\":\ndata: 2}\n\n";
        for cut in 1..stream.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&stream[..cut]);
            got.extend(p.push(&stream[cut..]));
            got.extend(p.finish());
            assert_eq!(got, vec!["{\"a\":1}", "{\"b\":\n2}"], "cut at {cut}");
        }
        // One byte at a time, and an event the stream's end cuts off.
        let mut p = SseParser::default();
        let mut got = Vec::new();
        for b in b"data: {\"c\":3}\n\ndata: {\"d\":4}" {
            got.extend(p.push(&[*b]));
        }
        got.extend(p.finish());
        assert_eq!(got, vec!["{\"c\":3}", "{\"d\":4}"]);
    }

    #[test]
    fn lines_are_one_line_each() {
        let v = json!({"jsonrpc": "2.0", "id": 1, "result": {"text": "a\nb"}});
        assert_eq!(line_of(&v, Some(b"{\"z\": 1}")), b"{\"z\": 1}\n");
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        let line = line_of(&v, Some(&pretty));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(serde_json::from_slice::<Value>(&line).unwrap(), v);
    }

    #[test]
    fn standard_headers_follow_sep_2243() {
        let schemas = HashMap::from([(
            "deploy".to_string(),
            json!({"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "opts": {"type": "object", "properties": {"dry": {"type": "boolean", "x-mcp-header": "Dry"}}},
                "note": {"type": "string"}
            }}),
        )]);
        let params = json!({"name": "deploy", "arguments": {"region": "eu west ", "opts": {"dry": true}, "note": "x"}});
        let mut got = standard_headers("tools/call", Some(&params), &schemas);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("Mcp-Method".to_string(), "tools/call".to_string()),
                ("Mcp-Name".to_string(), "deploy".to_string()),
                ("Mcp-Param-Dry".to_string(), "true".to_string()),
                (
                    "Mcp-Param-Region".to_string(),
                    format!(
                        "=?base64?{}?=",
                        base64::engine::general_purpose::STANDARD.encode("eu west ")
                    )
                ),
            ]
        );
        assert_eq!(
            standard_headers("notifications/initialized", None, &schemas),
            vec![(
                "Mcp-Method".to_string(),
                "notifications/initialized".to_string()
            )]
        );
        assert_eq!(encode_header_value("shell"), "shell");
        assert_eq!(encode_header_value("é"), "=?base64?w6k=?=");
    }

    /// A server that answers one HTTP request with `response` and returns
    /// the request (head and body) it got.
    async fn one_shot(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (url, server)
    }

    /// Forwards `line` through a relay to `url`; the lines it writes.
    async fn relay_once(url: &str, line: &str) -> Vec<Value> {
        let relay = Arc::new(Relay::new(url, "egp_t".into()).unwrap());
        let (out, mut rx) = mpsc::unbounded_channel();
        let parsed = serde_json::from_str(line).ok();
        relay.forward(line.as_bytes().to_vec(), parsed, out).await;
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            lines.push(serde_json::from_slice(&line).unwrap());
        }
        lines
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"shell","arguments":{"command":"true"},"_meta":{"progressToken":"p"}}}"#;

    #[tokio::test]
    async fn an_sse_answer_is_relayed_event_by_event() {
        let (url, server) = one_shot(concat!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
            "id: 0\nretry: 3000\ndata:\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p\",\"progress\":1}}\n\n",
            ": keep-alive\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[],\"isError\":false}}\n\n",
        ))
        .await;
        let lines = relay_once(&url, CALL).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["method"], "notifications/progress");
        assert_eq!(lines[1]["id"], 7);
        assert_eq!(lines[1]["result"]["isError"], false);

        let request = server.await.unwrap();
        let head = request.to_ascii_lowercase();
        assert!(head.starts_with("post /mcp http/1.1\r\n"), "{request}");
        for header in [
            "authorization: bearer egp_t",
            "accept: application/json, text/event-stream",
            "content-type: application/json",
        ] {
            assert!(head.contains(header), "no {header:?} in {request}");
        }
        // The body is the line itself, unchanged.
        assert!(request.ends_with(&format!("\r\n\r\n{CALL}")), "{request}");
    }

    #[tokio::test]
    async fn a_request_left_without_an_answer_gets_an_error() {
        // The stream ends after a notification: the request gets the relay's error.
        let (url, _server) = one_shot(concat!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p\",\"progress\":1}}\n\n",
        ))
        .await;
        let lines = relay_once(&url, CALL).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1]["id"], 7);
        assert_eq!(lines[1]["error"]["code"], GATEWAY_UNREACHABLE);
        let message = lines[1]["error"]["message"].as_str().unwrap();
        assert!(message.contains("without a JSON-RPC response"), "{message}");

        // A 200 that is not JSON-RPC.
        let (url, _server) = one_shot(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 9\r\nconnection: close\r\n\r\n<p>hi</p>",
        )
        .await;
        let lines = relay_once(&url, CALL).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["error"]["code"], GATEWAY_UNREACHABLE);
        assert!(lines[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("<p>hi</p>"));

        // A notification accepted (202) is answered with nothing.
        let (url, _server) =
            one_shot("HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        let lines = relay_once(
            &url,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
        .await;
        assert!(lines.is_empty(), "{lines:?}");

        // A 413 envelope: the relay's refusal, with the envelope as data.
        let (url, _server) = one_shot(concat!(
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            "{\"error\":{\"code\":\"payload_too_large\",\"message\":\"too big\"}}",
        ))
        .await;
        let lines = relay_once(&url, CALL).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["id"], 7);
        assert_eq!(lines[0]["error"]["code"], GATEWAY_REFUSED);
        assert_eq!(lines[0]["error"]["data"]["http_status"], 413);
        assert_eq!(
            lines[0]["error"]["data"]["error"]["code"],
            "payload_too_large"
        );
    }

    #[test]
    fn the_protocol_version_header_follows_the_client() {
        let relay = Relay::new("http://127.0.0.1:1/", "t".into()).unwrap();
        assert_eq!(relay.endpoint, "http://127.0.0.1:1/mcp");
        let names = |h: Vec<(HeaderName, HeaderValue)>| -> Vec<String> {
            h.iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect()
        };
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
        assert!(relay.headers_for(Some(&init)).is_empty());
        relay.observe(
            Some("initialize"),
            &json!({"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2025-06-18"}}),
        );
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        assert_eq!(
            names(relay.headers_for(Some(&list))),
            vec!["mcp-protocol-version: 2025-06-18"]
        );
        // A 2026-07-28 request names its version, and gets the SEP-2243 headers.
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "shell", "arguments": {"command": "true"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        assert_eq!(
            names(relay.headers_for(Some(&call))),
            vec![
                "mcp-protocol-version: 2026-07-28",
                "mcp-method: tools/call",
                "mcp-name: shell"
            ]
        );
    }
}
