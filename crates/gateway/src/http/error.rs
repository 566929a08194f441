//! The gateway's API error, and the one place where any failure becomes the
//! `{"error":{"code","message"}}` envelope with its HTTP status.
//!
//! Handlers return `Result<_, ApiError>`. An operation's [`ops::Error`]
//! converts into it here (its status from its kind, [`status_of`]), as do
//! the lower layers' errors (through `ops::Error`) and extractor
//! rejections, so no other module builds an error body by hand. Only what
//! the HTTP stack answers itself (a route or method that does not exist, a
//! body or head too large, an unsatisfiable range) is an `ApiError` made
//! here with its own status.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use execgate_protocol::connectors::{error_code as code, ErrorBody, ErrorResponse};

use crate::auth::captoken::CapTokenError;
use crate::auth::AuthError;
use crate::link::LinkError;
use crate::ops::{self, captoken::AdminError, transfer::TransferError, ErrorKind};
use crate::store::audit_log::{AuditUnavailable, ErrorCode};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
    /// [`ops::Error::outcome_unknown`]: the response carries the
    /// [`OutcomeUnknown`] extension.
    pub outcome_unknown: bool,
}

/// A response extension (never sent): the request's outcome is unknown
/// ([`ops::Error::outcome_unknown`]), so its `Idempotency-Key` is not
/// released (`http::idempotency`).
#[derive(Debug, Clone, Copy)]
pub struct OutcomeUnknown;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            outcome_unknown: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    pub fn bad_arguments(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_ARGUMENTS, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }

    #[cfg(test)]
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
        if self.outcome_unknown {
            resp.extensions_mut().insert(OutcomeUnknown);
        }
        resp
    }
}

/// The error code for a status that reached a client without one: what the
/// HTTP stack (axum's extractors and router, hyper's parser) produced itself.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => code::FORBIDDEN,
        StatusCode::NOT_FOUND => code::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED => code::METHOD_NOT_ALLOWED,
        StatusCode::CONFLICT => code::CONFLICT,
        StatusCode::PAYLOAD_TOO_LARGE => code::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => code::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::URI_TOO_LONG => code::URI_TOO_LONG,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => code::HEADERS_TOO_LARGE,
        StatusCode::TOO_MANY_REQUESTS => code::RATE_LIMITED,
        StatusCode::SERVICE_UNAVAILABLE => code::UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT => code::GATEWAY_TIMEOUT,
        s if s.is_server_error() => code::INTERNAL,
        _ => code::BAD_REQUEST,
    }
}

/// A whole HTTP/1.1 error response with the envelope as its body, closing
/// the connection: for code that answers below axum, on the raw socket (a
/// request hyper could not parse, a connection refused past a cap), so that
/// those answers carry the envelope too.
pub fn raw_http1_response(status: StatusCode, message: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorResponse {
        error: ErrorBody {
            code: code_for_status(status).to_string(),
            message: message.to_string(),
        },
    })
    .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The most of a bare error body kept as the envelope's message.
const BARE_BODY_KEPT: usize = 1024;

/// A `map_response` layer for the whole router: an error answer that is
/// not JSON (a rejection axum or a library produced as plain text, or an
/// empty one) gets the envelope, with the text as its message. JSON
/// answers (the envelope, JSON-RPC errors) pass unchanged, as do
/// successes and upgrades.
pub async fn envelope_bare_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Bare rejections are short; a long one is cut, never buffered whole.
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(BARE_BODY_KEPT)])
            .trim()
            .to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, code_for_status(status), message).into_response();
    // Keep what the client needs to act on: Allow, Retry-After, Content-Range…
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The HTTP status of each kind of operation error: with [`crate::ops::error::kind_of`]
/// (code → kind), the one code → status table.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Limited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ops::Error> for ApiError {
    fn from(e: ops::Error) -> Self {
        ApiError {
            status: status_of(e.kind()),
            code: e.code,
            message: e.message,
            retry_after: e.retry_after,
            outcome_unknown: e.outcome_unknown,
        }
    }
}

/// The lower layers' errors reach HTTP through [`ops::Error`], so that each
/// has one code (and so one status) wherever it surfaces.
macro_rules! via_ops {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ops::Error::from(e).into()
            }
        }
    )*};
}

via_ops!(
    StoreError,
    LinkError,
    CapTokenError,
    AuthError,
    AuditUnavailable,
    TransferError,
    AdminError,
);

impl ErrorCode for ApiError {
    fn error_code(&self) -> &str {
        self.code
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
    async fn bare_errors_get_the_envelope_and_keep_their_headers() {
        let bare = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(axum::body::Body::from("Method Not Allowed"))
            .unwrap();
        let resp = envelope_bare_errors(bare).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"code":"method_not_allowed","message":"Method Not Allowed"}})
        );
        // Empty: the reason phrase.
        let bare = Response::builder()
            .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .body(axum::body::Body::empty())
            .unwrap();
        let body = axum::body::to_bytes(envelope_bare_errors(bare).await.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unsupported_media_type");
        assert_eq!(v["error"]["message"], "Unsupported Media Type");
    }

    #[test]
    fn raw_responses_are_whole_http_with_the_envelope() {
        let raw = raw_http1_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too big");
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
    }

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

    #[test]
    fn unavailable_is_503_with_retry_after() {
        let e: ApiError = crate::auth::AuthError::Unavailable("down".into()).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, code::AUTH_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(crate::auth::AUTH_RETRY_AFTER_SECS));
    }
}
