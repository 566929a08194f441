//! The gateway's API error, and the one place where any failure becomes the
//! `{"error":{"code","message"}}` envelope with its HTTP status.
//!
//! Handlers return `Result<_, ApiError>`. Extractor rejections, store errors
//! and link errors convert into it here, so no other module builds an error
//! body by hand.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use execgate_protocol::connectors::{error_code as code, ErrorBody, ErrorResponse};
use execgate_protocol::jsonrpc::code as rpc_code;

use crate::captoken::CapTokenError;
use crate::link::LinkError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    pub fn bad_arguments(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_ARGUMENTS, message)
    }

    pub fn bad_base64(field: &str, err: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::BAD_BASE64,
            format!("{field} is not valid standard base64: {err}"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The `{"error":{code,message}}` envelope: the HTTP body, and the
    /// `structuredContent` of an MCP tool result that failed.
    pub fn envelope(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "{}", self.message);
        }
        let body = self.envelope();
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, code::CONFLICT, m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Invalid(m) => ApiError::bad_request(m),
            other => {
                tracing::error!("store failure: {other}");
                ApiError::internal("the gateway's store failed; try again")
            }
        }
    }
}

impl From<LinkError> for ApiError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Disconnected { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::EXECUTOR_UNAVAILABLE,
                e.to_string(),
            )
            .with_retry_after(1),
            LinkError::Timeout { .. } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                code::GATEWAY_TIMEOUT,
                e.to_string(),
            ),
            LinkError::Denied {
                ref name,
                ref error,
                ..
            } if error.code == rpc_code::TOO_MANY_PROCESSES => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::TOO_MANY_PROCESSES,
                format!("environment '{name}': {}", error.message),
            )
            .with_retry_after(1),
            LinkError::Denied {
                ref name,
                ref method,
                ref error,
            } => ApiError::new(
                StatusCode::FORBIDDEN,
                code::POLICY_DENIED,
                format!(
                    "environment '{name}' refused {method} by its executor's policy: {}",
                    error.message
                ),
            ),
            LinkError::Rpc { .. } | LinkError::BadResponse { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, code::EXECUTOR_ERROR, e.to_string())
            }
        }
    }
}

impl From<CapTokenError> for ApiError {
    /// Every refused capability token is a 401; an expired one has its own
    /// code, so that a client knows to mint a new one rather than fix its
    /// configuration.
    fn from(e: CapTokenError) -> Self {
        let code = match e {
            CapTokenError::Expired { .. } => code::CAPTOKEN_EXPIRED,
            _ => code::INVALID_CAPTOKEN,
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::bad_request(format!("bad path: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query string: {}", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelope_and_retry_after() {
        let resp = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "x_y", "msg")
            .with_retry_after(3)
            .into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"code":"x_y","message":"msg"}})
        );
    }
}
