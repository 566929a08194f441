//! An async, typed client for the execgate connectors REST API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), execgate_client::ClientError> {
//! let client = execgate_client::Client::from_env()?;
//! for env in client.envs().await? {
//!     println!("{} ({} tools)", env.name, env.tools.len());
//! }
//! let result = client
//!     .call_tool("laptop", "shell", serde_json::json!({"command": ["uname", "-a"]}))
//!     .await?;
//! println!("{}", result.first_text());
//! # Ok(()) }
//! ```
//!
//! Every non-2xx answer becomes [`ClientError::Api`] with the gateway's
//! stable error `code`, so callers can match on it.
//!
//! Mutating JSON calls (tools but the read-only ones, stdin, terminate,
//! signal) send a fresh `Idempotency-Key` and are retried with it after a
//! transport error, a 503 or a 502 (but the gateway's own 502
//! `executor_error`, which is the executor's answer), up to
//! [`DEFAULT_RETRIES`] times ([`Client::with_retries`]): the gateway does a
//! keyed request once and answers a retry with the first answer. Reads are
//! retried the same way, without a key (doing them again changes nothing):
//! the read-only tools ([`READ_ONLY_TOOLS`]: `read_file`, `list_dir`,
//! `read_output`, `list_environments`), [`Client::output`],
//! [`Client::envs`], [`Client::envs_page`] and [`Client::processes`], so
//! that a replica's restart or drain behind a load balancer does not fail
//! them. The Python SDK retries the same requests the same way. Not
//! retried: `upload` (it streams a body that cannot be sent twice: no key),
//! `resize` (a write without a key), `download` and [`Client::stream`]
//! (streams: open them again, from [`OutputStream::cursor`] for a stream).

#![forbid(unsafe_code)]

use std::time::Duration;

use base64::Engine;
use execgate_protocol::connectors::{
    CallToolResult, ConnectorEnv, EnvsListResponse, ErrorResponse, OkResponse, OutputResponse,
    ProcessInfo, ProcessListResponse, ResizeRequest, SignalName, SignalRequest, StdinRequest,
    ToolCallRequest,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use execgate_protocol::connectors;

/// Retries of a mutating call (same `Idempotency-Key`) or a read after a
/// transport error, a 503 or a 502.
pub const DEFAULT_RETRIES: u32 = 3;

/// Tools that change nothing: called without a key (a key would make the
/// gateway keep their answer for 24 h) and retried as they are.
pub use execgate_protocol::policy::READ_ONLY_TOOLS;

/// Whether an answer is worth a retry: a 503 (the gateway, or a load
/// balancer with no replica ready, asks for one) or a 502 (a load balancer
/// whose replica went away), but not the gateway's own 502
/// `executor_error` (the executor answered: it would answer the same).
fn retryable(status: u16, body: &[u8]) -> bool {
    match status {
        503 => true,
        502 => !matches!(
            serde_json::from_slice::<ErrorResponse>(body),
            Ok(e) if e.error.code == execgate_protocol::connectors::error_code::EXECUTOR_ERROR
        ),
        _ => false,
    }
}

/// A fresh `Idempotency-Key`.
fn new_key() -> String {
    format!("egk_{:032x}", rand::random::<u128>())
}

/// Before retry number `retry` (1, 2, …): 250 ms doubling to at most 4 s,
/// with jitter, and at least a 503's `Retry-After` (capped at 10 s).
fn retry_delay(retry: u32, retry_after: Option<&str>) -> Duration {
    let base = (250u64 << (retry.saturating_sub(1)).min(4)).min(4000);
    let jittered = base / 2 + rand::random_range(0..=base / 2);
    let after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |s| s.min(10) * 1000);
    Duration::from_millis(jittered.max(after))
}

/// Where the gateway is when `EXECGATE_URL` is not set.
pub const DEFAULT_URL: &str = "http://127.0.0.1:6060";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway answered with an error envelope.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the gateway: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected answer from the gateway: {0}")]
    Decode(String),
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The gateway's error code, if the gateway answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    retries: u32,
}

