//! MCP tasks (the `io.modelcontextprotocol/tasks` extension of the
//! 2026-07-28 specification), backed by process sessions in the store.
//!
//! A `shell` call whose client declares the extension is started as an
//! `exec_command` session (`tools::start_shell_session`: the session row is
//! written before `process/start`, the call's `timeout_ms` becomes the
//! session's deadline) and answered with a task whose id is the session's
//! `sid`, unless it ends within [`INLINE_WAIT`]: then with its result, as
//! without tasks. Nothing of a task lives in gateway memory: its row (`mcp_tasks`,
//! `crate::store::TaskRow`) and its session row are in the store, and its
//! process, output and exit status on the executor, so a task outlives a
//! gateway restart and any replica answers for it (reaching the executor
//! over the peer channel like the `/processes` routes).
//!
//! - [`get`] (`tasks/get`): `working` while the process runs (or while its
//!   executor is not connected: the process may still run); once it has
//!   closed, `shell`'s result assembled from its output log
//!   (`shell::result_from_log`: the same budget, `omitted_bytes`, exact
//!   `lost_bytes`), written to the task row by the first `tasks/get` that
//!   sees it, so later ones answer from the store even after the executor
//!   forgot the process. An executor that restarted or forgot the process
//!   first answers what `shell` answers then (an `isError` result).
//! - [`cancel`] (`tasks/cancel`): records the cancellation, kills the
//!   process group (`process/terminate`) and moves the session's deadline
//!   to now, so that `crate::ops::deadlines` kills it should the executor be
//!   unreachable at the moment. A task whose process already ended keeps its
//!   result (the specification allows it).
//! - Scope: another workspace's task is answered exactly as an unknown one.
//! - TTL: the call's timeout plus [`RETENTION_MS`]; an expired task is
//!   unknown, and deleted by the next task creation.

use execgate_protocol::connectors::{error_code as code, CallToolResult};
use execgate_protocol::exec::{method, ProcessReadParams, ProcessReadResult};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::link::{Link, LinkError};
use crate::ops::processes;
use crate::ops::state::AppState;
use crate::ops::tools::shell::{self, TaskSettings};
use crate::ops::tools::{self, RPC_TIMEOUT};
use crate::ops::Error;
use crate::store::audit_log::Via;
use crate::store::{now_ms, TaskRow};

/// The polling interval a task suggests.
pub const POLL_INTERVAL_MS: u64 = 1_000;
/// How long a task outlives its timeout: the time its client has to fetch
/// the result (the executor's default retention of an exited process).
pub const RETENTION_MS: u64 = 30 * 60 * 1000;

/// How long a `shell` call with the tasks capability waits for its process
/// before it answers with a task: a command that ends sooner is answered
/// with its result, as without tasks (the specification lets the server
/// decide per request), so that only long calls cost the client a poll.
pub const INLINE_WAIT: Duration = Duration::from_millis(1_000);

/// A task as `tasks/get` reports it.
#[derive(Debug)]
pub struct Task {
    pub task_id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub ttl_ms: u64,
    pub poll_interval_ms: u64,
    pub status_message: Option<String>,
    pub state: TaskState,
}

#[derive(Debug)]
pub enum TaskState {
    Working,
    /// What the call answers: a result (an `isError` one included), or the
    /// error `shell` would have answered.
    Done(Result<CallToolResult, Error>),
    Cancelled,
}

/// What a `shell` call with the tasks capability answers.
pub enum Started {
    Task(Task),
    /// The executor refused the start: nothing runs, so no task (the
    /// `isError` result `shell` answers then).
    Answered(CallToolResult),
}

/// The one answer for a task id that is unknown, expired, or another
/// workspace's.
pub fn task_not_found(task_id: &str) -> Error {
    Error::new(
        code::SESSION_NOT_FOUND,
        format!(
            "Failed to retrieve task: no task {task_id:?} in this workspace (unknown or expired)"
        ),
    )
}

