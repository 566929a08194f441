//! `apply_patch`: apply a patch in Codex's grammar, atomically across files.
//!
//! Three phases:
//! 1. **Plan.** Every operation is checked against the files' current
//!    contents, read from the executor, through a virtual view that later
//!    operations of the same patch see (add, then update, works). Nothing is
//!    written; any failure names the file, the hunk and the reason.
//! 2. **Stage.** Each new file content is written to a temporary sibling.
//! 3. **Commit.** The temporaries are renamed into place, then deletions
//!    happen. A failure while staging removes the temporaries; a failure
//!    while renaming restores what was already renamed from the originals
//!    read in phase 1.
//!
//! A stock codex has no `fs/rename`, so there phase 2 and 3 collapse into
//! writing each file in place after all checks passed: all-or-nothing
//! against every failure the checks can see, but not against a crash
//! halfway. `dry_run` stops after phase 1. `expected_sha256` refuses the
//! patch when a file changed since the caller last read it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::CallToolResult;
use execgate_protocol::exec::{
    method, CreateDirectoryParams, Empty, PathParams, ReadFileResult, RemoveParams, RenameParams,
    WriteFileParams,
};
use execgate_protocol::jsonrpc::code as rpc_code;
use execgate_protocol::uri::path_to_uri;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::args::resolve_path;
use super::{parse_args, Call, CallFuture, CoreTool, Route};
use super::{ToolContext, RPC_TIMEOUT};
use crate::link::LinkError;
use crate::ops::patch::{self, FileOp};
use crate::ops::Error;
use crate::secret::{random_id, sha256_hex};
use serde_json::{Map, Value};