impl Client {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            // The gateway closes a connection idle for 10 s
            // (--header-read-timeout-secs); dropping ours sooner keeps a
            // request from meeting a connection it is just closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client {
            http,
            base: url.into().trim_end_matches('/').to_string(),
            token: token.into(),
            retries: DEFAULT_RETRIES,
        })
    }

    /// Retries of a mutating call or a read after a transport error, a 503
    /// or a 502 (0: none).
    pub fn with_retries(mut self, retries: u32) -> Client {
        self.retries = retries;
        self
    }

    /// From `EXECGATE_URL` (default [`DEFAULT_URL`]) and `EXECGATE_TOKEN`.
    pub fn from_env() -> Result<Client, ClientError> {
        let url = std::env::var("EXECGATE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let token = std::env::var("EXECGATE_TOKEN").map_err(|_| {
            ClientError::Config(
                "EXECGATE_TOKEN is not set: export the proxy token that `execgate up` or \
                 `execgate admin token create` printed"
                    .into(),
            )
        })?;
        Client::new(url, token)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/connectors{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// [`Client::send`] with a fresh `Idempotency-Key`, retried with it
    /// after a transport error (the answer may have been lost), a 503 or a
    /// 502 ([`Client::send_retried`]).
    async fn send_keyed<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send_retried(req.header("Idempotency-Key", new_key()))
            .await
    }

    /// [`Client::send`], again (the same request) after a transport error,
    /// a 503 or a 502, up to `retries` times: for a keyed request, or one
    /// that changes nothing.
    async fn send_retried<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let req = req.bearer_auth(&self.token);
        let mut retry = 0;
        loop {
            let Some(attempt) = req.try_clone() else {
                return self.send(req).await;
            };
            let retry_after = match attempt.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match resp.bytes().await {
                        Ok(bytes) if retry < self.retries && retryable(status, &bytes) => {
                            retry_after
                        }
                        Ok(bytes) if !(200..300).contains(&status) => {
                            return Err(api_error(status, &bytes))
                        }
                        Ok(bytes) => {
                            return serde_json::from_slice(&bytes)
                                .map_err(|e| ClientError::Decode(e.to_string()))
                        }
                        Err(e) if retry >= self.retries => return Err(e.into()),
                        Err(_) => None,
                    }
                }
                Err(e) if retry >= self.retries => return Err(e.into()),
                Err(_) => None,
            };
            retry += 1;
            tokio::time::sleep(retry_delay(retry, retry_after.as_deref())).await;
        }
    }

    /// The connected environments of the token's workspace.
    pub async fn envs(&self) -> Result<Vec<ConnectorEnv>, ClientError> {
        let r: EnvsListResponse = self
            .send_retried(
                self.http
                    .post(self.url("/envs/list"))
                    .json(&serde_json::json!({})),
            )
            .await?;
        Ok(r.envs)
    }

    /// A page of the connected environments, in name order: at most
    /// `limit` (1 to 1000) named after `after`, and the `after` of the next
    /// page (`None` on the last one).
    ///
    /// ```no_run
    /// # async fn demo(client: execgate_client::Client) -> Result<(), execgate_client::ClientError> {
    /// let mut after = None;
    /// loop {
    ///     let (envs, next) = client.envs_page(1000, after.as_deref()).await?;
    ///     for env in envs {
    ///         println!("{}", env.name);
    ///     }
    ///     match next {
    ///         Some(n) => after = Some(n),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn envs_page(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<(Vec<ConnectorEnv>, Option<String>), ClientError> {
        let r: EnvsListResponse = self
            .send_retried(self.http.post(self.url("/envs/list")).json(
                &execgate_protocol::connectors::EnvsListRequest {
                    limit: Some(limit),
                    after: after.map(String::from),
                },
            ))
            .await?;
        Ok((r.envs, r.next))
    }

    /// Calls `tool` on environment `env`. A tool that ran and failed is
    /// `Ok` with `is_error`; only request and transport problems are `Err`.
    pub async fn call_tool(
        &self,
        env: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<CallToolResult, ClientError> {
        let arguments = match arguments {
            Value::Object(m) => m,
            Value::Null => Default::default(),
            _ => {
                return Err(ClientError::Config(
                    "tool arguments must be a JSON object".into(),
                ))
            }
        };
        let body = ToolCallRequest {
            tool: tool.to_string(),
            arguments,
        };
        let req = self
            .http
            .post(self.url(&format!("/envs/{}/tool/call", encode(env))))
            .json(&body);
        if READ_ONLY_TOOLS.contains(&tool) {
            self.send_retried(req).await
        } else {
            self.send_keyed(req).await
        }
    }

    /// Starts a process with `exec_command` and returns its session id.
    pub async fn exec_command(&self, env: &str, arguments: Value) -> Result<String, ClientError> {
        let r = self.call_tool(env, "exec_command", arguments).await?;
        if r.is_error {
            return Err(ClientError::Api {
                status: 200,
                code: "tool_error".into(),
                message: r.first_text().to_string(),
            });
        }
        r.structured_content
            .as_ref()
            .and_then(|s| s.get("session_id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ClientError::Decode("exec_command returned no session_id".into()))
    }

    /// Writes `data` to the process's stdin; `eof` closes it afterwards.
    pub async fn write_stdin(&self, sid: &str, data: &[u8], eof: bool) -> Result<(), ClientError> {
        let body = StdinRequest {
            data_b64: base64::engine::general_purpose::STANDARD.encode(data),
            eof,
        };
        let _: OkResponse = self
            .send_keyed(
                self.http
                    .post(self.url(&format!("/processes/{}/stdin", encode(sid))))
                    .json(&body),
            )
            .await?;
        Ok(())
    }

    /// Output newer than `since`; with `wait_ms`, waits for it (long-poll).
    pub async fn output(
        &self,
        sid: &str,
        since: u64,
        wait_ms: Option<u64>,
    ) -> Result<OutputResponse, ClientError> {
        let mut url = format!(
            "{}?since={since}",
            self.url(&format!("/processes/{}/output", encode(sid)))
        );
        if let Some(w) = wait_ms {
            url.push_str(&format!("&wait_ms={w}"));
        }
        self.send_retried(self.http.get(url)).await
    }

    /// Streams `body` into `path` on `env` (`PUT /envs/{env}/files`). The file
    /// appears atomically once complete and verified. Returns the gateway's
    /// answer `{path, bytes, sha256}`.
    pub async fn upload(
        &self,
        env: &str,
        path: &str,
        body: reqwest::Body,
    ) -> Result<Value, ClientError> {
        self.send(
            self.http
                .put(self.url(&format!("/envs/{}/files", encode(env))))
                .query(&[("path", path)])
                .body(body),
        )
        .await
    }

    /// Starts downloading `path` from `env` (`GET /envs/{env}/files`); read the
    /// bytes from the response (`bytes_stream`). `Content-Length` is the size.
    pub async fn download(&self, env: &str, path: &str) -> Result<reqwest::Response, ClientError> {
        let resp = self
            .http
            .get(self.url(&format!("/envs/{}/files", encode(env))))
            .query(&[("path", path)])
            .bearer_auth(&self.token)
            .send()
            .await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Err(api_error(status, &bytes))
    }

    pub async fn terminate(&self, sid: &str) -> Result<(), ClientError> {
        let _: OkResponse = self
            .send_keyed(
                self.http
                    .post(self.url(&format!("/processes/{}/terminate", encode(sid))))
                    .json(&serde_json::json!({})),
            )
            .await?;
        Ok(())
    }
}

/// The error of a non-2xx answer: the envelope's code and message.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "http_error".into(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

impl Client {
    /// The workspace's process sessions, newest first.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, ClientError> {
        let r: ProcessListResponse = self
            .send_retried(self.http.get(self.url("/processes")))
            .await?;
        Ok(r.processes)
    }

    /// Resizes a tty process's terminal.
    pub async fn resize(&self, sid: &str, cols: u16, rows: u16) -> Result<(), ClientError> {
        let _: OkResponse = self
            .send(
                self.http
                    .post(self.url(&format!("/processes/{}/resize", encode(sid))))
                    .json(&ResizeRequest { cols, rows }),
            )
            .await?;
        Ok(())
    }

    /// Sends a signal to the process group.
    pub async fn signal(&self, sid: &str, signal: SignalName) -> Result<(), ClientError> {
        let _: OkResponse = self
            .send_keyed(
                self.http
                    .post(self.url(&format!("/processes/{}/signal", encode(sid))))
                    .json(&SignalRequest { signal }),
            )
            .await?;
        Ok(())
    }
}

pub use execgate_protocol::output_frames::Frame as StreamItem;

/// Which form the gateway answered `/stream` in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamForm {
    /// Length-prefixed binary frames (`application/octet-stream`).
    Binary,
    /// Server-Sent Events: an older gateway, or a client that asked for them.
    Sse,
}

