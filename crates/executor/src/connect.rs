//! Reaching the gateway: registering, dialling the WebSocket, and the backoff
//! between attempts.
//!
//! 1. `POST {gateway}/cloud/environment/{exe_id}/direct/register` with the
//!    executor token as a bearer token answers a short-lived WebSocket URL.
//! 2. The executor dials that URL, again with the bearer token, and from then
//!    on serves JSON-RPC on it (see [`crate::connection`]).
//!
//! The gateway URL may be given as `http(s)://` or `ws(s)://`; each step uses
//! the scheme it needs. TCP_NODELAY is set on both sockets: without it, a
//! small frame that follows a response can stall ~40 ms against a peer that
//! delays its ACKs.

use std::time::Duration;

use execgate_protocol::register::{
    environment_id_from_token, RegisterRequest, RegisterResponse, TRANSPORT_DIRECT,
};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::error::{error_chain, ConnectError};
use crate::{ExecutorConfig, ExecutorError};

/// Largest WebSocket message and frame we accept. `fs/writeFile` carries a
/// whole file as base64 in one message.
const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Longest a register request may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the TCP/TLS/WebSocket handshake may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type GatewaySocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and how this executor connects.
pub(crate) struct Gateway {
    /// The gateway's base URL, with an `http` or `https` scheme.
    base: Url,
    register_url: Url,
    bearer: HeaderValue,
    name: Option<String>,
    is_default: bool,
}

impl Gateway {
    /// Checks the URL and token; nothing here touches the network.
    #[cfg(test)]
    pub fn new(config: &ExecutorConfig) -> Result<Self, ExecutorError> {
        Self::with_url(config, &config.gateway_url)
    }

    /// Every gateway of `config`: `gateway_url`, then the fallbacks, in order.
    pub fn all(config: &ExecutorConfig) -> Result<Vec<Self>, ExecutorError> {
        std::iter::once(&config.gateway_url)
            .chain(&config.fallback_gateway_urls)
            .map(|url| Self::with_url(config, url))
            .collect()
    }

