//! This gateway as the token authority of other gateways (their remote
//! verifier): the wire types of `POST /internal/validate-proxy-token` and
//! `GET /internal/stats`, the counters, the secret check. The routes are
//! `crate::http::internal`.
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

use serde::{Deserialize, Serialize};

use crate::secret::{constant_time_eq, SecretString};

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

impl Stats {
    /// Counts one answer.
    pub fn record(&self, accepted: bool) {
        let counter = if accepted {
            &self.accepted
        } else {
            &self.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, as `GET /internal/stats` answers them.
    pub fn snapshot(&self) -> StatsResponse {
        let accepted = self.accepted.load(Ordering::Relaxed);
        let rejected = self.rejected.load(Ordering::Relaxed);
        StatsResponse {
            validate_proxy_token: ValidateStats {
                calls: accepted + rejected,
                accepted,
                rejected,
            },
        }
    }
}

/// Whether `given` (the `X-Internal-Secret` bytes) is `expected`, compared
/// in constant time.
pub fn secret_matches(expected: &SecretString, given: &[u8]) -> bool {
    constant_time_eq(given, expected.expose().as_bytes())
}

/// The token of a validate request: `token` or `proxy_token` (both only if
/// equal), or why not.
pub fn requested_token(req: ValidateRequest) -> Result<String, &'static str> {
    match (req.token, req.proxy_token) {
        (Some(a), Some(b)) if a != b => {
            Err("`token` and `proxy_token` differ; send one, or the same in both")
        }
        (Some(t), _) | (None, Some(t)) => Ok(t),
        (None, None) => Err("send the token as `token`"),
    }
}