fn task_of(row: &TaskRow) -> Task {
    Task {
        task_id: row.task_id.clone(),
        created_at_ms: row.created_at,
        updated_at_ms: row.created_at,
        ttl_ms: u64::try_from(row.expires_at - row.created_at).unwrap_or(0),
        poll_interval_ms: POLL_INTERVAL_MS,
        status_message: None,
        state: TaskState::Working,
    }
}

fn settings_of(row: &TaskRow) -> TaskSettings {
    TaskSettings {
        timeout_ms: u64::try_from(row.timeout_ms).unwrap_or(0),
        max_output: row.max_output_bytes.and_then(|n| usize::try_from(n).ok()),
    }
}

/// Starts `shell` with `arguments` on environment `env` as a task.
pub async fn start_shell(
    state: &AppState,
    caller: &Caller,
    env: &str,
    link: impl std::future::Future<Output = Result<std::sync::Arc<Link>, Error>>,
    arguments: Map<String, Value>,
) -> Result<Started, Error> {
    let started =
        tools::start_shell_session(state, caller, Via::Mcp, env, link, arguments.clone()).await?;
    let sid = match started
        .structured_content
        .as_ref()
        .and_then(|s| s.get("session_id"))
        .and_then(Value::as_str)
    {
        Some(sid) if !started.is_error => sid.to_string(),
        _ => return Ok(Started::Answered(started)),
    };
    // From here until the answer, a call dropped midway (its client closed
    // the request: a cancellation) ends the process rather than leave a task
    // nobody knows of running to its timeout.
    let mut guard = EndOnDrop {
        state: state.clone(),
        sid: Some(sid.clone()),
    };
    // Checked already by the start; cannot fail now.
    let settings = shell::task_settings(&arguments, Via::Mcp)?;
    let created_at = now_ms();
    let ttl = settings.timeout_ms.saturating_add(RETENTION_MS);
    let row = TaskRow {
        task_id: sid.clone(),
        workspace: caller.workspace.clone(),
        created_at,
        expires_at: created_at.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
        timeout_ms: i64::try_from(settings.timeout_ms).unwrap_or(i64::MAX),
        max_output_bytes: settings.max_output.map(|n| n as i64),
        cancelled_at: None,
        finished_at: None,
        result: None,
    };
    let store = state.store();
    // Not recorded: no task reaches the process, which the guard ends.
    store.insert_task(&row).await?;
    // A command that ends at once is answered as without tasks: with its
    // result, in this one request.
    if ended_soon(state, &row).await {
        if let Ok(Task {
            state: TaskState::Done(Ok(result)),
            ..
        }) = get(state, caller, &sid).await
        {
            guard.disarm();
            return Ok(Started::Answered(result));
        }
    }
    guard.disarm();
    let mut task = task_of(&row);
    task.status_message = Some("the command is running; poll tasks/get for its result".into());
    Ok(Started::Task(task))
}

/// Ends the process of a task whose creation did not complete (see
/// [`start_shell`]): the task (if recorded) is cancelled and the session's
/// deadline moved to now, which `crate::ops::deadlines` enforces, whichever
/// replica holds the executor.
struct EndOnDrop {
    state: AppState,
    /// None once disarmed.
    sid: Option<String>,
}

impl EndOnDrop {
    fn disarm(&mut self) {
        self.sid = None;
    }
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        let Some(sid) = self.sid.take() else {
            return;
        };
        let state = self.state.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tracing::debug!(%sid, "task creation dropped: ending its process");
                let store = state.store();
                let now = now_ms();
                if let Err(e) = store.cancel_task(&sid, now).await {
                    tracing::warn!(%sid, "cannot cancel a task whose creation was dropped: {e}");
                }
                if let Err(e) = store.set_deadline(&sid, now).await {
                    tracing::warn!(%sid, "cannot end the process of a dropped task: {e}");
                }
            });
        }
    }
}

