//! The tools agents call, and their one registry.
//!
//! Tool semantics live here, in the gateway; the executor stays a small
//! generic process/fs server. That is why a stock codex can be an executor,
//! and why tools can change without upgrading every machine.
//!
//! **One declaration per tool.** Each core tool is one file of this folder
//! holding a [`CoreTool`]: its name, its descriptions (envs/list's and
//! MCP's), the JSON Schema of its arguments next to the argument struct
//! that parses them (a bad field is a 400 `bad_arguments` naming it), and
//! the call. [`CORE_TOOLS`] lists them, and everything else reads that
//! list: REST dispatch ([`call`]), the `tools` of envs/list ([`list`]),
//! MCP's `tools/list` and its calls (`http::mcp`), and the OpenAPI argument
//! schemas (`http::openapi`). Adding a core tool is one file plus one line
//! in [`CORE_TOOLS`] (and its `mod`), and its tests. Custom tools (announced
//! by an executor, [`custom`]) join the same lists at run time; a core tool
//! always wins a name.
//!
//! Most tools run on one environment ([`Route::Rest`]: `tool/call` and
//! MCP alike); four exist only in MCP, where there is no `/processes` URL
//! to post to (`list_environments`, `write_stdin`, `read_output`,
//! `terminate`), and run in the caller's workspace.
//!
//! A tool that ran and failed answers 200 with `isError:true`; only a
//! problem with the request itself or with reaching the executor is an
//! error. [`call`] is the one door to the environment tools, for REST and
//! MCP alike: it opens the call's audit record (`crate::store::audit_log`)
//! before anything runs, and completes it with the outcome, exit code,
//! sizes and duration.

mod apply_patch;
mod args;
mod copy_path;
mod custom;
mod exec_command;
mod list_dir;
mod list_environments;
pub mod progress;
mod read_file;
mod read_output;
pub mod schema;
pub(crate) mod shell;
mod terminate;
mod write_file;
mod write_stdin;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use execgate_protocol::connectors::{CallToolResult, ConnectorTool};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::link::{Link, LinkError};
use crate::ops::audit::RecordExt as _;
use crate::ops::policy;
use crate::ops::revocation::Watch;
use crate::ops::state::AppState;
use crate::ops::Error;
use crate::store::audit_log::{AuditEntry, AuditRecord, Kind, Via};

pub use args::{default_true, describe, encode_bytes, parse_args, resolve_path, Encoding, BASE64};
#[cfg(test)]
pub use {
    list_environments::ListEnvironmentsArgs, read_output::ReadOutputArgs, terminate::TerminateArgs,
    write_stdin::WriteStdinArgs,
};

pub(crate) use crate::link::RPC_TIMEOUT;

/// Every core tool, in the order MCP's `tools/list` gives them.
pub static CORE_TOOLS: &[&CoreTool] = &[
    &list_environments::TOOL,
    &shell::TOOL,
    &read_file::TOOL,
    &write_file::TOOL,
    &apply_patch::TOOL,
    &exec_command::TOOL,
    &copy_path::TOOL,
    &list_dir::TOOL,
    &write_stdin::TOOL,
    &read_output::TOOL,
    &terminate::TOOL,
];

/// One core tool, declared once (see the module docs).
pub struct CoreTool {
    pub name: &'static str,
    /// How it is carried out: on one environment, or (MCP only) in the
    /// workspace by one of the process operations.
    pub route: Route,
    /// MCP's description (`tools/list`).
    pub description: &'static str,
    /// envs/list's description and place (environment tools only).
    pub envs_list: Option<(u8, &'static str)>,
    /// The tool's own properties (without `environment_id`) and required names.
    pub properties: fn() -> Value,
    pub required: &'static [&'static str],
    pub call: Call,
}

/// How a core tool is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On one environment's link, through [`call`]: `POST
    /// /envs/{name}/tool/call` and MCP alike.
    Rest,
    ListEnvironments,
    WriteStdin,
    ReadOutput,
    Terminate,
}

/// A tool call's future.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<CallToolResult, Error>> + Send + 'a>>;