    /// The gateway at `url` (checked as [`Gateway::new`] checks it).
    pub fn with_url(config: &ExecutorConfig, url: &str) -> Result<Self, ExecutorError> {
        let environment_id =
            environment_id_from_token(&config.token).ok_or(ExecutorError::InvalidToken)?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", config.token))
            .map_err(|_| ExecutorError::InvalidToken)?;
        let invalid = |reason: &str| ExecutorError::InvalidGatewayUrl {
            url: url.to_string(),
            reason: reason.into(),
        };
        let base = normalize(url).map_err(|e| invalid(&e))?;
        let mut register_url = base.clone();
        register_url
            .path_segments_mut()
            .map_err(|()| invalid("cannot hold a path"))?
            .pop_if_empty()
            .extend(["cloud", "environment", environment_id, "direct", "register"]);
        Ok(Gateway {
            base,
            register_url,
            bearer,
            name: config.name.clone(),
            is_default: config.is_default,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Registers, then dials the URL the gateway answered.
    pub async fn connect(&self, http: &reqwest::Client) -> Result<GatewaySocket, ConnectError> {
        let registered = self.register(http).await?;
        let url = self.websocket_url(&registered.url)?;
        tracing::debug!(registration = %registered.registration_id, "registered; dialling");
        self.dial(&url).await
    }

    async fn register(&self, http: &reqwest::Client) -> Result<RegisterResponse, ConnectError> {
        let body = RegisterRequest {
            transport: TRANSPORT_DIRECT.into(),
            name: self.name.clone(),
            is_default: self.is_default.then_some(true),
        };
        let response = http
            .post(self.register_url.clone())
            .header(header::AUTHORIZATION, self.bearer.clone())
            .timeout(REGISTER_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| ConnectError::Register(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ConnectError::Rejected {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        response
            .json::<RegisterResponse>()
            .await
            .map_err(|e| ConnectError::BadResponse(error_chain(&e)))
    }

    /// The URL to dial: the gateway's answer, resolved against the gateway's
    /// URL if relative, with `http(s)` turned into `ws(s)`.
    fn websocket_url(&self, answered: &str) -> Result<Url, ConnectError> {
        let mut url = self
            .base
            .join(answered)
            .map_err(|e| ConnectError::BadResponse(format!("bad url {answered:?}: {e}")))?;
        let scheme = match url.scheme() {
            "ws" | "http" => "ws",
            "wss" | "https" => "wss",
            other => {
                return Err(ConnectError::BadResponse(format!(
                    "bad url {answered:?}: unsupported scheme {other}"
                )))
            }
        };
        url.set_scheme(scheme)
            .map_err(|()| ConnectError::BadResponse(format!("bad url {answered:?}")))?;
        Ok(url)
    }

    async fn dial(&self, url: &Url) -> Result<GatewaySocket, ConnectError> {
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Dial(Box::new(e)))?;
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, self.bearer.clone());
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        // `true` disables Nagle's algorithm (TCP_NODELAY).
        let dial = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(err)) => Err(ConnectError::Dial(Box::new(err))),
            Err(_) => Err(ConnectError::DialTimeout(DIAL_TIMEOUT)),
        }
    }
}

/// A gateway URL as the executor uses it: `ws(s)` turned into `http(s)`, no
/// query or fragment. Two spellings of one gateway normalise the same.
fn normalize(url: &str) -> Result<Url, String> {
    let mut base = Url::parse(url).map_err(|e| e.to_string())?;
    let scheme = match base.scheme() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return Err("the scheme must be http, https, ws or wss".into()),
    };
    base.set_scheme(scheme)
        .map_err(|()| "cannot use an http scheme".to_string())?;
    if base.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

/// The order in which to dial after gateway `current` asked this executor
/// to move: the gateway's `hints` that are ours, in the hint's order (a
/// hint never sends the token anywhere new; a draining replica fills it
/// with the other live replicas), then the rest of ours from the next one
/// on, the one that asked last (with a single URL, the same one: behind a
/// load balancer it lands elsewhere). Every index once.
pub(crate) fn after_move(gateways: &[Url], current: usize, hints: &[String]) -> Vec<usize> {
    let n = gateways.len();
    let same =
        |g: &Url, h: &Url| g.as_str().trim_end_matches('/') == h.as_str().trim_end_matches('/');
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for hint in hints.iter().filter_map(|h| normalize(h).ok()) {
        if let Some(i) = gateways.iter().position(|g| same(g, &hint)) {
            if i != current && !order.contains(&i) {
                order.push(i);
            }
        }
    }
    for step in 1..=n {
        let i = (current + step) % n.max(1);
        if !order.contains(&i) {
            order.push(i);
        }
    }
    order
}

/// The message of a `{"error":{"code","message"}}` body, else the body itself
/// (shortened).
fn error_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        #[serde(default)]
        code: String,
        message: String,
    }
    if let Ok(Body { error }) = serde_json::from_str::<Body>(body) {
        return if error.code.is_empty() {
            error.message
        } else {
            format!("{} ({})", error.message, error.code)
        };
    }
    let body = body.trim();
    if body.is_empty() {
        return "no details".into();
    }
    match body.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.into(),
    }
}

