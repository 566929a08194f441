//! `write_file`: a file written atomically from base64.

use base64::Engine;
use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::CallToolResult;
use execgate_protocol::exec::{method, CreateDirectoryParams, Empty, WriteFileParams};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::args::{default_true, parse_args, path_uri};
use super::{rpc_failure, Call, CallFuture, CoreTool, Route, ToolContext, RPC_TIMEOUT};
use crate::ops::Error;

/// The `write_file` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "write_file",
    route: Route::Rest,
    description: "Write a file atomically from base64 content.",
    envs_list: Some((
        2,
        "Write a file atomically from base64. Arguments: path, content_b64, create_parents (default true).",
    )),
    properties: || {
            json!({
                "path": {"type": "string", "minLength": 1},
                "content_b64": {"type": "string", "contentEncoding": "base64",
                                "description": "The whole new content, standard base64."},
                "create_parents": {"type": "boolean", "default": true,
                                   "description": "Create missing parent directories."}
            })
        },
    required: &["path", "content_b64"],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { write_file(ctx, parse_args(arguments)?).await })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    pub path: String,
    pub content_b64: String,
    #[serde(default = "default_true")]
    pub create_parents: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

pub async fn write_file(ctx: &ToolContext<'_>, a: WriteFileArgs) -> Result<CallToolResult, Error> {
    let link = &ctx.link;
    let uri = path_uri(link, "path", &a.path)?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(a.content_b64.as_bytes())
        .map_err(|e| Error::bad_base64("arguments.content_b64", e))?;
    let ext = link.ext();
    if a.create_parents && !ext.atomic_write {
        // A stock codex does not create parents; ask for them first.
        if let Some(parent) = std::path::Path::new(&a.path).parent() {
            let parent = parent.to_string_lossy();
            if !parent.is_empty() {
                let params = CreateDirectoryParams {
                    path: path_uri(link, "path", &parent)?,
                    recursive: Some(true),
                    mode: None,
                };
                if let Err(e) = link
                    .request::<_, Empty>(method::FS_CREATE_DIRECTORY, &params, RPC_TIMEOUT)
                    .await
                {
                    return rpc_failure(e);
                }
            }
        }
    }
    let params = WriteFileParams {
        path: uri,
        data_base64: Blob::Base64(a.content_b64),
        create_parents: ext.atomic_write.then_some(a.create_parents),
    };
    if let Err(e) = link
        .request::<_, Empty>(method::FS_WRITE_FILE, &params, RPC_TIMEOUT)
        .await
    {
        return rpc_failure(e);
    }
    Ok(CallToolResult::text(
        "ok",
        Some(json!({ "path": a.path, "bytes": data.len() })),
        false,
    ))
}
