//! `list_dir`: the entries of one directory, by name.
//!
//! One `fs/readDirectory`, which every executor serves (a stock codex
//! too): a read, in the policy's terms, so a `--read-only` executor serves
//! it and `--root` confines it (the executor refuses a path that resolves
//! outside: 403 `policy_denied`). Not recursive.
//!
//! Each entry is a name and a `kind`: `directory`, `file`, or `other`.
//! The executor follows symbolic links (as codex does), so a link is the
//! kind of what it points to; a dangling link, a link out of `--root`, a
//! FIFO, a socket or a device is `other` (a stock codex 0.169.0 leaves a
//! dangling link out of its answer altogether). The gateway sorts by name
//! (codex answers in readdir order) and returns at most `max_entries`
//! ([`DEFAULT_ENTRIES`] unless asked, never more than [`MAX_ENTRIES`]);
//! past that the result says `truncated: true` and `total` counts them
//! all: a listing is never cut silently.

use execgate_protocol::connectors::CallToolResult;
use execgate_protocol::exec::{method, DirEntry, PathParams, ReadDirectoryResult};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use super::args::path_uri;
use super::{json_result, parse_args, Call, CallFuture, CoreTool, Route};
use super::{rpc_failure, ToolContext, RPC_TIMEOUT};
use crate::ops::Error;
use serde_json::{Map, Value};

/// The `list_dir` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "list_dir",
    route: Route::Rest,
    description: "List a directory: its entries sorted by name, each with a kind (file, directory \
                  or other; symbolic links are followed). Relative paths resolve against the \
                  executor's working directory. At most max_entries (default 1000, at most 10000) \
                  come back; beyond that truncated is true and total counts every entry.",
    envs_list: Some((
        6,
        "List a directory's entries (name, kind: file, directory or other), sorted by name. \
         Arguments: path, max_entries (default 1000, at most 10000; truncated and total say \
         what was left out).",
    )),
    properties: || {
        json!({
            "path": {"type": "string", "minLength": 1},
            "max_entries": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_ENTRIES,
                "default": DEFAULT_ENTRIES,
                "description": "The most entries to return (the first ones by name)."
            }
        })
    },
    required: &["path"],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { list_dir(ctx, parse_args(arguments)?).await })
}

/// Entries returned when the call does not say.
pub const DEFAULT_ENTRIES: usize = 1000;
/// The most entries one call returns.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDirArgs {
    pub path: String,
    #[serde(default = "default_entries", deserialize_with = "max_entries")]
    pub max_entries: usize,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

fn default_entries() -> usize {
    DEFAULT_ENTRIES
}

fn max_entries<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(D::Error::custom("must be at least 1")),
        n if n > MAX_ENTRIES as u64 => {
            Err(D::Error::custom(format!("must be at most {MAX_ENTRIES}")))
        }
        n => Ok(n as usize),
    }
}

/// One entry of the result.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: &'static str,
}

/// The structured result.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Listing {
    /// The path as given.
    pub path: String,
    pub entries: Vec<Entry>,
    /// Every entry of the directory, returned or not.
    pub total: usize,
    /// Whether entries were left out (`total > entries.len()`).
    pub truncated: bool,
}

pub async fn list_dir(ctx: &ToolContext<'_>, a: ListDirArgs) -> Result<CallToolResult, Error> {
    let uri = path_uri(&ctx.link, "path", &a.path)?;
    let r: ReadDirectoryResult = match ctx
        .link
        .request(
            method::FS_READ_DIRECTORY,
            &PathParams { path: uri },
            RPC_TIMEOUT,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return rpc_failure(e),
    };
    Ok(json_result(&listing(a.path, r.entries, a.max_entries)))
}

/// An executor's entries as the tool returns them: sorted by name, at most
/// `max` of them, with the count of all.
pub fn listing(path: String, mut entries: Vec<DirEntry>, max: usize) -> Listing {
    entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let total = entries.len();
    entries.truncate(max);
    Listing {
        path,
        entries: entries
            .into_iter()
            .map(|e| Entry {
                kind: kind(&e),
                name: e.file_name,
            })
            .collect(),
        total,
        truncated: total > max,
    }
}

fn kind(e: &DirEntry) -> &'static str {
    match (e.is_directory, e.is_file) {
        (true, _) => "directory",
        (false, true) => "file",
        (false, false) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, is_directory: bool, is_file: bool) -> DirEntry {
        DirEntry {
            file_name: name.into(),
            is_directory,
            is_file,
        }
    }

    fn args(v: Value) -> Result<ListDirArgs, Error> {
        parse_args(v.as_object().unwrap().clone())
    }

    #[test]
    fn entries_are_sorted_by_name_with_their_kind() {
        // codex answers in readdir order.
        let l = listing(
            "src".into(),
            vec![
                entry("b.txt", false, true),
                entry("a", true, false),
                entry("fifo", false, false),
                entry("B", false, true),
            ],
            DEFAULT_ENTRIES,
        );
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({
                "path": "src",
                "entries": [
                    {"name": "B", "kind": "file"},
                    {"name": "a", "kind": "directory"},
                    {"name": "b.txt", "kind": "file"},
                    {"name": "fifo", "kind": "other"},
                ],
                "total": 4,
                "truncated": false,
            })
        );
    }

    #[test]
    fn past_max_entries_the_first_by_name_come_back_and_the_cut_is_said() {
        let many: Vec<DirEntry> = (0..10)
            .rev()
            .map(|i| entry(&format!("f{i}"), false, true))
            .collect();
        let l = listing(".".into(), many, 3);
        let names: Vec<&str> = l.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["f0", "f1", "f2"]);
        assert_eq!((l.total, l.truncated), (10, true));

        let exact = listing(".".into(), vec![entry("x", false, true)], 1);
        assert_eq!(
            (exact.entries.len(), exact.total, exact.truncated),
            (1, 1, false)
        );

        let empty = listing(".".into(), vec![], 1);
        assert_eq!(
            (empty.entries.len(), empty.total, empty.truncated),
            (0, 0, false)
        );
    }

    #[test]
    fn arguments() {
        let a = args(json!({"path": "src"})).unwrap();
        assert_eq!((a.path.as_str(), a.max_entries), ("src", DEFAULT_ENTRIES));
        let a = args(json!({"path": "/", "max_entries": MAX_ENTRIES, "environment_id": "laptop"}))
            .unwrap();
        assert_eq!(a.max_entries, MAX_ENTRIES);
        for (bad, needle) in [
            (json!({}), "missing field `path`"),
            (
                json!({"path": "x", "max_entries": 0}),
                "arguments.max_entries: must be at least 1",
            ),
            (
                json!({"path": "x", "max_entries": MAX_ENTRIES + 1}),
                "arguments.max_entries: must be at most 10000",
            ),
            (
                json!({"path": "x", "max_entries": -1}),
                "arguments.max_entries: invalid value",
            ),
            (
                json!({"path": "x", "recursive": true}),
                "unknown field `recursive`",
            ),
        ] {
            let e = args(bad.clone()).unwrap_err();
            assert_eq!(e.code, "bad_arguments", "{bad}");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    /// The schema says what the argument struct accepts.
    #[test]
    fn schema_matches_the_bounds() {
        let s = TOOL.input_schema();
        let m = &s["properties"]["max_entries"];
        assert_eq!(m["minimum"], 1);
        assert_eq!(m["maximum"], MAX_ENTRIES);
        assert_eq!(m["default"], DEFAULT_ENTRIES);
        assert_eq!(s["required"], json!(["path"]));
    }
}