/// Exponential backoff with jitter between connection attempts: 1 s,
/// doubling, at most 30 s. Each delay is drawn between half of the current
/// step and all of it, so that executors cut off together do not all come
/// back at the same instant.
pub(crate) struct Backoff {
    step: Duration,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Backoff {
            step: Self::INITIAL,
        }
    }

    /// Back to the initial step, after a connection that held.
    pub fn reset(&mut self) {
        self.step = Self::INITIAL;
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(Self::MAX);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(url: &str) -> Result<Gateway, ExecutorError> {
        Gateway::new(&ExecutorConfig::new(url, "exe_1.secret"))
    }

    #[test]
    fn register_url_from_http_and_ws_gateway_urls() {
        let g = gateway("http://127.0.0.1:6060").unwrap();
        assert_eq!(
            g.register_url.as_str(),
            "http://127.0.0.1:6060/cloud/environment/exe_1/direct/register"
        );
        let g = gateway("wss://gw.example.com/prefix/?x=1").unwrap();
        assert_eq!(
            g.register_url.as_str(),
            "https://gw.example.com/prefix/cloud/environment/exe_1/direct/register"
        );
        let g = gateway("ws://h:1/p").unwrap();
        assert_eq!(
            g.register_url.as_str(),
            "http://h:1/p/cloud/environment/exe_1/direct/register"
        );
    }

    #[test]
    fn bad_gateway_urls_and_tokens_are_refused() {
        for url in ["ftp://x", "not a url", "file:///tmp", "http://"] {
            assert!(
                matches!(gateway(url), Err(ExecutorError::InvalidGatewayUrl { .. })),
                "{url}"
            );
        }
        for token in ["nodot", ".s", "id.", "id.sec\nret"] {
            assert!(
                matches!(
                    Gateway::new(&ExecutorConfig::new("http://h", token)),
                    Err(ExecutorError::InvalidToken)
                ),
                "{token:?}"
            );
        }
    }

    #[test]
    fn websocket_url_accepts_ws_http_and_relative_answers() {
        let g = gateway("https://gw.example.com/base/").unwrap();
        let url = |s: &str| g.websocket_url(s).unwrap().to_string();
        assert_eq!(
            url("wss://gw.example.com/ws?t=1"),
            "wss://gw.example.com/ws?t=1"
        );
        assert_eq!(url("https://other/ws"), "wss://other/ws");
        assert_eq!(url("http://other:8/ws"), "ws://other:8/ws");
        assert_eq!(url("/ws/abc"), "wss://gw.example.com/ws/abc");
        assert!(g.websocket_url("ftp://x/y").is_err());
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            error_message(r#"{"error":{"code":"invalid_token","message":"bad token"}}"#),
            "bad token (invalid_token)"
        );
        assert_eq!(error_message("  plain text \n"), "plain text");
        assert_eq!(error_message(""), "no details");
        let long = "x".repeat(1000);
        assert_eq!(error_message(&long).chars().count(), 301);
    }

    #[test]
    fn every_configured_gateway_is_checked_in_order() {
        let mut config = ExecutorConfig::new("http://a:1", "exe_1.secret");
        config.fallback_gateway_urls = vec!["ws://b:2/p".into(), "https://c".into()];
        let all = Gateway::all(&config).unwrap();
        let bases: Vec<&str> = all.iter().map(|g| g.base().as_str()).collect();
        assert_eq!(bases, ["http://a:1/", "http://b:2/p", "https://c/"]);
        config.fallback_gateway_urls.push("ftp://d".into());
        assert!(matches!(
            Gateway::all(&config),
            Err(ExecutorError::InvalidGatewayUrl { url, .. }) if url == "ftp://d"
        ));
    }

    #[test]
    fn a_move_tries_the_hinted_gateways_of_ours_first_then_the_rest() {
        let urls: Vec<Url> = ["http://a:1", "http://b:2", "http://c:3", "http://d:4"]
            .iter()
            .map(|u| normalize(u).unwrap())
            .collect();
        let hints = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(after_move(&urls, 0, &[]), [1, 2, 3, 0]);
        assert_eq!(after_move(&urls, 2, &[]), [3, 0, 1, 2]);
        assert_eq!(after_move(&urls, 0, &hints(&["ws://c:3/"])), [2, 1, 3, 0]);
        assert_eq!(
            after_move(
                &urls,
                1,
                &hints(&["http://d:4", "http://a:1", "http://d:4"])
            ),
            [3, 0, 2, 1]
        );
        // A URL we were not given is never dialled; the one draining last.
        assert_eq!(
            after_move(&urls, 0, &hints(&["http://evil:1", "http://a:1"])),
            [1, 2, 3, 0]
        );
        assert_eq!(
            after_move(&urls, 1, &hints(&["nonsense", "http://a:1"])),
            [0, 2, 3, 1]
        );
        // One URL (a load balancer): the same one again.
        assert_eq!(after_move(&urls[..1], 0, &hints(&["http://b:2"])), [0]);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max_and_resets() {
        let mut backoff = Backoff::new();
        let mut steps = Vec::new();
        for _ in 0..8 {
            steps.push(backoff.step);
            let delay = backoff.next_delay();
            let step = *steps.last().unwrap();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
        }
        let secs: Vec<u64> = steps.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        backoff.reset();
        assert!(backoff.next_delay() <= Backoff::INITIAL);
    }
}
