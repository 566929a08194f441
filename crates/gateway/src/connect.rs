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

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use execgate_protocol::exec::{method, ClientExt, InitializeParams, InitializeResult};
use execgate_protocol::jsonrpc::Encoded;
use execgate_protocol::register::{
    environment_id_from_token, RegisterRequest, RegisterResponse, TRANSPORT_DIRECT,
};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::extract::{parse_json_body, ApiPath};
use crate::link::{Handshake, Link, LinkError};
use crate::secret;
use crate::sigv4;
use crate::state::{AppState, Ticket, TICKET_TTL};
use crate::store::{now_ms, ConnectInfo, ExecutorRow};

use execgate_protocol::connectors::error_code as code;

/// Largest frame accepted on a link; file transfers send big frames.
const MAX_FRAME: usize = 256 * 1024 * 1024;
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

/// Checks a SigV4-signed request (a stock codex) against the key of the
/// environment in the path. Any failure is a 401: codex then exits for
/// good, which is right for a wrong secret.
async fn authenticate_sigv4(
    state: &AppState,
    environment_id: &str,
    req: &sigv4::Request<'_>,
) -> Result<ExecutorRow, ApiError> {
    let refused = |why: String| {
        tracing::warn!(environment_id, "SigV4 request refused: {why}");
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            code::INVALID_TOKEN,
            format!("the SigV4 signature is not valid for environment {environment_id:?}: {why}"),
        )
    };
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
    state
        .store()
        .executor(environment_id)
        .await?
        .ok_or_else(|| refused("the executor was removed".into()))
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
    let row = if signed {
        let req = sigv4::Request {
            method: "POST",
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            body: &body,
        };
        authenticate_sigv4(&state, &environment_id, &req).await?
    } else {
        authenticate_executor(&state, &environment_id, &headers).await?
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
        tickets.retain(|_, t| t.expires > now);
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
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    crate::auth::single_header(&headers, &axum::http::header::AUTHORIZATION)?;
    if sigv4::is_sigv4(&headers) {
        let req = sigv4::Request {
            method: "GET",
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            body: b"",
        };
        authenticate_sigv4(&state, &environment_id, &req).await?;
    } else {
        let ticket = q
            .ticket
            .and_then(|t| state.tickets().lock().unwrap().remove(&t));
        let valid = ticket
            .as_ref()
            .is_some_and(|t| t.exe_id == environment_id && t.expires > Instant::now());
        if !valid {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                code::INVALID_TOKEN,
                "unknown, used or expired connect ticket; register again",
            ));
        }
    }
    let ws = ws.map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    let row = state
        .store()
        .executor(&environment_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the executor was removed"))?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(LINK_READ_BUFFER)
        .on_upgrade(move |socket| run_link(state, row, socket)))
}

/// Serves one executor link until its socket closes.
async fn run_link(state: AppState, row: ExecutorRow, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Encoded>();
    let link = Link::new(
        row.exe_id.clone(),
        row.workspace.clone(),
        row.name.clone(),
        tx,
    );
    link.set_ledger(state.ledger(&row.exe_id));

    let ping_every = state.config().ping_interval;
    let writer_link = link.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        let frame = match frame {
                            Encoded::Text(text) => WsMessage::Text(text.into()),
                            Encoded::Binary(data) => WsMessage::Binary(data.into()),
                        };
                        if sink.send(frame).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    if sink.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                        break;
                    }
                }
                _ = writer_link.closed() => break,
            }
        }
        let _ = sink.close().await;
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

    let reason = tokio::select! {
        hs = handshake(&state, &link, row.session_id.clone()) => match hs {
            Ok(hs) => {
                serve_link(&state, &link, hs, &mut reader).await
            }
            Err(e) => format!("handshake failed: {e}"),
        },
        r = &mut reader => r.unwrap_or_else(|e| format!("reader failed: {e}")),
    };

    link.close(&reason);
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

/// Registers a handshaken link and keeps its bookkeeping until it closes.
/// Returns why it closed.
async fn serve_link(
    state: &AppState,
    link: &Arc<Link>,
    hs: Handshake,
    reader: &mut tokio::task::JoinHandle<String>,
) -> String {
    let info = ConnectInfo {
        session_id: hs.session_id.clone(),
        os: hs.info.platform_os.clone(),
        version: hs.info.executor_version.clone(),
        kind: executor_kind(&hs).into(),
    };
    link.set_handshake(hs);
    state.registry().insert(link.clone());
    if let Err(e) = state.store().mark_connected(&link.exe_id, &info).await {
        tracing::warn!("could not record the connect of {}: {e}", link.exe_id);
    }
    tracing::info!(exe_id = %link.exe_id, name = %link.name, workspace = %link.workspace, kind = %info.kind, version = %info.version, "executor connected");

    let ping_every = state.config().ping_interval;
    let mut tick = tokio::time::interval(ping_every);
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut *reader => return r.unwrap_or_else(|e| format!("reader failed: {e}")),
            _ = link.closed() => return "closed by the gateway".into(),
            _ = tick.tick() => {
                let seen = link.last_seen_ms();
                // Three missed pings: the executor or the network is gone.
                if now_ms() - seen > 3 * ping_every.as_millis() as i64 {
                    return format!("no frame from the executor for {}s", (now_ms() - seen) / 1000);
                }
                if let Err(e) = state.store().touch_executor(&link.exe_id, seen).await {
                    tracing::warn!("could not record last_seen of {}: {e}", link.exe_id);
                }
            }
        }
    }
}

/// `"execgate"` when the executor announced execgate's extensions, else `"codex"`.
pub fn executor_kind(hs: &Handshake) -> &'static str {
    if hs.info.execgate.is_some() {
        "execgate"
    } else {
        "codex"
    }
}
