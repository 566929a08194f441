//! How an executor reaches the gateway, in two steps (as codex's outbound
//! "direct" transport does):
//!
//! 1. `POST /cloud/environment/{environment_id}/direct/register`, with the
//!    executor token as bearer, answers a single-use, short-lived WebSocket URL.
//!    A stock codex signs it with AWS SigV4 instead (see [`crate::sigv4`]) and
//!    gets a URL without a ticket: codex registers once and re-dials that
//!    same URL for its whole life, so each upgrade is authenticated by its
//!    own SigV4 signature and the URL itself grants nothing.
//! 2. `GET` that URL upgrades to the link. The gateway then speaks first:
//!    `initialize` (with `resumeSessionId` when it knows the executor's
//!    session, so processes survive reconnects and gateway restarts), then
//!    `initialized`, and only then registers the link.
//!
//! This module also drives the socket for the link's whole life: a reader
//! task feeds [`Link::dispatch`], a writer task sends queued frames and pings.
//!
//! What an executor can make the gateway hold is bounded (README, "Security
//! model"): one ticket and one link in its handshake at a time, and none
//! while it has a live link (409 `executor_already_connected`); at most
//! [`HANDSHAKE_READ_BUDGET`] bytes read from its socket before the handshake
//! is done; frames of at most [`MAX_FRAME`] after (the one read buffer a
//! link keeps is at most that large). A link silent for the ping
//! timeout is declared dead. The WebSocket upgrade is done here (not by
//! axum's extractor) so that the socket can be read through that budget.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, OriginalUri, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use execgate_protocol::exec::{method, ClientExt, InitializeParams, InitializeResult};
use execgate_protocol::jsonrpc::Encoded;
use execgate_protocol::register::{
    environment_id_from_token, RegisterRequest, RegisterResponse, TRANSPORT_DIRECT,
};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::extract::{parse_json_body, ApiPath};
use crate::link::{Handshake, Link, LinkError};
use crate::registry::{Busy, HandshakeSlot};
use crate::secret;
use crate::sigv4;
use crate::state::{AppState, Ticket, TICKET_TTL};
use crate::store::{now_ms, ConnectInfo, ExecutorRow};

use execgate_protocol::connectors::error_code as code;

/// Largest frame (and message) accepted on a link once its handshake is
/// done. The largest legitimate ones: `read_file`'s 32 MiB through
/// `fs/readRange` (raw, in a binary frame), and a stock codex's whole-file
/// `fs/readFile` as base64 (files up to ~48 MiB this way).
///
/// tungstenite reads each frame into one buffer and keeps reading the next
/// frames into what is left of it, reusing the whole allocation when it can:
/// after a large frame, a live link keeps up to this much allocated (60 MiB
/// measured after a 60 MiB frame) until it closes or a frame needs more.
/// Hence a cap sized to the largest legitimate frame, not 256 MiB.
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes a link may read from its socket before its handshake is done: the
/// executor has only `initialize`'s answer to send (a few KiB, more with
/// custom tools' schemas). Past it the link is dropped.
pub const HANDSHAKE_READ_BUDGET: u64 = 1 << 20;

/// Bytes the link reads from its socket at a time, and the read buffer a
/// link starts with. tungstenite's default (128 KiB) is allocated up front
/// per connection and dominated an idle link's memory (~139 KiB each at
/// 10,000 links); a large frame still gets a buffer of its own size, read
/// in steps of this many bytes. See BENCHMARKS.md, "Idle executors".
const LINK_READ_BUFFER: usize = 16 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// codex answers -32010 to a `resumeSessionId` whose session is still
/// attached to its previous connection; it detaches once that socket is gone.
const SESSION_ATTACHED: i64 = -32010;
/// How long to keep retrying a resume that codex says is still attached.
const ATTACHED_RETRY_FOR: Duration = Duration::from_secs(10);

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
fn spend_signature(
    state: &AppState,
    environment_id: &str,
    signature: &str,
) -> Result<(), ApiError> {
    state
        .sigv4_replays()
        .first_use(signature)
        .map_err(|e| sigv4_refused(environment_id, e.to_string()))
}

