//! `shell`: run a command to completion and collect its output.
//!
//! `process/start`, then collect `process/output` notifications until
//! `process/closed`, killing the process group at the deadline. Push, then
//! pull: notifications are taken strictly in seq order, and at the first gap
//! (the executor dropped a notification under load, or codex sent `closed`
//! before `exited`) collection switches to `process/read` from the last
//! contiguous seq, which the executor answers from its output log. Nothing is
//! missed and nothing is counted twice.
//!
//! **Bounded output.** A model reads what `shell` answers, so over MCP the
//! answer is bounded by `max_output_bytes` (default
//! [`MCP_MAX_OUTPUT_BYTES`]): past it, each stream keeps a head and a tail
//! and a marker line in between says exactly how many bytes were left out
//! and how to read them all (exec_command and read_output, or a redirect
//! to a file and read_file by lines). Never a silent cut; the gateway
//! holds at most four budgets' worth of output while the command runs.
//! Over REST there is no budget unless the call gives one: the output is
//! kept up to [`MAX_CAPTURE`] and the rest counted as `dropped_bytes`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use execgate_protocol::connectors::{CallToolResult, ShellOutput};
use execgate_protocol::exec::{
    method, EnvPolicy, ProcessIdParams, ProcessReadParams, ProcessReadResult, ProcessStartParams,
    ProcessStartResult, ProcessTerminateResult, SandboxRequest, Stream,
};
use serde::Deserialize;

use super::args;
use super::progress::Reporter;
use super::{parse_args, schema, Call, CallFuture, CoreTool, Route};
use super::{rpc_failure, ToolContext, RPC_TIMEOUT};
use crate::link::peer::{MOVE_POLL, MOVE_WAIT};
use crate::link::{Link, LinkError, ProcessEvent};
use crate::ops::state::AppState;
use crate::ops::Error;
use crate::secret::random_id;
use serde_json::{json, Map, Value};

/// The `shell` tool (see `super` for what a declaration feeds).
pub static TOOL: CoreTool = CoreTool {
    name: "shell",
    route: Route::Rest,
    description: "Run a command to completion and return its stdout, stderr and exit code. \
                      A non-zero exit is not an error; a timeout kills the whole process group.",
    envs_list: Some((
        0,
        "Run a command to completion and return its stdout, stderr and exit code. \
                      Arguments: command (argv array, or a string run with sh -c), cwd, env, timeout_ms (default 60000).",
    )),
    properties: || {
            json!({
                "command": schema::command(),
                "cwd": {"type": "string", "description": "Working directory (default: the executor's)."},
                "env": schema::env(),
                "timeout_ms": schema::timeout_ms(60_000),
                "sandbox": schema::sandbox(),
                "max_output_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_CAPTURE,
                    "description": format!("Bound stdout and stderr together to about this many bytes: \
                        past it each keeps its head and tail, and a line in between says exactly how \
                        many bytes were left out (omitted_bytes) and how to read them. Default: {} over \
                        MCP; over REST, none (up to {} MiB kept, the rest counted in dropped_bytes).",
                        MCP_MAX_OUTPUT_BYTES, MAX_CAPTURE >> 20)}
            })
        },
    required: &["command"],
    call: Call::OnEnvironment(invoke),
};

fn invoke<'a>(ctx: &'a ToolContext<'a>, arguments: Map<String, Value>) -> CallFuture<'a> {
    Box::pin(async move { call(ctx, parse_args(arguments)?).await })
}

const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// `shell` holds all output in the gateway's memory; past this much it keeps
/// counting but stops storing, and says how much it dropped.
/// `exec_command` is the tool for unbounded output.
pub(crate) const MAX_CAPTURE: usize = 16 * 1024 * 1024;
/// `max_output_bytes` of a call through MCP that gives none: 64 KiB.
pub const MCP_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The output budget of a call that gives none (see the module docs).
pub(crate) fn default_max_output(ctx: &ToolContext<'_>) -> Option<usize> {
    default_budget(ctx.via)
}

