//! `copy_path`: copy a file or a directory tree from one environment to
//! another (or within one), streamed through the gateway by
//! [`crate::ops::transfer`].
//!
//! A single file is staged beside its destination, verified against a
//! digest of what the source read (BLAKE3 between two execgate executors,
//! else SHA-256: [`transfer::verify_plan`]) and renamed into place (replacing an existing file atomically). A tree is
//! built under a staged sibling directory and renamed into place at the end;
//! the destination must not exist, since copy_path does not merge trees.
//! Any failure, including an executor dying mid-copy, leaves nothing at
//! `destination_path`.

use std::time::{Duration, Instant};

use execgate_protocol::connectors::CallToolResult;
use serde::Deserialize;
use serde_json::json;

use super::args::{self, resolve_path};
use super::{parse_args, schema, Call, CallFuture, CoreTool, Route};
use super::{tool_error, ToolContext};
use crate::ops::transfer::{self, TransferError};
use crate::ops::Error;
use serde_json::{Map, Value};

/// The `copy_path` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "copy_path",
    route: Route::Rest,
    description: "Copy a file or (with recursive) a directory tree between environments of this \
                      workspace, verified by a digest (SHA-256, or BLAKE3 between two execgate executors); \
                      nothing appears at the destination unless complete.",
    envs_list: Some((
        5,
        "Copy a file or directory tree between environments of this workspace (or within one), \
                      streamed and verified by a digest (SHA-256, or BLAKE3 between two execgate executors); \
                      nothing appears at the destination unless complete. \
                      Arguments: source_environment_id, source_path, destination_environment_id, \
                      destination_path, recursive, timeout_ms (default 600000).",
    )),
    properties: || {
            json!({
                "source_environment_id": {"type": "string", "minLength": 1},
                "source_path": {"type": "string", "minLength": 1},
                "destination_environment_id": {"type": "string", "minLength": 1},
                "destination_path": {"type": "string", "minLength": 1},
                "recursive": {"type": "boolean", "default": false},
                "timeout_ms": schema::timeout_ms(600_000)
            })
        },
    required: &[
            "source_environment_id",
            "source_path",
            "destination_environment_id",
            "destination_path",
        ],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

const DEFAULT_TIMEOUT_MS: u64 = 600_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyPathArgs {
    pub source_environment_id: String,
    pub source_path: String,
    pub destination_environment_id: String,
    pub destination_path: String,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default, deserialize_with = "args::timeout_ms")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

pub async fn call(ctx: &ToolContext<'_>, a: CopyPathArgs) -> Result<CallToolResult, Error> {
    let src = crate::ops::environment::environment(ctx.state, ctx.caller, &a.source_environment_id)
        .await?;
    let dst =
        crate::ops::environment::environment(ctx.state, ctx.caller, &a.destination_environment_id)
            .await?;
    crate::ops::policy::check_copy(&src, &dst)?;
    let src_path = resolve_path(&src, "source_path", &a.source_path)?;
    let dst_path = resolve_path(&dst, "destination_path", &a.destination_path)?;
    let timeout = Duration::from_millis(a.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    let started = Instant::now();

    let work = async {
        let meta = transfer::stat(&src, &src_path).await?;
        if meta.is_directory {
            if !a.recursive {
                return Err(TransferError::Refused(format!(
                    "{} is a directory; pass recursive:true to copy it",
                    a.source_path
                )));
            }
            if transfer::exists(&dst, &dst_path).await? {
                return Err(TransferError::Refused(format!(
                    "{} exists on '{}'; copy_path does not merge directories",
                    a.destination_path, dst.name
                )));
            }
            let staged = transfer::staging_path(&dst_path);
            let copied = async {
                let stats = transfer::copy_tree(&src, &src_path, &dst, &staged).await?;
                transfer::rename(&dst, &staged, &dst_path).await?;
                Ok::<_, TransferError>(stats)
            }
            .await;
            match copied {
                Ok(stats) => Ok(json!({ "bytes": stats.bytes, "files": stats.files })),
                Err(e) => {
                    transfer::remove(&dst, &staged).await;
                    Err(e)
                }
            }
        } else if meta.is_file {
            let c =
                transfer::copy_file(&src, &src_path, meta.size, &dst, &dst_path, meta.mode).await?;
            // `sha256`, or between two execgate executors `blake3`: the
            // digest the destination's file was verified with.
            let mut v = json!({ "bytes": c.bytes, "files": 1 });
            v[c.algorithm] = json!(c.digest);
            Ok(v)
        } else {
            Err(TransferError::Refused(format!(
                "{} is neither a regular file nor a directory",
                a.source_path
            )))
        }
    };

    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(mut v)) => {
            v["duration_ms"] = json!(started.elapsed().as_millis() as u64);
            Ok(CallToolResult::text(v.to_string(), Some(v), false))
        }
        Ok(Err(TransferError::Refused(m))) => Ok(tool_error(m)),
        Ok(Err(TransferError::Api(e))) => Err(Error {
            message: format!(
                "copy_path failed, nothing was written at the destination: {}",
                e.message
            ),
            ..e
        }),
        Err(_) => Ok(tool_error(format!(
            "copy_path timed out after {} ms; nothing was written at {}",
            timeout.as_millis(),
            a.destination_path
        ))),
    }
}
