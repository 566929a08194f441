//! Who is calling: the proxy token in `Authorization: Bearer` becomes a
//! [`Caller`] scoped to one workspace.
//!
//! The embedded store is asked on every request (an indexed read), so a
//! revocation made by `execgate admin` in another process takes effect on the
//! very next request. A rejected token is always 401, never 5xx, so a
//! misconfigured client stops instead of retrying forever.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use execgate_protocol::connectors::error_code as code;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a connectors API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub workspace: String,
    pub user_id: Option<String>,
}

/// The bearer token of a request, or 401 `missing_bearer`.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::MISSING_BEARER,
            format!("{why}: send the header `Authorization: Bearer <token>`"),
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
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
        match state.store().verify_proxy_token(token).await? {
            Some(grant) => Ok(Caller {
                workspace: grant.workspace,
                user_id: grant.user_id,
            }),
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
}
