//! `--metrics-listen ADDR`: `GET /metrics` on a listener of its own, apart
//! from the API (so that it can stay on a private interface while the API
//! is public, and needs no token). The text comes from the gateway's or the
//! executor's library; this is only the wiring.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// Produces the metrics text; `None` while metrics are off.
pub type Render =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// Binds `addr` and serves `GET /metrics` from `render` in the background.
/// Returns the bound address (`:0` picks a free port).
pub async fn start(
    addr: SocketAddr,
    content_type: &'static str,
    render: Render,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                match render().await {
                    Some(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
                    None => (StatusCode::NOT_FOUND, "metrics are off\n").into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics listener stopped: {e}");
        }
    });
    Ok(bound)
}
