//! Draining over HTTP (the operation is `ops::drain`): the gate every
//! request passes, and `GET /readyz`.
//!
//! - [`gate`]: while the gateway serves, a request is counted in flight
//!   until its response body has been sent (a long-poll, a download, an
//!   MCP answer streamed as SSE included), so that a drain waits for it.
//!   While it drains, a request is answered 503 `draining` with
//!   `Retry-After` and `Connection: close` (a client's next request opens
//!   a new connection, which a load balancer sends elsewhere). Only
//!   `/healthz` and `/readyz` pass either way. A response marked
//!   [`Resumable`] (an SSE output stream) is not waited for: it ends with
//!   an `error` event `draining` when the drain reaches its closing phase
//!   (and the drain waits for that last event to be sent), and its client
//!   resumes with `Last-Event-ID`. A WebSocket (an executor
//!   link, a bridge session) counts only until its upgrade is answered.
//!   One route stays open while draining: a peer replica's channel
//!   (`/peer/v1/links/{exe_id}`) to an executor whose link this replica
//!   still holds, since it is that executor's owner until the executor
//!   moves; other replicas forward their calls for it here meanwhile.
//! - [`readyz`]: 200 `{"status":"ready"}` when this replica can serve, else
//!   503 with the envelope (`draining`, `store_unavailable`).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::http::error::ApiError;
use crate::ops::drain::{self, InFlight};
use crate::ops::state::AppState;

/// Marks a response the drain does not wait for (it ends by itself when
/// the drain closes, and its client resumes elsewhere).
#[derive(Clone, Copy, Debug)]
pub struct Resumable;

/// Paths answered whatever the drain: the probes.
fn is_probe(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// Whether `path` opens a peer channel (`/peer/v1/links/{exe_id}`) to an
/// executor whose live link this replica holds.
fn holds_peer_target(state: &AppState, path: &str) -> bool {
    if state.cluster().is_some() && path == crate::http::mcp::PEER_CANCEL_PATH {
        // A cancellation passed on, for a call that may be in flight here.
        return true;
    }
    state.cluster().is_some()
        && path
            .strip_prefix(crate::link::peer::PATH)
            .and_then(|exe_id| state.registry().get(exe_id))
            .is_some_and(|link| !link.is_closed())
}

/// The drain's gate (see the module's header).
pub async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if is_probe(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(guard) = state.drain().enter() else {
        if holds_peer_target(&state, req.uri().path()) {
            // The owner until its executor moves: forwarded calls go on.
            return next.run(req).await;
        }
        let mut resp = ApiError::from(drain::draining_error()).into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    };
    let resp = next.run(req).await;
    let guard = if resp.extensions().get::<Resumable>().is_some() {
        // Not a call the drain waits for; a stream it ends, then waits for.
        drop(guard);
        state.drain().enter_stream()
    } else {
        guard
    };
    resp.map(|body| {
        Body::new(Counted {
            inner: body,
            _guard: guard,
        })
    })
}

/// A response body that keeps its call counted in flight until it is
/// sent (or dropped: the client went away).
struct Counted {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `/readyz`'s answer when ready.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    status: &'static str,
}

/// Readiness: 200 when this replica can serve (its store answers, it is
/// not draining); else 503 with the envelope: `draining` (it is shutting
/// down: take it out of rotation) or `store_unavailable`. The store's
/// answer is kept for a second, so probes cannot load it. For a Kubernetes
/// `readinessProbe`; `/healthz` is the `livenessProbe`.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "This replica can serve", body = Ready),
    (status = 503, description = "Not ready: draining (`draining`) or the store cannot be reached (`store_unavailable`); `Retry-After` is set", body = execgate_protocol::connectors::ErrorResponse),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    drain::readiness(&state).await?;
    Ok(Json(Ready { status: "ready" }))
}
