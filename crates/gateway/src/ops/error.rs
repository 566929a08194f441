//! The operations' error: what went wrong, as a stable `code` (one of
//! `execgate_protocol::connectors::error_code`, the strings clients match
//! on), a human `message`, and, for errors worth retrying, `retry_after`
//! (seconds). [`Error::kind`] classifies the code without naming HTTP; the
//! HTTP layer (`http::error`) is the one place a kind becomes a status and
//! an error becomes the `{"error":{code,message}}` envelope.
//!
//! The lower layers have their own errors ([`StoreError`], [`LinkError`],
//! [`CapTokenError`], [`AuthError`], [`AuditUnavailable`]); they convert
//! into this one here, so each keeps one meaning everywhere.

use execgate_protocol::connectors::error_code as code;
use execgate_protocol::jsonrpc::code as rpc_code;

use crate::auth::captoken::CapTokenError;
use crate::auth::{AuthError, AUTH_RETRY_AFTER_SECS};
use crate::link::LinkError;
use crate::store::audit_log::{AuditUnavailable, ErrorCode};
use crate::store::StoreError;

/// An operation that could not be carried out (a tool that ran and failed
/// is not one: that is a result with `isError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The stable code clients match on.
    pub code: &'static str,
    pub message: String,
    /// Seconds, for a client's retry (`Retry-After` over HTTP).
    pub retry_after: Option<u64>,
    /// The request may have reached the executor and run, but its answer
    /// was lost (the link, or the replica that held it, went away with the
    /// request sent). Not a code of its own (it stays 503
    /// `executor_unavailable`): it tells an `Idempotency-Key` not to be
    /// released (`ops::idempotency`, "Unknown outcomes").
    pub outcome_unknown: bool,
}

/// What kind of failure a code is, whatever carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (a field, the JSON, a range).
    Invalid,
    /// No credentials, or ones that are not accepted.
    Unauthenticated,
    /// Authenticated, but refused (policy, workspace, secret).
    Denied,
    NotFound,
    /// The target's state does not allow it now.
    Conflict,
    /// Well-formed, but it contradicts an earlier request (an idempotency
    /// key used for another request).
    Mismatch,
    /// It existed and is gone for good (a process whose executor forgot it).
    Gone,
    TooLarge,
    /// Over a rate or a count; retry later.
    Limited,
    /// The executor cannot do this (too old).
    Unsupported,
    /// The executor failed or answered nonsense.
    Upstream,
    /// Something needed is not reachable right now; retry.
    Unavailable,
    /// The executor did not answer in time.
    Timeout,
    /// A bug, or the store failing.
    Internal,
}

/// The kind of each code: the one table (`http::error` maps kinds to
/// statuses). A code missing here is `Internal`; the test below lists
/// every code.
pub fn kind_of(code: &str) -> ErrorKind {
    match code {
        code::BAD_REQUEST
        | code::BAD_JSON
        | code::UNKNOWN_TOOL
        | code::BAD_ARGUMENTS
        | code::BAD_BASE64 => ErrorKind::Invalid,
        code::MISSING_BEARER
        | code::INVALID_TOKEN
        | code::INVALID_CAPTOKEN
        | code::CAPTOKEN_EXPIRED
        | code::TURN_REVOKED => ErrorKind::Unauthenticated,
        code::FORBIDDEN | code::POLICY_DENIED | code::TOOL_NOT_ALLOWED => ErrorKind::Denied,
        code::NOT_FOUND | code::ENV_NOT_FOUND | code::SESSION_NOT_FOUND | FILE_NOT_FOUND => {
            ErrorKind::NotFound
        }
        code::CONFLICT
        | code::EXECUTOR_ALREADY_CONNECTED
        | code::STDIN_CLOSED
        | code::NOT_A_TERMINAL
        | code::IDEMPOTENCY_KEY_IN_DOUBT
        | code::IDEMPOTENCY_ANSWER_TOO_LARGE => ErrorKind::Conflict,
        code::IDEMPOTENCY_KEY_REUSED => ErrorKind::Mismatch,
        code::SESSION_EXPIRED | code::EXECUTOR_RESTARTED => ErrorKind::Gone,
        code::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        code::RATE_LIMITED | code::TOO_MANY_SESSIONS | code::TOO_MANY_PROCESSES => {
            ErrorKind::Limited
        }
        code::NOT_SUPPORTED_BY_EXECUTOR => ErrorKind::Unsupported,
        code::EXECUTOR_ERROR => ErrorKind::Upstream,
        code::UNAVAILABLE
        | code::EXECUTOR_UNAVAILABLE
        | code::AUTH_UNAVAILABLE
        | code::AUDIT_UNAVAILABLE
        | code::TOO_MANY_CONNECTIONS
        | code::DRAINING
        | code::STORE_UNAVAILABLE => ErrorKind::Unavailable,
        code::GATEWAY_TIMEOUT => ErrorKind::Timeout,
        _ => ErrorKind::Internal,
    }
}

/// `GET /files` of a path that does not exist (not in the protocol's list:
/// only that route answers it).
pub const FILE_NOT_FOUND: &str = "file_not_found";