/// An open `GET /processes/{sid}/stream`, in whichever form the gateway
/// answered: [`OutputStream::next`] gives the same items for both
/// (`Output`, `Lost`, then `Exit` or `Error`; keepalives are skipped).
/// `None` means the connection ended without `Exit`/`Error`: open the
/// stream again from [`OutputStream::cursor`] to resume.
pub struct OutputStream {
    resp: reqwest::Response,
    form: StreamForm,
    frames: execgate_protocol::output_frames::FrameDecoder,
    sse: Vec<u8>,
    cursor: u64,
    done: bool,
}

impl OutputStream {
    pub fn form(&self) -> StreamForm {
        self.form
    }

    /// The last seq delivered (or reported lost): where to resume.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next item; `Ok(None)` at the end of the connection.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let item = match self.form {
                StreamForm::Binary => self
                    .frames
                    .next_frame()
                    .map_err(|e| ClientError::Decode(e.to_string()))?,
                StreamForm::Sse => self.next_sse_event()?,
            };
            if let Some(item) = item {
                match &item {
                    StreamItem::Output { seq, .. } | StreamItem::Exit { seq, .. } => {
                        self.cursor = self.cursor.max(*seq)
                    }
                    StreamItem::Lost { to_seq, .. } => self.cursor = self.cursor.max(*to_seq),
                    StreamItem::Keepalive | StreamItem::Unknown { .. } => continue,
                    StreamItem::Error { .. } => {}
                }
                self.done = matches!(item, StreamItem::Exit { .. } | StreamItem::Error { .. });
                return Ok(Some(item));
            }
            match self.resp.chunk().await? {
                Some(bytes) => match self.form {
                    StreamForm::Binary => self.frames.push(&bytes),
                    StreamForm::Sse => self.sse.extend_from_slice(&bytes),
                },
                None => return Ok(None),
            }
        }
    }

    /// The next whole SSE event as an item (comments become keepalives).
    fn next_sse_event(&mut self) -> Result<Option<StreamItem>, ClientError> {
        let Some(end) = self.sse.windows(2).position(|w| w == b"\n\n") else {
            return Ok(None);
        };
        let block: Vec<u8> = self.sse.drain(..end + 2).collect();
        let text = String::from_utf8(block)
            .map_err(|_| ClientError::Decode("an SSE event that is not UTF-8".into()))?;
        let (mut event, mut id, mut data) = ("message", None, String::new());
        for line in text.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value,
                "id" => id = value.parse::<u64>().ok(),
                "data" => data.push_str(value),
                _ => {}
            }
        }
        let bad = |e: &dyn std::fmt::Display| ClientError::Decode(format!("SSE {event}: {e}"));
        let v: Value = if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&data).map_err(|e| bad(&e))?
        };
        let seq = id.unwrap_or(self.cursor);
        Ok(Some(match event {
            "output" => {
                let stream = serde_json::from_value(v["stream"].clone()).map_err(|e| bad(&e))?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(v["data_b64"].as_str().unwrap_or_default())
                    .map_err(|e| bad(&e))?;
                StreamItem::Output {
                    stream,
                    seq,
                    data: data.into(),
                }
            }
            "lost" => StreamItem::Lost {
                from_seq: v["from_seq"].as_u64().unwrap_or(self.cursor + 1),
                to_seq: v["to_seq"].as_u64().unwrap_or(seq),
                bytes: v["bytes"].as_u64(),
            },
            "exit" => StreamItem::Exit {
                seq,
                exit_code: v["exit_code"].as_i64().map(|c| c as i32),
            },
            "error" => StreamItem::Error {
                code: v["code"].as_str().unwrap_or("error").to_string(),
                message: v["message"].as_str().unwrap_or_default().to_string(),
            },
            _ => StreamItem::Keepalive,
        }))
    }
}