/// Whether the process of a new task closes within [`INLINE_WAIT`].
async fn ended_soon(state: &AppState, row: &TaskRow) -> bool {
    let Ok(Some(session)) = state.store().session(&row.task_id).await else {
        return false;
    };
    let Some(link) = state.link(&session.exe_id).await else {
        return false;
    };
    let until = tokio::time::Instant::now() + INLINE_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match read_state(&link, &session.process_id).await {
            Ok(r) if r.closed => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return false;
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// `tasks/get`.
pub async fn get(state: &AppState, caller: &Caller, task_id: &str) -> Result<Task, Error> {
    let store = state.store();
    let row = store
        .task(&caller.workspace, task_id, now_ms())
        .await?
        .ok_or_else(|| task_not_found(task_id))?;
    if let Some(task) = ended(&row) {
        return Ok(task);
    }
    let mut task = task_of(&row);
    let mut s = match processes::resolve(state, caller, task_id, Via::Mcp, "task_get").await {
        Ok(s) => s,
        Err(e) if e.code == code::EXECUTOR_UNAVAILABLE => {
            if executor_removed(state, task_id).await? {
                task.state = TaskState::Done(Err(Error::new(
                    code::SESSION_EXPIRED,
                    format!(
                        "the environment task {task_id:?} ran in was removed: its process is gone"
                    ),
                )));
                return Ok(task);
            }
            // The process may well run on: the task works on until the
            // executor is back (or the TTL ends it).
            task.status_message = Some(e.message);
            return Ok(task);
        }
        Err(e) if e.code == code::SESSION_NOT_FOUND => return Err(task_not_found(task_id)),
        Err(e) => return Err(e),
    };
    if s.restarted {
        let e = s.require_same_executor().unwrap_err();
        s.audit.fail(e.code);
        task.state = TaskState::Done(Err(e));
        return Ok(task);
    }
    let r = match read_state(&s.link, &s.row.process_id).await {
        Ok(r) => r,
        Err(LinkError::Disconnected { .. }) => {
            s.audit.succeed();
            task.status_message = Some(format!(
                "executor '{}' disconnected; the task goes on when it is back",
                s.link.name
            ));
            return Ok(task);
        }
        Err(e) => {
            let e = processes::map_rpc(&s, e);
            s.audit.fail(e.code);
            if e.code == code::SESSION_EXPIRED {
                task.state = TaskState::Done(Err(e));
                return Ok(task);
            }
            return Err(e);
        }
    };
    if !r.closed {
        s.audit.succeed();
        let secs = (now_ms() - row.created_at).max(0) / 1000;
        task.status_message = Some(if r.exited {
            format!("the command exited after about {secs} s; its output is being collected")
        } else {
            format!("the command has been running for {secs} s")
        });
        return Ok(task);
    }
    let now = now_ms();
    // From the session's row, written just before process/start.
    let elapsed = Duration::from_millis(u64::try_from(now - s.row.created_at).unwrap_or(0));
    let past_deadline = s.row.deadline_at.is_some_and(|at| at <= now);
    let result = shell::result_from_log(
        &s.link,
        &s.row.process_id,
        settings_of(&row),
        elapsed,
        past_deadline,
    )
    .await
    .map_err(|e| processes::map_rpc(&s, e));
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            s.audit.fail(e.code);
            if e.code == code::SESSION_EXPIRED {
                task.state = TaskState::Done(Err(e));
                return Ok(task);
            }
            return Err(e);
        }
    };
    s.audit.succeed();
    let json = serde_json::to_string(&result).expect("a tool result serializes");
    if store.finish_task(task_id, now, &json).await? {
        if let Err(e) = store.mark_sessions_ended(&[task_id.to_string()]).await {
            tracing::warn!(%task_id, "cannot mark a finished task's session ended: {e}");
        }
        task.updated_at_ms = now;
        task.state = TaskState::Done(Ok(result));
        return Ok(task);
    }
    // Another poll (or a cancellation) got there first: its answer stands.
    let row = store
        .task(&caller.workspace, task_id, now_ms())
        .await?
        .ok_or_else(|| task_not_found(task_id))?;
    Ok(ended(&row).unwrap_or(task))
}

