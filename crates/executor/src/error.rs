//! Error types: [`ExecutorError`], what [`run`](crate::run) can fail with,
//! and [`ConnectError`], why one connection attempt failed.

use std::path::PathBuf;
use std::time::Duration;

/// Why [`run`](crate::run) gave up. Every variant is permanent: retrying
/// with the same configuration would fail the same way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    #[error("invalid executor token: expected \"<environment id>.<secret>\" in printable ASCII")]
    InvalidToken,

    #[error("invalid gateway URL {url:?}: {reason}")]
    InvalidGatewayUrl { url: String, reason: String },

    #[error("invalid working directory {}: {source}", path.display())]
    Workdir {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The directory for spilled output cannot be created.
    #[error("cannot create the output spill directory {}: {source}", path.display())]
    SpillDir {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A policy option (`--root`, `--allow-tools`, `--max-processes`) is
    /// not usable; the message names it.
    #[error("{0}")]
    Policy(String),

    /// The `--tools` file cannot be read or is not valid.
    #[error(transparent)]
    ToolsFile(#[from] crate::tools_file::ToolsFileError),

    #[error("cannot create the HTTP client: {0}")]
    HttpClient(String),

    /// The register endpoint refused this executor before it ever connected:
    /// a wrong token, an unknown environment, or a name mismatch.
    #[error("the gateway refused to register this executor (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
}

/// Why one attempt to reach the gateway failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The register endpoint answered with a non-2xx status.
    #[error("register refused (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },

    #[error("register request failed: {0}")]
    Register(String),

    #[error("unexpected register response: {0}")]
    BadResponse(String),

    #[error("WebSocket connection failed: {0}")]
    Dial(#[source] Box<tokio_tungstenite::tungstenite::Error>),

    #[error("WebSocket connection timed out after {} s", .0.as_secs())]
    DialTimeout(Duration),
}

impl ConnectError {
    /// The gateway's refusal of this executor as configured (HTTP 401, 403,
    /// 404 or 409 from the register endpoint), if that is what this is. `run`
    /// gives up on it only before its first successful connection; after that
    /// it may be transient (a gateway being redeployed), so it retries.
    /// A 409 `executor_already_connected` (another executor with this token
    /// holds the link, or this one's previous link is not yet known dead) is
    /// never permanent: it is retried with the backoff.
    pub fn permanent_refusal(&self) -> Option<ExecutorError> {
        use execgate_protocol::connectors::error_code::EXECUTOR_ALREADY_CONNECTED;
        match self {
            ConnectError::Rejected { status, message }
                if matches!(status, 401 | 403 | 404 | 409)
                    && !message.ends_with(&format!("({EXECUTOR_ALREADY_CONNECTED})")) =>
            {
                Some(ExecutorError::Rejected {
                    status: *status,
                    message: message.clone(),
                })
            }
            _ => None,
        }
    }
}

/// An error and all its sources, `outer: inner: innermost`. reqwest's own
/// message omits the cause ("error sending request" without "connection
/// refused").
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_the_executor_itself_are_permanent() {
        let rejected = |status| ConnectError::Rejected {
            status,
            message: String::new(),
        };
        for status in [401, 403, 404, 409] {
            assert!(rejected(status).permanent_refusal().is_some(), "{status}");
        }
        for status in [400, 429, 500, 502, 503] {
            assert!(rejected(status).permanent_refusal().is_none(), "{status}");
        }
        // Another executor holds the link: retried, not permanent.
        let busy = ConnectError::Rejected {
            status: 409,
            message: "another executor with this token is connected (executor_already_connected)"
                .into(),
        };
        assert!(busy.permanent_refusal().is_none());
        assert!(ConnectError::Register("refused".into())
            .permanent_refusal()
            .is_none());
    }

    #[test]
    fn error_chain_includes_sources_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
