//! `/internal/*`, served only by a gateway that is a token authority
//! (`--internal-secret-file`; see `crate::auth::internal`): a wrong or
//! missing `X-Internal-Secret` is 403 (not 401, which would read as "token
//! rejected" and be cached by the caller).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use execgate_protocol::connectors::error_code as code;

use crate::auth::internal::{
    requested_token, secret_matches, StatsResponse, ValidateRequest, ValidateResponse,
};
use crate::http::error::ApiError;
use crate::http::extract::{single_header, ApiJson};
use crate::ops::state::AppState;

fn check_secret(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.config().auth.internal_secret else {
        // The routes are not mounted without a secret; be safe anyway.
        return Err(ApiError::not_found("no such route"));
    };
    let given = single_header(headers, "x-internal-secret")?
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if secret_matches(expected, given) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            "missing or wrong X-Internal-Secret",
        ))
    }
}

pub async fn validate_proxy_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ValidateRequest>,
) -> Result<Json<ValidateResponse>, ApiError> {
    check_secret(&state, &headers)?;
    let token = requested_token(req).map_err(ApiError::bad_request)?;
    let stats = state.internal_stats();
    match state.store().verify_proxy_token(&token).await? {
        Some(grant) => {
            stats.record(true);
            Ok(Json(ValidateResponse {
                workspace_id: grant.workspace,
                user_id: grant.user_id,
            }))
        }
        None => {
            stats.record(false);
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::INVALID_TOKEN,
                "the proxy token is unknown or revoked",
            ))
        }
    }
}

pub async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatsResponse>, ApiError> {
    check_secret(&state, &headers)?;
    Ok(Json(state.internal_stats().snapshot()))
}
