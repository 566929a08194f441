//! The admin API, `/api/admin/*`: the HTTP face of `execgate admin`,
//! behind the admin token (`auth::admin_token`, checked by [`AdminCaller`]). Both
//! share `ops::admin`; the capability-token routes call `ops::captoken`.
//!
//! | route | what |
//! |---|---|
//! | `GET`, `POST /api/admin/workspaces` | list; create `{name}` |
//! | `GET /api/admin/tokens[?workspace=]`, `POST /api/admin/tokens` | list; create `{workspace, user_id?}` (the token is in the answer, once) |
//! | `POST /api/admin/tokens/{id}/revoke` | revoke; the next request with it is 401 |
//! | `GET /api/admin/executors[?workspace=]`, `POST /api/admin/executors` | list (with `online`); add `{workspace, name, default?, sigv4?}` |
//! | `DELETE /api/admin/executors/{name}?workspace=W` | remove (by name or exe_id) |
//! | `GET /api/admin/audit[?workspace=&since=&cursor=&limit=]` | audit records, oldest first, paged by `next_cursor` |
//! | `GET /api/admin/stats` | the audit writer's counters (lost records, …) |
//!
//! Every route is behind one layer that runs the [`AdminCaller`]
//! extractor, so a route merged into [`router`] cannot be left open.

use axum::extract::State;
use axum::extract::{FromRequestParts, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use execgate_protocol::admin::{
    AddExecutor, AddedExecutor, AuditPage, CreateToken, CreateWorkspace, CreatedToken,
    ExecutorList, Stats, TokenList, Workspace, WorkspaceList,
};
use execgate_protocol::connectors::OkResponse;
use serde::Deserialize;

use crate::http::error::ApiError;
pub use crate::http::extract::AdminCaller;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ops::admin as ops;
use crate::ops::captoken::{self, MintRequest, Minted, RevokeTurnRequest, RevokedTurn};
use crate::ops::state::AppState;
use crate::store::audit_log::parse_since;
use crate::store::{now_ms, AuditQuery};

/// The most records one audit page holds.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// `/api/admin/*`, authenticated; merged into the API router.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/api/admin/workspaces",
            get(workspaces).post(create_workspace),
        )
        .route("/api/admin/tokens", get(tokens).post(create_token))
        .route("/api/admin/tokens/{id}/revoke", post(revoke_token))
        .route("/api/admin/executors", get(executors).post(add_executor))
        .route("/api/admin/executors/{name}", delete(remove_executor))
        .route("/api/admin/audit", get(audit))
        .route("/api/admin/stats", get(stats))
        // `POST /api/admin/captokens`, `POST /api/admin/revoke-turn`.
        .merge(captoken_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
}

async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Err(e) = AdminCaller::from_request_parts(&mut parts, &state).await {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

async fn workspaces(State(state): State<AppState>) -> Result<Json<WorkspaceList>, ApiError> {
    Ok(Json(ops::workspaces(state.store()).await?))
}

async fn create_workspace(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateWorkspace>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(ops::create_workspace(state.store(), &req.name).await?))
}

#[derive(Deserialize)]
struct WorkspaceFilter {
    #[serde(default)]
    workspace: Option<String>,
}

async fn tokens(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WorkspaceFilter>,
) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(
        ops::tokens(state.store(), q.workspace.as_deref()).await?,
    ))
}

async fn create_token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<Json<CreatedToken>, ApiError> {
    Ok(Json(ops::create_token(state.store(), &req).await?))
}

async fn revoke_token(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(_): ApiJson<serde::de::IgnoredAny>,
) -> Result<Json<OkResponse>, ApiError> {
    state.store().revoke_proxy_token(&id).await?;
    Ok(Json(OkResponse { ok: true }))
}

async fn executors(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WorkspaceFilter>,
) -> Result<Json<ExecutorList>, ApiError> {
    let mut list = ops::executors(
        state.store(),
        q.workspace.as_deref(),
        Some(state.registry()),
    )
    .await?;
    // A replica: executors other live replicas hold are online too.
    if let Some(cluster) = state.cluster() {
        let elsewhere = cluster.held_elsewhere(state.store()).await;
        for e in &mut list.executors {
            if elsewhere.contains_key(&e.exe_id) {
                e.online = Some(true);
            }
        }
    }
    Ok(Json(list))
}

async fn add_executor(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<AddExecutor>,
) -> Result<Json<AddedExecutor>, ApiError> {
    Ok(Json(ops::add_executor(state.store(), &req).await?))
}

