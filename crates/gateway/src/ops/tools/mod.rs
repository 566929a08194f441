//! The tools agents call through `tool/call`. Tool semantics live here, in
//! the gateway; the executor stays a small generic process/fs server. That
//! is why a stock codex can be an executor, and why tools can change without
//! upgrading every machine.
//!
//! Each tool parses its arguments into a typed struct (a bad field is a 400
//! `bad_arguments` naming the field), turns them into one or more executor
//! requests, and builds an MCP CallToolResult. A tool that ran and failed
//! answers 200 with `isError:true`; only a problem with the request itself or
//! with reaching the executor is an HTTP error.
//!
//! [`call`] is the one door to the tools, for REST and MCP alike: it opens
//! the call's audit record (`crate::store::audit_log`) before anything runs, and
//! completes it with the outcome, exit code, sizes and duration.

mod apply_patch;
mod args;
mod copy_path;
mod custom;
mod exec_command;
mod files;
pub(crate) mod shell;

use std::future::Future;
use std::sync::Arc;

use execgate_protocol::connectors::{CallToolResult, ConnectorTool};
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::link::{Link, LinkError};
use crate::ops::audit::RecordExt as _;
use crate::ops::policy;
use crate::ops::state::AppState;
use crate::ops::Error;
use crate::store::audit_log::{AuditEntry, AuditRecord, Kind, Via};

pub use args::{default_true, describe, parse_args, resolve_path};

pub(crate) use crate::link::RPC_TIMEOUT;

/// Everything a tool needs for one call.
pub struct ToolContext<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub link: Arc<Link>,
}

struct CoreTool {
    name: &'static str,
    description: &'static str,
}

const CORE_TOOLS: &[CoreTool] = &[
    CoreTool {
        name: "shell",
        description: "Run a command to completion and return its stdout, stderr and exit code. \
                      Arguments: command (argv array, or a string run with sh -c), cwd, env, timeout_ms (default 60000).",
    },
    CoreTool {
        name: "read_file",
        description: "Read a file as base64. Arguments: path, offset, limit (0 = to the end).",
    },
    CoreTool {
        name: "write_file",
        description: "Write a file atomically from base64. Arguments: path, content_b64, create_parents (default true).",
    },
    CoreTool {
        name: "exec_command",
        description: "Start a long-running process and return its session_id; then use the processes API \
                      for output (or its SSE stream), stdin, signal, resize and terminate. Arguments: command, cwd, env, \
                      tty (with cols, rows), pipe_stdin (default true), max_runtime_ms.",
    },
    CoreTool {
        name: "apply_patch",
        description: "Apply a patch in Codex's grammar (*** Begin Patch … *** End Patch: Add File, Update File \
                      with @@ hunks, Move to, Delete File), atomically across files. Arguments: patch, dry_run, \
                      expected_sha256 (path → hash the file must have).",
    },
    CoreTool {
        name: "copy_path",
        description: "Copy a file or directory tree between environments of this workspace (or within one), \
                      streamed and verified by SHA-256; nothing appears at the destination unless complete. \
                      Arguments: source_environment_id, source_path, destination_environment_id, \
                      destination_path, recursive, timeout_ms (default 600000).",
    },
];

/// The tools that work on this executor, as envs/list shows them.
/// Tools the executor's policy does not allow are left out.
pub fn list(link: &Link) -> Vec<ConnectorTool> {
    let mut tools: Vec<ConnectorTool> = CORE_TOOLS
        .iter()
        .filter(|t| policy::visible(link, t.name))
        .map(|t| ConnectorTool {
            name: t.name.into(),
            description: t.description.into(),
            kind: "core".into(),
            input_schema: None,
        })
        .collect();
    let core: Vec<&str> = CORE_TOOLS.iter().map(|t| t.name).collect();
    tools.extend(
        custom::list(link, &core)
            .into_iter()
            .filter(|t| policy::visible(link, &t.name)),
    );
    tools
}

