//! How an executor reaches the gateway, in two steps (as codex's outbound
//! "direct" transport does):
//!
//! 1. `POST /cloud/environment/{environment_id}/direct/register`, with the
//!    executor token as bearer, answers a single-use, short-lived WebSocket URL.
//!    A stock codex signs it with AWS SigV4 instead (see [`crate::link::sigv4`]) and
//!    gets a URL without a ticket: codex registers once and re-dials that
//!    same URL for its whole life, so each upgrade is authenticated by its
//!    own SigV4 signature and the URL itself grants nothing.
//! 2. `GET` that URL upgrades to the link. The gateway then speaks first:
//!    `initialize` (with `resumeSessionId` when it knows the executor's
//!    session, so processes survive reconnects and gateway restarts), then
//!    `initialized`, and only then registers the link.
//!
//! The link itself, once upgraded, is `crate::link::connect`.
//!
//! What an executor can make the gateway hold is bounded (README, "Security
//! model"): one ticket and one link in its handshake at a time, and none
//! while it has a live link (409 `executor_already_connected`); at most
//! [`HANDSHAKE_READ_BUDGET`] bytes read from its socket before the handshake
//! is done; frames of at most [`MAX_FRAME`] after (the one read buffer a
//! link keeps is at most that large). A link silent for the ping
//! timeout is declared dead. The WebSocket upgrade is done here (not by
//! axum's extractor) so that the socket can be read through that budget.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, OriginalUri, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use execgate_protocol::connectors::error_code as code;
use execgate_protocol::register::{
    environment_id_from_token, RegisterRequest, RegisterResponse, TRANSPORT_DIRECT,
};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::http::error::ApiError;
use crate::http::extract::{bearer_token, parse_json_body, ApiPath};
use crate::link::connect::{
    run_link, Budgeted, LinkSocket, HANDSHAKE_READ_BUDGET, LINK_READ_BUFFER, MAX_FRAME,
};
use crate::link::liveness;
use crate::link::registry::{Busy, HandshakeSlot};
use crate::link::sigv4;
use crate::ops::state::{AppState, Ticket, TICKET_TTL};
use crate::secret;
use crate::store::ExecutorRow;

/// Checks an executor token against the environment in the path.
async fn authenticate_executor(
    state: &AppState,
    environment_id: &str,
    headers: &HeaderMap,
) -> Result<ExecutorRow, ApiError> {
    let token = bearer_token(headers)?;
    let invalid = || {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            code::INVALID_TOKEN,
            format!("the executor token is not valid for environment {environment_id:?}"),
        )
    };
    if environment_id_from_token(token) != Some(environment_id) {
        return Err(invalid());
    }
    let row = state
        .store()
        .executor(environment_id)
        .await?
        .ok_or_else(invalid)?;
    let presented = secret::sha256_hex(token.as_bytes());
    if !secret::constant_time_eq(presented.as_bytes(), row.token_hash.as_bytes()) {
        return Err(invalid());
    }
    Ok(row)
}

fn sigv4_refused(environment_id: &str, why: String) -> ApiError {
    tracing::warn!(environment_id, "SigV4 request refused: {why}");
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        code::INVALID_TOKEN,
        format!("the SigV4 signature is not valid for environment {environment_id:?}: {why}"),
    )
}

/// Checks a SigV4-signed request (a stock codex) against the key of the
/// environment in the path, and returns its row and the request's
/// signature, to be spent ([`spend_signature`]) once the request is to
/// succeed. Any failure is a 401: codex then exits for good, which is right
/// for a wrong secret.
async fn authenticate_sigv4(
    state: &AppState,
    environment_id: &str,
    req: &sigv4::Request<'_>,
) -> Result<(ExecutorRow, String), ApiError> {
    let refused = |why: String| sigv4_refused(environment_id, why);
    let auth = sigv4::authorization(req).map_err(|e| refused(e.to_string()))?;
    let key = state
        .store()
        .sigv4_key(&auth.key_id)
        .await?
        .filter(|k| k.exe_id == environment_id)
        .ok_or_else(|| refused(sigv4::SigV4Error::UnknownKey.to_string()))?;
    let key_ref = sigv4::Key {
        key_id: &key.key_id,
        secret: &key.secret,
    };
    sigv4::verify(req, &key_ref, std::time::SystemTime::now())
        .map_err(|e| refused(e.to_string()))?;
    let row = state
        .store()
        .executor(environment_id)
        .await?
        .ok_or_else(|| refused("the executor was removed".into()))?;
    Ok((row, auth.signature))
}

