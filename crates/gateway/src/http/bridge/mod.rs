//! `GET /bridge/{exe_id}`: a capability-token holder speaks the executor
//! protocol (JSON-RPC over WebSocket) directly to one executor of its
//! workspace, multiplexed with the gateway's own traffic on the same
//! executor link.
//!
//! This module answers the upgrade; `crate::ops::bridge::authorize`
//! authorizes it and `crate::link::bridge` relays frames. Every
//! refusal is decided *before* the upgrade, so it is a real HTTP status with
//! the error envelope, in this order:
//!
//! 1. a missing, malformed, wrongly signed or expired token: 401
//!    (`missing_bearer`, `invalid_captoken`, `captoken_expired`);
//! 2. a revoked turn: 401 `turn_revoked`;
//! 3. an executor that is not in the token's workspace (or does not exist):
//!    403 `forbidden`;
//! 4. an executor that is not connected: 503 `executor_unavailable`.
//!
//! `{exe_id}` may also be the environment's name in the token's workspace.

#[cfg(test)]
mod tests;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::http::error::ApiError;
use crate::http::extract::bearer_token;
use crate::http::extract::ApiPath;
use crate::ops::audit::RecordExt as _;
use crate::ops::state::AppState;
use crate::store::audit_log::{AuditRecord, Kind, Via};

/// The WebSocket upgrade at `/bridge/{exe_id}`.
pub async fn bridge(
    State(state): State<AppState>,
    ApiPath(target): ApiPath<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut grant = crate::ops::bridge::authorize(&state, &target, bearer_token(&headers)?).await?;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(format!(
            "not a WebSocket upgrade: {e}; /bridge speaks JSON-RPC over WebSocket"
        ))
    })?;
    if !grant.claims.skip_audit.unwrap_or(false) {
        let mut rec = AuditRecord::new(
            &grant.claims.workspace_id,
            grant.claims.user_id.as_deref(),
            Via::Bridge,
            Kind::Bridge,
            "bridge",
        );
        rec.set_link(&grant.link);
        rec.session_id = Some(grant.claims.turn_id.clone());
        grant.audit = Some(state.audit().begin(rec).await?);
    }
    let max = state.config().max_body_bytes;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| crate::link::bridge::run(state.host(), grant, socket)))
}
