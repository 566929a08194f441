//! Extractors whose rejections are [`ApiError`]s, so that a malformed path,
//! query or body gets the same error envelope as everything else.
//!
//! JSON bodies are parsed whatever their Content-Type (agents and curl users
//! often omit it), an empty body counts as `{}`, and a data error names the
//! JSON path of the offending field.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use bytes::Bytes;
use execgate_protocol::connectors::error_code as code;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

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

/// `field.sub: problem`, or just the problem at the root.
pub fn describe(path: &serde_path_to_error::Path, err: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the field path says more.
    let msg = err.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_string())
        .unwrap_or(msg);
    let path = path.to_string();
    if path == "." || path.is_empty() {
        msg
    } else {
        format!("{path}: {msg}")
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
