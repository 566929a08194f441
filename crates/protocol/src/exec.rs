//! Params and results of the executor protocol's methods and notifications,
//! with the field names codex `exec-server` 0.169.0 uses on the wire
//! (camelCase). Extensions that only execgate's executor serves are marked
//! **[ext]**; the gateway checks [`ExtCapabilities`] before it uses them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blob::Blob;

/// Method and notification names.
pub mod method {
    pub const INITIALIZE: &str = "initialize";
    pub const INITIALIZED: &str = "initialized";
    pub const PROCESS_START: &str = "process/start";
    pub const PROCESS_READ: &str = "process/read";
    pub const PROCESS_WRITE: &str = "process/write";
    pub const PROCESS_SIGNAL: &str = "process/signal";
    pub const PROCESS_TERMINATE: &str = "process/terminate";
    /// [ext] EOF on the child's stdin.
    pub const PROCESS_CLOSE_STDIN: &str = "process/closeStdin";
    /// [ext] Resize a tty process's terminal.
    pub const PROCESS_RESIZE: &str = "process/resize";
    /// [ext] A notification to the executor: push a process's output as
    /// `process/output` notifications, or stop (exit and close are always
    /// pushed). See [`super::ProcessSetPushParams`].
    pub const PROCESS_SET_PUSH: &str = "process/setPush";
    pub const FS_READ_FILE: &str = "fs/readFile";
    /// [ext] A byte range of a file.
    pub const FS_READ_RANGE: &str = "fs/readRange";
    pub const FS_WRITE_FILE: &str = "fs/writeFile";
    pub const FS_CREATE_DIRECTORY: &str = "fs/createDirectory";
    pub const FS_GET_METADATA: &str = "fs/getMetadata";
    pub const FS_READ_DIRECTORY: &str = "fs/readDirectory";
    pub const FS_REMOVE: &str = "fs/remove";
    pub const FS_COPY: &str = "fs/copy";
    /// [ext] Rename a path (atomic within a file system).
    pub const FS_RENAME: &str = "fs/rename";
    /// [ext] Write bytes at an offset of a file (creating it).
    pub const FS_WRITE_RANGE: &str = "fs/writeRange";
    /// [ext] Verify a staged file's SHA-256 (or, with `digests`, BLAKE3),
    /// set its mode, rename it into place.
    pub const FS_COMMIT_FILE: &str = "fs/commitFile";
    /// [ext] Create a symbolic link.
    pub const FS_SYMLINK: &str = "fs/symlink";
    /// [ext] The digest of what `fs/readRange {hash}` requests read, in
    /// offset order (see [`super::ReadDigestParams`]).
    pub const FS_READ_DIGEST: &str = "fs/readDigest";

    pub const PROCESS_OUTPUT: &str = "process/output";
    pub const PROCESS_EXITED: &str = "process/exited";
    pub const PROCESS_CLOSED: &str = "process/closed";

    /// [ext] A notification to the executor: the gateway is draining; finish
    /// the requests in flight, close the link and dial again (see
    /// [`super::MoveParams`]). Sent only to an executor that announced
    /// [`super::ExtCapabilities::move_on_drain`].
    pub const EXECGATE_MOVE: &str = "execgate/move";
}

/// Every request method of [`method`]: the bounded set a metric may label by
/// (anything else is `other`).
pub const REQUEST_METHODS: &[&str] = &[
    method::INITIALIZE,
    method::PROCESS_START,
    method::PROCESS_READ,
    method::PROCESS_WRITE,
    method::PROCESS_SIGNAL,
    method::PROCESS_TERMINATE,
    method::PROCESS_CLOSE_STDIN,
    method::PROCESS_RESIZE,
    method::FS_READ_FILE,
    method::FS_READ_RANGE,
    method::FS_WRITE_FILE,
    method::FS_CREATE_DIRECTORY,
    method::FS_GET_METADATA,
    method::FS_READ_DIRECTORY,
    method::FS_REMOVE,
    method::FS_COPY,
    method::FS_RENAME,
    method::FS_WRITE_RANGE,
    method::FS_COMMIT_FILE,
    method::FS_SYMLINK,
    method::FS_READ_DIGEST,
];

