//! `POST /internal/validate-proxy-token`: this gateway as the token
//! authority of other gateways (their remote verifier), answered from its
//! own store.
//!
//! Served only when the gateway starts with `--internal-secret-file`;
//! otherwise the route does not exist and `/internal/*` is 404. The caller
//! must send that secret as `X-Internal-Secret`, compared in constant time;
//! a wrong or missing one is 403 (not 401, which would read as "token
//! rejected" and be cached by the caller).
//!
//! `GET /internal/stats`, behind the same secret, counts the answers, so an
//! operator (and the tests) can see how often peers ask.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use execgate_protocol::connectors::error_code as code;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::secret::constant_time_eq;
use crate::state::AppState;

/// The request body. The reference's two sides disagreed on the field
/// name, so both are accepted (and sent).
#[derive(Debug, Serialize, Deserialize)]
pub struct ValidateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ValidateResponse {
    pub workspace_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
}

/// Answers given by this gateway as an authority.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    rejected: AtomicU64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatsResponse {
    pub validate_proxy_token: ValidateStats,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ValidateStats {
    pub calls: u64,
    pub accepted: u64,
    pub rejected: u64,
}

fn check_secret(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.config().auth.internal_secret else {
        // The routes are not mounted without a secret; be safe anyway.
        return Err(ApiError::not_found("no such route"));
    };
    let given = super::single_header(headers, "x-internal-secret")?
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(given, expected.expose().as_bytes()) {
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
    let token = match (req.token, req.proxy_token) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "`token` and `proxy_token` differ; send one, or the same in both",
            ))
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Err(ApiError::bad_request("send the token as `token`")),
    };
    let stats = state.internal_stats();
    match state.store().verify_proxy_token(&token).await? {
        Some(grant) => {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            Ok(Json(ValidateResponse {
                workspace_id: grant.workspace,
                user_id: grant.user_id,
            }))
        }
        None => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
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
    let s = state.internal_stats();
    let accepted = s.accepted.load(Ordering::Relaxed);
    let rejected = s.rejected.load(Ordering::Relaxed);
    Ok(Json(StatsResponse {
        validate_proxy_token: ValidateStats {
            calls: accepted + rejected,
            accepted,
            rejected,
        },
    }))
}
