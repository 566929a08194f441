//! The HTTP surface: the router, and the connectors API handlers. Handlers
//! stay small: authenticate (the [`Caller`] extractor), resolve the
//! environment or session, then hand over to `tools` or `processes`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use execgate_protocol::connectors::{
    error_code as code, CallToolResult, ConnectorEnv, EnvsListResponse, ErrorResponse,
    ExecutorInfo, OkResponse, OutputResponse, StdinRequest, ToolCallRequest,
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::Via;
use crate::auth::{self, bearer_token, Caller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::link::Link;
use crate::openapi::{SessionErrors, SessionPath};
use crate::revocation::Watch;
use crate::state::AppState;
use crate::store::now_ms;
use crate::{connect, file_stream, processes, stream, tools};

pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    let (public, mut doc) = public_routes().split_for_parts();
    crate::openapi::finish(&mut doc);
    // Serialised once: the document is fixed for the life of the process.
    let doc = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
    Router::new()
        .merge(public)
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        .route(
            "/cloud/environment/{environment_id}/direct/register",
            post(connect::register),
        )
        .route(
            "/cloud/environment/{environment_id}/direct/connect",
            get(connect::connect),
        )
        // The executor protocol for capability-token holders (WebSocket);
        // like /cloud/*, not part of the OpenAPI document.
        .route("/bridge/{exe_id}", get(crate::bridge::bridge))
        .merge(crate::mcp::router(&state))
        .merge(crate::admin::router(&state))
        .merge(internal_routes(&state))
        // The web console's static files (`/ui/`); not part of the API.
        .merge(crate::ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        // Last resort: whatever error escaped as plain text or empty gets
        // the envelope (see `error::envelope_bare_errors`).
        .layer(axum::middleware::map_response(
            crate::error::envelope_bare_errors,
        ))
        .with_state(state)
}

/// The public HTTP API: the routes agents call. Each handler is listed once
/// and carries its `#[utoipa::path]`, so the router and `/openapi.json`
/// ([`crate::openapi`]) are built from the same list and cannot drift.
/// Executor-facing routes (`/cloud/*`), `/mcp` (MCP has its own discovery)
/// and `/internal/*` are not part of it.
pub fn public_routes() -> OpenApiRouter<AppState> {
    let (schemas, paths, files) = routes!(file_stream::download, file_stream::upload);
    // Uploads stream; the JSON body limit does not apply.
    let files = files.layer(DefaultBodyLimit::disable());
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(envs_list))
        .routes(routes!(tool_call))
        .routes(routes!(processes::list_handler))
        .routes(routes!(stdin))
        .routes(routes!(output))
        .routes(routes!(terminate))
        .routes(routes!(stream::stream))
        .routes(routes!(processes::resize_handler))
        .routes(routes!(processes::signal_handler))
        .routes((schemas, paths, files))
        .routes(routes!(healthz))
}

/// Liveness: answers while the process serves, without touching the store.
#[utoipa::path(get, path = "/healthz", security(()), responses(
    (status = 200, description = "The gateway is serving", body = String, content_type = "text/plain", example = "ok")
))]
async fn healthz() -> &'static str {
    "ok"
}

/// `/internal/*` exists only on a gateway that is a token authority
/// (`--internal-secret-file`); elsewhere it falls through to 404.
fn internal_routes(state: &AppState) -> Router<AppState> {
    if state.config().auth.internal_secret.is_none() {
        return Router::new();
    }
    Router::new()
        .route(
            "/internal/validate-proxy-token",
            post(auth::internal::validate_proxy_token),
        )
        .route("/internal/stats", get(auth::internal::stats))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        code::NOT_FOUND,
        "no such route; the connectors API lives under /api/connectors",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "this route does not take that HTTP method",
    )
}

/// The caller's connected environments and their tools.
#[utoipa::path(post, path = "/api/connectors/envs/list", tag = "environments",
    request_body(content = Object, description = "Ignored; send `{}` or nothing.", content_type = "application/json"),
    responses((status = 200, description = "Connected environments of the token's workspace", body = EnvsListResponse)))]
async fn envs_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(_): ApiJson<serde::de::IgnoredAny>,
) -> Result<Json<EnvsListResponse>, ApiError> {
    let envs = connected_envs(&state, &caller).await?;
    Ok(Json(EnvsListResponse { envs }))
}

/// The caller's environments that have a live link, as envs/list shows
/// them (MCP's list_environments too).
pub(crate) async fn connected_envs(
    state: &AppState,
    caller: &Caller,
) -> Result<Vec<ConnectorEnv>, ApiError> {
    let rows = state
        .store()
        .list_executors(Some(&caller.workspace))
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let link = state.registry().get(&row.exe_id)?;
            Some(env_of(&link, row.is_default))
        })
        .collect())
}

fn env_of(link: &Link, is_default: bool) -> ConnectorEnv {
    ConnectorEnv {
        name: link.name.clone(),
        kind: "executor".into(),
        is_default,
        tools: tools::list(link),
        last_seen: Some(rfc3339(link.last_seen_ms())),
        executor: link.handshake().map(|h| ExecutorInfo {
            kind: connect::executor_kind(h).into(),
            version: h.info.executor_version.clone(),
            os: h.info.platform_os.clone(),
        }),
        policy: crate::policy::info(link),
    }
}