/// The call of a core tool, taking its arguments as given.
#[derive(Clone, Copy)]
pub enum Call {
    /// Runs on one environment ([`Route::Rest`]).
    OnEnvironment(for<'a> fn(&'a ToolContext<'a>, Map<String, Value>) -> CallFuture<'a>),
    /// Runs in the caller's workspace (the MCP-only tools).
    InWorkspace(for<'a> fn(WorkspaceContext<'a>, Map<String, Value>) -> CallFuture<'a>),
}

impl CoreTool {
    /// The tool's `inputSchema`: its properties plus `environment_id`.
    pub fn input_schema(&self) -> Map<String, Value> {
        let mut properties = match (self.properties)() {
            Value::Object(map) => map,
            _ => unreachable!("properties are an object"),
        };
        properties.insert(
            "environment_id".into(),
            schema::environment_id_property(self.route),
        );
        schema::object_schema(properties, self.required)
    }
}

/// The core tool `name`, if there is one.
pub fn core_tool(name: &str) -> Option<&'static CoreTool> {
    CORE_TOOLS.iter().copied().find(|t| t.name == name)
}

/// The core tools that run on an environment, in envs/list's order.
fn environment_tools() -> Vec<(&'static CoreTool, &'static str)> {
    let mut tools: Vec<(u8, &'static CoreTool, &'static str)> = CORE_TOOLS
        .iter()
        .filter_map(|t| {
            t.envs_list
                .map(|(place, description)| (place, *t, description))
        })
        .collect();
    tools.sort_by_key(|(place, ..)| *place);
    tools.into_iter().map(|(_, t, d)| (t, d)).collect()
}

/// Everything an environment tool needs for one call.
pub struct ToolContext<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub link: Arc<Link>,
    /// Which API the call came through: MCP's reader is a model, so its
    /// defaults are text and bounded output (see `args::Encoding`).
    pub via: Via,
}

impl ToolContext<'_> {
    /// The `encoding` a call that names none gets: `auto` through MCP,
    /// `base64` through REST (its answers before the argument existed).
    pub fn default_encoding(&self) -> args::Encoding {
        match self.via {
            Via::Mcp => args::Encoding::Auto,
            Via::Rest | Via::Bridge => args::Encoding::Base64,
        }
    }
}

/// Everything a workspace tool (MCP only) needs for one call.
pub struct WorkspaceContext<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub via: Via,
    /// What authorized the request, for a long-poll to re-check (see
    /// `crate::ops::revocation`).
    pub watch: Option<Watch>,
}

/// The tools that work on this executor, as envs/list shows them.
/// Tools the executor's policy does not allow are left out.
pub fn list(link: &Link) -> Vec<ConnectorTool> {
    let core_tools = environment_tools();
    let mut tools: Vec<ConnectorTool> = core_tools
        .iter()
        .filter(|(t, _)| policy::visible(link, t.name))
        .map(|(t, description)| ConnectorTool {
            name: t.name.into(),
            description: (*description).into(),
            kind: "core".into(),
            input_schema: None,
        })
        .collect();
    let core: Vec<&str> = core_tools.iter().map(|(t, _)| t.name).collect();
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
    call_as(state, caller, via, env, link, tool, arguments, false).await
}

/// A `shell` call started as a process session instead of run to
/// completion: an MCP task (`crate::ops::tasks`). Audited and checked
/// against the executor's policy as `shell`; answers exec_command's result
/// (`session_id`).
pub async fn start_shell_session(
    state: &AppState,
    caller: &Caller,
    via: Via,
    env: &str,
    link: impl Future<Output = Result<Arc<Link>, Error>>,
    arguments: Map<String, Value>,
) -> Result<CallToolResult, Error> {
    call_as(state, caller, via, env, link, "shell", arguments, true).await
}