fn default_budget(via: crate::store::audit_log::Via) -> Option<usize> {
    match via {
        crate::store::audit_log::Via::Mcp => Some(MCP_MAX_OUTPUT_BYTES),
        _ => None,
    }
}
/// After a kill, how long to wait for the last output and `closed`.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(3);
/// Beyond its timeout and the drain, how long a call may wait on its
/// executor's answers (to `process/start`, `process/terminate`, reads)
/// before it is answered 504 anyway: a hung executor (SIGSTOP, a stuck
/// machine) must not hold a call past its own timeout.
pub(crate) const CALL_MARGIN: Duration = Duration::from_secs(5);
const READ_MAX_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellArgs {
    #[serde(deserialize_with = "args::command")]
    pub command: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default, deserialize_with = "args::env")]
    pub env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "args::timeout_ms")]
    pub timeout_ms: Option<u64>,
    /// A narrower sandbox for this process (see `crate::ops::policy::check_sandbox`).
    #[serde(default)]
    pub sandbox: Option<SandboxRequest>,
    /// The output budget (see the module docs); 1 ..= [`MAX_CAPTURE`].
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
    /// Checked against the path by the handler.
    #[serde(default)]
    #[allow(dead_code)]
    pub environment_id: Option<String>,
}

/// The output budget `a` asks for, or the default of `via`.
fn max_output_of(a: &ShellArgs, via: crate::store::audit_log::Via) -> Result<Option<usize>, Error> {
    match a.max_output_bytes {
        None => Ok(default_budget(via)),
        Some(n) if n >= 1 && n <= MAX_CAPTURE as u64 => Ok(Some(n as usize)),
        Some(_) => Err(Error::bad_arguments(format!(
            "arguments.max_output_bytes: must be between 1 and {MAX_CAPTURE}"
        ))),
    }
}

