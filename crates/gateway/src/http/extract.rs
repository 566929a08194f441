//! Extractors whose rejections are [`ApiError`]s, so that a malformed path,
//! query or body gets the same error envelope as everything else.
//!
//! JSON bodies are parsed whatever their Content-Type (agents and curl users
//! often omit it), an empty body counts as `{}`, and a data error names the
//! JSON path of the offending field.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use execgate_protocol::connectors::error_code as code;
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::ops::state::AppState;
pub use crate::ops::tools::describe;

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// A JSON body, parsed leniently (see the module docs).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = read_body(req, state).await?;
        parse_json_body(&body).map(ApiJson)
    }
}

/// A JSON body parsed as [`ApiJson`] does, with its bytes as sent (an
/// idempotency key's fingerprint hashes them).
pub struct ApiJsonRaw<T>(pub T, pub Bytes);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJsonRaw<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = read_body(req, state).await?;
        let value = parse_json_body(&body)?;
        Ok(ApiJsonRaw(value, body))
    }
}

/// The whole request body, or 413 past the configured limit.
pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the limit of {} bytes",
                    state.config().max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request(format!(
                "could not read the request body: {}",
                e.body_text()
            ))
        }
    })
}

/// Parses a JSON body; whitespace alone counts as `{}`.
pub fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let bad_json = |e: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code::BAD_JSON,
            format!("the request body is not valid JSON: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            bad_json(inner)
        } else {
            ApiError::bad_request(describe(e.path(), inner))
        }
    })?;
    de.end().map_err(|e| bad_json(&e))?;
    Ok(value)
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

/// A request that presented the admin token as `Authorization: Bearer`.
/// No header: 401 `missing_bearer`; any other token: 401 `invalid_token`.
#[derive(Debug, Clone, Copy)]
pub struct AdminCaller;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        if crate::auth::admin_token::matches(state.admin_token(), token) {
            Ok(AdminCaller)
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::INVALID_TOKEN,
                "not the admin token: the admin API takes the token in the gateway's <data-dir>/admin-token (or its --admin-token-file)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        tool: String,
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json_body::<Body>(br#"{"tool":"x","n":"seven"}"#).unwrap_err();
        assert_eq!(e.code, code::BAD_REQUEST);
        assert!(e.message.starts_with("n: invalid type"), "{}", e.message);
        let e = parse_json_body::<Body>(br#"{"n":1}"#).unwrap_err();
        assert!(e.message.contains("missing field `tool`"), "{}", e.message);
        let e = parse_json_body::<Body>(br#"{"tool":"#).unwrap_err();
        assert_eq!(e.code, code::BAD_JSON);
        let e = parse_json_body::<Body>(br#"{"tool":"x"} trailing"#).unwrap_err();
        assert_eq!(e.code, code::BAD_JSON);
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        #[derive(Deserialize)]
        struct Empty {}
        assert!(parse_json_body::<Empty>(b"  ").is_ok());
        assert!(parse_json_body::<Body>(b"").is_err());
    }
}

#[cfg(test)]
mod bearer_tests {
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
}