impl Error {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after: None,
            outcome_unknown: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(code::BAD_REQUEST, message)
    }

    pub fn bad_arguments(message: impl Into<String>) -> Self {
        Self::new(code::BAD_ARGUMENTS, message)
    }

    pub fn bad_base64(field: &str, err: impl std::fmt::Display) -> Self {
        Self::new(
            code::BAD_BASE64,
            format!("{field} is not valid standard base64: {err}"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Marks the error as one after which the request's outcome is
    /// unknown (see [`Error::outcome_unknown`]).
    pub fn with_outcome_unknown(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    pub fn kind(&self) -> ErrorKind {
        kind_of(self.code)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl ErrorCode for Error {
    fn error_code(&self) -> &str {
        self.code
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Error::new(code::CONFLICT, m),
            StoreError::NotFound(m) => Error::not_found(m),
            StoreError::Invalid(m) => Error::bad_request(m),
            other if other.is_unavailable() => {
                tracing::warn!("store unavailable: {other}");
                Error::new(
                    code::STORE_UNAVAILABLE,
                    "the gateway's store cannot be reached; try again shortly",
                )
                .with_retry_after(2)
            }
            other => {
                tracing::error!("store failure: {other}");
                Error::internal("the gateway's store failed; try again")
            }
        }
    }
}

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Disconnected { sent, .. } => {
                let err = Error::new(code::EXECUTOR_UNAVAILABLE, e.to_string()).with_retry_after(1);
                if sent {
                    err.with_outcome_unknown()
                } else {
                    err
                }
            }
            LinkError::Timeout { .. } => Error::new(code::GATEWAY_TIMEOUT, e.to_string()),
            LinkError::Denied {
                ref name,
                ref error,
                ..
            } if error.code == rpc_code::TOO_MANY_PROCESSES => Error::new(
                code::TOO_MANY_PROCESSES,
                format!("environment '{name}': {}", error.message),
            )
            .with_retry_after(1),
            LinkError::Denied {
                ref name,
                ref method,
                ref error,
            } => Error::new(
                code::POLICY_DENIED,
                format!(
                    "environment '{name}' refused {method} by its executor's policy: {}",
                    error.message
                ),
            ),
            LinkError::Rpc { .. } | LinkError::BadResponse { .. } => {
                Error::new(code::EXECUTOR_ERROR, e.to_string())
            }
        }
    }
}

impl From<CapTokenError> for Error {
    /// Every refused capability token is unauthenticated; an expired one
    /// has its own code, so that a client knows to mint a new one rather
    /// than fix its configuration.
    fn from(e: CapTokenError) -> Self {
        let code = match e {
            CapTokenError::Expired { .. } => code::CAPTOKEN_EXPIRED,
            _ => code::INVALID_CAPTOKEN,
        };
        Error::new(code, e.to_string())
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(m) => Error::new(
                code::AUTH_UNAVAILABLE,
                format!("cannot check the proxy token right now: {m}"),
            )
            .with_retry_after(AUTH_RETRY_AFTER_SECS),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<AuditUnavailable> for Error {
    fn from(e: AuditUnavailable) -> Self {
        Error::new(code::AUDIT_UNAVAILABLE, e.message).with_retry_after(e.retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of the protocol has its kind (none falls through to
    /// `Internal` but `internal`).
    #[test]
    fn every_code_has_a_kind() {
        let all = [
            code::MISSING_BEARER,
            code::INVALID_TOKEN,
            code::AUTH_UNAVAILABLE,
            code::INVALID_CAPTOKEN,
            code::CAPTOKEN_EXPIRED,
            code::TURN_REVOKED,
            code::BAD_REQUEST,
            code::BAD_JSON,
            code::UNKNOWN_TOOL,
            code::BAD_ARGUMENTS,
            code::BAD_BASE64,
            code::FORBIDDEN,
            code::NOT_FOUND,
            code::ENV_NOT_FOUND,
            code::SESSION_NOT_FOUND,
            code::CONFLICT,
            code::EXECUTOR_ALREADY_CONNECTED,
            code::STDIN_CLOSED,
            code::PAYLOAD_TOO_LARGE,
            code::UNAVAILABLE,
            code::EXECUTOR_UNAVAILABLE,
            code::EXECUTOR_ERROR,
            code::NOT_SUPPORTED_BY_EXECUTOR,
            code::SESSION_EXPIRED,
            code::EXECUTOR_RESTARTED,
            code::NOT_A_TERMINAL,
            code::GATEWAY_TIMEOUT,
            code::POLICY_DENIED,
            code::TOOL_NOT_ALLOWED,
            code::TOO_MANY_PROCESSES,
            code::RATE_LIMITED,
            code::TOO_MANY_SESSIONS,
            code::AUDIT_UNAVAILABLE,
            code::TOO_MANY_CONNECTIONS,
            code::DRAINING,
            code::STORE_UNAVAILABLE,
            code::IDEMPOTENCY_KEY_REUSED,
            code::IDEMPOTENCY_KEY_IN_DOUBT,
            code::IDEMPOTENCY_ANSWER_TOO_LARGE,
            FILE_NOT_FOUND,
        ];
        for c in all {
            assert_ne!(kind_of(c), ErrorKind::Internal, "{c}");
        }
        assert_eq!(kind_of(code::INTERNAL), ErrorKind::Internal);
        // Codes only the HTTP stack answers have no operation behind them.
        for c in [
            code::METHOD_NOT_ALLOWED,
            code::UNSUPPORTED_MEDIA_TYPE,
            code::HEADERS_TOO_LARGE,
            code::URI_TOO_LONG,
        ] {
            assert_eq!(kind_of(c), ErrorKind::Internal, "{c}");
        }
    }
}
