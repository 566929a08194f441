//! `read_file`: a file's bytes, as text or base64.
//!
//! `encoding` (see [`Encoding`]): `auto` answers text when the bytes read
//! are valid UTF-8 and base64 otherwise; `utf-8` answers text always
//! (invalid bytes escaped losslessly, marked `utf-8-escaped`); `base64`
//! always base64. MCP defaults to `auto`, REST to `base64`. Text is in the
//! text content item and in `structuredContent.content`; base64 only in the
//! text content item (as before `encoding` existed). A read cut by `limit`
//! or [`MAX_READ`] in the middle of a UTF-8 character stops before it (text
//! encodings only), so that the next read, at `offset + bytes`, starts on it.
//!
//! Reads go through the [ext] `fs/readRange` when the executor has it, so
//! only the asked-for range crosses the link; a stock codex gets `fs/readFile`
//! and the gateway slices. One call moves at most [`MAX_READ`] bytes; the
//! structured result says where to continue.

use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::CallToolResult;
use execgate_protocol::exec::{
    method, Metadata, PathParams, ReadFileResult, ReadRangeParams, ReadRangeResult,
};
use serde::Deserialize;
use serde_json::json;

use super::args::{encode_bytes, encoding_property, path_uri, utf8_cut, Encoding, BASE64};
use super::{parse_args, Call, CallFuture, CoreTool, Route};
use super::{rpc_failure, ToolContext, RPC_TIMEOUT};
use crate::ops::Error;
use serde_json::{Map, Value};

/// The `read_file` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "read_file",
    route: Route::Rest,
    description: "Read a file. UTF-8 files come back as text (structuredContent.encoding \
                  \"utf-8\", the text also in structuredContent.content); other files as base64 \
                  (encoding \"base64\"). Relative paths resolve against the executor's working \
                  directory. Large files: read on from offset + bytes while eof is false.",
    envs_list: Some((
        1,
        "Read a file: base64 by default, or text with encoding auto/utf-8. Arguments: path, \
         offset, limit (0 = to the end), encoding.",
    )),
    properties: || {
        json!({
            "path": {"type": "string", "minLength": 1},
            "offset": {"type": "integer", "minimum": 0, "description": "Byte offset to start at."},
            "limit": {"type": "integer", "minimum": 0, "description": "Bytes to read; 0 reads to the end."},
            "encoding": encoding_property(
                "How the content comes back: \"auto\" (text if the bytes are UTF-8, else base64), \
                 \"utf-8\" (text; bytes that are not UTF-8 escaped as \\xNN and backslashes \
                 doubled, marked \"utf-8-escaped\") or \"base64\". Default: \"auto\" over MCP, \
                 \"base64\" over REST.")
        })
    },
    required: &["path"],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { read_file(ctx, parse_args(arguments)?).await })
}

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
    /// Default: [`ToolContext::default_encoding`].
    #[serde(default)]
    pub encoding: Option<Encoding>,
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
    let encoding = a.encoding.unwrap_or(ctx.default_encoding());
    let mut data = data;
    if encoding != Encoding::Base64 && a.offset + (data.len() as u64) < size {
        // Cut mid-character: stop before it; the next read starts on it.
        let keep = utf8_cut(&data);
        if keep > 0 {
            data.truncate(keep);
        }
    }
    let end = a.offset + data.len() as u64;
    let (text, encoding) = encode_bytes(&data, encoding);
    let mut structured = json!({
        "encoding": encoding,
        "path": a.path,
        "offset": a.offset,
        "bytes": data.len(),
        "size": size,
        "eof": end >= size,
    });
    if encoding != BASE64 {
        structured["content"] = Value::String(text.clone());
    }
    Ok(CallToolResult::text(text, Some(structured), false))
}

fn decode(data: &Blob) -> Result<Bytes, Error> {
    data.to_bytes()
        .map_err(|e| Error::internal(format!("the executor sent invalid base64: {e}")))
}