impl Client {
    /// Opens the process's output stream after seq `since`, asking for the
    /// binary form (`Accept: application/octet-stream, text/event-stream;q=0.5`)
    /// unless `binary` is false; a gateway without it answers SSE, which
    /// the stream reads as well ([`OutputStream::form`] says which came).
    pub async fn stream(
        &self,
        sid: &str,
        since: u64,
        binary: bool,
    ) -> Result<OutputStream, ClientError> {
        let accept = if binary {
            "application/octet-stream, text/event-stream;q=0.5"
        } else {
            "text/event-stream"
        };
        let resp = self
            .http
            .get(format!(
                "{}?since={since}",
                self.url(&format!("/processes/{}/stream", encode(sid)))
            ))
            .header(reqwest::header::ACCEPT, accept)
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await?;
            return Err(api_error(status.as_u16(), &body));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let form = if ct.starts_with(execgate_protocol::output_frames::CONTENT_TYPE) {
            StreamForm::Binary
        } else if ct.starts_with("text/event-stream") {
            StreamForm::Sse
        } else {
            return Err(ClientError::Decode(format!(
                "the stream came as '{ct}', neither binary frames nor SSE"
            )));
        };
        Ok(OutputStream {
            resp,
            form,
            frames: Default::default(),
            sse: Vec::new(),
            cursor: since,
            done: false,
        })
    }
}