pub async fn call(ctx: &ToolContext<'_>, a: ShellArgs) -> Result<CallToolResult, Error> {
    crate::ops::policy::check_sandbox(&ctx.link, a.sandbox.as_ref())?;
    let max_output = max_output_of(&a, ctx.via)?;
    let command = Command {
        max_output,
        cwd: args::cwd_uri(&ctx.link, a.cwd.as_deref())?,
        argv: a.command,
        env: a.env,
        timeout: Duration::from_millis(a.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
        sandbox: a.sandbox,
    };
    run_to_completion(ctx, command).await
}

/// What a `shell` call run as an MCP task (`crate::ops::tasks`) needs to
/// remember: its timeout and its output budget.
#[derive(Debug, Clone, Copy)]
pub struct TaskSettings {
    pub timeout_ms: u64,
    pub max_output: Option<usize>,
}

/// `shell`'s arguments checked as [`call`] checks them (the refusal names
/// the field), and what a task keeps of them.
pub fn task_settings(
    arguments: &Map<String, Value>,
    via: crate::store::audit_log::Via,
) -> Result<TaskSettings, Error> {
    let a: ShellArgs = parse_args(arguments.clone())?;
    Ok(TaskSettings {
        timeout_ms: a.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        max_output: max_output_of(&a, via)?,
    })
}

/// `shell` started as a process session instead of run to completion (an
/// MCP task): exec_command's start (the session row first, in the store)
/// with `shell`'s arguments, its timeout as the session's deadline (which
/// `crate::ops::deadlines` enforces, whichever replica holds the executor),
/// stdin closed. Answers exec_command's result (`session_id`).
pub(crate) async fn start_session(
    ctx: &ToolContext<'_>,
    arguments: Map<String, Value>,
) -> Result<CallToolResult, Error> {
    let settings = task_settings(&arguments, ctx.via)?;
    let a: ShellArgs = parse_args(arguments)?;
    let exec = super::exec_command::ExecArgs {
        command: a.command,
        cwd: a.cwd,
        env: a.env,
        tty: false,
        pipe_stdin: false,
        cols: None,
        rows: None,
        max_runtime_ms: Some(settings.timeout_ms),
        sandbox: a.sandbox,
        environment_id: None,
    };
    super::exec_command::call(ctx, exec).await
}

/// What `shell` would have answered, assembled from the output log of a
/// process session that has closed (an MCP task's result): read from the
/// start in seq order with the same collector (budget, `omitted_bytes`),
/// and output the executor no longer retains counted exactly in
/// `lost_bytes` (on a stock codex, as far as the link's seq ledger can
/// tell). `past_deadline`: the session's deadline has passed, so a process
/// that died of SIGKILL (or whose exit code is unknown) was killed by it
/// and the result says `timed_out`. `elapsed` is the task's age when its
/// end was first seen.
pub(crate) async fn result_from_log(
    link: &Link,
    process_id: &str,
    settings: TaskSettings,
    elapsed: Duration,
    past_deadline: bool,
) -> Result<CallToolResult, LinkError> {
    let mut out = Collector::bounded(settings.max_output);
    loop {
        let before = out.cursor;
        let r: ProcessReadResult = link
            .request(
                method::PROCESS_READ,
                &ProcessReadParams {
                    process_id: process_id.to_string(),
                    after_seq: Some(out.cursor),
                    max_bytes: Some(READ_MAX_BYTES),
                    wait_ms: None,
                },
                RPC_TIMEOUT,
            )
            .await?;
        if r.lost_bytes.is_none() {
            // A stock codex does not count what it evicted; the ledger does.
            if let Some(first) = r.chunks.first() {
                out.lost_bytes += link
                    .lost_between(process_id, out.cursor, first.seq)
                    .unwrap_or(0);
            }
        }
        // Read on while pages come back; an empty page (or one that does
        // not move the cursor, from a broken executor) is the end.
        let empty = r.chunks.is_empty();
        out.pull(r);
        if empty || out.cursor == before {
            break;
        }
    }
    const SIGKILL_EXIT: i32 = 128 + 9;
    let timed_out = past_deadline && matches!(out.exit_code, None | Some(SIGKILL_EXIT));
    let timeout = Duration::from_millis(settings.timeout_ms);
    Ok(out.finish(timed_out, timeout, elapsed))
}

/// A command to run to completion. `shell` and custom tools (`custom`) both
/// run one, so they share the collection logic and the result shape.
pub(crate) struct Command {
    pub argv: Vec<String>,
    /// `file://` URI.
    pub cwd: String,
    /// Set on top of the executor's environment.
    pub env: BTreeMap<String, String>,
    /// Past it, the process group is killed and the result is `isError`.
    pub timeout: Duration,
    /// [ext] A narrower sandbox, checked against the executor's capability.
    pub sandbox: Option<SandboxRequest>,
    /// The output budget (see the module docs); None keeps up to
    /// [`MAX_CAPTURE`] and counts the rest as dropped.
    pub max_output: Option<usize>,
}

/// Runs `command` on the link's executor and collects its output into
/// `{stdout, stderr, exit_code, timed_out, duration_ms}`.
pub(crate) async fn run_to_completion(
    ctx: &ToolContext<'_>,
    command: Command,
) -> Result<CallToolResult, Error> {
    let timeout = command.timeout;
    match run(Some(ctx.state), &ctx.link, command).await {
        Ok(done) => Ok(done.into_tool_result(timeout)),
        Err(RunError::Start(e)) => rpc_failure(e),
        Err(RunError::Api(e)) => Err(e),
    }
}

/// Why [`run`] produced no output.
pub(crate) enum RunError {
    /// The executor refused to start the process.
    Start(LinkError),
    /// The executor could not be reached, or went away mid-run.
    Api(Error),
}

impl From<Error> for RunError {
    fn from(e: Error) -> Self {
        RunError::Api(e)
    }
}

/// A process that ran to its end (or was killed at its deadline).
pub(crate) struct Completed {
    out: Collector,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Completed {
    pub fn stdout(&self) -> &[u8] {
        &self.out.stdout
    }

    pub fn stderr(&self) -> &[u8] {
        &self.out.stderr
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.out.exit_code
    }

    /// Output that is missing from `stdout`/`stderr`: lost on the executor,
    /// or beyond the capture limit.
    pub fn missing_bytes(&self) -> u64 {
        self.out.lost_bytes + self.out.dropped_bytes
    }

    fn into_tool_result(self, timeout: Duration) -> CallToolResult {
        self.out.finish(self.timed_out, timeout, self.elapsed)
    }
}

/// Runs `command` on `link`'s executor to its end and collects its output
/// in seq order (push, then pull; see the module docs).
///
/// With `state`, on replicas, a link lost mid-command (the executor moved off a draining
/// replica, or the replica holding it died) is not the end: the call
/// waits briefly for the executor's next link ([`relink`]) and, when it is
/// the same executor session, reads the rest of the output from there.
pub(crate) async fn run(
    state: Option<&AppState>,
    link: &Arc<Link>,
    command: Command,
) -> Result<Completed, RunError> {
    let mut link = link.clone();
    let link = &mut link;
    let timeout = command.timeout;
    let process_id = random_id("sh_", 8);
    let params = ProcessStartParams {
        process_id: process_id.clone(),
        argv: command.argv,
        cwd: command.cwd,
        env: BTreeMap::new(),
        tty: false,
        pipe_stdin: Some(false),
        arg0: None,
        env_policy: Some(EnvPolicy::inherit_all(command.env)),
        cols: None,
        rows: None,
        // Collected from the pushed notifications: push, as codex does.
        push_output: None,
        sandbox: command.sandbox,
    };

    let started = Instant::now();
    // The call's own deadline, whatever the executor does; every request
    // below waits at most until then.
    let hard_deadline = tokio::time::Instant::now() + timeout + DRAIN_AFTER_KILL + CALL_MARGIN;
    let left = || {
        hard_deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    // Subscribe before starting, so the first notification cannot be missed.
    let mut sub = link.subscribe_to_start(&process_id);
    // From here until it is known to have ended, a call dropped midway (an
    // MCP client cancelled it, a REST client went away) kills the process
    // group rather than leave it running unwatched.
    let mut guard = KillOnDrop {
        link: link.clone(),
        process_id: Some(process_id.clone()),
    };
    // Set when the start's answer was lost in a move: read everything.
    let mut moved = false;
    match link
        .request::<_, ProcessStartResult>(method::PROCESS_START, &params, left().min(RPC_TIMEOUT))
        .await
    {
        Ok(_) => {}
        Err(e @ LinkError::Disconnected { sent: true, .. }) => {
            // The link (or the channel to its owner) went away with the
            // start sent: on the executor's next link (same session, as
            // when a draining replica moves it) ask whether the process
            // exists, and start it only if it does not, so that the
            // command runs once and its outcome is known.
            let Some(next) = relink(state, link).await else {
                guard.disarm();
                return Err(RunError::Api(e.into()));
            };
            guard.link = next.clone();
            *link = next;
            moved = true;
            if !process_exists(link, &process_id, left()).await? {
                if let Err(e) = link
                    .request::<_, ProcessStartResult>(
                        method::PROCESS_START,
                        &params,
                        left().min(RPC_TIMEOUT),
                    )
                    .await
                {
                    guard.disarm();
                    return Err(match e {
                        e @ LinkError::Rpc { .. } => RunError::Start(e),
                        other => RunError::Api(other.into()),
                    });
                }
            }
        }
        Err(e) => {
            guard.disarm();
            return Err(match e {
                e @ LinkError::Rpc { .. } => RunError::Start(e),
                other => RunError::Api(other.into()),
            });
        }
    }

    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Collector::bounded(command.max_output);
    out.progress = Reporter::current();
    let mut timed_out = false;
    // Until the deadline, then (after the kill) until the drain time is up.
    let mut stop_at = deadline;

    // Push: notifications in seq order (after a move, pull everything).
    let mut gap = moved;
    if !moved {
        loop {
            let ev = tokio::select! {
                ev = sub.recv() => ev,
                _ = tokio::time::sleep_until(stop_at) => {
                    if timed_out {
                        break;
                    }
                    timed_out = true;
                    kill(link, &process_id, left()).await?;
                    stop_at = tokio::time::Instant::now() + DRAIN_AFTER_KILL;
                    continue;
                }
            };
            match ev {
                ProcessEvent::LinkLost => match relink(state, link).await {
                    // Read the rest from the executor's next link.
                    Some(next) => {
                        guard.link = next.clone();
                        *link = next;
                        gap = true;
                        break;
                    }
                    None => return Err(lost_mid_command(link).into()),
                },
                ev => match out.push(ev) {
                    Push::Accepted => {}
                    Push::Done => break,
                    Push::Gap => {
                        gap = true;
                        break;
                    }
                },
            }
        }
    }
    drop(sub);

    // Pull: read from the last contiguous seq until the executor says closed.
    if gap {
        loop {
            let now = tokio::time::Instant::now();
            if now >= stop_at {
                if timed_out {
                    break;
                }
                timed_out = true;
                kill(link, &process_id, left()).await?;
                stop_at = now + DRAIN_AFTER_KILL;
            }
            let wait = stop_at
                .saturating_duration_since(now)
                .min(Duration::from_secs(10));
            let r: ProcessReadResult = match link
                .request(
                    method::PROCESS_READ,
                    &ProcessReadParams {
                        process_id: process_id.clone(),
                        after_seq: Some(out.cursor),
                        max_bytes: Some(READ_MAX_BYTES),
                        wait_ms: Some(wait.as_millis() as u64),
                    },
                    (wait + RPC_TIMEOUT).min(left()),
                )
                .await
            {
                Ok(r) => r,
                Err(LinkError::Disconnected { .. }) => match relink(state, link).await {
                    Some(next) => {
                        guard.link = next.clone();
                        *link = next;
                        continue;
                    }
                    None => return Err(lost_mid_command(link).into()),
                },
                Err(other) => return Err(RunError::Api(other.into())),
            };
            if out.pull(r) {
                break;
            }
        }
    }
    guard.disarm();
    if let Some(p) = &mut out.progress {
        p.flush();
    }

    Ok(Completed {
        out,
        timed_out,
        elapsed: started.elapsed(),
    })
}

/// The executor's next link after `lost` went away mid-command, on a
/// replica: its own link or a channel to its new owner, if one comes within
/// [`MOVE_WAIT`] and carries the same executor session (its processes and
/// their output carry on); `None` otherwise, and always on a single
/// gateway.
async fn relink(state: Option<&AppState>, lost: &Arc<Link>) -> Option<Arc<Link>> {
    let state = state?;
    state.cluster()?;
    let session = lost.handshake()?.session_id.clone();
    let deadline = tokio::time::Instant::now() + MOVE_WAIT;
    loop {
        if let Some(link) = state.link(&lost.exe_id).await {
            if !Arc::ptr_eq(&link, lost) && !link.is_closed() {
                let same = link.handshake().is_some_and(|h| h.session_id == session);
                if same {
                    tracing::debug!(exe_id = %lost.exe_id, "shell: the executor's link moved; reading on from its next one");
                }
                return same.then_some(link);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(MOVE_POLL).await;
    }
}

/// Whether the executor knows `process_id` (a read of nothing, without
/// waiting): false when it answers that it does not.
async fn process_exists(link: &Link, process_id: &str, within: Duration) -> Result<bool, Error> {
    let r = link
        .request::<_, ProcessReadResult>(
            method::PROCESS_READ,
            &ProcessReadParams {
                process_id: process_id.to_string(),
                after_seq: Some(0),
                max_bytes: Some(1),
                wait_ms: Some(0),
            },
            within.min(RPC_TIMEOUT),
        )
        .await;
    match r {
        Ok(_) => Ok(true),
        Err(LinkError::Rpc { error, .. })
            if error.code == execgate_protocol::jsonrpc::code::INVALID_REQUEST =>
        {
            Ok(false)
        }
        Err(LinkError::Disconnected { .. }) => Err(lost_mid_command(link)),
        Err(e) => Err(e.into()),
    }
}

/// Kills the process group of a `shell` whose call was dropped before the
/// process ended (see [`run`]).
struct KillOnDrop {
    link: Arc<Link>,
    /// None once disarmed.
    process_id: Option<String>,
}

impl KillOnDrop {
    fn disarm(&mut self) {
        self.process_id = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(process_id) = self.process_id.take() else {
            return;
        };
        let link = self.link.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tracing::debug!(process_id, "shell call dropped: killing its process group");
                let _ = kill(&link, &process_id, RPC_TIMEOUT).await;
            });
        }
    }
}

async fn kill(link: &Link, process_id: &str, within: Duration) -> Result<(), Error> {
    let r = link
        .request::<_, ProcessTerminateResult>(
            method::PROCESS_TERMINATE,
            &ProcessIdParams {
                process_id: process_id.to_string(),
            },
            within.min(RPC_TIMEOUT),
        )
        .await;
    match r {
        Ok(_) | Err(LinkError::Rpc { .. }) => Ok(()),
        Err(LinkError::Disconnected { .. }) => Err(lost_mid_command(link)),
        Err(e) => Err(e.into()),
    }
}

fn lost_mid_command(link: &Link) -> Error {
    Error::new(
        execgate_protocol::connectors::error_code::EXECUTOR_UNAVAILABLE,
        format!(
            "executor '{}' disconnected while the command ran; its outcome is unknown",
            link.name
        ),
    )
    .with_retry_after(1)
    .with_outcome_unknown()
}

enum Push {
    Accepted,
    Done,
    Gap,
}

/// Output of one shell command, assembled in seq order.
#[derive(Default)]
struct Collector {
    /// Every seq up to here has been taken in.
    cursor: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: Option<i32>,
    lost_bytes: u64,
    dropped_bytes: u64,
    /// With a budget: each stream's head and tail instead of `stdout`
    /// and `stderr` (stdout, stderr).
    bounded: Option<(usize, [HeadTail; 2])>,
    /// Progress for a caller that asked for it (MCP's `progressToken`).
    progress: Option<Reporter>,
}

/// One stream's output under a budget: its first `cap` bytes, its last
/// `cap` bytes after those, and how many there were in all.
#[derive(Default)]
struct HeadTail {
    cap: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl HeadTail {
    fn append(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.cap.saturating_sub(self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..room]);
        let rest = &data[room..];
        if rest.len() >= self.cap {
            self.tail.clear();
            self.tail.extend(&rest[rest.len() - self.cap..]);
        } else {
            self.tail.extend(rest);
            let excess = self.tail.len().saturating_sub(self.cap);
            self.tail.drain(..excess);
        }
    }

    /// The stream cut to `allowance` bytes: its head, a marker, its tail
    /// (cut on character boundaries), and how many bytes were left out.
    fn cut(&self, allowance: usize, name: &str, budget: usize) -> (Vec<u8>, u64) {
        let kept: Vec<u8> = self
            .head
            .iter()
            .copied()
            .chain(self.tail.iter().copied())
            .collect();
        if self.total <= allowance as u64 {
            return (kept, 0);
        }
        let head = &self.head[..super::args::utf8_cut(&self.head[..allowance / 2])];
        let tail_len = allowance - allowance / 2;
        let mut tail = &kept[kept.len() - tail_len.min(kept.len())..];
        // Start the tail on a character, not inside one.
        let skip = tail
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count();
        tail = &tail[skip..];
        let omitted = self.total - head.len() as u64 - tail.len() as u64;
        let mut out = head.to_vec();
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(
            format!(
                "[... {omitted} bytes of {name} omitted: {} bytes in all, the first {} and the last {} \
                 shown (max_output_bytes {budget}). To read everything, run the command with \
                 exec_command and page its output with read_output, or redirect it to a file \
                 (> out.txt 2>&1) and read that with read_file start_line/line_count ...]\n",
                self.total,
                head.len(),
                tail.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(tail);
        (out, omitted)
    }
}

impl Collector {
    fn bounded(budget: Option<usize>) -> Self {
        Collector {
            bounded: budget.map(|b| {
                let half = || HeadTail {
                    cap: b,
                    ..Default::default()
                };
                (b, [half(), half()])
            }),
            ..Default::default()
        }
    }

    fn push(&mut self, ev: ProcessEvent) -> Push {
        let seq = match &ev {
            ProcessEvent::Output { seq, .. }
            | ProcessEvent::Exited { seq, .. }
            | ProcessEvent::Closed { seq } => *seq,
            ProcessEvent::LinkLost => return Push::Gap,
        };
        if seq != self.cursor + 1 {
            return Push::Gap;
        }
        self.cursor = seq;
        match ev {
            ProcessEvent::Output { stream, data, .. } => self.append(stream, &data),
            ProcessEvent::Exited { exit_code, .. } => self.exit_code = Some(exit_code),
            ProcessEvent::Closed { .. } => return Push::Done,
            ProcessEvent::LinkLost => {}
        }
        Push::Accepted
    }

    /// Takes in one `process/read` result; true once the output is complete.
    fn pull(&mut self, r: ProcessReadResult) -> bool {
        self.lost_bytes += r.lost_bytes.unwrap_or(0);
        for c in &r.chunks {
            if c.seq <= self.cursor {
                continue;
            }
            match c.chunk.to_bytes() {
                Ok(data) => self.append(c.stream, &data),
                // Undecodable (a broken executor): reported, not dropped silently.
                Err(_) => self.lost_bytes += c.chunk.len(),
            }
            self.cursor = c.seq;
        }
        self.cursor = self.cursor.max(r.next_seq.saturating_sub(1));
        if r.exited {
            self.exit_code = self.exit_code.or(r.exit_code);
        }
        r.closed
    }

    fn append(&mut self, stream: Stream, data: &[u8]) {
        if let Some(p) = &mut self.progress {
            p.output(data);
        }
        if let Some((_, streams)) = &mut self.bounded {
            let i = usize::from(stream == Stream::Stderr);
            streams[i].append(data);
            return;
        }
        let held = self.stdout.len() + self.stderr.len();
        let room = MAX_CAPTURE.saturating_sub(held).min(data.len());
        let target = match stream {
            Stream::Stderr => &mut self.stderr,
            Stream::Stdout | Stream::Pty => &mut self.stdout,
        };
        target.extend_from_slice(&data[..room]);
        self.dropped_bytes += (data.len() - room) as u64;
    }

    fn finish(mut self, timed_out: bool, timeout: Duration, elapsed: Duration) -> CallToolResult {
        if let Some(m) = crate::metrics::get() {
            let received = match &self.bounded {
                Some((_, [out, err])) => out.total + err.total,
                None => (self.stdout.len() + self.stderr.len()) as u64 + self.dropped_bytes,
            };
            m.output(received, self.lost_bytes);
        }
        let mut omitted_bytes = 0;
        let mut max_output_bytes = None;
        if let Some((budget, [out, err])) = self.bounded.take() {
            // Split the budget: the smaller stream gets what it needs up to
            // half, the other the rest.
            let (o, e) = (out.total, err.total);
            let (ao, ae) = if o + e <= budget as u64 {
                (o as usize, e as usize)
            } else if e <= o {
                let ae = (e as usize).min(budget / 2);
                (budget - ae, ae)
            } else {
                let ao = (o as usize).min(budget / 2);
                (ao, budget - ao)
            };
            let (stdout, so) = out.cut(ao, "stdout", budget);
            let (stderr, se) = err.cut(ae, "stderr", budget);
            self.stdout = stdout;
            self.stderr = stderr;
            omitted_bytes = so + se;
            if omitted_bytes > 0 {
                max_output_bytes = Some(budget as u64);
            }
        }
        let stdout = String::from_utf8_lossy(&self.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&self.stderr).into_owned();
        let mut text = stdout.clone();
        if !stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("--- stderr ---\n");
            text.push_str(&stderr);
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if self.lost_bytes > 0 {
            text.push_str(&format!(
                "[{} bytes of output were lost: the executor no longer retained them]\n",
                self.lost_bytes
            ));
        }
        if self.dropped_bytes > 0 {
            text.push_str(&format!(
                "[{} bytes of output were dropped: shell keeps at most {} MiB; use exec_command for more]\n",
                self.dropped_bytes,
                MAX_CAPTURE >> 20
            ));
        }
        if timed_out {
            text.push_str(&format!(
                "[timed out after {} ms; the process group was killed]",
                timeout.as_millis()
            ));
        } else {
            match self.exit_code {
                Some(code) => text.push_str(&format!("[exit_code={code}]")),
                None => text.push_str("[exit_code=unknown]"),
            }
        }
        let structured = ShellOutput {
            stdout,
            stderr,
            exit_code: self.exit_code,
            timed_out,
            duration_ms: elapsed.as_millis() as u64,
            lost_bytes: self.lost_bytes,
            dropped_bytes: self.dropped_bytes,
            omitted_bytes,
            max_output_bytes,
        };
        CallToolResult::text(
            text,
            Some(serde_json::to_value(structured).expect("shell output serializes")),
            timed_out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use bytes::Bytes;
    use execgate_protocol::blob::Blob;
    use execgate_protocol::exec::ProcessChunk;

    fn out(seq: u64, s: &str) -> ProcessEvent {
        ProcessEvent::Output {
            seq,
            stream: Stream::Stdout,
            data: Bytes::from(s.to_string()),
        }
    }

    #[test]
    fn in_order_events_complete() {
        let mut c = Collector::default();
        assert!(matches!(c.push(out(1, "a")), Push::Accepted));
        assert!(matches!(
            c.push(ProcessEvent::Output {
                seq: 2,
                stream: Stream::Stderr,
                data: Bytes::from_static(b"e")
            }),
            Push::Accepted
        ));
        assert!(matches!(
            c.push(ProcessEvent::Exited {
                seq: 3,
                exit_code: 3
            }),
            Push::Accepted
        ));
        assert!(matches!(
            c.push(ProcessEvent::Closed { seq: 4 }),
            Push::Done
        ));
        let r = c.finish(false, Duration::from_secs(1), Duration::from_millis(5));
        assert_eq!(r.first_text(), "a\n--- stderr ---\ne\n[exit_code=3]");
        assert!(!r.is_error);
    }

    #[test]
    fn a_gap_switches_to_pull_from_the_contiguous_prefix() {
        let mut c = Collector::default();
        c.push(out(1, "a"));
        assert!(matches!(c.push(out(3, "c")), Push::Gap));
        assert_eq!(c.cursor, 1);
        let b64 = |s: &str| Blob::Base64(base64::engine::general_purpose::STANDARD.encode(s));
        let done = c.pull(ProcessReadResult {
            chunks: vec![
                ProcessChunk {
                    seq: 2,
                    stream: Stream::Stdout,
                    chunk: b64("b"),
                },
                ProcessChunk {
                    seq: 3,
                    stream: Stream::Stdout,
                    // Raw, as from a binary frame.
                    chunk: Blob::from(&b"c"[..]),
                },
            ],
            next_seq: 5,
            exited: true,
            exit_code: Some(0),
            closed: true,
            lost_bytes: Some(0),
            ..Default::default()
        });
        assert!(done);
        assert_eq!(c.stdout, b"abc");
        assert_eq!(c.exit_code, Some(0));
    }

    #[test]
    fn a_budget_keeps_head_and_tail_and_counts_exactly_what_it_left_out() {
        let mut c = Collector::bounded(Some(1000));
        // 50 MB of numbered lines in uneven pieces, and a little stderr.
        let mut all = Vec::new();
        let mut n = 0u64;
        while all.len() < 50_000_000 {
            let piece: Vec<u8> = (0..997)
                .flat_map(|_| {
                    n += 1;
                    format!("line {n}\n").into_bytes()
                })
                .collect();
            c.append(Stream::Stdout, &piece);
            all.extend_from_slice(&piece);
        }
        c.append(Stream::Stderr, "warning: é\n".as_bytes());
        let r = c.finish(false, Duration::from_secs(1), Duration::from_millis(5));
        let s = r.structured_content.clone().unwrap();
        let stdout = s["stdout"].as_str().unwrap();
        assert_eq!(s["stderr"], "warning: é\n");
        let omitted = s["omitted_bytes"].as_u64().unwrap();
        let (head, rest) = stdout.split_once("[... ").unwrap();
        let tail = rest.split_once("...]\n").unwrap().1;
        // A newline is added before the marker when the head lacks one.
        let shown = format!(
            "the first {} and the last {} shown",
            head.len() - 1,
            tail.len()
        );
        assert!(stdout.contains(&shown) || head.ends_with("\n"), "{stdout}");
        let head = if stdout.contains(&shown) {
            &head[..head.len() - 1]
        } else {
            head
        };
        assert_eq!(
            omitted,
            all.len() as u64 - head.len() as u64 - tail.len() as u64
        );
        assert!(all.starts_with(head.as_bytes()) && all.ends_with(tail.as_bytes()));
        assert_eq!(head.len() + tail.len() + 12, 1000);
        assert!(stdout.contains(&format!(
            "[... {omitted} bytes of stdout omitted: {} bytes in all",
            all.len()
        )));
        assert!(stdout.contains("exec_command") && stdout.contains("read_output"));
        assert_eq!(s["max_output_bytes"], 1000);
        assert!(r
            .first_text()
            .contains(&format!("{omitted} bytes of stdout omitted")));
        assert!(r.first_text().len() < 2000);
        assert!(s.get("dropped_bytes").is_none());
    }

    #[test]
    fn a_budget_cuts_on_characters_and_leaves_small_output_alone() {
        let mut c = Collector::bounded(Some(10));
        c.append(Stream::Stdout, "ééééééééé".as_bytes()); // 18 bytes
        let s = c
            .finish(false, Duration::from_secs(1), Duration::ZERO)
            .structured_content
            .unwrap();
        let out = s["stdout"].as_str().unwrap();
        assert!(
            out.starts_with(
                "éé\n[... 10 bytes of stdout omitted: 18 bytes in all, the first 4 and the last 4"
            ),
            "{out}"
        );
        assert!(out.ends_with("...]\néé"), "{out}");
        assert_eq!(s["omitted_bytes"], 10);
        let mut c = Collector::bounded(Some(10));
        c.append(Stream::Stdout, b"12345");
        c.append(Stream::Stderr, b"abcde");
        let s = c
            .finish(false, Duration::from_secs(1), Duration::ZERO)
            .structured_content
            .unwrap();
        assert_eq!(
            (s["stdout"].as_str(), s["stderr"].as_str()),
            (Some("12345"), Some("abcde"))
        );
        assert!(s.get("omitted_bytes").is_none() && s.get("max_output_bytes").is_none());
    }

    #[test]
    fn capture_is_bounded_and_the_excess_reported() {
        let mut c = Collector::default();
        let big = vec![b'x'; MAX_CAPTURE + 10];
        c.append(Stream::Stdout, &big);
        assert_eq!(c.stdout.len(), MAX_CAPTURE);
        assert_eq!(c.dropped_bytes, 10);
        let r = c.finish(true, Duration::from_millis(100), Duration::from_millis(100));
        assert!(r.is_error);
        assert!(r.first_text().contains("10 bytes of output were dropped"));
        assert!(r
            .first_text()
            .ends_with("[timed out after 100 ms; the process group was killed]"));
    }
}
