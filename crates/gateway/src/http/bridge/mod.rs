//! `GET /bridge/{exe_id}`: a capability-token holder speaks the executor
//! protocol (JSON-RPC over WebSocket) directly to one executor of its
//! workspace, multiplexed with the gateway's own traffic on the same
//! executor link.
//!
//! This module authorizes the upgrade; [`session`] relays frames. Every
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

pub mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use execgate_protocol::connectors::error_code as code;

use crate::audit::{AuditEntry, AuditRecord, Kind, Via};
use crate::auth::bearer_token;
use crate::captoken::{self, Claims};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::link::Link;
use crate::state::AppState;

/// What an authorized bridge request may use.
pub struct Grant {
    pub claims: Claims,
    pub link: Arc<Link>,
    /// The session's audit record, opened before the upgrade so that
    /// `--audit fail-closed` can refuse the session (503) when it cannot be
    /// written; `None` for a token with the `skip_audit` claim.
    pub audit: Option<AuditEntry>,
}

/// The WebSocket upgrade at `/bridge/{exe_id}`.
pub async fn bridge(
    State(state): State<AppState>,
    ApiPath(target): ApiPath<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut grant = authorize(&state, &target, &headers).await?;
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
        .on_upgrade(move |socket| session::run(state, grant, socket)))
}

/// Checks the bearer capability token and finds the executor's live link,
/// in the order the module docs give.
pub async fn authorize(
    state: &AppState,
    target: &str,
    headers: &HeaderMap,
) -> Result<Grant, ApiError> {
    let token = bearer_token(headers)?;
    let claims = captoken::verify(state.cap_token_secret(), token, captoken::now_s())?;
    if state.store().turn_revoked(&claims.turn_id).await? {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::TURN_REVOKED,
            format!(
                "turn {:?} was revoked; its capability tokens are no longer accepted",
                claims.turn_id
            ),
        ));
    }
    let row = match state.store().executor(target).await? {
        Some(row) => Some(row),
        None => {
            state
                .store()
                .executor_by_name(&claims.workspace_id, target)
                .await?
        }
    };
    // A missing executor and another workspace's look the same, so a token
    // cannot probe which exe_ids exist elsewhere.
    let Some(row) = row.filter(|r| r.workspace == claims.workspace_id) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!(
                "executor {target:?} is not in workspace {:?}; a capability token reaches only its own workspace's executors",
                claims.workspace_id
            ),
        ));
    };
    match state.registry().get(&row.exe_id) {
        Some(link) => Ok(Grant {
            claims,
            link,
            audit: None,
        }),
        None => Err(crate::api::executor_unavailable(state, &row.exe_id).await),
    }
}