/// `method` as a metric label: itself when it is one of [`REQUEST_METHODS`],
/// else `other`.
pub fn method_label(method: &str) -> &'static str {
    REQUEST_METHODS
        .iter()
        .copied()
        .find(|m| *m == method)
        .unwrap_or("other")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    pub client_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session_id: Option<String>,
    /// [ext] What an execgate gateway accepts from the executor. Absent
    /// from other clients; codex ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execgate: Option<ClientExt>,
}

/// [ext] A client's side of execgate's extensions, in `initialize`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientExt {
    /// The client reads binary frames (see [`crate::blob`]): the executor
    /// may send output and file data raw instead of as base64.
    pub binary_frames: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    pub session_id: String,
    pub environment_info: EnvironmentInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentInfo {
    #[serde(default)]
    pub shell: ShellInfo,
    #[serde(default)]
    pub executor_version: String,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub user_home_dir: String,
    #[serde(default)]
    pub platform_os: String,
    #[serde(default)]
    pub temp_dir: String,
    /// codex's capabilities: a flat object of booleans.
    #[serde(default)]
    pub capabilities: serde_json::Map<String, serde_json::Value>,
    /// [ext] execgate's extensions. A sibling of `capabilities` rather than a
    /// key inside it, so that codex clients, which read `capabilities` as
    /// booleans, are not confused by an object. Absent on a stock codex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execgate: Option<ExtCapabilities>,
}

impl EnvironmentInfo {
    /// The execgate extensions this executor announced; all off for a stock codex.
    pub fn ext(&self) -> ExtCapabilities {
        self.execgate.clone().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShellInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: String,
}

/// [ext] What an execgate executor adds to the protocol. Announced in
/// `environmentInfo.execgate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtCapabilities {
    /// `process/closeStdin` is served.
    pub close_stdin: bool,
    /// Binary frames are read (see [`crate::blob`]): the gateway may send
    /// file data and stdin raw instead of as base64.
    pub binary_frames: bool,
    /// `process/start {pushOutput}` and `process/setPush` are served.
    pub push_control: bool,
    /// `process/resize` is served and `process/start` takes `cols`/`rows`.
    pub resize: bool,
    /// `process/read` results carry an exact `lostBytes`.
    pub lost_bytes: bool,
    /// `fs/readRange` is served.
    pub read_range: bool,
    /// `fs/writeFile` takes `createParents` and writes atomically.
    pub atomic_write: bool,
    /// Output bytes retained per process.
    pub retained_bytes: u64,
    /// Custom tools from the executor's tools file. Absent (empty) on older
    /// executors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<crate::custom_tool::CustomToolSpec>,
    /// `process/signal` takes `terminate`, `kill` and `hangup` besides
    /// codex's `interrupt`.
    pub signals: bool,
    /// Output bytes per process kept on disk after the in-memory ring
    /// (0: no spill).
    pub spill_bytes: u64,
    /// `fs/rename` is served.
    pub rename: bool,
    /// `fs/writeRange`, `fs/commitFile`, `fs/symlink` are served,
    /// `fs/getMetadata` reports `mode` and `symlinkTarget`, and
    /// `fs/createDirectory` takes `mode`.
    pub file_transfer: bool,
    /// The Landlock ABI with which `process/start {sandbox}` is applied
    /// (0: it is not: no Landlock, or an older executor). Below 3 the
    /// executor cannot confine writes, below 4 the network.
    #[serde(skip_serializing_if = "is_zero")]
    pub sandbox_abi: u32,
    /// `execgate/move` is understood: on it the executor closes the link
    /// once its requests in flight are answered, and dials again.
    #[serde(rename = "move")]
    pub move_on_drain: bool,
    /// The limits the machine's owner set (`--root`, `--allow-tools`,
    /// `--read-only`, `--max-processes`, `--sandbox`); absent when none was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::ExecutorPolicy>,
    /// A request's `params._meta.traceparent` (W3C trace context) is read:
    /// the executor's spans of that request join the caller's trace. The
    /// gateway sends `_meta` only to an executor that announced this.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub trace_context: bool,
    /// The digests a transfer can be verified with where the bytes are
    /// ([`digest`]): `fs/readRange {hash}` and `fs/readDigest` (the source
    /// hashes what it read), `fs/writeRange {digest}` and `fs/commitFile
    /// {blake3}` (the destination verifies it). Empty on older executors
    /// and on codex: the gateway then hashes SHA-256 itself, as before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<String>,
}

