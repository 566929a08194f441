//! `read_output` (MCP only): `GET /processes/{sid}/output` as a tool.
//!
//! Its reader is a model, so its chunks are text by default (`encoding`
//! `utf-8`: a chunk's `text`, marked `utf-8-escaped` when its bytes were
//! not UTF-8 and were escaped losslessly), consecutive chunks of one
//! stream joined; `encoding: "base64"` gives `/output`'s `data_b64`.

use execgate_protocol::connectors::CallToolResult;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::args::{encoding_property, Encoding};
use super::json_result;
use super::{parse_args, schema, Call, CallFuture, CoreTool, Route, WorkspaceContext};
use crate::ops::processes;
use crate::ops::Error;

/// The `read_output` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "read_output",
    route: Route::ReadOutput,
    description: "Read a process's output after seq `after_seq`, waiting up to `wait_ms` for \
                      some. Pass the answer's next_since as after_seq to read on; session_alive \
                      turns false once it has exited and all output was read.",
    envs_list: None,
    properties: || {
        json!({
            "session_id": schema::session_id(),
            "after_seq": {"type": "integer", "minimum": 0, "default": 0,
                          "description": "Return chunks with seq greater than this."},
            "wait_ms": {"type": "integer", "minimum": 0, "default": 0,
                        "description": format!("Long-poll up to this long when there is no new \
                                                output (at most {} ms; longer waits are capped).",
                                               crate::ops::processes::MAX_WAIT_MS)},
            "encoding": encoding_property(
                "How chunks carry the output: \"utf-8\" (the default: `text`; bytes that are not \
                 UTF-8 escaped as \\xNN and backslashes doubled, the chunk marked \"utf-8-escaped\"), \
                 \"auto\" (`text` when UTF-8, else `data_b64`) or \"base64\" (`data_b64`).")
        })
    },
    required: &["session_id"],
    call: Call::InWorkspace(invoke),
};

/// `read_output`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOutputArgs {
    pub session_id: String,
    #[serde(default)]
    pub after_seq: u64,
    #[serde(default)]
    pub wait_ms: u64,
    /// Default: `utf-8` (see the module docs).
    #[serde(default)]
    pub encoding: Option<Encoding>,
    #[serde(default)]
    pub environment_id: Option<String>,
}

fn invoke(ctx: WorkspaceContext<'_>, arguments: Map<String, Value>) -> CallFuture<'_> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

async fn call(ctx: WorkspaceContext<'_>, a: ReadOutputArgs) -> Result<CallToolResult, Error> {
    let mut s = processes::resolve_argument(
        ctx.state,
        ctx.caller,
        &a.session_id,
        a.environment_id,
        ctx.via,
        "output",
    )
    .await?;
    if a.wait_ms > 0 {
        s.watch = ctx
            .watch
            .map(|w| w.with_environment(&s.link.name, &s.row.exe_id));
    }
    let out = processes::output(&mut s, a.after_seq, a.wait_ms).await?;
    let encoding = a.encoding.unwrap_or(Encoding::Utf8);
    Ok(json_result(&out.into_response_as(encoding)))
}
