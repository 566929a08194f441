//! The HTTP surface: the router, and the connectors API handlers. Handlers
//! stay small: authenticate (the [`Caller`] extractor), resolve the
//! environment or session, then hand over to `tools` or `processes`.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use execgate_protocol::connectors::{
    CallToolResult, EnvsListRequest, EnvsListResponse, ErrorResponse, ToolCallRequest,
};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiJsonRaw, ApiPath};
use crate::http::idempotency;
use crate::http::openapi::{IdempotencyErrors, IdempotencyKey};
use crate::ops::environment::environment;
use crate::ops::envs_list::{connected_envs_json, Page};
use crate::ops::state::AppState;
use crate::ops::tools;
use crate::store::audit_log::Via;

/// The caller's connected environments and their tools, in name order:
/// all of them, or a page of them (`limit`, `after`; the answer's `next`
/// names where the next page starts).
#[utoipa::path(post, path = "/api/connectors/envs/list", tag = "environments",
    request_body(content = EnvsListRequest, description = "Optional; `{}` or nothing lists every connected environment. `limit` (1 to 1000) and `after` ask for a page: at most `limit` environments whose names come after `after` (byte order); the answer's `next` is then the `after` of the next page, absent on the last one. Other fields are ignored.", content_type = "application/json"),
    responses(
        (status = 200, description = "Connected environments of the token's workspace", body = EnvsListResponse),
        (status = 400, description = "`limit` is not an integer from 1 to 1000, or `after` is not a string (`bad_request`)", body = ErrorResponse),
    ))]
pub(crate) async fn envs_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let page = Page::of_body(&body)?;
    // Written from each environment's interned JSON pieces (the same bytes
    // as serializing an EnvsListResponse), and sent piece by piece: a
    // workspace of 10,000 is cheap, and never one 19 MB buffer.
    let answer = connected_envs_json(&state, &caller, &page).await?;
    let body = axum::body::Body::new(Frames {
        len: answer.len() as u64,
        frames: answer,
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// envs/list's answer: its frames, rendered as hyper asks for them, with
/// their length known (so the answer has a `Content-Length`, not chunks).
struct Frames {
    frames: crate::ops::envs_list::EnvsAnswer,
    len: u64,
}

impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.frames.next();
        if let Some(f) = &next {
            self.len -= f.len() as u64;
        }
        std::task::Poll::Ready(next.map(|f| Ok(http_body::Frame::data(f))))
    }

    fn is_end_stream(&self) -> bool {
        self.len == 0 && self.frames.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// The tool/call body. `arguments` is taken as any JSON here so that a
/// non-object gets `bad_arguments` rather than a generic parse error.
#[derive(Deserialize)]
pub(crate) struct ToolCallBody {
    tool: String,
    #[serde(default)]
    arguments: Value,
}

/// Calls a tool (core or custom) on one environment. A tool that ran and
/// failed (a non-zero exit, a missing file) is a 200 with `isError: true`;
/// 4xx/5xx mean the call could not be made.
#[utoipa::path(post, path = "/api/connectors/envs/{name}/tool/call", tag = "environments",
    params(("name" = String, Path, description = "The environment's name, as envs/list shows it"), IdempotencyKey),
    request_body = ToolCallRequest,
    responses(
        (status = 200, description = "The tool's result, as an MCP CallToolResult", body = CallToolResult),
        (status = 404, description = "No such environment in this workspace (`env_not_found`). (An unknown tool is a 400 `unknown_tool`.)", body = ErrorResponse),
        (status = 504, description = "The executor did not answer in time (`gateway_timeout`)", body = ErrorResponse),
        IdempotencyErrors,
    ))]
pub(crate) async fn tool_call(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    uri: Uri,
    headers: HeaderMap,
    ApiJsonRaw(body, raw): ApiJsonRaw<ToolCallBody>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let arguments = match body.arguments {
        Value::Object(map) => map,
        Value::Null => Default::default(),
        other => {
            return Err(ApiError::bad_arguments(format!(
                "arguments must be a JSON object, not {other}"
            )))
        }
    };
    match arguments.get("environment_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(env)) if *env == name => {}
        Some(other) => {
            return Err(ApiError::bad_arguments(format!(
                "arguments.environment_id is {other} but the path names environment {name:?}; omit it or make them agree"
            )))
        }
    }
    let store = state.store().clone();
    let workspace = caller.workspace.clone();
    // Boxed: the call's future is large, and unboxed it was copied at
    // each layer that moved it (that memcpy was 6.7 % of the workers'
    // busy samples in a `shell true` profile; BENCHMARKS.md, issue 22).
    let op = Box::pin(async move {
        let link = environment(&state, &caller, &name);
        tools::call(
            &state,
            &caller,
            Via::Rest,
            &name,
            link,
            &body.tool,
            arguments,
        )
        .await
        .map(Json)
        .map_err(ApiError::from)
        .into_response()
    });
    Ok(idempotency::json_route(&store, &workspace, key, "POST", uri.path(), &raw, op).await)
}
