//! What every request of the router reports: its count and duration in
//! the metrics (`crate::metrics`), by route *template* (axum's
//! `MatchedPath`, never the path itself), method and status; and, when
//! spans are on (`crate::trace`), its `http.request` span, whose parent is
//! the request's W3C `traceparent`. Requests no route matched are
//! `unmatched`. The duration is the time to the response head: a stream
//! (SSE, a download, a WebSocket) counts until it starts.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether the router needs [`track`]: metrics or spans are on (both are
/// switched on before the router is built, and never off).
pub fn wanted() -> bool {
    crate::metrics::get().is_some() || crate::trace::spans()
}

/// Requests that went through [`track`], for the tests of `http::router`.
#[cfg(test)]
pub static TRACKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The router's outermost per-route layer (see `http::router`), there only
/// when [`wanted`].
pub async fn track(req: Request, next: Next) -> Response {
    #[cfg(test)]
    TRACKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let metrics = crate::metrics::get();
    let spans = crate::trace::spans();
    if metrics.is_none() && !spans {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| crate::metrics::route_label(p.as_str()));
    let method = req.method().clone();
    let started = Instant::now();
    let response = if spans {
        let span = request_span(&req, route);
        let response = next.run(req).instrument(span.clone()).await;
        span.record("http.response.status_code", response.status().as_u16());
        response
    } else {
        next.run(req).await
    };
    if let Some(metrics) = metrics {
        metrics.http_request(
            route,
            method.as_str(),
            response.status().as_u16(),
            started.elapsed(),
        );
    }
    response
}

/// The `http.request` span of `req`, its parent the request's trace
/// context, its `trace_id` field the trace's (for the logs).
fn request_span(req: &Request, route: &'static str) -> tracing::Span {
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let headers = req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if crate::trace::otel() {
        let _ = span.set_parent(crate::trace::extract(
            header("traceparent"),
            header("tracestate"),
        ));
        let id = span.context().span().span_context().trace_id();
        if id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(id));
        }
    } else if let Some(id) = header("traceparent").and_then(crate::trace::trace_id_of) {
        span.record("trace_id", id);
    }
    span
}