/// Percent-encodes one path segment.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::encode("gpu-1"), "gpu-1");
        assert_eq!(super::encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn retry_delays_back_off_and_honour_retry_after() {
        use std::time::Duration;
        let d = super::retry_delay(1, None);
        assert!(d >= Duration::from_millis(125) && d <= Duration::from_millis(250));
        assert!(super::retry_delay(9, None) <= Duration::from_secs(4));
        assert_eq!(super::retry_delay(1, Some("3")), Duration::from_secs(3));
        assert_eq!(super::retry_delay(1, Some("999")), Duration::from_secs(10));
    }

    /// One request read off `conn`: its head, lowercased.
    async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(conn.read(&mut byte).await.unwrap(), 1);
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap().to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0; len];
        conn.read_exact(&mut body).await.unwrap();
        head
    }

    /// A 503, then a lost answer, then the answer: three attempts with one
    /// key; a second call has its own key.
    #[tokio::test]
    async fn mutating_calls_retry_with_one_key() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut keys = Vec::new();
            for answer in [
                Some("HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"),
                None,
                Some("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}"),
                Some("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}"),
            ] {
                let (mut conn, _) = listener.accept().await.unwrap();
                let head = read_request(&mut conn).await;
                keys.push(
                    head.lines()
                        .find_map(|l| l.strip_prefix("idempotency-key: "))
                        .unwrap()
                        .to_string(),
                );
                if let Some(a) = answer {
                    conn.write_all(a.as_bytes()).await.unwrap();
                }
            }
            keys
        });
        let client = super::Client::new(url, "t").unwrap();
        client.terminate("s1").await.unwrap();
        client.terminate("s1").await.unwrap();
        let keys = server.await.unwrap();
        assert_eq!(keys[0], keys[1]);
        assert_eq!(keys[1], keys[2]);
        assert_ne!(keys[2], keys[3]);
        assert!(keys[0].starts_with("egk_"), "{keys:?}");
    }

    /// Reads are retried as they are, without a key: a read-only tool
    /// after a load balancer's 502 and a lost answer, `output` after a 503;
    /// the gateway's own 502 `executor_error` is not retried.
    #[tokio::test]
    async fn reads_retry_without_a_key() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ok = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let executor_error = r#"{"error":{"code":"executor_error","message":"x"}}"#;
        let answers = [
            Some("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad".to_string()),
            None,
            Some(ok(r#"{"content":[],"isError":false}"#)),
            Some("HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()),
            Some(ok(r#"{"chunks":[],"exit_code":null,"session_alive":true,"truncated":false,"lost_bytes":0}"#)),
            Some(format!(
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{executor_error}",
                executor_error.len()
            )),
        ];
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            for answer in answers {
                let (mut conn, _) = listener.accept().await.unwrap();
                heads.push(read_request(&mut conn).await);
                if let Some(a) = answer {
                    conn.write_all(a.as_bytes()).await.unwrap();
                }
            }
            heads
        });
        let client = super::Client::new(url, "t").unwrap();
        let r = client
            .call_tool("e", "read_file", serde_json::json!({"path": "a"}))
            .await
            .unwrap();
        assert!(!r.is_error);
        client.output("s1", 0, None).await.unwrap();
        let e = client
            .call_tool("e", "list_dir", serde_json::json!({"path": "."}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("executor_error"));
        let heads = server.await.unwrap();
        assert_eq!(heads.len(), 6, "{heads:?}");
        for head in &heads {
            assert!(!head.contains("idempotency-key"), "{head}");
        }
        assert!(heads[..3]
            .iter()
            .all(|h| h.starts_with("post /api/connectors/envs/e/tool/call ")));
        assert!(heads[3..5]
            .iter()
            .all(|h| h.starts_with("get /api/connectors/processes/s1/output")));
    }

    /// A gateway that answers SSE whatever the Accept (one older than the
    /// binary form): the client asked for binary, and reads the SSE.
    #[tokio::test]
    async fn a_stream_answered_as_sse_is_read_as_sse() {
        use super::{StreamForm, StreamItem};
        use execgate_protocol::exec::Stream;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let head = read_request(&mut conn).await;
            let body =
                "event: output\nid: 3\ndata: {\"data_b64\":\"/wBoaQ==\",\"stream\":\"stderr\"}\n\n\
                        : keepalive\n\n\
                        event: lost\nid: 7\ndata: {\"from_seq\":4,\"to_seq\":7,\"bytes\":12}\n\n\
                        event: exit\nid: 9\ndata: {\"exit_code\":4}\n\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
            head
        });
        let client = super::Client::new(url, "t").unwrap();
        let mut s = client.stream("ps_1", 2, true).await.unwrap();
        assert_eq!(s.form(), StreamForm::Sse);
        let mut items = Vec::new();
        while let Some(item) = s.next().await.unwrap() {
            items.push(item);
        }
        assert_eq!(
            items,
            vec![
                StreamItem::Output {
                    stream: Stream::Stderr,
                    seq: 3,
                    data: bytes::Bytes::from_static(b"\xff\x00hi"),
                },
                StreamItem::Lost {
                    from_seq: 4,
                    to_seq: 7,
                    bytes: Some(12),
                },
                StreamItem::Exit {
                    seq: 9,
                    exit_code: Some(4),
                },
            ]
        );
        assert_eq!(s.cursor(), 9);
        let head = server.await.unwrap();
        assert!(head.contains("accept: application/octet-stream"), "{head}");
        assert!(
            head.starts_with("get /api/connectors/processes/ps_1/stream?since=2 "),
            "{head}"
        );
    }
}
