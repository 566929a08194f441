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
        })
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

    /// The connected environments of the token's workspace.
    pub async fn envs(&self) -> Result<Vec<ConnectorEnv>, ClientError> {
        let r: EnvsListResponse = self
            .send(
                self.http
                    .post(self.url("/envs/list"))
                    .json(&serde_json::json!({})),
            )
            .await?;
        Ok(r.envs)
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
        self.send(
            self.http
                .post(self.url(&format!("/envs/{}/tool/call", encode(env))))
                .json(&body),
        )
        .await
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
            .send(
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
        self.send(self.http.get(url)).await
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
            .send(
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
        let r: ProcessListResponse = self.send(self.http.get(self.url("/processes"))).await?;
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
            .send(
                self.http
                    .post(self.url(&format!("/processes/{}/signal", encode(sid))))
                    .json(&SignalRequest { signal }),
            )
            .await?;
        Ok(())
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
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::encode("gpu-1"), "gpu-1");
        assert_eq!(super::encode("a/b c"), "a%2Fb%20c");
    }
}
