//! The remote verifier: proxy tokens are checked by a token authority
//! (agentserver, or another execgate started with `--internal-secret-file`)
//! through `POST {url}/internal/validate-proxy-token`.
//!
//! The request carries `X-Internal-Secret` and the token under both `token`
//! and `proxy_token` (the reference's client and server disagreed on the
//! name, so we send both). The answer decides:
//! - 200 `{workspace_id, user_id?}`: accepted; `workspace_id` names a
//!   workspace of *this* gateway's store (where its executors are);
//! - 401: rejected;
//! - anything else, a timeout (5 s by default) or no connection: the
//!   authority is unavailable. That is 503 `auth_unavailable`, never a 401,
//!   and it is not cached. A 403 or 404 usually means our secret or URL is
//!   wrong, which is logged as such.
//!
//! Verdicts go through [`VerdictCache`], so the authority sees at most one
//! call per token per TTL, however many requests arrive at once.

use std::time::Duration;

use crate::auth::cache::VerdictCache;
use crate::auth::internal::{ValidateRequest, ValidateResponse};
use crate::auth::{AuthError, CacheConfig, ProxyTokenVerifier, Verdict, VerifyFuture};
use crate::secret::SecretString;
use crate::store::TokenGrant;

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URL of the authority, e.g. `https://agentserver.internal`.
    pub url: String,
    pub secret: SecretString,
    pub timeout: Duration,
    pub cache: CacheConfig,
}

impl RemoteConfig {
    pub fn new(url: String, secret: SecretString) -> Self {
        RemoteConfig {
            url,
            secret,
            timeout: Duration::from_secs(5),
            cache: CacheConfig::default(),
        }
    }
}

pub struct RemoteVerifier {
    http: reqwest::Client,
    endpoint: String,
    secret: SecretString,
    cache: VerdictCache,
}

impl RemoteVerifier {
    pub fn new(config: RemoteConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            // Below an execgate authority's 10 s idle timeout.
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .build()
            // Only a broken TLS backend fails here; rustls with bundled
            // roots needs nothing from the system.
            .expect("the HTTP client of the remote verifier builds");
        RemoteVerifier {
            http,
            endpoint: format!(
                "{}/internal/validate-proxy-token",
                config.url.trim_end_matches('/')
            ),
            secret: config.secret,
            cache: VerdictCache::new(&config.cache),
        }
    }

    /// One upstream call.
    async fn ask(&self, token: &str) -> Result<Verdict, AuthError> {
        let unavailable = |why: String| {
            tracing::warn!(endpoint = %self.endpoint, "token authority unavailable: {why}");
            AuthError::Unavailable(format!("the token authority {why}"))
        };
        let resp = self
            .http
            .post(&self.endpoint)
            .header("X-Internal-Secret", self.secret.expose())
            .json(&ValidateRequest {
                token: Some(token.to_string()),
                proxy_token: Some(token.to_string()),
            })
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    unavailable("did not answer in time".into())
                } else {
                    unavailable(format!("is unreachable ({e})"))
                }
            })?;
        // A client's view of the authority's answer: 200, 401, or trouble.
        let status = resp.status();
        match status.as_u16() {
            200 => {
                let body: ValidateResponse = resp
                    .json()
                    .await
                    .map_err(|e| unavailable(format!("sent a bad answer ({e})")))?;
                if body.workspace_id.is_empty() {
                    return Err(unavailable("answered 200 without a workspace_id".into()));
                }
                Ok(Some(TokenGrant {
                    workspace: body.workspace_id,
                    user_id: body.user_id.filter(|u| !u.is_empty()),
                }))
            }
            401 => Ok(None),
            403 | 404 => Err(unavailable(format!(
                "answered {status}: check --agentserver-url and --agentserver-secret-file"
            ))),
            _ => Err(unavailable(format!("answered {status}"))),
        }
    }
}

impl ProxyTokenVerifier for RemoteVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(self.cache.get_or_ask(token, self.ask(token)))
    }
}