/// Runs one tool call on environment `env` of the caller's workspace,
/// whose live link `link` resolves (REST and MCP word their "no such
/// environment" differently), and records it in the audit log.
pub async fn call(
    state: &AppState,
    caller: &Caller,
    via: Via,
    env: &str,
    link: impl Future<Output = Result<Arc<Link>, Error>>,
    tool: &str,
    arguments: Map<String, Value>,
) -> Result<CallToolResult, Error> {
    let mut rec = AuditRecord::for_caller(caller, via, Kind::Tool, tool)
        .with_environment(env)
        .with_args_json(&arguments);
    rec.bytes_in = rec.args_bytes.unwrap_or(0);
    let mut audit = state.audit().begin(rec).await?;
    let result = async {
        let link = link.await?;
        audit.record().set_link(&link);
        let ctx = ToolContext {
            state,
            caller,
            link,
        };
        dispatch(&ctx, tool, arguments).await
    }
    .await;
    complete(&mut audit, tool, &result);
    result
}

/// Fills in the audit record of a finished tool call.
fn complete(audit: &mut AuditEntry, tool: &str, result: &Result<CallToolResult, Error>) {
    let r = match result {
        Ok(r) => r,
        Err(e) => return audit.fail(e.code),
    };
    let rec = audit.record();
    let structured = r.structured_content.as_ref();
    let number = |field: &str| {
        structured
            .and_then(|s| s.get(field))
            .and_then(Value::as_u64)
    };
    rec.exit_code = structured
        .and_then(|s| s.get("exit_code"))
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok());
    if tool == "copy_path" {
        // Its data goes from one environment to another, not to the caller.
        let copied = if r.is_error {
            0
        } else {
            number("bytes").unwrap_or(0)
        };
        rec.bytes_in = 0;
        rec.add_bytes_in(copied);
        rec.add_bytes_out(copied);
    } else {
        let text: usize = r.content.iter().map(|c| c.text.len()).sum();
        rec.add_bytes_out(text as u64);
    }
    if r.is_error {
        audit.tool_failed();
    } else {
        audit.succeed();
    }
}

/// Runs one tool call on the link's executor.
async fn dispatch(
    ctx: &ToolContext<'_>,
    tool: &str,
    arguments: Map<String, Value>,
) -> Result<CallToolResult, Error> {
    // A tool this executor has but its policy refuses: 403, before anything
    // reaches the executor. Unknown names stay `unknown_tool`.
    if CORE_TOOLS.iter().any(|t| t.name == tool) || custom::find(&ctx.link, tool).is_some() {
        policy::check_tool(&ctx.link, tool)?;
    }
    match tool {
        "shell" => shell::call(ctx, parse_args(arguments)?).await,
        "read_file" => files::read_file(ctx, parse_args(arguments)?).await,
        "write_file" => files::write_file(ctx, parse_args(arguments)?).await,
        "exec_command" => exec_command::call(ctx, parse_args(arguments)?).await,
        "apply_patch" => apply_patch::call(ctx, parse_args(arguments)?).await,
        "copy_path" => copy_path::call(ctx, parse_args(arguments)?).await,
        other => {
            // After every core tool's arm: a core tool always wins.
            if let Some(spec) = custom::find(&ctx.link, other) {
                return custom::call(ctx, spec, arguments).await;
            }
            let known: Vec<_> = list(&ctx.link).into_iter().map(|t| t.name).collect();
            Err(Error::new(
                execgate_protocol::connectors::error_code::UNKNOWN_TOOL,
                format!(
                    "unknown tool {other:?}; this environment has: {}",
                    known.join(", ")
                ),
            ))
        }
    }
}

/// A CallToolResult for a tool that ran and failed.
pub(crate) fn tool_error(message: impl Into<String>) -> CallToolResult {
    let message = message.into();
    CallToolResult::text(
        message.clone(),
        Some(serde_json::json!({ "error": message })),
        true,
    )
}

/// Maps an executor's refusal to a tool error; anything else (the link is
/// down, a timeout) stays an HTTP error.
pub(crate) fn rpc_failure(e: LinkError) -> Result<CallToolResult, Error> {
    match e {
        LinkError::Rpc { error, .. } => Ok(tool_error(error.message)),
        other => Err(other.into()),
    }
}