/// RFC 3339 in UTC, to the second, as the seed's `last_seen`.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn ago(ms: i64) -> String {
    let secs = (now_ms() - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

/// 503 for an environment that exists but has no live link, saying when it
/// was last seen.
pub async fn executor_unavailable(state: &AppState, exe_id: &str) -> ApiError {
    let row = state.store().executor(exe_id).await.ok().flatten();
    let message = match row {
        Some(r) => match r.last_seen_at {
            Some(seen) => format!(
                "executor '{}' is not connected (last seen {})",
                r.name,
                ago(seen)
            ),
            None => format!("executor '{}' has never connected", r.name),
        },
        None => "the executor is not connected".to_string(),
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code::EXECUTOR_UNAVAILABLE,
        message,
    )
    .with_retry_after(5)
}

/// The tool/call body. `arguments` is taken as any JSON here so that a
/// non-object gets `bad_arguments` rather than a generic parse error.
#[derive(Deserialize)]
struct ToolCallBody {
    tool: String,
    #[serde(default)]
    arguments: Value,
}

/// Calls a tool (core or custom) on one environment. A tool that ran and
/// failed (a non-zero exit, a missing file) is a 200 with `isError: true`;
/// 4xx/5xx mean the call could not be made.
#[utoipa::path(post, path = "/api/connectors/envs/{name}/tool/call", tag = "environments",
    params(("name" = String, Path, description = "The environment's name, as envs/list shows it")),
    request_body = ToolCallRequest,
    responses(
        (status = 200, description = "The tool's result, as an MCP CallToolResult", body = CallToolResult),
        (status = 404, description = "No such environment in this workspace (`env_not_found`), or no such tool (`unknown_tool`)", body = ErrorResponse),
        (status = 504, description = "The executor did not answer in time (`gateway_timeout`)", body = ErrorResponse),
    ))]
async fn tool_call(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ToolCallBody>,
) -> Result<Json<CallToolResult>, ApiError> {
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
    let link = environment(&state, &caller, &name);
    let result = tools::call(
        &state,
        &caller,
        Via::Rest,
        &name,
        link,
        &body.tool,
        arguments,
    )
    .await?;
    Ok(Json(result))
}

/// The live link of the caller's environment `name`.
pub(crate) async fn environment(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<Arc<Link>, ApiError> {
    let row = state
        .store()
        .executor_by_name(&caller.workspace, name)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                code::ENV_NOT_FOUND,
                format!(
                    "workspace {:?} has no environment {name:?}; envs/list shows the connected ones",
                    caller.workspace
                ),
            )
        })?;
    match state.registry().get(&row.exe_id) {
        Some(link) => Ok(link),
        None => Err(executor_unavailable(state, &row.exe_id).await),
    }
}

/// Writes to a process's stdin; `eof` closes it after the data.
#[utoipa::path(post, path = "/api/connectors/processes/{sid}/stdin", tag = "processes",
    params(SessionPath),
    request_body = StdinRequest,
    responses(
        (status = 200, description = "Written", body = OkResponse),
        (status = 409, description = "stdin is closed (`stdin_closed`) or the process exited", body = ErrorResponse),
        SessionErrors,
    ))]
async fn stdin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    ApiJson(req): ApiJson<StdinRequest>,
) -> Result<Json<OkResponse>, ApiError> {
    let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "stdin").await?;
    processes::write_stdin(&mut s, &req.data_b64, req.eof).await?;
    Ok(Json(OkResponse { ok: true }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct OutputQuery {
    /// The last seq already read (0 for the start); pass `next_since` of
    /// the previous answer.
    #[serde(default)]
    since: u64,
    /// Long-poll: wait up to this long (ms) for output past `since`.
    #[serde(default)]
    wait_ms: u64,
}

/// Output chunks after seq `since`, with the exit code once the process
/// exited. Lost output is reported in `truncated`/`lost_bytes`.
#[utoipa::path(get, path = "/api/connectors/processes/{sid}/output", tag = "processes",
    params(SessionPath, OutputQuery),
    responses(
        (status = 200, description = "Chunks in seq order", body = OutputResponse),
        SessionErrors,
    ))]
async fn output(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    ApiQuery(q): ApiQuery<OutputQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "output").await?;
    // A long-poll ends early when its token is revoked or its environment
    // removed (see `revocation`).
    if q.wait_ms > 0 {
        let watch = Watch::new(&state, bearer_token(&headers)?, &caller.workspace)
            .with_environment(&s.link.name, &s.row.exe_id);
        s.watch = Some(watch);
    }
    let out = processes::output(&mut s, q.since, q.wait_ms).await?;
    // An OutputResponse, written without serde's detour (see Output::to_json).
    Ok(([(header::CONTENT_TYPE, "application/json")], out.to_json()))
}

/// Kills the process (its whole process group).
#[utoipa::path(post, path = "/api/connectors/processes/{sid}/terminate", tag = "processes",
    params(SessionPath),
    request_body(content = Object, description = "Ignored; send `{}` or nothing.", content_type = "application/json"),
    responses(
        (status = 200, description = "Terminated (or had already exited)", body = OkResponse),
        SessionErrors,
    ))]
async fn terminate(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    ApiJson(_): ApiJson<serde::de::IgnoredAny>,
) -> Result<Json<OkResponse>, ApiError> {
    let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "terminate").await?;
    processes::terminate(&mut s).await?;
    Ok(Json(OkResponse { ok: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }
}