#[allow(clippy::too_many_arguments)]
async fn call_as(
    state: &AppState,
    caller: &Caller,
    via: Via,
    env: &str,
    link: impl Future<Output = Result<Arc<Link>, Error>>,
    tool: &str,
    arguments: Map<String, Value>,
    as_session: bool,
) -> Result<CallToolResult, Error> {
    let started = std::time::Instant::now();
    let mut rec = AuditRecord::for_caller(caller, via, Kind::Tool, tool)
        .with_environment(env)
        .with_args_json(&arguments);
    rec.bytes_in = rec.args_bytes.unwrap_or(0);
    let mut audit = match state.audit().begin(rec).await {
        Ok(audit) => audit,
        Err(refused) => {
            let e = Error::from(refused);
            if let Some(m) = crate::metrics::get() {
                m.tool_call(metric_tool(tool), e.code, started.elapsed());
            }
            return Err(e);
        }
    };
    let run = async {
        let link = link.await?;
        audit.record().set_link(&link);
        let ctx = ToolContext {
            state,
            caller,
            link,
            via,
        };
        if as_session {
            policy::check_tool(&ctx.link, tool)?;
            return shell::start_session(&ctx, arguments).await;
        }
        dispatch(&ctx, tool, arguments).await
    };
    let mut result = if crate::trace::spans() {
        // Names only: never the arguments or the output.
        let span = tracing::info_span!(
            "tool.call",
            otel.name = %format_args!("tool {tool}"),
            tool,
            environment = env,
            workspace = %caller.workspace,
            via = via.as_str(),
        );
        tracing::Instrument::instrument(run, span).await
    } else {
        run.await
    };
    if let Err(e) = &mut result {
        // A read changes nothing: its key may be released and the read
        // done again (`ops::idempotency`, "Unknown outcomes").
        if execgate_protocol::policy::READ_ONLY_TOOLS.contains(&tool) {
            e.outcome_unknown = false;
        }
    }
    complete(&mut audit, tool, &result);
    if let Some(m) = crate::metrics::get() {
        let (label, outcome) = metric_labels(tool, &result);
        m.tool_call(label, outcome, started.elapsed());
    }
    result
}

/// A tool's metric label: a core tool's name, else `custom`.
fn metric_tool(tool: &str) -> &'static str {
    core_tool(tool).map_or("custom", |t| t.name)
}

/// A finished call's metric labels (bounded; see `crate::metrics`): the
/// core tool's name, else `custom`, or `unknown` for a name nobody
/// declared; and `ok`, `tool_error` or the error's code.
fn metric_labels(
    tool: &str,
    result: &Result<CallToolResult, Error>,
) -> (&'static str, &'static str) {
    let outcome = match result {
        Ok(r) if r.is_error => "tool_error",
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    let label = match outcome {
        execgate_protocol::connectors::error_code::UNKNOWN_TOOL if core_tool(tool).is_none() => {
            "unknown"
        }
        _ => metric_tool(tool),
    };
    (label, outcome)
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
    let core = core_tool(tool).and_then(|t| match t.call {
        Call::OnEnvironment(call) => Some(call),
        Call::InWorkspace(_) => None,
    });
    // A tool this executor has but its policy refuses: 403, before anything
    // reaches the executor. Unknown names stay `unknown_tool`.
    if core.is_some() || custom::find(&ctx.link, tool).is_some() {
        policy::check_tool(&ctx.link, tool)?;
    }
    if let Some(call) = core {
        return call(ctx, arguments).await;
    }
    // After every core tool: a core tool always wins.
    if let Some(spec) = custom::find(&ctx.link, tool) {
        return custom::call(ctx, spec, arguments).await;
    }
    let known: Vec<_> = list(&ctx.link).into_iter().map(|t| t.name).collect();
    Err(Error::new(
        execgate_protocol::connectors::error_code::UNKNOWN_TOOL,
        format!(
            "unknown tool {tool:?}; this environment has: {}",
            known.join(", ")
        ),
    ))
}

/// A tool result whose text and structuredContent are `value` as JSON.
pub fn json_result(value: &impl Serialize) -> CallToolResult {
    let value = serde_json::to_value(value).expect("API bodies serialize");
    CallToolResult::text(value.to_string(), Some(value), false)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry is consistent: one declaration per name, and a tool
    /// runs on an environment exactly when envs/list shows it (in one place).
    #[test]
    fn declarations_agree_with_themselves() {
        let mut names: Vec<&str> = CORE_TOOLS.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CORE_TOOLS.len(), "a name declared twice");
        let mut places = Vec::new();
        for t in CORE_TOOLS {
            let on_environment = matches!(t.call, Call::OnEnvironment(_));
            assert_eq!(on_environment, t.route == Route::Rest, "{}", t.name);
            assert_eq!(on_environment, t.envs_list.is_some(), "{}", t.name);
            places.extend(t.envs_list.map(|(place, _)| place));
        }
        places.sort();
        places.dedup();
        assert_eq!(places.len(), environment_tools().len());
    }
}