#[derive(Deserialize)]
struct RemoveQuery {
    workspace: String,
}

async fn remove_executor(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<Json<OkResponse>, ApiError> {
    // Its live link closes at once (the sweep would find it within a
    // second or two; this is the same gateway, so no need to wait).
    let row = match state.store().executor_by_name(&q.workspace, &name).await? {
        Some(row) => Some(row),
        None => state
            .store()
            .executor(&name)
            .await?
            .filter(|r| r.workspace == q.workspace),
    };
    state.store().remove_executor(&q.workspace, &name).await?;
    if let Some(link) = row.and_then(|r| state.registry().get(&r.exe_id)) {
        crate::ops::revocation::close_removed(&state, &link);
    }
    Ok(Json(OkResponse { ok: true }))
}

#[derive(Deserialize)]
struct AuditParams {
    #[serde(default)]
    workspace: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    cursor: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

async fn audit(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_AUDIT_PAGE}"
        )));
    }
    let since_ms = p
        .since
        .as_deref()
        .map(|s| parse_since(s, now_ms()))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let q = AuditQuery {
        workspace: p.workspace,
        since_ms,
        after_id: p.cursor.unwrap_or(0),
        limit,
    };
    let (records, next_cursor) = ops::audit(state.store(), &q).await?;
    Ok(Json(AuditPage {
        records,
        next_cursor,
        lost_records: state.audit().stats().lost,
    }))
}

async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(Stats {
        audit: state.audit().stats(),
    })
}
/// The captoken admin routes, WITHOUT authentication: mount them behind
/// the admin token only.
fn captoken_routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/captokens", post(create_captoken))
        .route("/api/admin/revoke-turn", post(revoke_turn_route))
}

/// `POST /api/admin/captokens {workspace, ttl_s, turn_id?, user_id?, skip_audit?}`.
async fn create_captoken(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<MintRequest>,
) -> Result<Json<Minted>, ApiError> {
    Ok(Json(
        captoken::mint(
            state.store(),
            state.cap_token_secret(),
            &req,
            crate::auth::captoken::now_s(),
        )
        .await?,
    ))
}

/// `POST /api/admin/revoke-turn {turn_id}`: also closes this gateway's live
/// bridge sessions of the turn at once.
async fn revoke_turn_route(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RevokeTurnRequest>,
) -> Result<Json<RevokedTurn>, ApiError> {
    let revoked = captoken::revoke_turn(state.store(), &req.turn_id).await?;
    // No receiver (no live bridge) is not an error.
    let _ = state.revoked_turns().send(revoked.turn_id.clone());
    Ok(Json(revoked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::captoken::verify;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn state() -> (tempfile::TempDir, AppState) {
        crate::ops::state::test_state(|_| {}).await
    }

    async fn call(st: &AppState, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let resp = captoken_routes()
            .with_state(st.clone())
            .oneshot(
                Request::post(path)
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_routes_mint_and_revoke() {
        let (_d, st) = state().await;
        let mut revocations = st.revoked_turns().subscribe();
        let (s, v) = call(
            &st,
            "/api/admin/captokens",
            r#"{"workspace":"w1","ttl_s":60,"turn_id":"t9"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["turn_id"], "t9");
        assert_eq!(v["exp"].as_i64().unwrap() - v["iat"].as_i64().unwrap(), 60);
        let c = verify(
            st.cap_token_secret(),
            v["token"].as_str().unwrap(),
            crate::auth::captoken::now_s(),
        )
        .unwrap();
        assert_eq!(c.workspace_id, "w1");

        let (s, v) = call(
            &st,
            "/api/admin/captokens",
            r#"{"workspace":"w1","ttl_s":0}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("86400"),
            "{v}"
        );
        let (s, v) = call(
            &st,
            "/api/admin/captokens",
            r#"{"workspace":"w1","ttl":60}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("ttl"),
            "{v}"
        );
        let (s, _) = call(&st, "/api/admin/captokens", r#"{"workspace":"zz"}"#).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        let (s, v) = call(&st, "/api/admin/revoke-turn", r#"{"turn_id":"t9"}"#).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["ok"], true);
        assert!(st.store().turn_revoked("t9").await.unwrap());
        assert_eq!(revocations.recv().await.unwrap(), "t9");
        let (s, _) = call(&st, "/api/admin/revoke-turn", r#"{}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
}