/// A valid signature is accepted once: a captured register or upgrade sent
/// again is refused with 401 (codex signs each request afresh). Spent only
/// by a request about to succeed, so that a refused one (a 409 while the
/// executor's old link is still up) does not spoil codex's retry.
async fn spend_signature(
    state: &AppState,
    environment_id: &str,
    signature: &str,
) -> Result<(), ApiError> {
    state
        .sigv4_replays()
        .first_use(signature)
        .map_err(|e| sigv4_refused(environment_id, e.to_string()))?;
    if state.cluster().is_some() {
        // Replicas: spent on every replica, not only on this one.
        let now = crate::store::now_ms();
        let keep = (2 * sigv4::MAX_SKEW + std::time::Duration::from_secs(60)).as_millis() as i64;
        let hash = secret::sha256_hex(signature.as_bytes());
        if !state
            .store()
            .spend_signature(&hash, now, now + keep)
            .await?
        {
            return Err(sigv4_refused(
                environment_id,
                "this signature was already used (on another replica)".into(),
            ));
        }
    }
    Ok(())
}

/// Counts a refused register or upgrade (`execgate_executor_links_total{event="refused"}`).
fn count_refusal<T>(r: Result<T, ApiError>) -> Result<T, ApiError> {
    if r.is_err() {
        if let Some(m) = crate::metrics::get() {
            m.link(crate::metrics::LinkEvent::Refused);
        }
    }
    r
}

pub async fn register(
    state: State<AppState>,
    environment_id: ApiPath<String>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RegisterResponse>, ApiError> {
    count_refusal(register_checked(state, environment_id, uri, headers, body).await)
}

async fn register_checked(
    State(state): State<AppState>,
    ApiPath(environment_id): ApiPath<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RegisterResponse>, ApiError> {
    // Two Authorization headers: 400, whichever scheme they use.
    crate::http::extract::single_header(&headers, &axum::http::header::AUTHORIZATION)?;
    let signed = sigv4::is_sigv4(&headers);
    let (row, signature) = if signed {
        let req = sigv4::Request {
            method: "POST",
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            body: &body,
        };
        let (row, signature) = authenticate_sigv4(&state, &environment_id, &req).await?;
        (row, Some(signature))
    } else {
        let row = authenticate_executor(&state, &environment_id, &headers).await?;
        (row, None)
    };
    let req: RegisterRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterRequest {
            transport: TRANSPORT_DIRECT.into(),
            name: None,
            is_default: None,
        }
    } else {
        parse_json_body(&body)?
    };
    if req.transport != TRANSPORT_DIRECT {
        return Err(ApiError::bad_request(format!(
            "transport {:?} is not supported; use {TRANSPORT_DIRECT:?}",
            req.transport
        )));
    }
    if let Some(name) = &req.name {
        if *name != row.name {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                code::CONFLICT,
                format!(
                    "this executor token belongs to environment {:?}, not {name:?}; drop --name or use the right token",
                    row.name
                ),
            ));
        }
    }
    check_free(&state, &row.exe_id, None)?;
    check_free_elsewhere(&state, &row.exe_id).await?;
    if let Some(signature) = &signature {
        spend_signature(&state, &row.exe_id, signature).await?;
    }
    if req.is_default == Some(true) && !row.is_default {
        state.store().set_default_executor(&row.exe_id).await?;
    }

    let base = ws_base_url(&state, &headers);
    let connect_url = format!("{base}/cloud/environment/{}/direct/connect", row.exe_id);
    if signed {
        return Ok(Json(RegisterResponse {
            environment_id: row.exe_id.clone(),
            url: connect_url,
            transport: TRANSPORT_DIRECT.into(),
            registration_id: secret::random_id("reg_", 8),
        }));
    }
    let ticket = secret::random_token("", 24);
    if state.cluster().is_some() {
        // Replicas: in the store, so that the WebSocket may reach any
        // replica (a load balancer without session affinity).
        let now = crate::store::now_ms();
        let ttl = TICKET_TTL.as_millis() as i64;
        state
            .store()
            .put_connect_ticket(
                &secret::sha256_hex(ticket.as_bytes()),
                &row.exe_id,
                now,
                now + ttl,
            )
            .await?;
    } else {
        let mut tickets = state.tickets().lock().unwrap();
        let now = Instant::now();
        // One ticket per executor: a new one replaces the last, so
        // registering in a loop holds nothing.
        tickets.retain(|_, t| t.expires > now && t.exe_id != row.exe_id);
        tickets.insert(
            ticket.clone(),
            Ticket {
                exe_id: row.exe_id.clone(),
                expires: now + TICKET_TTL,
            },
        );
    }
    Ok(Json(RegisterResponse {
        environment_id: row.exe_id.clone(),
        url: format!("{connect_url}?ticket={ticket}"),
        transport: TRANSPORT_DIRECT.into(),
        registration_id: secret::random_id("reg_", 8),
    }))
}

