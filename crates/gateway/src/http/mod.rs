//! The HTTP layer: everything that knows HTTP. It turns requests into
//! calls of [`crate::ops`] and their results (or [`crate::ops::Error`]s)
//! into responses; nothing below it names axum or a status code.
//!
//! - [`router`] (here): every route of the gateway; [`public_routes`] the
//!   documented ones, from which [`openapi`] builds `/openapi.json`.
//! - [`connectors`]: envs/list and tool/call; [`processes`]: every
//!   `/processes` route; [`files`]: `/files` streaming; [`stream`]: SSE.
//! - [`admin`]: `/api/admin/*` (captoken routes included); [`internal`]:
//!   `/internal/*` of a token authority.
//! - [`executor`]: executor register and the `/connect` upgrade;
//!   [`bridge`]: the `/bridge/{exe_id}` upgrade (the relay is `link::bridge`).
//! - [`mcp`]: the MCP server at `/mcp`; [`openapi`]: the document.
//! - [`extract`]: extractors (the `Caller` one included);
//!   [`error`]: the one place an error becomes the envelope and a status;
//!   [`listener`]: accepting connections; [`drain`]: the drain's gate on
//!   every request, and `/readyz`; [`ui`]: the web console's
//!   embedded files at `/ui/`.

pub mod admin;
pub mod bridge;
pub mod connectors;
pub mod drain;
pub mod error;
pub mod executor;
pub mod extract;
pub mod files;
pub mod idempotency;
pub mod internal;
pub mod listener;
pub mod mcp;
pub mod observe;
pub mod openapi;
pub mod peer;
pub mod processes;
pub mod sse_events;
pub mod stream;
pub mod ui;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use execgate_protocol::connectors::error_code as code;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ops::state::AppState;
use error::ApiError;

pub fn router(state: AppState) -> Router {
    router_with(state, observe::wanted())
}

/// [`router`], with the `observe` layer or without it (`observe`: metrics
/// or spans are on; off, a request does not pass through it at all).
fn router_with(state: AppState, observe: bool) -> Router {
    let limit = state.config().max_body_bytes;
    let (public, mut doc) = public_routes().split_for_parts();
    openapi::finish(&mut doc);
    // Serialised once: the document is fixed for the life of the process.
    let doc = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
    let router = Router::new()
        .merge(public)
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        .route(
            "/cloud/environment/{environment_id}/direct/register",
            post(executor::register),
        )
        .route(
            "/cloud/environment/{environment_id}/direct/connect",
            get(executor::connect),
        )
        // The executor protocol for capability-token holders (WebSocket);
        // like /cloud/*, not part of the OpenAPI document.
        .route("/bridge/{exe_id}", get(bridge::bridge))
        .merge(mcp::router(&state))
        .merge(admin::router(&state))
        .merge(internal_routes(&state))
        // Replicas' peer channel (`link::peer`); only on a replica.
        .merge(peer::router(&state))
        // The web console's static files (`/ui/`); not part of the API.
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        // Last resort: whatever error escaped as plain text or empty gets
        // the envelope (see `error::envelope_bare_errors`).
        .layer(axum::middleware::map_response(error::envelope_bare_errors))
        // Outermost but for metrics (whose layer then counts its 503s):
        // refuses everything but the probes while draining, and
        // counts the calls a drain waits for.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            drain::gate,
        ));
    // Metrics (and, with --otlp-endpoint, the request's span): per
    // route, so that the route template is known (see `observe`). Only
    // when one of them is on: both are set before the router is built.
    let router = if observe {
        router.layer(axum::middleware::from_fn(observe::track))
    } else {
        router
    };
    router.with_state(state)
}

/// The public HTTP API: the routes agents call. Each handler is listed once
/// and carries its `#[utoipa::path]`, so the router and `/openapi.json`
/// ([`crate::http::openapi`]) are built from the same list and cannot drift.
/// Executor-facing routes (`/cloud/*`), `/mcp` (MCP has its own discovery)
/// and `/internal/*` are not part of it.
pub fn public_routes() -> OpenApiRouter<AppState> {
    let (schemas, paths, files) = routes!(files::download, files::upload);
    // Uploads stream; the JSON body limit does not apply.
    let files = files.layer(DefaultBodyLimit::disable());
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(connectors::envs_list))
        .routes(routes!(connectors::tool_call))
        .routes(routes!(processes::list))
        .routes(routes!(processes::stdin))
        .routes(routes!(processes::output))
        .routes(routes!(processes::terminate))
        .routes(routes!(stream::stream))
        .routes(routes!(processes::resize))
        .routes(routes!(processes::signal))
        .routes((schemas, paths, files))
        .routes(routes!(healthz))
        .routes(routes!(drain::readyz))
}

/// Liveness: answers while the process serves, without touching the store.
#[utoipa::path(get, path = "/healthz", security(()), responses(
    (status = 200, description = "The gateway is serving", body = String, content_type = "text/plain", example = "ok")
))]
async fn healthz() -> &'static str {
    "ok"
}

/// `/internal/*` exists only on a gateway that is a token authority
/// (`--internal-secret-file`); elsewhere it falls through to 404.
fn internal_routes(state: &AppState) -> Router<AppState> {
    if state.config().auth.internal_secret.is_none() {
        return Router::new();
    }
    Router::new()
        .route(
            "/internal/validate-proxy-token",
            post(internal::validate_proxy_token),
        )
        .route("/internal/stats", get(internal::stats))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        code::NOT_FOUND,
        "no such route; the connectors API lives under /api/connectors",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "this route does not take that HTTP method",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    /// With metrics and spans off a request does not pass through
    /// `observe::track` at all; with the layer wanted it does. (Nothing in
    /// this test binary turns metrics or spans on, and only this test
    /// builds a router with the layer, so the count is this test's; that
    /// metrics on still count requests is the e2e tests' `metrics`.)
    #[tokio::test]
    async fn the_observe_layer_is_there_only_when_metrics_or_spans_are_on() {
        assert!(!observe::wanted(), "metrics or spans are on in this test");
        let (_dir, state) = crate::ops::state::test_state(|_| {}).await;
        let healthz = || {
            Request::builder()
                .uri("/healthz")
                .body(Body::empty())
                .unwrap()
        };
        let tracked = || observe::TRACKED.load(Ordering::Relaxed);

        let before = tracked();
        let resp = router(state.clone()).oneshot(healthz()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(tracked(), before, "off: the request went through track");

        let before = tracked();
        let resp = router_with(state, true).oneshot(healthz()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(tracked(), before + 1, "on: the request skipped track");
    }
}
