//! `write_stdin` (MCP only): `POST /processes/{sid}/stdin` as a tool.
//!
//! Text in `chars`; bytes that are not UTF-8 either in `data_b64`, or in
//! `chars` escaped as `read_output` escapes them, with `encoding:
//! "utf-8-escaped"` (so a model can send back what it read).

use execgate_protocol::connectors::CallToolResult;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{parse_args, schema, Call, CallFuture, CoreTool, Route, WorkspaceContext};
use base64::Engine;
use execgate_protocol::connectors::OkResponse;

use super::args::unescape_lossless;
use super::json_result;
use crate::ops::processes;
use crate::ops::Error;

/// The `write_stdin` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "write_stdin",
    route: Route::WriteStdin,
    description: "Write to the stdin of a process started by exec_command: `chars` (text) or \
                      `data_b64` (bytes), and/or `eof: true` to close stdin. With a tty, \"\\u0003\" is Ctrl-C.",
    envs_list: None,
    properties: || {
            json!({
                "session_id": schema::session_id(),
                "chars": {"type": "string", "description": "Text to write, as UTF-8."},
                "data_b64": {"type": "string", "contentEncoding": "base64", "description": "Bytes to write, standard base64."},
                "encoding": {"type": "string", "enum": ["utf-8", "utf-8-escaped"], "default": "utf-8",
                             "description": "How `chars` is to be read: \"utf-8\" (as is) or \"utf-8-escaped\" \
                                             (\\xNN is the byte NN and \\\\ a backslash, as read_output escapes \
                                             output that is not UTF-8)."},
                "eof": {"type": "boolean", "default": false, "description": "Close stdin after writing."}
            })
        },
    required: &["session_id"],
    call: Call::InWorkspace(invoke),
};

/// `write_stdin`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteStdinArgs {
    pub session_id: String,
    #[serde(default)]
    pub chars: Option<String>,
    #[serde(default)]
    pub data_b64: Option<String>,
    #[serde(default)]
    pub encoding: Option<CharsEncoding>,
    #[serde(default)]
    pub eof: bool,
    #[serde(default)]
    pub environment_id: Option<String>,
}

/// How `chars` is to be read.
#[derive(Debug, Clone, Copy, Deserialize)]
pub enum CharsEncoding {
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "utf-8-escaped")]
    Utf8Escaped,
}

fn invoke(ctx: WorkspaceContext<'_>, arguments: Map<String, Value>) -> CallFuture<'_> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

async fn call(ctx: WorkspaceContext<'_>, a: WriteStdinArgs) -> Result<CallToolResult, Error> {
    let data_b64 = match (a.chars, a.data_b64) {
        (Some(chars), None) => match a.encoding {
            None | Some(CharsEncoding::Utf8) => {
                base64::engine::general_purpose::STANDARD.encode(chars)
            }
            Some(CharsEncoding::Utf8Escaped) => base64::engine::general_purpose::STANDARD.encode(
                unescape_lossless(&chars)
                    .map_err(|e| Error::bad_arguments(format!("arguments.chars: {e}")))?,
            ),
        },
        (None, Some(_)) if a.encoding.is_some() => {
            return Err(Error::bad_arguments(
                "arguments.encoding: says how to read chars; data_b64 is always base64",
            ))
        }
        (None, Some(data_b64)) => data_b64,
        (None, None) if a.eof => String::new(),
        (None, None) => {
            return Err(Error::bad_arguments(
                "arguments: give chars (text) or data_b64 (bytes), or eof: true",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Error::bad_arguments(
                "arguments.data_b64: give chars or data_b64, not both",
            ))
        }
    };
    let mut s = processes::resolve_argument(
        ctx.state,
        ctx.caller,
        &a.session_id,
        a.environment_id,
        ctx.via,
        "stdin",
    )
    .await?;
    processes::write_stdin(&mut s, &data_b64, a.eof).await?;
    Ok(json_result(&OkResponse { ok: true }))
}
