//! `terminate` (MCP only): `POST /processes/{sid}/terminate` as a tool.

use execgate_protocol::connectors::CallToolResult;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{parse_args, schema, Call, CallFuture, CoreTool, Route, WorkspaceContext};
use execgate_protocol::connectors::OkResponse;

use super::json_result;
use crate::ops::processes;
use crate::ops::Error;

/// The `terminate` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "terminate",
    route: Route::Terminate,
    description: "Terminate a process started by exec_command (its whole process group).",
    envs_list: None,
    properties: || json!({"session_id": schema::session_id()}),
    required: &["session_id"],
    call: Call::InWorkspace(invoke),
};

/// `terminate`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminateArgs {
    pub session_id: String,
    #[serde(default)]
    pub environment_id: Option<String>,
}

fn invoke(ctx: WorkspaceContext<'_>, arguments: Map<String, Value>) -> CallFuture<'_> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

async fn call(ctx: WorkspaceContext<'_>, a: TerminateArgs) -> Result<CallToolResult, Error> {
    let mut s = processes::resolve_argument(
        ctx.state,
        ctx.caller,
        &a.session_id,
        a.environment_id,
        ctx.via,
        "terminate",
    )
    .await?;
    processes::terminate(&mut s).await?;
    Ok(json_result(&OkResponse { ok: true }))
}
