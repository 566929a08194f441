//! `write_file`: a file written atomically, from text (`content`) or
//! bytes (`content_b64`): exactly one of the two. `encoding` (optional)
//! says which one the caller means to send: `utf-8` expects `content`,
//! `base64` expects `content_b64`, `auto` (the default, REST and MCP alike:
//! `content_b64` alone still works as it always did) takes either.

use base64::Engine;
use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::CallToolResult;
use execgate_protocol::exec::{method, CreateDirectoryParams, Empty, WriteFileParams};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::args::{default_true, encoding_property, parse_args, path_uri, Encoding};
use super::{rpc_failure, Call, CallFuture, CoreTool, Route, ToolContext, RPC_TIMEOUT};
use crate::ops::Error;

/// The `write_file` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "write_file",
    route: Route::Rest,
    description: "Write a file atomically: give its whole new content as text in `content` \
                  (written as UTF-8), or as bytes in `content_b64` (standard base64); exactly one.",
    envs_list: Some((
        2,
        "Write a file atomically from text or base64. Arguments: path, content (text) or \
         content_b64 (exactly one), encoding, create_parents (default true).",
    )),
    properties: || {
        json!({
            "path": {"type": "string", "minLength": 1},
            "content": {"type": "string",
                        "description": "The whole new content as text, written as UTF-8. Give this or content_b64."},
            "content_b64": {"type": "string", "contentEncoding": "base64",
                            "description": "The whole new content, standard base64. Give this or content."},
            "encoding": encoding_property(
                "Which content field this call sends: \"utf-8\" (content), \"base64\" \
                 (content_b64) or \"auto\" (either; the default)."),
            "create_parents": {"type": "boolean", "default": true,
                               "description": "Create missing parent directories."}
        })
    },
    required: &["path"],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { write_file(ctx, parse_args(arguments)?).await })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    pub path: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub content_b64: Option<String>,
    #[serde(default)]
    pub encoding: Option<Encoding>,
    #[serde(default = "default_true")]
    pub create_parents: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

pub async fn write_file(ctx: &ToolContext<'_>, a: WriteFileArgs) -> Result<CallToolResult, Error> {
    let link = &ctx.link;
    let uri = path_uri(link, "path", &a.path)?;
    let (content_b64, len) = content(a.content, a.content_b64, a.encoding)?;
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
        data_base64: content_b64,
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
        Some(json!({ "path": a.path, "bytes": len })),
        false,
    ))
}

/// The new content as the executor takes it, and its length in bytes:
/// exactly one of `content` (text) and `content_b64`, the one `encoding`
/// expects if it names one.
fn content(
    content: Option<String>,
    content_b64: Option<String>,
    encoding: Option<Encoding>,
) -> Result<(Blob, usize), Error> {
    match (content, content_b64, encoding.unwrap_or(Encoding::Auto)) {
        (Some(_), Some(_), _) => Err(Error::bad_arguments(
            "arguments: give content (text) or content_b64 (base64), not both",
        )),
        (None, None, _) => Err(Error::bad_arguments(
            "arguments: missing field `content` (text) or `content_b64` (base64): give exactly one",
        )),
        (Some(_), None, Encoding::Base64) => Err(Error::bad_arguments(
            "arguments.content: encoding \"base64\" expects content_b64, not content",
        )),
        (None, Some(_), Encoding::Utf8) => Err(Error::bad_arguments(
            "arguments.content_b64: encoding \"utf-8\" expects content, not content_b64",
        )),
        (Some(text), None, _) => {
            let len = text.len();
            Ok((Blob::from(bytes::Bytes::from(text.into_bytes())), len))
        }
        (None, Some(b64), _) => {
            let len = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| Error::bad_base64("arguments.content_b64", e))?
                .len();
            Ok((Blob::Base64(b64), len))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_content_field_the_one_encoding_expects() {
        let s = |v: &str| Some(v.to_string());
        let (blob, len) = content(s("héllo"), None, None).unwrap();
        assert_eq!(
            (blob.to_bytes().unwrap().as_ref(), len),
            ("héllo".as_bytes(), 6)
        );
        let (blob, len) = content(None, s("aGk="), Some(Encoding::Base64)).unwrap();
        assert_eq!((blob.to_bytes().unwrap().as_ref(), len), (&b"hi"[..], 2));
        assert!(content(s("x"), None, Some(Encoding::Utf8)).is_ok());
        assert!(content(None, s("aGk="), Some(Encoding::Auto)).is_ok());
        for (c, b, enc, code, needle) in [
            (s("x"), s("aGk="), None, "bad_arguments", "content_b64"),
            (
                None,
                None,
                None,
                "bad_arguments",
                "`content` (text) or `content_b64`",
            ),
            (
                s("x"),
                None,
                Some(Encoding::Base64),
                "bad_arguments",
                "expects content_b64",
            ),
            (
                None,
                s("aGk="),
                Some(Encoding::Utf8),
                "bad_arguments",
                "expects content,",
            ),
            (None, s("!!"), None, "bad_base64", "arguments.content_b64"),
        ] {
            let e = content(c, b, enc).unwrap_err();
            assert_eq!(e.code, code);
            assert!(e.message.contains(needle), "{}", e.message);
        }
    }
}