pub async fn register(
    State(state): State<AppState>,
    ApiPath(environment_id): ApiPath<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RegisterResponse>, ApiError> {
    // Two Authorization headers: 400, whichever scheme they use.
    crate::auth::single_header(&headers, &axum::http::header::AUTHORIZATION)?;
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
    if let Some(signature) = &signature {
        spend_signature(&state, &row.exe_id, signature)?;
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
    {
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
    let alive_for = state.config().ping_timeout;
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
    State(state): State<AppState>,
    ApiPath(environment_id): ApiPath<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(q): Query<ConnectQuery>,
    ws: LinkUpgrade,
) -> Result<Response, ApiError> {
    crate::auth::single_header(&headers, &axum::http::header::AUTHORIZATION)?;
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
        let ticket = q
            .ticket
            .and_then(|t| state.tickets().lock().unwrap().remove(&t));
        let valid = ticket
            .as_ref()
            .is_some_and(|t| t.exe_id == environment_id && t.expires > Instant::now());
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
    if let Some(signature) = &signature {
        spend_signature(&state, &row.exe_id, signature)?;
    }
    Ok(ws.upgrade(move |socket, budget| run_link(state, row, socket, budget, slot)))
}

/// The parts of a WebSocket upgrade request (HTTP/1.1), checked; the
/// upgrade itself is [`Upgrade::upgrade`]. An `Err` is kept for the
/// handler, so that authentication answers first.
pub struct LinkUpgrade(Result<Upgrade, String>);

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
    fn upgrade<F, Fut>(self, serve: F) -> Response
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
            let io = Budgeted {
                inner: hyper_util::rt::TokioIo::new(upgraded),
                budget: budget.clone(),
            };
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

type LinkSocket = WebSocketStream<Budgeted<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>>;

/// A stream whose reads draw on `budget` (bytes) until it is `u64::MAX`:
/// past it, reads fail, and the WebSocket with them. This caps what a link
/// reads before its handshake whatever frame sizes the executor announces.
pub struct Budgeted<T> {
    inner: T,
    budget: Arc<AtomicU64>,
}

/// The budget of a link whose handshake is done.
const UNLIMITED: u64 = u64::MAX;

impl<T: AsyncRead + Unpin> AsyncRead for Budgeted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        let left = self.budget.load(Ordering::Acquire);
        if left != UNLIMITED {
            if n > left {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the executor sent more than {HANDSHAKE_READ_BUDGET} bytes before its handshake was done"),
                )));
            }
            // Only this reader spends, and only `lift` raises it to UNLIMITED.
            let _ =
                self.budget
                    .compare_exchange(left, left - n, Ordering::AcqRel, Ordering::Acquire);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Budgeted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves one executor link until its socket closes. `slot` is held until
/// the link is registered (or fails its handshake).
async fn run_link(
    state: AppState,
    row: ExecutorRow,
    socket: LinkSocket,
    budget: Arc<AtomicU64>,
    slot: Option<HandshakeSlot>,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Encoded>();
    let link = Link::new(
        row.exe_id.clone(),
        row.workspace.clone(),
        row.name.clone(),
        tx,
    );
    link.set_ledger(state.ledger(&row.exe_id));

    let liveness = Liveness::new(state.config().ping_timeout);
    let writer_link = link.clone();
    let writer = tokio::spawn(async move {
        let mut liveness = liveness;
        // One timer per link, set to the next moment that matters: the
        // next ping, or the ping timeout (see `Liveness`).
        let timer =
            tokio::time::sleep_until(on_grid(tokio::time::Instant::now() + liveness.ping_after));
        tokio::pin!(timer);
        'frames: loop {
            let frame = tokio::select! {
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        writer_link.written(&frame);
                        match frame {
                            Encoded::Text(text) => WsMessage::Text(text.into()),
                            Encoded::Binary(data) => WsMessage::Binary(data.into()),
                        }
                    }
                    None => break,
                },
                _ = &mut timer => {
                    let (ping, next) = liveness.check(&writer_link, true);
                    timer.as_mut().reset(next);
                    if !ping {
                        continue;
                    }
                    WsMessage::Ping(Bytes::new())
                }
                _ = writer_link.closed() => break,
            };
            // An executor that does not read (hung, or hostile) must not hold
            // the writer once the link is closed, and is declared dead on
            // time even while a frame waits for its socket.
            let send = sink.send(frame);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    sent = &mut send => match sent {
                        Ok(()) => break,
                        // Nobody else watches the link's silence now.
                        Err(e) => {
                            writer_link.close(&format!("could not write to the executor: {e}"));
                            break 'frames;
                        }
                    },
                    _ = writer_link.closed() => break 'frames,
                    _ = &mut timer => {
                        let (_, next) = liveness.check(&writer_link, false);
                        timer.as_mut().reset(next);
                    }
                }
            }
            if liveness.owed {
                timer.as_mut().reset(tokio::time::Instant::now());
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });

    let reader_link = link.clone();
    let mut reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(WsMessage::Text(t)) => reader_link.dispatch(t.as_bytes()),
                Ok(WsMessage::Binary(b)) => reader_link.dispatch_binary(b),
                Ok(WsMessage::Close(_)) => return "the executor closed the connection".to_string(),
                Ok(_) => reader_link.touch(),
                Err(e) => return format!("connection error: {e}"),
            }
        }
        "the connection ended".to_string()
    });

    let mut slot = slot;
    let reason = tokio::select! {
        hs = handshake(&state, &link, row.session_id.clone()) => match hs {
            Ok(hs) => {
                // The handshake is done: full-size frames from now on.
                budget.store(UNLIMITED, Ordering::Release);
                let slot = slot.take();
                serve_link(&state, &link, hs, row.session_id.as_deref(), slot, &mut reader).await
            }
            Err(e) => format!("handshake failed: {e}"),
        },
        r = &mut reader => r.unwrap_or_else(|e| format!("reader failed: {e}")),
        // The link closed itself (its protocol errors, a full send queue).
        _ = link.closed() => link.close_reason().unwrap_or("closed").to_string(),
    };

    link.close(&reason);
    // A failed handshake frees the executor's slot at once: its retry must
    // not meet a 409 for a link that is already gone.
    drop(slot.take());
    reader.abort();
    let _ = writer.await;
    state.registry().remove_if_same(&link);
    if state.registry().get(&link.exe_id).is_none() {
        if let Err(e) = state
            .store()
            .mark_disconnected(&link.exe_id, link.last_seen_ms())
            .await
        {
            tracing::warn!("could not record the disconnect of {}: {e}", link.exe_id);
        }
    }
    tracing::info!(exe_id = %link.exe_id, name = %link.name, workspace = %link.workspace, "executor disconnected: {reason}");
}

