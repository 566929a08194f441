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
use crate::http::extract::{ApiPath, ApiQuery};
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
    let peer_id = verify_peer(&state, &headers, &exe_id, &exe_id, "peer channel")?;
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
    Ok(ws.upgrade(move |socket, budget| {
        // An authenticated peer: full-size frames at once.
        budget.store(UNLIMITED, Ordering::Release);
        peer::serve(state.host(), link, socket, peer_id)
    }))
}

/// Checks a peer's `x-execgate-*` headers signed over `subject` with the
/// cluster secret (`link::peer::verify`) for `what` on executor `exe_id`,
/// and returns the peer's replica id: 404 when this gateway is not a
/// replica, 401 `invalid_token` with the reason (logged) otherwise.
fn verify_peer(
    state: &AppState,
    headers: &HeaderMap,
    exe_id: &str,
    subject: &str,
    what: &str,
) -> Result<String, ApiError> {
    let Some(cluster) = state.cluster() else {
        return Err(ApiError::not_found("this gateway is not a replica"));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = peer::verify(
        cluster.config.secret.expose(),
        header(peer::REPLICA_HEADER),
        header(peer::TIME_HEADER),
        header(peer::SIGNATURE_HEADER),
        subject,
        now_ms(),
    ) {
        tracing::warn!(exe_id, "{what} refused: {why}");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::INVALID_TOKEN,
            why,
        ));
    }
    Ok(header(peer::REPLICA_HEADER).unwrap_or_default().to_string())
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
    ApiQuery(q): ApiQuery<LiveQuery>,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let subject = liveness::subject(&exe_id, q.epoch);
    verify_peer(
        &state,
        &headers,
        &exe_id,
        &subject,
        "a liveness query from a peer",
    )?;
    let live = !state.drain().going_away()
        && state
            .registry()
            .live(&exe_id, state.config().link.ping_timeout)
            .is_some_and(|link| link.epoch() == q.epoch && link.lease_ok(now_ms()));
    Ok(axum::Json(serde_json::json!({ "live": live })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::peer::ClusterConfig;
    use crate::link::Link;
    use crate::secret::SecretString;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tower::ServiceExt;

    const SECRET: &str = "a-cluster-secret-of-some-length";

    /// A replica's state, its cluster secret [`SECRET`].
    async fn replica_state() -> (tempfile::TempDir, AppState) {
        crate::ops::state::test_state(|c| {
            c.cluster = Some(ClusterConfig::new(
                "http://127.0.0.1:1".into(),
                SecretString::new(SECRET),
            ));
        })
        .await
    }

    async fn ask(state: &AppState, exe_id: &str, epoch: i64, secret: &str) -> (StatusCode, Value) {
        let ts = now_ms();
        let signature = peer::sign(secret, "rep_other", &liveness::subject(exe_id, epoch), ts);
        let req = Request::get(format!("{}{exe_id}?epoch={epoch}", liveness::LIVE_PATH))
            .header(peer::REPLICA_HEADER, "rep_other")
            .header(peer::TIME_HEADER, ts.to_string())
            .header(peer::SIGNATURE_HEADER, signature)
            .body(Body::empty())
            .unwrap();
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

    /// The holder's side of the one-live-link rule across replicas: live
    /// only for its open, answering link under the asked epoch, while it
    /// is not leaving or draining; only the cluster secret may ask.
    #[tokio::test]
    async fn a_holder_confirms_only_a_live_link_under_the_asked_epoch() {
        let (_dir, state) = replica_state().await;
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let link = Link::new("exe_1".into(), "w1".into(), "x".into(), tx);
        link.set_lease(3, now_ms() + 60_000);
        state.registry().insert(link.clone());

        assert_eq!(ask(&state, "exe_1", 3, SECRET).await.1["live"], true);
        assert_eq!(ask(&state, "exe_1", 2, SECRET).await.1["live"], false);
        assert_eq!(ask(&state, "exe_2", 3, SECRET).await.1["live"], false);
        let (status, _) = ask(&state, "exe_1", 3, "another-secret-entirely").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // A lapsed lease: not live.
        link.set_lease(3, now_ms() - 1);
        assert_eq!(ask(&state, "exe_1", 3, SECRET).await.1["live"], false);
        link.set_lease(3, now_ms() + 60_000);
        // Closed (its socket gone): not live.
        let (tx, _rx2) = tokio::sync::mpsc::unbounded_channel();
        let closed = Link::new("exe_3".into(), "w1".into(), "z".into(), tx);
        closed.set_lease(1, now_ms() + 60_000);
        state.registry().insert(closed.clone());
        assert_eq!(ask(&state, "exe_3", 1, SECRET).await.1["live"], true);
        closed.close("gone");
        assert_eq!(ask(&state, "exe_3", 1, SECRET).await.1["live"], false);
        // Leaving (a drain delay): still serving, but does not hold the
        // executor against another replica.
        state.drain().leave();
        assert_eq!(ask(&state, "exe_1", 3, SECRET).await.1["live"], false);
        // Draining: the gate refuses the query, which does not block either.
        state.drain().begin();
        let (status, v) = ask(&state, "exe_1", 3, SECRET).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_ne!(v["live"], true);
    }

    /// A malformed liveness query (no epoch, an epoch that is not an
    /// integer) is a 400 in the error envelope, not axum's plain text.
    #[tokio::test]
    async fn a_malformed_liveness_query_is_a_400_envelope() {
        let (_dir, state) = replica_state().await;
        for query in ["", "?epoch=abc", "?epoch=1e99"] {
            let req = Request::get(format!("{}exe_1{query}", liveness::LIVE_PATH))
                .body(Body::empty())
                .unwrap();
            let res = crate::http::router(state.clone())
                .oneshot(req)
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{query}");
            let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            assert!(v["error"]["code"].is_string(), "{query}: {v}");
        }
    }
}