/// [ext] Digest names of [`ExtCapabilities::digests`].
pub mod digest {
    pub const SHA256: &str = "sha256";
    pub const BLAKE3: &str = "blake3";
}

/// [ext] `execgate/move`: the gateway that sends it is draining.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MoveParams {
    /// Gateway URLs to prefer for the next dial, best first: a replica
    /// fills it with the other live replicas' advertise URLs. The executor
    /// dials only URLs it was configured with (`--gateway`): a hint never
    /// sends its token anywhere new; it tries the hinted ones of its list
    /// in order, then the rest. Empty: the next URL of its own list (or
    /// the same one, behind a load balancer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Why, for the executor's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Which variables a child inherits. codex 0.169.0 rejects a policy that lacks
/// any field, so every field is always serialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvPolicy {
    /// `"all"` or `"none"`.
    #[serde(default = "EnvPolicy::default_inherit")]
    pub inherit: String,
    #[serde(default)]
    pub ignore_default_excludes: bool,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub include_only: Vec<String>,
}

impl EnvPolicy {
    fn default_inherit() -> String {
        "all".into()
    }

    /// Inherit the executor's environment and set `vars` on top.
    pub fn inherit_all(set: BTreeMap<String, String>) -> Self {
        EnvPolicy {
            inherit: "all".into(),
            ignore_default_excludes: false,
            exclude: Vec::new(),
            set,
            include_only: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStartParams {
    pub process_id: String,
    pub argv: Vec<String>,
    /// `file://` URI.
    pub cwd: String,
    /// The whole child environment, unless `env_policy` is given.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipe_stdin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg0: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_policy: Option<EnvPolicy>,
    /// [ext] Terminal size for `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// [ext] Terminal size for `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// [ext] Push output as `process/output` notifications from the start
    /// (absent: yes, as codex does). A reader that only pulls says no, so
    /// that bulk output does not cross the link twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_output: Option<bool>,
    /// [ext] Confine this process more narrowly than the executor's own
    /// sandbox (never more widely: a wider request is refused, -32030).
    /// Sent only to an executor that announces `sandboxAbi`: a stock codex
    /// would ignore it and run the process unconfined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxRequest>,
}

/// [ext] A narrower sandbox for one process (`process/start {sandbox}`),
/// applied on top of the executor's own (Landlock rulesets stack: the
/// process gets what both allow).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxRequest {
    /// Writes only beneath these paths (and the always-writable devices).
    /// Each must exist and lie within what the executor allows. `[]`: no
    /// writes at all. Absent: the executor's own rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Vec<String>>,
    /// `"deny"`: no TCP connect or bind. `"allow"` is only accepted where
    /// the executor allows the network itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetAccess>,
}

/// [ext] Network access of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetAccess {
    Allow,
    Deny,
}

/// [ext] `process/setPush`: whether the process's output is pushed from
/// now on. Output produced while it was off is in the log for
/// `process/read`, so a reader turning it on reads once afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSetPushParams {
    pub process_id: String,
    pub output: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStartResult {
    pub process_id: String,
    #[serde(default)]
    pub sandbox_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessReadParams {
    pub process_id: String,
    /// Chunks with a seq greater than this are returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Long-poll: wait up to this long for something newer than `after_seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Pty => "pty",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessChunk {
    pub seq: u64,
    pub stream: Stream,
    /// The bytes: base64, or raw in a binary frame [ext].
    pub chunk: Blob,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessReadResult {
    pub chunks: Vec<ProcessChunk>,
    /// The first seq not yet returned: with `maxBytes`, the last returned
    /// chunk's seq + 1; otherwise the process's seq counter (last issued + 1,
    /// counting exit and close events). The next read's `afterSeq` is
    /// `nextSeq - 1`. (codex 0.169.0, observed.)
    pub next_seq: u64,
    #[serde(default)]
    pub exited: bool,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The process has exited and its output streams ended. This is process
    /// state: with `maxBytes`, chunks may remain after a read that says closed.
    #[serde(default)]
    pub closed: bool,
    #[serde(default)]
    pub failure: Option<String>,
    #[serde(default)]
    pub sandbox_denied: bool,
    /// [ext] Output bytes with a seq in `(afterSeq, first returned seq)` that
    /// the executor no longer retains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessWriteParams {
    pub process_id: String,
    /// The bytes: base64, or raw in a binary frame [ext].
    pub chunk: Blob,
    pub write_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WriteStatus {
    Accepted,
    UnknownProcess,
    StdinClosed,
    Starting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessWriteResult {
    pub status: WriteStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessIdParams {
    pub process_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSignalParams {
    pub process_id: String,
    /// `interrupt`, `terminate`, `kill` or `hangup`.
    pub signal: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessTerminateResult {
    /// True if a live process was killed.
    pub running: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessResizeParams {
    pub process_id: String,
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputNotification {
    pub process_id: String,
    pub seq: u64,
    pub stream: Stream,
    pub chunk: Blob,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitedNotification {
    pub process_id: String,
    pub seq: u64,
    pub exit_code: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosedNotification {
    pub process_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathParams {
    /// `file://` URI.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadFileResult {
    pub data_base64: Blob,
}

/// [ext] `fs/readRange`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRangeParams {
    pub path: String,
    pub offset: u64,
    /// 0 reads to the end of the file.
    pub length: u64,
    /// [ext] Feed what this read returns to the running hash `id` (see
    /// [`ReadDigestParams`]); only to an executor that announced
    /// [`ExtCapabilities::digests`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ReadHash>,
}

/// [ext] Which running hash a `fs/readRange` feeds, and with what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadHash {
    /// Chosen by the caller, unique per transfer. The first read of an id
    /// must be at offset 0.
    pub id: String,
    /// One of [`ExtCapabilities::digests`].
    pub algorithm: String,
}

/// [ext] `fs/readDigest`: the digest of the bytes that the `fs/readRange
/// {hash: {id}}` requests returned, in offset order from 0, and how many
/// there were. The running hash is forgotten. An error (-32602) when it
/// cannot account for them exactly: an unknown id, a read that overlapped
/// or skipped bytes, or too many bytes read out of order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadDigestParams {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadDigestResult {
    pub algorithm: String,
    /// Lowercase hex.
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadRangeResult {
    pub data_base64: Blob,
    /// The file's size when it was read.
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteFileParams {
    pub path: String,
    pub data_base64: Blob,
    /// [ext] Create missing parent directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_parents: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateDirectoryParams {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
    /// [ext] Permission bits for the directory (the last one created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub is_directory: bool,
    pub is_file: bool,
    #[serde(default)]
    pub is_symlink: bool,
    pub size: u64,
    #[serde(default)]
    pub created_at_ms: i64,
    #[serde(default)]
    pub modified_at_ms: i64,
    /// [ext] Permission bits (`st_mode & 0o7777`) of the path itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// [ext] What a symbolic link points to (not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// [ext] `fs/rename`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenameParams {
    pub source_path: String,
    pub destination_path: String,
}

/// [ext] `fs/writeRange`: write `dataBase64` at `offset`. The file is
/// created if missing; `truncate` empties it first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteRangeParams {
    pub path: String,
    pub offset: u64,
    pub data_base64: Blob,
    #[serde(default)]
    pub truncate: bool,
    /// [ext] With `truncate` (or at offset 0): the running hash kept of
    /// the staged file, one of [`ExtCapabilities::digests`]; SHA-256 when
    /// absent. `fs/commitFile` verifies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// [ext] `fs/commitFile`: the last step of a transfer. The staged file at
/// `path` is checked against `sha256` or `blake3` (when given), gets `mode` (when
/// given), and is renamed to `destinationPath`. On a mismatch the staged file
/// is removed and nothing changes at the destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitFileParams {
    pub path: String,
    pub destination_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// [ext] Verify this BLAKE3 (lowercase hex) instead of a SHA-256;
    /// only to an executor whose [`ExtCapabilities::digests`] has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitFileResult {
    /// Lowercase hex SHA-256 of the committed file (empty when it was
    /// verified by `blake3`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    pub size: u64,
    /// [ext] Lowercase hex BLAKE3 of the committed file, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// [ext] `fs/symlink`: create `path` as a link to `target`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SymlinkParams {
    pub target: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirEntry {
    pub file_name: String,
    pub is_directory: bool,
    pub is_file: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadDirectoryResult {
    pub entries: Vec<DirEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveParams {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyParams {
    pub source_path: String,
    pub destination_path: String,
    #[serde(default)]
    pub recursive: bool,
}

/// An empty object result, `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_policy_always_sends_every_field() {
        let v = serde_json::to_value(EnvPolicy::inherit_all(BTreeMap::new())).unwrap();
        assert_eq!(
            v,
            json!({"inherit":"all","ignoreDefaultExcludes":false,"exclude":[],"set":{},"includeOnly":[]})
        );
    }

    #[test]
    fn start_params_use_codex_names() {
        let p = ProcessStartParams {
            process_id: "p1".into(),
            argv: vec!["true".into()],
            cwd: "file:///tmp".into(),
            env: BTreeMap::new(),
            tty: false,
            pipe_stdin: Some(true),
            arg0: None,
            env_policy: None,
            cols: None,
            rows: None,
            push_output: None,
            sandbox: None,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            json!({"processId":"p1","argv":["true"],"cwd":"file:///tmp","env":{},"tty":false,"pipeStdin":true})
        );
    }

    #[test]
    fn a_sandbox_request_is_an_ext_field_and_strict() {
        let p: ProcessStartParams = serde_json::from_value(json!({
            "processId":"p","argv":["true"],"cwd":"",
            "sandbox":{"write":["/srv/x"],"net":"deny"}
        }))
        .unwrap();
        assert_eq!(
            p.sandbox,
            Some(SandboxRequest {
                write: Some(vec!["/srv/x".into()]),
                net: Some(NetAccess::Deny)
            })
        );
        let bad = serde_json::from_value::<SandboxRequest>(json!({"read":["/"]}));
        assert!(bad.is_err(), "an unknown key must not be ignored");
        // Executors that cannot apply one say so by omitting sandboxAbi.
        let ext: ExtCapabilities = serde_json::from_value(json!({})).unwrap();
        assert_eq!(ext.sandbox_abi, 0);
    }

    #[test]
    fn ext_capabilities_default_off_for_codex() {
        let info: EnvironmentInfo =
            serde_json::from_value(json!({"capabilities":{"foo":true}})).unwrap();
        assert_eq!(info.ext(), ExtCapabilities::default());
        let info: EnvironmentInfo = serde_json::from_value(
            json!({"capabilities":{},"execgate":{"closeStdin":true,"retainedBytes":5}}),
        )
        .unwrap();
        assert!(info.ext().close_stdin);
        assert_eq!(info.ext().retained_bytes, 5);
        assert!(!info.ext().move_on_drain);
    }

    #[test]
    fn the_move_extension_is_announced_as_move() {
        let ext = ExtCapabilities {
            move_on_drain: true,
            ..Default::default()
        };
        let v = serde_json::to_value(&ext).unwrap();
        assert_eq!(v["move"], true);
        let back: ExtCapabilities = serde_json::from_value(json!({"move":true})).unwrap();
        assert!(back.move_on_drain);
        // An empty move notification is valid, and encodes as `{}`.
        let p: MoveParams = serde_json::from_value(json!({})).unwrap();
        assert_eq!(p, MoveParams::default());
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({}));
        let p: MoveParams =
            serde_json::from_value(json!({"gateways":["http://b:6060"],"reason":"x"})).unwrap();
        assert_eq!(p.gateways, ["http://b:6060"]);
    }
}