async fn handshake(
    state: &AppState,
    link: &Arc<Link>,
    resume: Option<String>,
) -> Result<Handshake, String> {
    let params = InitializeParams {
        client_name: "execgate-gateway".into(),
        resume_session_id: resume.clone(),
        // Output and file data may come raw (an execgate executor); a
        // stock codex ignores this.
        execgate: Some(ClientExt {
            binary_frames: true,
        }),
    };
    let attached_until = Instant::now() + ATTACHED_RETRY_FOR;
    let first = loop {
        let r = link
            .request::<_, InitializeResult>(method::INITIALIZE, &params, HANDSHAKE_TIMEOUT)
            .await;
        match r {
            // codex still holds the session for the executor's previous
            // connection (the gateway may not have noticed it die yet):
            // drop the gateway's side of it and ask again.
            Err(LinkError::Rpc { ref error, .. })
                if error.code == SESSION_ATTACHED && Instant::now() < attached_until =>
            {
                if let Some(old) = state.registry().get(&link.exe_id) {
                    if !Arc::ptr_eq(&old, link) {
                        old.close("the executor reconnected");
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => break other,
        }
    };
    let result: InitializeResult = match first {
        Ok(r) => r,
        // codex refuses an unknown or expired resumeSessionId (-32600):
        // start a fresh session instead.
        Err(LinkError::Rpc { error, .. }) if resume.is_some() => {
            tracing::warn!(exe_id = %link.exe_id, "executor refused to resume its session: {error}");
            let fresh = InitializeParams {
                resume_session_id: None,
                ..params.clone()
            };
            link.request(method::INITIALIZE, &fresh, HANDSHAKE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    link.notify(method::INITIALIZED, serde_json::json!({}))
        .map_err(|e| e.to_string())?;
    if let Some(old) = resume {
        if old != result.session_id {
            // The executor no longer has the session its processes lived in:
            // it restarted, or the session outlived its detach TTL.
            tracing::warn!(exe_id = %link.exe_id, "executor did not resume session {old}; its processes are gone");
        }
    }
    let ext = result.environment_info.ext();
    Ok(Handshake {
        session_id: result.session_id,
        info: result.environment_info,
        ext,
    })
}

/// Registers a handshaken link and keeps its bookkeeping until it closes:
/// declares it dead when the executor is silent for the ping timeout.
/// Returns why it closed.
async fn serve_link(
    state: &AppState,
    link: &Arc<Link>,
    hs: Handshake,
    previous_session: Option<&str>,
    slot: Option<HandshakeSlot>,
    reader: &mut tokio::task::JoinHandle<String>,
) -> String {
    let info = ConnectInfo {
        session_id: hs.session_id.clone(),
        os: hs.info.platform_os.clone(),
        version: hs.info.executor_version.clone(),
        kind: executor_kind(&hs).into(),
    };
    if previous_session != Some(hs.session_id.as_str()) {
        // Another session: the processes the ledger knew are gone.
        state.ledger(&link.exe_id).clear();
    }
    link.set_handshake(hs);
    state.registry().insert(link.clone());
    drop(slot);
    if let Err(e) = state.store().mark_connected(&link.exe_id, &info).await {
        tracing::warn!("could not record the connect of {}: {e}", link.exe_id);
    }
    tracing::info!(exe_id = %link.exe_id, name = %link.name, workspace = %link.workspace, kind = %info.kind, version = %info.version, "executor connected");

    // The ping timeout is the writer's (`Liveness`); here only the
    // record of `last_seen` in the store.
    let mut tick = tokio::time::interval(state.config().ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut *reader => return r.unwrap_or_else(|e| format!("reader failed: {e}")),
            _ = link.closed() => {
                return link.close_reason().unwrap_or("closed by the gateway").to_string()
            }
            _ = tick.tick() => {
                if let Err(e) = state.store().touch_executor(&link.exe_id, link.last_seen_ms()).await {
                    tracing::warn!("could not record last_seen of {}: {e}", link.exe_id);
                }
            }
        }
    }
}

/// When a link is pinged and when it is declared dead, on one timer per
/// link (the writer's). A link quiet for half the ping timeout gets a
/// WebSocket ping; one silent (no frame, no pong) for the whole timeout is
/// closed as dead, failing its calls in flight. An idle link thus costs
/// one timer wake-up and one ping per half timeout (a third before, with
/// a second timer checking every quarter), and a hung executor is declared
/// dead within [`LIVENESS_GRID`] of its timeout, even while a frame waits
/// for its socket.
struct Liveness {
    timeout_ms: i64,
    ping_after: Duration,
    /// The `last_seen_ms` a ping went out for (no answer since, if it is
    /// still the link's).
    pinged_for: Option<i64>,
    /// A ping fell due while a frame was being written.
    owed: bool,
}

impl Liveness {
    fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout_ms: timeout.as_millis() as i64,
            ping_after: (timeout / 2).max(Duration::from_millis(50)),
            pinged_for: None,
            owed: false,
        }
    }

    /// At a timer: closes a silent link; else whether to ping now (only
    /// when the writer `can_ping`), and when to look again.
    fn check(&mut self, link: &Link, can_ping: bool) -> (bool, tokio::time::Instant) {
        let now = now_ms();
        let seen = link.last_seen_ms();
        let silent_ms = now - seen;
        let at = |ms: i64| {
            on_grid(tokio::time::Instant::now() + Duration::from_millis((ms - now).max(1) as u64))
        };
        if silent_ms > self.timeout_ms {
            let reason = format!(
                "no frame or pong from the executor for {:.1}s (ping timeout {}s); declared dead",
                silent_ms as f64 / 1000.0,
                self.timeout_ms as f64 / 1000.0
            );
            link.close(&reason);
            return (false, at(now + self.timeout_ms));
        }
        let ping_after_ms = self.ping_after.as_millis() as i64;
        let dead_at = seen + self.timeout_ms + 1;
        if self.pinged_for == Some(seen) {
            // A ping is out and unanswered: look again at the timeout.
            return (false, at(dead_at));
        }
        // A link that spoke within half the ping interval needs no ping yet.
        if silent_ms < ping_after_ms / 2 {
            return (false, at((seen + ping_after_ms).min(dead_at)));
        }
        if !can_ping {
            // A frame is being written: ping right after it.
            self.owed = true;
            return (false, at(dead_at));
        }
        self.owed = false;
        self.pinged_for = Some(seen);
        (true, at((now + ping_after_ms).min(dead_at)))
    }
}

/// The liveness timers of all links fall on a common grid of this step, so
/// that pings go out (and pongs come back) in batches: a wake-up of the
/// runtime per step for thousands of idle links, not one per link, which
/// is most of what an idle link costs (BENCHMARKS.md, session 7).
const LIVENESS_GRID: Duration = Duration::from_millis(100);

/// `t`, rounded up to the next point of [`LIVENESS_GRID`].
fn on_grid(t: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = tokio::time::Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now));
    let step = LIVENESS_GRID.as_nanos();
    let steps = t.saturating_duration_since(epoch).as_nanos().div_ceil(step);
    epoch + Duration::from_nanos((steps * step) as u64)
}

/// `"execgate"` when the executor announced execgate's extensions, else `"codex"`.
pub fn executor_kind(hs: &Handshake) -> &'static str {
    if hs.info.execgate.is_some() {
        "execgate"
    } else {
        "codex"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn state() -> (tempfile::TempDir, AppState) {
        crate::state::test_state(|_| {}).await
    }

    async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let res = crate::api::router(state.clone())
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

    /// One timer per link: a quiet link is pinged once per silence, a
    /// silent one is declared dead at its timeout; timers fall on the grid.
    #[tokio::test]
    async fn liveness_pings_a_quiet_link_once_and_declares_a_silent_one_dead() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let link = Link::new("e".into(), "w".into(), "laptop".into(), tx);
        let mut l = Liveness::new(Duration::from_secs(2));
        let (ping, next) = l.check(&link, true);
        assert!(!ping, "a link just heard from needs no ping");
        assert!(next > tokio::time::Instant::now() + Duration::from_millis(800));
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Writing a frame: the ping is owed, sent at the next look.
        assert!(!l.check(&link, false).0);
        assert!(l.owed);
        assert!(l.check(&link, true).0, "quiet for half the ping interval");
        assert!(!l.check(&link, true).0, "one ping per silence");
        link.touch();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(!link.is_closed());
        assert!(!l.check(&link, true).0);
        assert!(link.is_closed());
        assert!(link.close_reason().unwrap().contains("declared dead"));

        let t = tokio::time::Instant::now();
        let (a, b) = (on_grid(t), on_grid(t + Duration::from_millis(1)));
        assert!(a >= t && a - t <= LIVENESS_GRID);
        assert!(b == a || b - a == LIVENESS_GRID);
        assert_eq!(on_grid(a), a);
    }
}