/// 409 `executor_already_connected` when `exe_id` has a live link (or one
/// in its handshake), else the handshake slot when `claim`.
fn check_free(
    state: &AppState,
    exe_id: &str,
    claim: Option<()>,
) -> Result<Option<HandshakeSlot>, ApiError> {
    let alive_for = state.config().link.ping_timeout;
    let r = match claim {
        Some(()) => state
            .registry()
            .begin_handshake(exe_id, alive_for)
            .map(Some),
        None => state
            .registry()
            .check_free(exe_id, alive_for)
            .map(|()| None),
    };
    r.map_err(|busy| {
        let what = match busy {
            Busy::Connected => "is connected and answering",
            Busy::Handshaking => "is connecting right now",
        };
        tracing::warn!(
            exe_id,
            "refused a second executor with the same token: the first {what}"
        );
        ApiError::new(
            StatusCode::CONFLICT,
            code::EXECUTOR_ALREADY_CONNECTED,
            format!(
                "another executor with this token {what} (environment {exe_id}); \
                 stop the other one, or wait: a connection that stopped answering is \
                 dropped within {}s",
                alive_for.as_secs()
            ),
        )
    })
}

/// On a replica, the same 409 when another replica holds a live link of
/// `exe_id` and confirms it (`link::liveness`): one live link per executor
/// across the cluster, not only per replica.
async fn check_free_elsewhere(state: &AppState, exe_id: &str) -> Result<(), ApiError> {
    let Some(cluster) = state.cluster() else {
        return Ok(());
    };
    let Some(holder) = liveness::held_elsewhere(cluster, state.store(), exe_id).await else {
        return Ok(());
    };
    let alive_for = state.config().link.ping_timeout;
    tracing::warn!(
        exe_id,
        holder = %holder,
        "refused a second executor with the same token: the first is connected to another replica and answering"
    );
    Err(ApiError::new(
        StatusCode::CONFLICT,
        code::EXECUTOR_ALREADY_CONNECTED,
        format!(
            "another executor with this token is connected and answering (environment {exe_id}, \
             through another replica); stop the other one, or wait: a connection that stopped \
             answering is dropped within {}s",
            alive_for.as_secs()
        ),
    ))
}

/// `ws://host:port` as the executor should dial it.
fn ws_base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(public) = &state.config().public_url {
        let public = public.trim_end_matches('/');
        return public
            .strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
            .or_else(|| public.strip_prefix("http://").map(|r| format!("ws://{r}")))
            .unwrap_or_else(|| public.to_string());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| state.config().listen.to_string());
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if tls { "wss" } else { "ws" })
}

#[derive(Deserialize)]
pub struct ConnectQuery {
    /// Absent for SigV4 executors, whose upgrade is signed instead.
    ticket: Option<String>,
}

