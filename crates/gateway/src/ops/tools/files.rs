//! `read_file` and `write_file`.
//!
//! Reads go through the [ext] `fs/readRange` when the executor has it, so
//! only the asked-for range crosses the link; a stock codex gets `fs/readFile`
//! and the gateway slices. One call moves at most [`MAX_READ`] bytes; the
//! structured result says where to continue.

use base64::Engine;
use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::CallToolResult;
use execgate_protocol::exec::{
    method, CreateDirectoryParams, Empty, Metadata, PathParams, ReadFileResult, ReadRangeParams,
    ReadRangeResult, WriteFileParams,
};
use serde::Deserialize;
use serde_json::json;

use super::args::{default_true, path_uri};
use super::{rpc_failure, ToolContext, RPC_TIMEOUT};
use crate::ops::Error;

/// The most one read_file call returns (it travels as base64 inside JSON).
pub const MAX_READ: u64 = 32 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    pub path: String,
    #[serde(default)]
    pub offset: u64,
    /// 0 = to the end (at most [`MAX_READ`]).
    #[serde(default)]
    pub limit: u64,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

pub async fn read_file(ctx: &ToolContext<'_>, a: ReadFileArgs) -> Result<CallToolResult, Error> {
    let link = &ctx.link;
    let uri = path_uri(link, "path", &a.path)?;
    let want = if a.limit == 0 {
        MAX_READ
    } else {
        a.limit.min(MAX_READ)
    };
    let (data, size) = if link.ext().read_range {
        let r: ReadRangeResult = match link
            .request(
                method::FS_READ_RANGE,
                &ReadRangeParams {
                    path: uri,
                    offset: a.offset,
                    length: want,
                },
                RPC_TIMEOUT,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return rpc_failure(e),
        };
        (decode(&r.data_base64)?, r.size)
    } else {
        // A stock codex opens the path with a plain blocking open: on a FIFO
        // that waits for a writer forever, and the call for its timeout.
        // Its metadata says first. (execgate's executor refuses such files
        // itself, at no extra round trip.)
        let m: Metadata = match link
            .request(
                method::FS_GET_METADATA,
                &PathParams { path: uri.clone() },
                RPC_TIMEOUT,
            )
            .await
        {
            Ok(m) => m,
            Err(e) => return rpc_failure(e),
        };
        if !m.is_file && !m.is_symlink {
            return Ok(super::tool_error(format!(
                "{} is not a regular file",
                a.path
            )));
        }
        let r: ReadFileResult = match link
            .request(method::FS_READ_FILE, &PathParams { path: uri }, RPC_TIMEOUT)
            .await
        {
            Ok(r) => r,
            Err(e) => return rpc_failure(e),
        };
        let all = decode(&r.data_base64)?;
        let size = all.len() as u64;
        let start = a.offset.min(size) as usize;
        let end = (a.offset.saturating_add(want)).min(size) as usize;
        (all.slice(start..end), size)
    };
    let end = a.offset + data.len() as u64;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    Ok(CallToolResult::text(
        b64,
        Some(json!({
            "encoding": "base64",
            "path": a.path,
            "offset": a.offset,
            "bytes": data.len(),
            "size": size,
            "eof": end >= size,
        })),
        false,
    ))
}

fn decode(data: &Blob) -> Result<Bytes, Error> {
    data.to_bytes()
        .map_err(|e| Error::internal(format!("the executor sent invalid base64: {e}")))
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
