//! The auth layer: proxy tokens, capability tokens ([`captoken`]), the
//! admin token ([`admin_token`]). It names neither `http`, `ops` nor `link`,
//! and no axum: the extractors that run it are `http::extract`'s.
//!
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
//! The `Caller` extractor (`crate::http::extract`) runs the verifier and
//! applies the workspace's request rate limit: it is the one door of the
//! connectors API and `/mcp`.
//!
//! Status codes: a rejected token is always 401, never 5xx, so a
//! misconfigured client stops instead of retrying forever; an authority that
//! cannot answer is 503 `auth_unavailable` with Retry-After, because the
//! token may well be good and the client should retry.

pub mod admin_token;
pub mod cache;
pub mod captoken;
pub mod embedded;
pub mod internal;
pub mod remote;
pub mod shared_secrets;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::secret::SecretString;
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
pub const AUTH_RETRY_AFTER_SECS: u64 = 2;

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
