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

use super::args::{
    encode_bytes, encoding_property, escape_lossless, path_uri, utf8_cut, Encoding, BASE64, UTF8,
    UTF8_ESCAPED,
};
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
            "start_line": {"type": "integer", "minimum": 1,
                           "description": "Read lines instead of bytes, from this line (1 = the first). \
                                           Past the last line the answer is empty, with total_lines."},
            "line_count": {"type": "integer", "minimum": 1,
                           "description": "With line reads: at most this many lines (default: to the end)."},
            "line_numbers": {"type": "boolean", "default": false,
                             "description": "Number each line (`     7\tcode`, as `cat -n`); implies a line read."},
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
    /// Line mode (see [`LineRange`]): the first line to return, from 1.
    #[serde(default, deserialize_with = "at_least_one")]
    pub start_line: Option<u64>,
    /// Line mode: how many lines (default: to the end).
    #[serde(default, deserialize_with = "at_least_one")]
    pub line_count: Option<u64>,
    /// Line mode: prefix each line with its number, `cat -n` style.
    #[serde(default)]
    pub line_numbers: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

pub async fn read_file(ctx: &ToolContext<'_>, a: ReadFileArgs) -> Result<CallToolResult, Error> {
    let lines = LineRange::of(&a)?;
    let want = if a.limit == 0 {
        MAX_READ
    } else {
        a.limit.min(MAX_READ)
    };
    let (data, size) = match fetch(ctx, &a.path, a.offset, want).await? {
        Ok(read) => read,
        Err(failed) => return Ok(failed),
    };
    let encoding = a.encoding.unwrap_or(ctx.default_encoding());
    if let Some(lines) = lines {
        return Ok(lines.answer(&a.path, &data, size, encoding));
    }
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

/// Up to `want` bytes of the file from `offset`, and the file's size; or
/// the tool result of a read the executor refused.
async fn fetch(
    ctx: &ToolContext<'_>,
    path: &str,
    offset: u64,
    want: u64,
) -> Result<Result<(Bytes, u64), CallToolResult>, Error> {
    let link = &ctx.link;
    let uri = path_uri(link, "path", path)?;
    let refused = |e| rpc_failure(e).map(Err);
    let read = if link.ext().read_range {
        let r: ReadRangeResult = match link
            .request(
                method::FS_READ_RANGE,
                &ReadRangeParams {
                    path: uri,
                    offset,
                    length: want,
                    hash: None,
                },
                RPC_TIMEOUT,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return refused(e),
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
            Err(e) => return refused(e),
        };
        if !m.is_file && !m.is_symlink {
            return Ok(Err(super::tool_error(format!(
                "{path} is not a regular file"
            ))));
        }
        let r: ReadFileResult = match link
            .request(method::FS_READ_FILE, &PathParams { path: uri }, RPC_TIMEOUT)
            .await
        {
            Ok(r) => r,
            Err(e) => return refused(e),
        };
        let all = decode(&r.data_base64)?;
        let size = all.len() as u64;
        let start = offset.min(size) as usize;
        let end = (offset.saturating_add(want)).min(size) as usize;
        (all.slice(start..end), size)
    };
    Ok(Ok(read))
}

/// `start_line` and `line_count` must be at least 1 when given.
fn at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        Some(0) => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// A read by lines: `start_line`, `line_count`, `line_numbers`, as coding
/// agents' file tools read. It reads the file from its start (at most
/// [`MAX_READ`] bytes: lines beyond are out of reach, and asking for them
/// is an error saying to read by `offset`), and always answers text: a
/// file that is not UTF-8 is an error with `auto` (read it by bytes, as
/// base64) and escaped losslessly with `utf-8`; `base64` is refused. A
/// line ends after its `\n`; a last line without one counts. Past the last
/// line the answer is empty text, `lines: 0`, `eof: true` and
/// `total_lines`: not an error, as the file exists.
#[derive(Debug, Clone, Copy)]
pub struct LineRange {
    start: u64,
    count: Option<u64>,
    numbers: bool,
}

impl LineRange {
    /// The line read `a` asks for, if any.
    fn of(a: &ReadFileArgs) -> Result<Option<LineRange>, Error> {
        if a.start_line.is_none() && a.line_count.is_none() && !a.line_numbers {
            return Ok(None);
        }
        if a.offset != 0 || a.limit != 0 {
            return Err(Error::bad_arguments(
                "arguments: start_line, line_count and line_numbers read by lines; \
                 offset and limit read by bytes: give one kind",
            ));
        }
        if a.encoding == Some(Encoding::Base64) {
            return Err(Error::bad_arguments(
                "arguments.encoding: a read by lines answers text; \"base64\" reads by bytes",
            ));
        }
        Ok(Some(LineRange {
            start: a.start_line.unwrap_or(1),
            count: a.line_count,
            numbers: a.line_numbers,
        }))
    }

    /// The answer for the file's first bytes `data` (all of it when
    /// `data.len() == size`).
    fn answer(&self, path: &str, data: &[u8], size: u64, encoding: Encoding) -> CallToolResult {
        let whole = data.len() as u64 >= size;
        // Only whole lines: a file cut at MAX_READ loses its partial last line.
        let data = if whole {
            data
        } else {
            &data[..data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)]
        };
        let text_encoding = if std::str::from_utf8(data).is_ok() {
            UTF8
        } else if encoding == Encoding::Utf8 {
            UTF8_ESCAPED
        } else {
            return super::tool_error(format!(
                "{path} is not UTF-8 text: read it by bytes (without start_line, line_count \
                 and line_numbers) to get base64, or with encoding \"utf-8\" to get it \
                 escaped (\\xNN)"
            ));
        };
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
        let total = lines.len() as u64;
        if !whole && self.start > total {
            return super::tool_error(format!(
                "line {} is beyond the first {} lines of {path}, which are all a read by \
                 lines reaches ({} MiB); read on by bytes with offset {}",
                self.start,
                total,
                MAX_READ >> 20,
                data.len()
            ));
        }
        let first = (self.start - 1).min(total) as usize;
        let last = match self.count {
            Some(n) => first.saturating_add(n as usize).min(lines.len()),
            None => lines.len(),
        };
        let mut text = String::new();
        let mut bytes = 0;
        for (i, line) in lines[first..last].iter().enumerate() {
            bytes += line.len();
            if self.numbers {
                text.push_str(&format!("{:>6}\t", first + i + 1));
            }
            match text_encoding {
                UTF8 => text.push_str(std::str::from_utf8(line).unwrap_or_default()),
                _ => text.push_str(&escape_lossless(line)),
            }
        }
        let eof = whole && last == lines.len();
        let mut structured = json!({
            "encoding": text_encoding,
            "path": path,
            "start_line": self.start,
            "lines": last - first,
            "bytes": bytes,
            "size": size,
            "eof": eof,
            "content": text,
        });
        if whole {
            structured["total_lines"] = json!(total);
        }
        if !eof {
            structured["next_start_line"] = json!(last as u64 + 1);
        }
        CallToolResult::text(text, Some(structured), false)
    }
}

