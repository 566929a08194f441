//! `GET /peer/v1/links/{exe_id}`: the peer channel's upgrade, served only by
//! a replica (`--advertise-url`, `--cluster-secret-file`; otherwise the
//! route does not exist). Authenticated by the cluster secret alone (the
//! `x-execgate-*` headers of `link::peer`): a proxy token, an admin token or
//! a capability token opens nothing here. The relay is `link::peer::serve`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use execgate_protocol::connectors::error_code as code;

use crate::http::error::ApiError;
use crate::http::executor::LinkUpgrade;
use crate::http::extract::ApiPath;
use crate::link::connect::UNLIMITED;
use crate::link::{liveness, peer};
use crate::ops::state::AppState;
use crate::store::now_ms;

/// The peer route, when this gateway is a replica.
pub fn router(state: &AppState) -> Router<AppState> {
    if state.cluster().is_none() {
        return Router::new();
    }
    Router::new()
        .route(&format!("{}{{exe_id}}", peer::PATH), get(upgrade))
        .route(&format!("{}{{exe_id}}", liveness::LIVE_PATH), get(live))
}

async fn upgrade(
    State(state): State<AppState>,
    ApiPath(exe_id): ApiPath<String>,
    headers: HeaderMap,
    ws: LinkUpgrade,
) -> Result<Response, ApiError> {
    let Some(cluster) = state.cluster() else {
        return Err(ApiError::not_found("this gateway is not a replica"));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = peer::verify(
        cluster.config.secret.expose(),
        header(peer::REPLICA_HEADER),
        header(peer::TIME_HEADER),
        header(peer::SIGNATURE_HEADER),
        &exe_id,
        now_ms(),
    ) {
        tracing::warn!(exe_id, "peer channel refused: {why}");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::INVALID_TOKEN,
            why,
        ));
    }
    let ws =
        ws.0.map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    let link = state
        .registry()
        .get(&exe_id)
        .filter(|l| !l.is_closed() && l.lease_ok(now_ms()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::EXECUTOR_UNAVAILABLE,
                "this replica does not hold the executor's link",
            )
        })?;
    let peer_id = header(peer::REPLICA_HEADER).unwrap_or_default().to_string();
    Ok(ws.upgrade(move |socket, budget| {
        // An authenticated peer: full-size frames at once.
        budget.store(UNLIMITED, Ordering::Release);
        peer::serve(state.host(), link, socket, peer_id)
    }))
}

#[derive(serde::Deserialize)]
struct LiveQuery {
    epoch: i64,
}

/// `GET /peer/v1/live/{exe_id}?epoch=N`: whether this replica holds a live
/// link of `exe_id` under the lease at epoch N (open, heard from within
/// the ping timeout, lease unexpired), and is not leaving or draining
/// (`link::liveness`); 200 `{"live": bool}`. Authenticated like a channel,
/// its signature covering `live:{exe_id}:{epoch}`. A draining replica's
/// gate answers 503 `draining` before this runs: that does not block
/// either.
async fn live(
    State(state): State<AppState>,
    ApiPath(exe_id): ApiPath<String>,
    axum::extract::Query(q): axum::extract::Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let Some(cluster) = state.cluster() else {
        return Err(ApiError::not_found("this gateway is not a replica"));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = peer::verify(
        cluster.config.secret.expose(),
        header(peer::REPLICA_HEADER),
        header(peer::TIME_HEADER),
        header(peer::SIGNATURE_HEADER),
        &liveness::subject(&exe_id, q.epoch),
        now_ms(),
    ) {
        tracing::warn!(exe_id, "a liveness query from a peer refused: {why}");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::INVALID_TOKEN,
            why,
        ));
    }
    let live = !state.drain().going_away()
        && state
            .registry()
            .live(&exe_id, state.config().link.ping_timeout)
            .is_some_and(|link| link.epoch() == q.epoch && link.lease_ok(now_ms()));
    Ok(axum::Json(serde_json::json!({ "live": live })))
}