/// The `apply_patch` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "apply_patch",
    route: Route::Rest,
    description: "Apply a patch in Codex's grammar (*** Begin Patch … *** End Patch: Add File, \
                      Update File with @@ hunks, Move to, Delete File), atomically across files.",
    envs_list: Some((
        4,
        "Apply a patch in Codex's grammar (*** Begin Patch … *** End Patch: Add File, Update File \
                      with @@ hunks, Move to, Delete File), atomically across files. Arguments: patch, dry_run, \
                      expected_sha256 (path → hash the file must have).",
    )),
    properties: || {
            json!({
                "patch": {"type": "string", "minLength": 1},
                "dry_run": {"type": "boolean", "default": false, "description": "Only check that it applies."},
                "expected_sha256": {
                    "type": "object", "additionalProperties": {"type": "string"},
                    "description": "path → SHA-256 (hex) the file must have, else nothing is changed."
                }
            })
        },
    required: &["patch"],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyPatchArgs {
    pub patch: String,
    #[serde(default)]
    pub dry_run: bool,
    /// Path → lowercase hex SHA-256 the file must have before the patch.
    #[serde(default)]
    pub expected_sha256: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

/// One line of the result.
#[derive(Debug, Clone, Serialize)]
struct FileReport {
    path: String,
    /// `added`, `updated`, `deleted`, `moved` or `checked` (expected_sha256 only).
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The files as the patch sees them while it is planned.
struct View<'a> {
    ctx: &'a ToolContext<'a>,
    /// Contents before the patch (`None`: absent), as read from the executor.
    original: HashMap<PathBuf, Option<Vec<u8>>>,
    /// Contents after the operations planned so far.
    current: HashMap<PathBuf, Option<Vec<u8>>>,
}

impl<'a> View<'a> {
    /// The file's contents now, or `None` if it does not exist.
    async fn get(&mut self, path: &Path) -> Result<Option<Vec<u8>>, Error> {
        if let Some(c) = self.current.get(path) {
            return Ok(c.clone());
        }
        let read = self.read_original(path).await?;
        self.current.insert(path.to_owned(), read.clone());
        Ok(read)
    }

    async fn read_original(&mut self, path: &Path) -> Result<Option<Vec<u8>>, Error> {
        if let Some(c) = self.original.get(path) {
            return Ok(c.clone());
        }
        let params = PathParams { path: uri(path)? };
        let r = self
            .ctx
            .link
            .request::<_, ReadFileResult>(method::FS_READ_FILE, &params, RPC_TIMEOUT)
            .await;
        let contents = match r {
            Ok(r) => Some(
                r.data_base64
                    .to_bytes()
                    .map_err(|e| Error::internal(format!("executor sent bad base64: {e}")))?
                    .to_vec(),
            ),
            Err(LinkError::Rpc { error, .. }) if error.code == rpc_code::NOT_FOUND => None,
            Err(LinkError::Rpc { error, .. }) => {
                return Err(Error::bad_arguments(format!(
                    "cannot read {}: {}",
                    path.display(),
                    error.message
                )))
            }
            Err(e) => return Err(e.into()),
        };
        self.original.insert(path.to_owned(), contents.clone());
        Ok(contents)
    }

    fn set(&mut self, path: &Path, contents: Option<Vec<u8>>) {
        self.current.insert(path.to_owned(), contents);
    }
}

fn uri(path: &Path) -> Result<String, Error> {
    path_to_uri(path)
        .ok_or_else(|| Error::bad_arguments(format!("{} is not a usable path", path.display())))
}

pub async fn call(ctx: &ToolContext<'_>, a: ApplyPatchArgs) -> Result<CallToolResult, Error> {
    let ops = patch::parse(&a.patch)
        .map_err(|e| Error::bad_arguments(format!("arguments.patch: {e}")))?;
    let mut view = View {
        ctx,
        original: HashMap::new(),
        current: HashMap::new(),
    };
    let mut reports = Vec::new();

    // Phase 1: plan and check.
    for (path, want) in &a.expected_sha256 {
        let abs = resolve_path(&ctx.link, "expected_sha256", path)?;
        let error = match view.read_original(&abs).await? {
            None => Some("file missing, so it cannot match expected_sha256".to_string()),
            Some(bytes) => {
                let have = sha256_hex(&bytes);
                (!have.eq_ignore_ascii_case(want)).then(|| {
                    format!("expected_sha256 mismatch: the file has {have}, not {want}; it changed since you read it")
                })
            }
        };
        if error.is_some() {
            reports.push(FileReport {
                path: path.clone(),
                action: "checked",
                to: None,
                ok: false,
                error,
            });
        }
    }
    for op in &ops {
        reports.push(plan(&mut view, op).await?);
    }
    let ok = reports.iter().all(|r| r.ok);

    // Phases 2 and 3.
    let mut applied = false;
    let mut commit_error = None;
    if ok && !a.dry_run {
        match commit(ctx, &view).await {
            Ok(()) => applied = true,
            Err(message) => commit_error = Some(message),
        }
    }
    Ok(result(reports, applied, a.dry_run, commit_error))
}

/// Checks one operation against the view and records its effect there.
async fn plan(view: &mut View<'_>, op: &FileOp) -> Result<FileReport, Error> {
    let link = view.ctx.link.clone();
    let report = |action, to: Option<&String>, error: Option<String>| FileReport {
        path: op.path().to_string(),
        action,
        to: to.cloned(),
        ok: error.is_none(),
        error,
    };
    Ok(match op {
        FileOp::Add { path, contents, .. } => {
            let abs = resolve_path(&link, "patch", path)?;
            if view.get(&abs).await?.is_some() {
                report(
                    "added",
                    None,
                    Some("file exists; use '*** Update File' to change it".into()),
                )
            } else {
                view.set(&abs, Some(contents.clone().into_bytes()));
                report("added", None, None)
            }
        }
        FileOp::Delete { path, .. } => {
            let abs = resolve_path(&link, "patch", path)?;
            if view.get(&abs).await?.is_none() {
                report("deleted", None, Some("file missing".into()))
            } else {
                view.set(&abs, None);
                report("deleted", None, None)
            }
        }
        FileOp::Update {
            path,
            move_to,
            hunks,
            ..
        } => {
            let abs = resolve_path(&link, "patch", path)?;
            let action = if move_to.is_some() {
                "moved"
            } else {
                "updated"
            };
            let Some(bytes) = view.get(&abs).await? else {
                return Ok(report(
                    action,
                    move_to.as_ref(),
                    Some("file missing".into()),
                ));
            };
            let Ok(text) = String::from_utf8(bytes) else {
                return Ok(report(
                    action,
                    move_to.as_ref(),
                    Some("not a UTF-8 text file; patches apply to text".into()),
                ));
            };
            let new = match patch::apply_hunks(&text, hunks) {
                Ok(new) => new,
                Err(e) => return Ok(report(action, move_to.as_ref(), Some(e.to_string()))),
            };
            match move_to {
                Some(dest) => {
                    let dest_abs = resolve_path(&link, "patch", dest)?;
                    if dest_abs != abs && view.get(&dest_abs).await?.is_some() {
                        return Ok(report(
                            action,
                            move_to.as_ref(),
                            Some(format!("cannot move: {dest} exists")),
                        ));
                    }
                    view.set(&abs, None);
                    view.set(&dest_abs, Some(new.into_bytes()));
                }
                None => view.set(&abs, Some(new.into_bytes())),
            }
            report(action, move_to.as_ref(), None)
        }
    })
}

/// Writes the planned end state. `Err` carries what went wrong and what
/// was restored.
async fn commit(ctx: &ToolContext<'_>, view: &View<'_>) -> Result<(), String> {
    let link = &ctx.link;
    let mut writes: Vec<(&PathBuf, &Vec<u8>)> = Vec::new();
    let mut removes: Vec<&PathBuf> = Vec::new();
    for (path, now) in &view.current {
        let before = view.original.get(path).cloned().flatten();
        match now {
            Some(bytes) if before.as_ref() != Some(bytes) => writes.push((path, bytes)),
            None if before.is_some() => removes.push(path),
            _ => {}
        }
    }
    writes.sort();
    removes.sort();
    let ext = link.ext();
    let rpc = |e: LinkError| match e {
        LinkError::Rpc { error, .. } => error.message,
        other => other.to_string(),
    };

    if !ext.rename {
        // A stock codex: write in place, parents first.
        for (path, bytes) in &writes {
            if let Some(parent) = path.parent() {
                let params = CreateDirectoryParams {
                    path: uri(parent).map_err(|e| e.message)?,
                    recursive: Some(true),
                    mode: None,
                };
                link.request::<_, Empty>(method::FS_CREATE_DIRECTORY, &params, RPC_TIMEOUT)
                    .await
                    .map_err(|e| format!("{}: {}", path.display(), rpc(e)))?;
            }
            let params = WriteFileParams {
                path: uri(path).map_err(|e| e.message)?,
                data_base64: Blob::from(bytes.as_slice()),
                create_parents: None,
            };
            link.request::<_, Empty>(method::FS_WRITE_FILE, &params, RPC_TIMEOUT)
                .await
                .map_err(|e| format!("{}: {}", path.display(), rpc(e)))?;
        }
        return remove_all(ctx, &removes).await;
    }

    // Stage every new content next to its target.
    let mut staged: Vec<(String, String, &PathBuf)> = Vec::new();
    let tag = random_id("", 6);
    for (path, bytes) in &writes {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.execgate-patch-{tag}"));
        let tmp_uri = uri(&tmp).map_err(|e| e.message)?;
        let params = WriteFileParams {
            path: tmp_uri.clone(),
            data_base64: Blob::from(bytes.as_slice()),
            create_parents: Some(true),
        };
        if let Err(e) = link
            .request::<_, Empty>(method::FS_WRITE_FILE, &params, RPC_TIMEOUT)
            .await
        {
            let message = format!("{}: staging failed: {}", path.display(), rpc(e));
            discard(ctx, staged.iter().map(|s| s.0.clone())).await;
            return Err(format!("{message}; nothing was changed"));
        }
        staged.push((tmp_uri, uri(path).map_err(|e| e.message)?, path));
    }

    // Rename into place; on failure, put back what was already renamed.
    for (i, (tmp, target, path)) in staged.iter().enumerate() {
        let params = RenameParams {
            source_path: tmp.clone(),
            destination_path: target.clone(),
        };
        if let Err(e) = link
            .request::<_, Empty>(method::FS_RENAME, &params, RPC_TIMEOUT)
            .await
        {
            let message = format!("{}: rename failed: {}", path.display(), rpc(e));
            discard(ctx, staged[i..].iter().map(|s| s.0.clone())).await;
            let restored = restore(ctx, view, staged[..i].iter().map(|s| s.2)).await;
            return Err(format!("{message}; {restored}"));
        }
    }
    remove_all(ctx, &removes).await
}

async fn remove_all(ctx: &ToolContext<'_>, removes: &[&PathBuf]) -> Result<(), String> {
    for path in removes {
        let params = RemoveParams {
            path: uri(path).map_err(|e| e.message)?,
            recursive: Some(false),
            force: Some(true),
        };
        if let Err(e) = ctx
            .link
            .request::<_, Empty>(method::FS_REMOVE, &params, RPC_TIMEOUT)
            .await
        {
            return Err(format!(
                "{}: delete failed after the other files were written: {e}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Best-effort removal of staged temporaries.
async fn discard(ctx: &ToolContext<'_>, tmps: impl Iterator<Item = String>) {
    for tmp in tmps {
        let params = RemoveParams {
            path: tmp,
            recursive: Some(false),
            force: Some(true),
        };
        let _ = ctx
            .link
            .request::<_, Empty>(method::FS_REMOVE, &params, RPC_TIMEOUT)
            .await;
    }
}

/// Puts the original contents back (or removes files that did not exist).
async fn restore<'p>(
    ctx: &ToolContext<'_>,
    view: &View<'_>,
    paths: impl Iterator<Item = &'p PathBuf>,
) -> String {
    let mut failed = Vec::new();
    for path in paths {
        let Ok(u) = uri(path) else { continue };
        let ok = match view.original.get(path).cloned().flatten() {
            Some(bytes) => ctx
                .link
                .request::<_, Empty>(
                    method::FS_WRITE_FILE,
                    &WriteFileParams {
                        path: u,
                        data_base64: Blob::from(bytes),
                        create_parents: Some(true),
                    },
                    RPC_TIMEOUT,
                )
                .await
                .is_ok(),
            None => ctx
                .link
                .request::<_, Empty>(
                    method::FS_REMOVE,
                    &RemoveParams {
                        path: u,
                        recursive: Some(false),
                        force: Some(true),
                    },
                    RPC_TIMEOUT,
                )
                .await
                .is_ok(),
        };
        if !ok {
            failed.push(path.display().to_string());
        }
    }
    if failed.is_empty() {
        "the files already renamed were restored".into()
    } else {
        format!("could not restore: {}", failed.join(", "))
    }
}

fn result(
    reports: Vec<FileReport>,
    applied: bool,
    dry_run: bool,
    commit_error: Option<String>,
) -> CallToolResult {
    let ok = reports.iter().all(|r| r.ok) && commit_error.is_none();
    let mut lines: Vec<String> = reports
        .iter()
        .map(|r| {
            let what = match (&r.error, &r.to) {
                (Some(e), _) => format!("error: {e}"),
                (None, Some(to)) => format!("moved -> {to}"),
                (None, None) => r.action.to_string(),
            };
            let note = if r.error.is_some() || applied {
                ""
            } else if dry_run {
                " (dry run)"
            } else {
                " (not applied)"
            };
            format!("{}: {what}{note}", r.path)
        })
        .collect();
    let mut structured = json!({ "files": reports, "applied": applied, "dry_run": dry_run });
    if let Some(e) = commit_error {
        lines.push(format!("error: the patch was not applied: {e}"));
        structured["error"] = json!(e);
    }
    CallToolResult::text(lines.join("\n"), Some(structured), !ok)
}
