//! Who is calling: the proxy token in `Authorization: Bearer` becomes a
//! [`Caller`] scoped to one workspace.
//!
//! Tokens are checked by one [`ProxyTokenVerifier`], chosen at start:
//! - [`embedded::EmbeddedVerifier`] (the default) asks this gateway's store
//!   on every request (answered from memory while the database files are
//!   unchanged, `store::lookups`), so a revocation made by `execgate admin`
//!   in another process takes effect on the very next request;
//! - [`remote::RemoteVerifier`] asks a token authority
//!   (`POST {url}/internal/validate-proxy-token`) through a bounded verdict
//!   cache ([`cache`]) that coalesces concurrent misses.
//!
//! [`internal`] is the other side: this gateway acting as the authority for
//! others, from its own store.
//!
//! The extractor also applies the workspace's request rate limit
//! (`crate::limits`): it is the one door of the connectors API and `/mcp`.
//!
//! Status codes: a rejected token is always 401, never 5xx, so a
//! misconfigured client stops instead of retrying forever; an authority that
//! cannot answer is 503 `auth_unavailable` with Retry-After, because the
//! token may well be good and the client should retry.

pub mod cache;
pub mod embedded;
pub mod internal;
pub mod remote;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use execgate_protocol::connectors::error_code as code;

use crate::error::ApiError;
use crate::secret::SecretString;
use crate::state::AppState;
use crate::store::{Store, StoreError, TokenGrant};

/// The authenticated caller of a connectors API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub workspace: String,
    pub user_id: Option<String>,
}

/// Why a token could not be checked (as opposed to being rejected, which is
/// `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token authority is unreachable, timed out, or answered something
    /// other than 200 or 401. Never cached.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Seconds a client should wait before retrying after `auth_unavailable`.
const AUTH_RETRY_AFTER_SECS: u64 = 2;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::AUTH_UNAVAILABLE,
                format!("cannot check the proxy token right now: {m}"),
            )
            .with_retry_after(AUTH_RETRY_AFTER_SECS),
            AuthError::Store(e) => e.into(),
        }
    }
}

/// What a verification yields: the grant of an accepted token, `None` for a
/// rejected one.
pub type Verdict = Option<TokenGrant>;

pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<Verdict, AuthError>> + Send + 'a>>;

/// Turns a proxy token into the workspace (and user) it grants.
pub trait ProxyTokenVerifier: Send + Sync + 'static {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a>;
}

/// How proxy tokens are verified, and whether this gateway is an authority.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub verifier: VerifierConfig,
    /// When set, `POST /internal/validate-proxy-token` is served (from the
    /// store) to callers that send this value as `X-Internal-Secret`.
    /// Otherwise `/internal/*` is 404.
    pub internal_secret: Option<SecretString>,
}

#[derive(Debug, Clone, Default)]
pub enum VerifierConfig {
    /// This gateway's store.
    #[default]
    Embedded,
    /// A token authority (`--agentserver-url`).
    Remote(remote::RemoteConfig),
}

/// The verdict cache's bounds (remote mode only).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub capacity: u64,
    pub accepted_ttl: Duration,
    pub rejected_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 10_000,
            accepted_ttl: Duration::from_secs(300),
            rejected_ttl: Duration::from_secs(30),
        }
    }
}

/// The verifier `config` asks for.
pub fn verifier(config: &AuthConfig, store: &Store) -> Arc<dyn ProxyTokenVerifier> {
    match &config.verifier {
        VerifierConfig::Embedded => Arc::new(embedded::EmbeddedVerifier::new(store.clone())),
        VerifierConfig::Remote(remote) => Arc::new(remote::RemoteVerifier::new(remote.clone())),
    }
}

/// The one value of header `name`, or None without one; two or more are a
/// 400 `bad_request`. Credentials sent twice are ambiguous: taking the
/// first (as `HeaderMap::get` does) lets a proxy that appends its own header
/// and a gateway that reads another disagree on who is calling.
pub fn single_header(
    headers: &HeaderMap,
    name: impl header::AsHeaderName + Copy + std::fmt::Display,
) -> Result<Option<&HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "the request has more than one {name} header; send exactly one"
        )));
    }
    Ok(first)
}

/// The bearer token of a request, or 401 `missing_bearer` (400 for two
/// `Authorization` headers).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::MISSING_BEARER,
            format!("{why}: send the header `Authorization: Bearer <token>`"),
        )
    };
    let value = single_header(headers, &header::AUTHORIZATION)?
        .ok_or_else(|| missing("no Authorization header"))?;
    let value = value
        .to_str()
        .map_err(|_| missing("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| missing("the Authorization header has no Bearer token"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing("the Authorization header has no Bearer token"));
    }
    Ok(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        match state.verifier().verify(token).await? {
            Some(grant) => {
                // Every authenticated request counts against the
                // workspace's rate (see `limits`).
                state.limits().check_rate(&grant.workspace)?;
                Ok(Caller {
                    workspace: grant.workspace,
                    user_id: grant.user_id,
                })
            }
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::INVALID_TOKEN,
                "the proxy token is unknown or revoked",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&headers("bearer  abc ")).unwrap(), "abc");
        for bad in ["Basic abc", "Bearer", "Bearer   ", "abc"] {
            let e = bearer_token(&headers(bad)).unwrap_err();
            assert_eq!(e.code, code::MISSING_BEARER, "{bad}");
        }
        assert_eq!(
            bearer_token(&HeaderMap::new()).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn two_authorization_headers_are_a_bad_request() {
        let mut h = headers("Bearer abc");
        h.append(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        let e = bearer_token(&h).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, code::BAD_REQUEST)
        );
        assert!(e.message.contains("authorization"), "{}", e.message);
    }

    #[test]
    fn unavailable_is_503_with_retry_after() {
        let e: ApiError = AuthError::Unavailable("down".into()).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, code::AUTH_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(AUTH_RETRY_AFTER_SECS));
    }
}