pub async fn connect(
    state: State<AppState>,
    environment_id: ApiPath<String>,
    uri: OriginalUri,
    headers: HeaderMap,
    q: Query<ConnectQuery>,
    ws: LinkUpgrade,
) -> Result<Response, ApiError> {
    count_refusal(connect_checked(state, environment_id, uri, headers, q, ws).await)
}

async fn connect_checked(
    State(state): State<AppState>,
    ApiPath(environment_id): ApiPath<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(q): Query<ConnectQuery>,
    ws: LinkUpgrade,
) -> Result<Response, ApiError> {
    crate::http::extract::single_header(&headers, &axum::http::header::AUTHORIZATION)?;
    let mut signature = None;
    if sigv4::is_sigv4(&headers) {
        let req = sigv4::Request {
            method: "GET",
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            body: b"",
        };
        signature = Some(authenticate_sigv4(&state, &environment_id, &req).await?.1);
    } else {
        let valid = match q.ticket {
            None => false,
            Some(t) if state.cluster().is_some() => {
                let hash = secret::sha256_hex(t.as_bytes());
                let now = crate::store::now_ms();
                state
                    .store()
                    .take_connect_ticket(&hash, now)
                    .await?
                    .as_deref()
                    == Some(environment_id.as_str())
            }
            Some(t) => {
                let ticket = state.tickets().lock().unwrap().remove(&t);
                ticket.is_some_and(|t| t.exe_id == environment_id && t.expires > Instant::now())
            }
        };
        if !valid {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::INVALID_TOKEN,
                "unknown, used or expired connect ticket; register again",
            ));
        }
    }
    let ws =
        ws.0.map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    let row = state
        .store()
        .executor(&environment_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the executor was removed"))?;
    let slot = check_free(&state, &row.exe_id, Some(()))?;
    check_free_elsewhere(&state, &row.exe_id).await?;
    if let Some(signature) = &signature {
        spend_signature(&state, &row.exe_id, signature).await?;
    }
    Ok(ws.upgrade(move |socket, budget| run_link(state.host(), row, socket, budget, slot)))
}

/// The parts of a WebSocket upgrade request (HTTP/1.1), checked; the
/// upgrade itself is [`Upgrade::upgrade`]. An `Err` is kept for the
/// handler, so that authentication answers first.
pub struct LinkUpgrade(pub(crate) Result<Upgrade, String>);

pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for LinkUpgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(LinkUpgrade(Upgrade::from_parts(parts)))
    }
}