/// Whether the executor of session `sid` was removed from its workspace.
async fn executor_removed(state: &AppState, sid: &str) -> Result<bool, Error> {
    let store = state.store();
    let Some(row) = store.session(sid).await? else {
        return Ok(false);
    };
    Ok(store.executor(&row.exe_id).await?.is_none())
}

/// The task of a row that records its end, if it does.
fn ended(row: &TaskRow) -> Option<Task> {
    let mut task = task_of(row);
    if let Some(at) = row.cancelled_at {
        task.updated_at_ms = at;
        task.status_message =
            Some("cancelled by tasks/cancel: the process group was killed".into());
        task.state = TaskState::Cancelled;
        return Some(task);
    }
    let result = row.result.as_deref()?;
    task.updated_at_ms = row.finished_at.unwrap_or(row.created_at);
    task.state = TaskState::Done(serde_json::from_str(result).map_err(|e| {
        Error::new(
            code::INTERNAL,
            format!(
                "the stored result of task {:?} does not parse: {e}",
                row.task_id
            ),
        )
    }));
    Some(task)
}

/// The process's state: a read past the end returns no chunks.
async fn read_state(link: &Link, process_id: &str) -> Result<ProcessReadResult, LinkError> {
    link.request(
        method::PROCESS_READ,
        &ProcessReadParams {
            process_id: process_id.to_string(),
            after_seq: Some(u64::MAX / 2),
            max_bytes: Some(1),
            wait_ms: None,
        },
        RPC_TIMEOUT,
    )
    .await
}

/// `tasks/cancel`: an acknowledgement once the cancellation is recorded
/// (see the module docs).
pub async fn cancel(state: &AppState, caller: &Caller, task_id: &str) -> Result<(), Error> {
    let store = state.store();
    let row = store
        .task(&caller.workspace, task_id, now_ms())
        .await?
        .ok_or_else(|| task_not_found(task_id))?;
    if row.cancelled_at.is_some() || row.result.is_some() {
        return Ok(());
    }
    let session = match processes::resolve(state, caller, task_id, Via::Mcp, "task_cancel").await {
        Ok(s) => Some(s),
        // Recorded below; the deadline kills the process once the
        // executor is reachable again.
        Err(e) if e.code == code::EXECUTOR_UNAVAILABLE => None,
        Err(e) if e.code == code::SESSION_NOT_FOUND => return Err(task_not_found(task_id)),
        Err(e) => return Err(e),
    };
    if let Some(s) = &session {
        if !s.restarted {
            if let Ok(r) = read_state(&s.link, &s.row.process_id).await {
                if r.closed {
                    // Finished before the cancellation: its result stands.
                    return Ok(());
                }
            }
        }
    }
    let now = now_ms();
    if !store.cancel_task(task_id, now).await? {
        return Ok(());
    }
    if let Err(e) = store.set_deadline(task_id, now).await {
        tracing::warn!(%task_id, "cannot move a cancelled task's deadline: {e}");
    }
    match session {
        Some(mut s) if !s.restarted => {
            if let Err(e) = processes::terminate(&mut s).await {
                tracing::debug!(%task_id, "tasks/cancel: terminate failed ({e}); the deadline will");
            }
        }
        Some(mut s) => s.audit.succeed(),
        None => {}
    }
    Ok(())
}

/// `tasks/update`: no tool asks for input, so there is nothing to update;
/// an acknowledgement for a task of this workspace.
pub async fn update(state: &AppState, caller: &Caller, task_id: &str) -> Result<(), Error> {
    state
        .store()
        .task(&caller.workspace, task_id, now_ms())
        .await?
        .map(|_| ())
        .ok_or_else(|| task_not_found(task_id))
}
