//! `list_environments` (MCP only): the connected environments, as envs/list.

use execgate_protocol::connectors::CallToolResult;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{parse_args, Call, CallFuture, CoreTool, Route, WorkspaceContext};
use execgate_protocol::connectors::EnvsListResponse;

use super::json_result;
use crate::ops::environment;
use crate::ops::Error;

/// The `list_environments` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "list_environments",
    route: Route::ListEnvironments,
    description: "List the connected environments (machines) of this workspace, which one is \
                      the default, and the tools each offers.",
    envs_list: None,
    properties: || json!({}),
    required: &[],
    call: Call::InWorkspace(invoke),
};

/// `list_environments`' arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEnvironmentsArgs {
    #[serde(default)]
    pub environment_id: Option<String>,
}

fn invoke(ctx: WorkspaceContext<'_>, arguments: Map<String, Value>) -> CallFuture<'_> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

async fn call(ctx: WorkspaceContext<'_>, a: ListEnvironmentsArgs) -> Result<CallToolResult, Error> {
    let mut envs = crate::ops::envs_list::connected_envs(ctx.state, ctx.caller).await?;
    if let Some(name) = a.environment_id {
        envs.retain(|e| e.name == name);
        if envs.is_empty() {
            // Not connected: say whether it exists at all.
            environment::environment_argument(ctx.state, ctx.caller, &name).await?;
        }
    }
    Ok(json_result(&EnvsListResponse { envs, next: None }))
}