impl Upgrade {
    fn from_parts(parts: &mut Parts) -> Result<Upgrade, String> {
        let has = |name: header::HeaderName, token: &str| {
            parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|v| v.trim().eq_ignore_ascii_case(token))
        };
        if parts.method != Method::GET || parts.version > Version::HTTP_11 {
            return Err("an HTTP/1.1 GET is needed".into());
        }
        if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
            return Err("Connection: upgrade and Upgrade: websocket are needed".into());
        }
        if !has(header::SEC_WEBSOCKET_VERSION, "13") {
            return Err("Sec-WebSocket-Version: 13 is needed".into());
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or("no Sec-WebSocket-Key")?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or("the connection cannot be upgraded")?;
        Ok(Upgrade { key, on_upgrade })
    }

    /// Answers 101 and, once the connection is handed over, runs `serve`
    /// with the WebSocket, read through a budget of
    /// [`HANDSHAKE_READ_BUDGET`] bytes until `serve` lifts it.
    pub(crate) fn upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(LinkSocket, Arc<AtomicU64>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::debug!("executor link upgrade failed: {e}"),
            };
            let budget = Arc::new(AtomicU64::new(HANDSHAKE_READ_BUDGET));
            let io = Budgeted::new(hyper_util::rt::TokioIo::new(upgraded), budget.clone());
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_FRAME))
                .max_frame_size(Some(MAX_FRAME))
                .read_buffer_size(LINK_READ_BUFFER);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(socket, budget).await;
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_str(&accept).expect("base64 is a header value"),
                ),
            ],
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Link;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use axum::body::Body;
    use axum::http::Request;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    async fn state() -> (tempfile::TempDir, AppState) {
        crate::ops::state::test_state(|_| {}).await
    }

    async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let res = crate::http::router(state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    const BODY: &str = r#"{"transport":"direct_jsonrpc_v1"}"#;

    /// A register request signed as codex signs it (`signed_headers` as
    /// the signer makes them, unless `edit` changes the header).
    fn signed_register(
        exe_id: &str,
        key_id: &str,
        secret: &str,
        edit: impl Fn(String) -> String,
    ) -> Vec<(String, String)> {
        let path = format!("/cloud/environment/{exe_id}/direct/register");
        let identity = Credentials::new(key_id, secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name(sigv4::SERVICE)
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers = [("content-type", "application/json"), ("host", "gw.test")];
        let signable = SignableRequest::new(
            "POST",
            format!("http://gw.test{path}"),
            headers.iter().copied(),
            SignableBody::Bytes(BODY.as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut out = Vec::new();
        for (k, v) in headers.iter().copied().chain(instructions.headers()) {
            let v = if k == "authorization" {
                edit(v.to_string())
            } else {
                v.to_string()
            };
            out.push((k.to_string(), v));
        }
        out
    }

    fn register_request(exe_id: &str, headers: &[(String, String)]) -> Request<Body> {
        let mut req = Request::post(format!("/cloud/environment/{exe_id}/direct/register"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.body(Body::from(BODY)).unwrap()
    }

    /// Regression: a signed register sent again within the skew window was
    /// accepted (and a replayed upgrade replaced the real executor's link).
    #[tokio::test]
    async fn a_replayed_sigv4_request_is_refused() {
        let (_d, st) = state().await;
        let key = st
            .store()
            .add_sigv4_executor("w1", "codex", false)
            .await
            .unwrap();
        let headers = signed_register(&key.exe_id, &key.key_id, &key.secret, |v| v);
        let (status, body) = send(&st, register_request(&key.exe_id, &headers)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // The captured request, sent again.
        let (status, body) = send(&st, register_request(&key.exe_id, &headers)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("already used"),
            "{body}"
        );
    }

    /// Regression: `SignedHeaders` without `host` made aws-sigv4 panic in
    /// the handler; it is a 401 now.
    #[tokio::test]
    async fn sigv4_without_a_signed_host_is_a_401_not_a_panic() {
        let (_d, st) = state().await;
        let key = st
            .store()
            .add_sigv4_executor("w1", "codex", false)
            .await
            .unwrap();
        let headers = signed_register(&key.exe_id, &key.key_id, &key.secret, |v| {
            v.replace("content-type;host;x-amz-date", "content-type;x-amz-date")
        });
        let (status, body) = send(&st, register_request(&key.exe_id, &headers)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "invalid_token");
        assert!(body["error"]["message"].as_str().unwrap().contains("host"));
    }

    fn bearer_register(exe_id: &str, token: &str) -> Request<Body> {
        Request::post(format!("/cloud/environment/{exe_id}/direct/register"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(BODY))
            .unwrap()
    }

    /// Regression: two executors started with the same token replaced each
    /// other's link in a loop; the second is refused while the first is
    /// connected and alive, and a new register replaces the last ticket.
    #[tokio::test]
    async fn a_second_executor_with_the_same_token_is_refused_409() {
        let (_d, st) = state().await;
        let (exe_id, token) = st.store().add_executor("w1", "laptop", true).await.unwrap();
        // Registering twice holds one ticket, not two.
        for _ in 0..2 {
            let (status, body) = send(&st, bearer_register(&exe_id, &token)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        assert_eq!(st.tickets().lock().unwrap().len(), 1);

        let (tx, _rx) = mpsc::unbounded_channel();
        let link = Link::new(exe_id.clone(), "w1".into(), "laptop".into(), tx);
        st.registry().insert(link.clone());
        let (status, body) = send(&st, bearer_register(&exe_id, &token)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "executor_already_connected");
        // Once the first is gone (or declared dead), the next one gets in.
        link.close("the executor went away");
        let (status, body) = send(&st, bearer_register(&exe_id, &token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
