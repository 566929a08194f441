//! What every request of the router reports: its count and duration in
//! the metrics (`crate::metrics`), by route *template* (axum's
//! `MatchedPath`, never the path itself), method and status. Requests no
//! route matched are `unmatched`. The duration is the time to the response
//! head: a stream (SSE, a download, a WebSocket) counts until it starts.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// The router's outermost per-route layer (see `http::router`).
pub async fn track(req: Request, next: Next) -> Response {
    let Some(metrics) = crate::metrics::get() else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| crate::metrics::route_label(p.as_str()));
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.http_request(
        route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
