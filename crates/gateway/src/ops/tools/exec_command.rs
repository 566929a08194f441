//! `exec_command`: start a long-running process and hand back a session id.
//!
//! The process lives on the executor; the gateway records only the index row
//! `sid → (workspace, exe_id, process id, executor session, deadline)`, the
//! one store write a tool call makes. Output, stdin and terminate go through
//! `crate::ops::processes`.
//!
//! The row is written *before* `process/start`, so a process can never run
//! without a row that reaches it (its fsync, for a power loss, runs beside
//! `process/start`, and the answer waits for both: `store/sessions.rs`):
//! if the executor refuses the start the row is deleted; if the outcome is
//! unknown (the link dropped, a timeout), the row gets an immediate
//! deadline and `crate::ops::deadlines` terminates the process should it
//! have started. Retries and reconnects therefore leave
//! neither orphans nor duplicates (process ids are fresh per call, and an
//! executor refuses a duplicate id).
//!
//! With `--max-sessions-per-workspace`, a start past the workspace's cap
//! of live sessions is refused first (429 `too_many_sessions`).

use std::collections::BTreeMap;

use execgate_protocol::connectors::{CallToolResult, ExecCommandOutput};
use execgate_protocol::exec::{
    method, EnvPolicy, ProcessStartParams, ProcessStartResult, SandboxRequest,
};
use serde::Deserialize;

use super::args::{self, default_true};
use super::{parse_args, schema, Call, CallFuture, CoreTool, Route};
use super::{rpc_failure, ToolContext, RPC_TIMEOUT};
use crate::link::LinkError;
use crate::ops::Error;
use crate::secret::random_id;
use crate::store::{now_ms, SessionRow};
use serde_json::{json, Map, Value};

/// The `exec_command` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "exec_command",
    route: Route::Rest,
    description: "Start a long-running process and return its session_id. Then use \
                      write_stdin, read_output and terminate with that session_id.",
    envs_list: Some((
        3,
        "Start a long-running process and return its session_id; then use the processes API \
                      for output (or its SSE stream), stdin, signal, resize and terminate. Arguments: command, cwd, env, \
                      tty (with cols, rows), pipe_stdin (default true), max_runtime_ms.",
    )),
    properties: || {
            json!({
                "command": schema::command(),
                "cwd": {"type": "string"},
                "env": schema::env(),
                "tty": {"type": "boolean", "default": false, "description": "Run under a pseudo-terminal."},
                "pipe_stdin": {"type": "boolean", "default": true,
                               "description": "Keep stdin open for write_stdin."},
                "cols": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "Terminal width (tty)."},
                "rows": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "Terminal height (tty)."},
                "max_runtime_ms": {"type": "integer", "minimum": 1,
                                   "description": "Terminate the process (its whole group) once it has run this long."},
                "sandbox": schema::sandbox()
            })
        },
    required: &["command"],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    #[serde(deserialize_with = "args::command")]
    pub command: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default, deserialize_with = "args::env")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default = "default_true")]
    pub pipe_stdin: bool,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    /// Terminate the process (its whole group) once it has run this long.
    #[serde(default)]
    pub max_runtime_ms: Option<u64>,
    /// A narrower sandbox for this process (see `crate::ops::policy::check_sandbox`).
    #[serde(default)]
    pub sandbox: Option<SandboxRequest>,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

pub async fn call(ctx: &ToolContext<'_>, a: ExecArgs) -> Result<CallToolResult, Error> {
    let link = &ctx.link;
    let sid = random_id("ps_", 12);
    crate::ops::policy::check_sandbox(link, a.sandbox.as_ref())?;
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
        // Its readers pull (`/output`), and a stream turns pushing on
        // while it follows (`Link::subscribe`): bulk output that nobody
        // follows does not cross the link twice.
        push_output: link.ext().push_control.then_some(false),
        sandbox: a.sandbox.clone(),
    };
    if a.max_runtime_ms == Some(0) {
        return Err(Error::bad_arguments(
            "max_runtime_ms must be at least 1 (leave it out for no limit)",
        ));
    }
    let created_at = now_ms();
    let row = SessionRow {
        sid: sid.clone(),
        workspace: ctx.caller.workspace.clone(),
        exe_id: link.exe_id.clone(),
        process_id: sid.clone(),
        command: serde_json::to_string(&a.command).unwrap_or_default(),
        created_at,
        executor_session_id: link.handshake().map(|h| h.session_id.clone()),
        deadline_at: a
            .max_runtime_ms
            .map(|ms| created_at.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))),
    };
    let store = ctx.state.store();
    // The workspace's cap on live sessions (`crate::ops::limits`): checked and
    // the row inserted under the workspace's lock.
    let slot = ctx
        .state
        .limits()
        .admit_session(ctx.state, &ctx.caller.workspace)
        .await?;
    // The row survives a crash of this process before `process/start` is
    // sent; its fsync (a power loss) runs beside `process/start`, and the
    // answer waits for both (`store/sessions.rs`).
    let durable = store.insert_session_unsynced(&row).await;
    slot.release().await;
    let durable = durable?;
    let start = link.request::<_, ProcessStartResult>(method::PROCESS_START, &params, RPC_TIMEOUT);
    let (started, synced) = tokio::join!(start, durable.wait());
    match started {
        Ok(_) => {}
        Err(e @ (LinkError::Rpc { .. } | LinkError::Denied { .. })) => {
            // The executor answered: nothing runs under this id.
            if let Err(del) = store.delete_session(&sid).await {
                tracing::warn!(%sid, "cannot delete the row of a refused start: {del}");
            }
            return rpc_failure(e);
        }
        Err(e) => {
            // Unknown outcome: if the process started, terminate it as soon
            // as the executor can be reached again.
            if let Err(d) = store.set_deadline(&sid, now_ms()).await {
                tracing::warn!(%sid, "cannot schedule the cleanup of an uncertain start: {d}");
            }
            return rpc_failure(e);
        }
    }
    if let Err(e) = synced {
        // The process runs but its row may not survive a power loss: the
        // client is not told about it, and the process is ended.
        tracing::warn!(%sid, "cannot make the session row durable: {e}");
        if let Err(d) = store.set_deadline(&sid, now_ms()).await {
            tracing::warn!(%sid, "cannot schedule the end of a session without a durable row: {d}");
        }
        return Err(e.into());
    }
    let out = ExecCommandOutput { session_id: sid };
    Ok(CallToolResult::text(
        serde_json::to_string(&out).expect("serializes"),
        Some(serde_json::to_value(&out).expect("serializes")),
        false,
    ))
}