fn decode(data: &Blob) -> Result<Bytes, Error> {
    data.to_bytes()
        .map_err(|e| Error::internal(format!("the executor sent invalid base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(start: u64, count: Option<u64>, numbers: bool, data: &[u8], enc: Encoding) -> Value {
        let r = LineRange {
            start,
            count,
            numbers,
        }
        .answer("f", data, data.len() as u64, enc);
        let mut s = r.structured_content.unwrap();
        if !r.is_error {
            assert_eq!(s["content"], r.content[0].text.as_str());
        }
        s["is_error"] = json!(r.is_error);
        s
    }

    #[test]
    fn line_ranges_numbers_and_the_end() {
        let file = b"one\ntwo\nthree\nfour";
        let s = lines(2, Some(2), false, file, Encoding::Auto);
        assert_eq!(s["content"], "two\nthree\n");
        assert_eq!(
            (s["lines"].as_u64(), s["total_lines"].as_u64()),
            (Some(2), Some(4))
        );
        assert_eq!(
            (s["eof"].as_bool(), s["next_start_line"].as_u64()),
            (Some(false), Some(4))
        );
        assert_eq!(s["bytes"], 10);
        let s = lines(3, None, true, file, Encoding::Auto);
        assert_eq!(s["content"], "     3\tthree\n     4\tfour");
        assert_eq!(s["eof"], true);
        assert!(s.get("next_start_line").is_none());
        // Past the end: empty, not an error.
        let s = lines(9, Some(3), true, file, Encoding::Auto);
        assert_eq!(
            (s["content"].as_str(), s["lines"].as_u64()),
            (Some(""), Some(0))
        );
        assert_eq!(
            (s["eof"].as_bool(), s["is_error"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(s["total_lines"], 4);
        let s = lines(1, None, false, b"", Encoding::Auto);
        assert_eq!(
            (s["total_lines"].as_u64(), s["eof"].as_bool()),
            (Some(0), Some(true))
        );
        // Binary: an error with auto, escaped with utf-8.
        let s = lines(1, None, false, b"a\xff\nb", Encoding::Auto);
        assert_eq!(s["is_error"], true);
        assert!(s["error"].as_str().unwrap().contains("not UTF-8"), "{s}");
        let s = lines(2, None, true, b"a\xff\nb\\\xfe\n", Encoding::Utf8);
        assert_eq!(s["encoding"], "utf-8-escaped");
        assert_eq!(s["content"], "     2\tb\\\\\\xfe\n");
    }

    #[test]
    fn a_file_past_max_read_gives_whole_lines_and_says_where_to_go_on() {
        let r = LineRange {
            start: 1,
            count: None,
            numbers: false,
        }
        .answer("f", b"a\nb\npart", 100, Encoding::Auto);
        let s = r.structured_content.unwrap();
        assert_eq!(s["content"], "a\nb\n");
        assert_eq!(
            (s["eof"].as_bool(), s["next_start_line"].as_u64()),
            (Some(false), Some(3))
        );
        assert!(s.get("total_lines").is_none());
        let r = LineRange {
            start: 5,
            count: None,
            numbers: false,
        }
        .answer("f", b"a\nb\npart", 100, Encoding::Auto);
        assert!(r.is_error);
        assert!(r.first_text().contains("offset 4"), "{}", r.first_text());
    }

    #[test]
    fn line_arguments_do_not_mix_with_byte_arguments() {
        let parse = |v: Value| {
            let a: ReadFileArgs = parse_args(v.as_object().unwrap().clone()).unwrap();
            LineRange::of(&a)
        };
        assert!(parse(json!({"path": "f"})).unwrap().is_none());
        assert!(parse(json!({"path": "f", "line_numbers": true}))
            .unwrap()
            .is_some());
        for bad in [
            json!({"path": "f", "start_line": 2, "offset": 3}),
            json!({"path": "f", "line_count": 2, "limit": 3}),
            json!({"path": "f", "start_line": 2, "encoding": "base64"}),
        ] {
            assert_eq!(parse(bad).unwrap_err().code, "bad_arguments");
        }
        let e = parse_args::<ReadFileArgs>(
            json!({"path": "f", "start_line": 0})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("arguments.start_line: must be at least 1"),
            "{}",
            e.message
        );
    }
}
