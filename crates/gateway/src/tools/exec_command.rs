//! `exec_command`: start a long-running process and hand back a session id.
//!
//! The process lives on the executor; the gateway records only the index row
//! `sid → (workspace, exe_id, process id)`, the one store write a tool call
//! makes. Output, stdin and terminate go through `crate::processes`.

use std::collections::BTreeMap;

use execgate_protocol::connectors::{CallToolResult, ExecCommandOutput};
use execgate_protocol::exec::{
    method, EnvPolicy, ProcessIdParams, ProcessStartParams, ProcessStartResult,
    ProcessTerminateResult,
};
use serde::Deserialize;

use super::args;
use super::{rpc_failure, ToolContext, RPC_TIMEOUT};
use crate::error::ApiError;
use crate::secret::random_id;
use crate::store::{now_ms, SessionRow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    #[serde(deserialize_with = "args::command")]
    pub command: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default = "yes")]
    pub pipe_stdin: bool,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

fn yes() -> bool {
    true
}

pub async fn call(ctx: &ToolContext<'_>, a: ExecArgs) -> Result<CallToolResult, ApiError> {
    let link = &ctx.link;
    let sid = random_id("ps_", 12);
    let params = ProcessStartParams {
        process_id: sid.clone(),
        argv: a.command.clone(),
        cwd: args::cwd_uri(link, a.cwd.as_deref())?,
        env: BTreeMap::new(),
        tty: a.tty,
        pipe_stdin: Some(a.pipe_stdin),
        arg0: None,
        env_policy: Some(EnvPolicy::inherit_all(a.env)),
        cols: a.cols,
        rows: a.rows,
    };
    if let Err(e) = link
        .request::<_, ProcessStartResult>(method::PROCESS_START, &params, RPC_TIMEOUT)
        .await
    {
        return rpc_failure(e);
    }
    let inserted = ctx
        .state
        .store()
        .insert_session(&SessionRow {
            sid: sid.clone(),
            workspace: ctx.caller.workspace.clone(),
            exe_id: link.exe_id.clone(),
            process_id: sid.clone(),
            command: serde_json::to_string(&a.command).unwrap_or_default(),
            created_at: now_ms(),
        })
        .await;
    if let Err(e) = inserted {
        // Without its index row nobody could reach the process: stop it.
        let _ = link
            .request::<_, ProcessTerminateResult>(
                method::PROCESS_TERMINATE,
                &ProcessIdParams { process_id: sid },
                RPC_TIMEOUT,
            )
            .await;
        return Err(e.into());
    }
    let out = ExecCommandOutput { session_id: sid };
    Ok(CallToolResult::text(
        serde_json::to_string(&out).expect("serializes"),
        Some(serde_json::to_value(&out).expect("serializes")),
        false,
    ))
}
