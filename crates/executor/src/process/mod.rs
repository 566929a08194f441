//! The process table of one session, and everything `process/*` does to a
//! process once it is started.
//!
//! A process is entered in the table when `process/start` spawns it, stays
//! there while it runs, and is removed `exited_retention` after it finished
//! (exited *and* its output reached EOF), or when its session is destroyed.
//! Forgetting a process drops its output log, and with it its spill files.
//!
//! Background work per process, all of which ends by itself once the child's
//! process group is dead:
//! - one task per output pipe (or one thread + task for a pty) that reads
//!   output in up to 64 KiB pieces into the [output log](crate::output);
//! - one task that waits for the exit status.
//!
//! Those tasks hold only [`Shared`], never the [`Process`] itself, so the table
//! alone decides when a process is dropped. Dropping a process kills its
//! process group if it may still be alive; that is what guarantees that no
//! child outlives its session, or the executor's orderly stop. An executor
//! that dies without running any code (SIGKILL) is covered by the
//! [`reaper`], which holds every group from spawn to finish.
//!
//! Descriptors: stdin (a pipe) is closed when the process exits, since no
//! write can be accepted after; the output pipes close at their EOF; a pty's
//! master and writer when the process finishes. A finished process holds
//! none for its retention, only its output log.
//!
//! Whose group is it? Once the leader has been reaped *and* every output
//! stream reached EOF, the group id may be reused by an unrelated process, so
//! from then on the group is never signalled again. A background job that
//! redirected its output away (`nohup server >log 2>&1 &`) therefore survives
//! its shell; one that still holds our pipe does not.

mod env;
pub(crate) mod reaper;
mod signal;
mod spawn;

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::exec::{
    method, ClosedNotification, Empty, ExitedNotification, OutputNotification, ProcessChunk,
    ProcessReadParams, ProcessReadResult, ProcessResizeParams, ProcessSetPushParams,
    ProcessSignalParams, ProcessStartParams, ProcessStartResult, ProcessTerminateResult,
    ProcessWriteParams, ProcessWriteResult, Stream, WriteStatus,
};
use execgate_protocol::jsonrpc::RpcError;
use portable_pty::{MasterPty, PtySize};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};

use crate::notify::Notifier;
use crate::output::{OutputLog, SharedLog};
use crate::paths::Last;
use crate::policy::{Policy, ProcessPermit};
use crate::spill::{Spill, SpillConfig};

/// Largest single read from a child's output; each read becomes one chunk.
const READ_CHUNK: usize = 64 * 1024;
/// Longest `process/read` long-poll; longer `waitMs` values are capped.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Chunks a pty reader thread may queue before it waits for the log.
const PTY_QUEUE: usize = 8;
const DEFAULT_PTY_SIZE: PtySize = PtySize {
    rows: 24,
    cols: 80,
    pixel_width: 0,
    pixel_height: 0,
};

/// The processes of one session, by the caller-chosen process id.
pub(crate) struct ProcessTable {
    slots: Mutex<HashMap<String, Slot>>,
    notifier: Arc<Notifier>,
    retained_bytes: usize,
    /// Where output beyond `retained_bytes` goes; `None`: it is lost.
    spill: Option<Arc<SpillConfig>>,
}

enum Slot {
    /// The id is taken while the child is being spawned, so that two
    /// concurrent starts with one id cannot both succeed.
    Starting,
    Running(Arc<Process>),
}

/// One started child.
struct Process {
    /// The child's pid, which is also its process group id.
    pgid: i32,
    shared: Arc<Shared>,
    /// Whether it runs under a terminal (whose master may be closed already).
    tty: bool,
}

/// The output side of a child, which its background tasks read to EOF.
enum Outputs {
    Pipes(ChildStdout, ChildStderr),
    Pty(Box<dyn std::io::Read + Send>),
}

enum Stdin {
    Pipe(ChildStdin),
    /// The pty writer is blocking: writes go through `spawn_blocking`, which
    /// needs a handle it can move, hence the `Arc`.
    Pty(Arc<Mutex<Box<dyn Write + Send>>>),
}

/// What a process's background tasks share with the table.
struct Shared {
    id: String,
    /// The child's process group (see [`Process::pgid`]).
    pgid: i32,
    log: SharedLog,
    notifier: Arc<Notifier>,
    /// Whether output goes out as `process/output` notifications ([ext]
    /// `pushOutput`, `process/setPush`; on unless the gateway said
    /// otherwise). Exit and close are pushed regardless.
    push_output: AtomicBool,
    /// When the process finished (exited and output closed), for retention.
    finished_at: Mutex<Option<Instant>>,
    /// `None` once closed, or from the start without `pipeStdin`. The async
    /// mutex serialises writes: each is fully written before the next starts.
    /// A pipe is closed when the process exits, a pty writer when it
    /// finishes (see [`Shared::release_io`]).
    stdin: tokio::sync::Mutex<Option<Stdin>>,
    /// The pty's master side, kept for `process/resize` until the process
    /// finishes.
    master: Mutex<Option<Box<dyn MasterPty + Send>>>,
}

/// Holds back a new process's notifications until the `process/start`
/// response has been queued, so the gateway never hears of a process before
/// it learns that the start succeeded. Dropping the gate opens it.
pub(crate) struct StartGate {
    _opens_when_dropped: watch::Sender<()>,
}

#[derive(Clone)]
struct GateWait(watch::Receiver<()>);

impl GateWait {
    async fn opened(mut self) {
        // The sender never sends: this resolves when it is dropped.
        let _ = self.0.changed().await;
    }
}

fn start_gate() -> (StartGate, GateWait) {
    let (tx, rx) = watch::channel(());
    (
        StartGate {
            _opens_when_dropped: tx,
        },
        GateWait(rx),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProcessTable {
    pub fn new(
        notifier: Arc<Notifier>,
        retained_bytes: usize,
        spill: Option<Arc<SpillConfig>>,
    ) -> Self {
        ProcessTable {
            slots: Mutex::new(HashMap::new()),
            notifier,
            retained_bytes,
            spill,
        }
    }

    /// `process/start`. The returned gate must be dropped once the response
    /// is queued.
    pub fn start(
        &self,
        params: ProcessStartParams,
        policy: &Policy,
    ) -> Result<(ProcessStartResult, StartGate), RpcError> {
        if params.process_id.is_empty() {
            return Err(RpcError::invalid_params("processId must not be empty"));
        }
        let Some(program) = params.argv.first().cloned() else {
            return Err(RpcError::invalid_params("argv must not be empty"));
        };
        let target = policy.paths.resolve(&params.cwd, Last::Follow)?;
        let cwd = target.path.clone();
        // With a root, the directory is opened beneath it now, and the child
        // changes into exactly the directory opened (its /proc/self/fd
        // link, which the kernel resolves to it), not into whatever the
        // path names by the time the child starts. Held until the spawn.
        let cwd_dir = match &policy.paths.root {
            None => None,
            Some(_) => Some(
                target
                    .open(libc::O_PATH | libc::O_DIRECTORY, 0)
                    .map_err(|e| cwd_error(&cwd, e))?,
            ),
        };
        if cwd_dir.is_none() {
            match std::fs::metadata(&cwd) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(cwd_error(&cwd, io::Error::from_raw_os_error(libc::ENOTDIR))),
                Err(err) => return Err(cwd_error(&cwd, err)),
            }
        }
        policy.check_start(&params, &cwd)?;
        let confinement = policy
            .sandboxes
            .for_start(params.sandbox.as_ref(), &policy.paths.workdir)?;
        let sandbox_type = if confinement.is_some() {
            "landlock"
        } else {
            "none"
        };
        let env = env::child_env(&params.env, params.env_policy.as_ref(), std::env::vars_os())
            .map_err(RpcError::invalid_params)?;
        let pty = if params.tty {
            Some(pty_size(params.cols, params.rows)?)
        } else {
            None
        };

        let id = params.process_id;
        // Held until the child has exited (by its waiting task).
        let permit = policy.admit_process()?;
        {
            let mut slots = lock(&self.slots);
            if slots.contains_key(&id) {
                return Err(RpcError::invalid_request(format!(
                    "process {id} already exists in this session"
                )));
            }
            slots.insert(id.clone(), Slot::Starting);
        }
        let push_output = params.push_output.unwrap_or(true);
        let launched = self.launch(
            &id,
            push_output,
            spawn::SpawnRequest {
                argv: params.argv,
                arg0: params.arg0,
                cwd: cwd_dir.as_ref().map_or(cwd, crate::beneath::fd_path),
                env,
                pty,
                pipe_stdin: params.pipe_stdin.unwrap_or(false),
                confinement,
            },
            permit,
        );
        let mut slots = lock(&self.slots);
        match launched {
            Ok((process, gate)) => {
                slots.insert(id.clone(), Slot::Running(process));
                Ok((
                    ProcessStartResult {
                        process_id: id,
                        sandbox_type: sandbox_type.into(),
                    },
                    gate,
                ))
            }
            Err(err) => {
                slots.remove(&id);
                Err(RpcError::internal(format!(
                    "failed to start {program}: {err}"
                )))
            }
        }
    }

    /// Spawns the child and its background tasks.
    fn launch(
        &self,
        id: &str,
        push_output: bool,
        request: spawn::SpawnRequest,
        permit: ProcessPermit,
    ) -> io::Result<(Arc<Process>, StartGate)> {
        let started = std::time::Instant::now();
        let _span = crate::trace::on()
            .then(|| tracing::info_span!("process.spawn", pty = request.pty.is_some()).entered());
        let spawned = spawn::spawn(request)?;
        if let Some(m) = crate::metrics::get() {
            m.spawned(started.elapsed());
        }
        let pgid = spawned.pgid;
        // From here on a SIGKILLed executor takes the group with it.
        reaper::register(pgid);
        // What the background tasks read, and what the process keeps.
        let (outputs, stdin, master) = match spawned.io {
            spawn::ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (Outputs::Pipes(stdout, stderr), stdin.map(Stdin::Pipe), None),
            spawn::ChildIo::Pty {
                master,
                reader,
                writer,
            } => (
                Outputs::Pty(reader),
                Some(Stdin::Pty(Arc::new(Mutex::new(writer)))),
                Some(master),
            ),
        };
        let tty = master.is_some();
        let open_streams = if tty { 1 } else { 2 };
        let shared = Arc::new(Shared {
            id: id.to_owned(),
            pgid,
            log: SharedLog::new(match &self.spill {
                Some(config) => OutputLog::new(self.retained_bytes, open_streams)
                    .with_spill(Spill::new(config.clone())),
                None => OutputLog::new(self.retained_bytes, open_streams),
            }),
            notifier: self.notifier.clone(),
            push_output: AtomicBool::new(push_output),
            finished_at: Mutex::new(None),
            stdin: tokio::sync::Mutex::new(stdin),
            master: Mutex::new(master),
        });
        let (gate, gate_wait) = start_gate();
        match outputs {
            Outputs::Pipes(stdout, stderr) => {
                tokio::spawn(pump_pipe(
                    stdout,
                    Stream::Stdout,
                    shared.clone(),
                    gate_wait.clone(),
                ));
                tokio::spawn(pump_pipe(
                    stderr,
                    Stream::Stderr,
                    shared.clone(),
                    gate_wait.clone(),
                ));
            }
            Outputs::Pty(reader) => {
                let (tx, rx) = mpsc::channel(PTY_QUEUE);
                // A plain thread rather than `spawn_blocking`: it lives as long
                // as the terminal, and must not hold up runtime shutdown.
                let thread = std::thread::Builder::new()
                    .name(format!("pty-reader-{pgid}"))
                    .spawn(move || read_pty(reader, tx));
                if let Err(err) = thread {
                    // Returning drops the child, whose kill_on_drop kills it;
                    // kill the rest of its group too.
                    let _ = signal::kill_group(pgid, libc::SIGKILL);
                    reaper::unregister(pgid);
                    return Err(err);
                }
                tokio::spawn(pump_pty(rx, shared.clone(), gate_wait.clone()));
            }
        }
        tokio::spawn(wait_for_exit(
            spawned.child,
            shared.clone(),
            gate_wait,
            permit,
        ));
        let process = Arc::new(Process { pgid, shared, tty });
        Ok((process, gate))
    }

    fn get(&self, id: &str) -> Result<Arc<Process>, RpcError> {
        match lock(&self.slots).get(id) {
            Some(Slot::Running(process)) => Ok(process.clone()),
            Some(Slot::Starting) => Err(RpcError::invalid_request(format!(
                "process {id} is still starting"
            ))),
            None => Err(RpcError::invalid_request(format!("unknown process {id}"))),
        }
    }

    /// `process/read`.
    pub async fn read(&self, params: ProcessReadParams) -> Result<ProcessReadResult, RpcError> {
        let shared = self.get(&params.process_id)?.shared.clone();
        let after_seq = params.after_seq.unwrap_or(0);
        let max_bytes = params
            .max_bytes
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let wait = Duration::from_millis(params.wait_ms.unwrap_or(0)).min(MAX_WAIT);
        let slice = shared
            .log
            .read(after_seq, max_bytes, wait)
            .await
            .map_err(|e| {
                RpcError::internal(format!(
                    "reading the spilled output of process {}: {e}",
                    params.process_id
                ))
            })?;
        Ok(ProcessReadResult {
            chunks: slice
                .chunks
                .iter()
                .map(|chunk| ProcessChunk {
                    seq: chunk.seq,
                    stream: chunk.stream,
                    chunk: Blob::Raw(chunk.data.clone()),
                })
                .collect(),
            next_seq: slice.next_seq,
            exited: slice.exit_code.is_some(),
            exit_code: slice.exit_code,
            closed: slice.closed,
            failure: None,
            sandbox_denied: false,
            lost_bytes: Some(slice.lost_bytes),
        })
    }

    /// `process/write`. Answers once the bytes are in the pipe (or pty).
    pub async fn write(&self, params: ProcessWriteParams) -> Result<ProcessWriteResult, RpcError> {
        let data = params
            .chunk
            .to_bytes()
            .map_err(|e| RpcError::invalid_params(format!("chunk is not valid base64: {e}")))?;
        let process = match lock(&self.slots).get(&params.process_id) {
            Some(Slot::Running(process)) => process.clone(),
            Some(Slot::Starting) => return Ok(status(WriteStatus::Starting)),
            None => return Ok(status(WriteStatus::UnknownProcess)),
        };
        process.write_stdin(data).await.map(status)
    }

    /// `process/closeStdin` [ext]: EOF on the child's stdin.
    pub async fn close_stdin(&self, id: &str) -> Result<Empty, RpcError> {
        let process = self.get(id)?;
        // Waits for a write in progress, then drops the handle. For a pty,
        // portable-pty's writer sends a newline and the terminal's EOF
        // character (^D) when dropped.
        process.shared.stdin.lock().await.take();
        Ok(Empty {})
    }

    /// `process/signal`.
    pub fn signal(&self, params: &ProcessSignalParams) -> Result<Empty, RpcError> {
        let signal = signal::from_name(&params.signal).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "unknown signal {:?}: expected interrupt, terminate, kill or hangup",
                params.signal
            ))
        })?;
        let process = self.get(&params.process_id)?;
        process.signal_group(signal).map_err(|e| {
            RpcError::internal(format!("signalling process {}: {e}", params.process_id))
        })?;
        Ok(Empty {})
    }

    /// `process/terminate`: SIGKILL to the whole group, without waiting; the
    /// exited/closed notifications follow.
    pub fn terminate(&self, id: &str) -> Result<ProcessTerminateResult, RpcError> {
        let process = self.get(id)?;
        let running = !process.shared.exited();
        process
            .signal_group(libc::SIGKILL)
            .map_err(|e| RpcError::internal(format!("killing process {id}: {e}")))?;
        Ok(ProcessTerminateResult { running })
    }

    /// `process/setPush` [ext]. Unknown ids are ignored: it is a
    /// notification, and the gateway may name a process that is not
    /// started yet or already forgotten.
    pub fn set_push(&self, params: &ProcessSetPushParams) {
        if let Ok(process) = self.get(&params.process_id) {
            let shared = &process.shared;
            // Under the log's lock, which `push_output` holds while it looks:
            // each chunk is either logged before the change (and a later read
            // finds it) or pushed according to it.
            shared
                .log
                .inspect(|_| shared.push_output.store(params.output, Ordering::Relaxed));
        }
    }

    /// `process/resize` [ext].
    pub fn resize(&self, params: &ProcessResizeParams) -> Result<Empty, RpcError> {
        let size = pty_size(Some(params.cols), Some(params.rows))?;
        let process = self.get(&params.process_id)?;
        if !process.tty {
            return Err(RpcError::invalid_params(format!(
                "process {} has no terminal to resize",
                params.process_id
            )));
        }
        // `None` once the process finished: its terminal is closed, and
        // there is nothing left to resize.
        if let Some(master) = lock(&process.shared.master).as_ref() {
            master
                .resize(size)
                .map_err(|e| RpcError::internal(format!("resizing the terminal: {e}")))?;
        }
        Ok(Empty {})
    }

    /// Forgets processes that finished more than `retention` before `now`.
    pub fn remove_finished(&self, now: Instant, retention: Duration) {
        let removed: Vec<Slot> = {
            let mut slots = lock(&self.slots);
            let expired: Vec<String> = slots
                .iter()
                .filter_map(|(id, slot)| match slot {
                    Slot::Running(p) if p.shared.finished_before(now, retention) => {
                        Some(id.clone())
                    }
                    _ => None,
                })
                .collect();
            expired.iter().filter_map(|id| slots.remove(id)).collect()
        };
        if !removed.is_empty() {
            tracing::debug!(count = removed.len(), "removed finished processes");
        }
        // Dropped outside the lock.
        drop(removed);
    }

    /// Kills every process group that may still be alive and empties the
    /// table. Used when the session is destroyed and when the executor stops.
    pub fn kill_all(&self) {
        let slots = std::mem::take(&mut *lock(&self.slots));
        for slot in slots.into_values() {
            if let Slot::Running(process) = slot {
                process.kill_if_owned();
            }
        }
    }

    /// The process group of a process, for tests that check it is gone.
    #[cfg(test)]
    pub fn pgid_of(&self, id: &str) -> Option<i32> {
        self.get(id).ok().map(|p| p.pgid)
    }

    /// Whether a process still holds a stdin handle or a pty master.
    #[cfg(test)]
    pub fn holds_io(&self, id: &str) -> bool {
        let Ok(process) = self.get(id) else {
            return false;
        };
        let stdin = process
            .shared
            .stdin
            .try_lock()
            .map_or(true, |stdin| stdin.is_some());
        stdin || lock(&process.shared.master).is_some()
    }

    #[cfg(test)]
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.slots).contains_key(id)
    }
}

fn status(status: WriteStatus) -> ProcessWriteResult {
    ProcessWriteResult { status }
}

/// The error for a cwd that cannot be used: -32030 when it led out of the
/// root, else invalid params naming it.
fn cwd_error(cwd: &std::path::Path, err: io::Error) -> RpcError {
    if err
        .get_ref()
        .is_some_and(|e| e.is::<crate::beneath::Escape>())
    {
        return RpcError::policy_denied(format!("cwd {}: {err}", cwd.display()));
    }
    if err.raw_os_error() == Some(libc::ENOTDIR) {
        RpcError::invalid_params(format!("cwd is not a directory: {}", cwd.display()))
    } else if err.kind() == io::ErrorKind::NotFound {
        RpcError::invalid_params(format!("cwd does not exist: {}", cwd.display()))
    } else {
        RpcError::invalid_params(format!("cwd {}: {err}", cwd.display()))
    }
}

fn pty_size(cols: Option<u16>, rows: Option<u16>) -> Result<PtySize, RpcError> {
    let cols = cols.unwrap_or(DEFAULT_PTY_SIZE.cols);
    let rows = rows.unwrap_or(DEFAULT_PTY_SIZE.rows);
    if cols == 0 || rows == 0 {
        return Err(RpcError::invalid_params(
            "terminal cols and rows must be at least 1",
        ));
    }
    Ok(PtySize {
        cols,
        rows,
        ..DEFAULT_PTY_SIZE
    })
}

impl Process {
    async fn write_stdin(&self, data: Bytes) -> Result<WriteStatus, RpcError> {
        let mut stdin = self.shared.stdin.lock().await;
        if self.shared.exited() {
            return Ok(WriteStatus::StdinClosed);
        }
        let Some(handle) = stdin.as_mut() else {
            return Ok(WriteStatus::StdinClosed);
        };
        let written = match handle {
            Stdin::Pipe(pipe) => match pipe.write_all(&data).await {
                Ok(()) => pipe.flush().await,
                Err(err) => Err(err),
            },
            Stdin::Pty(writer) => {
                let writer = writer.clone();
                tokio::task::spawn_blocking(move || {
                    let mut writer = lock(&writer);
                    writer.write_all(&data)?;
                    writer.flush()
                })
                .await
                .unwrap_or_else(|join| Err(io::Error::other(join.to_string())))
            }
        };
        match written {
            Ok(()) => Ok(WriteStatus::Accepted),
            // The child closed its stdin (or died): no later write can succeed.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                *stdin = None;
                Ok(WriteStatus::StdinClosed)
            }
            Err(err) => Err(RpcError::internal(format!(
                "writing to the stdin of process {}: {err}",
                self.shared.id
            ))),
        }
    }

    /// Signals the process group, unless it can no longer be ours (see the
    /// module docs). A group that is already gone is not an error.
    fn signal_group(&self, signal: libc::c_int) -> io::Result<()> {
        if !self.shared.may_own_group() {
            return Ok(());
        }
        match signal::kill_group(self.pgid, signal) {
            Err(err) if signal::is_gone(&err) => Ok(()),
            other => other,
        }
    }

    fn kill_if_owned(&self) {
        if let Err(err) = self.signal_group(libc::SIGKILL) {
            tracing::warn!(process = %self.shared.id, pgid = self.pgid, "cannot kill process group: {err}");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_if_owned();
    }
}

impl Shared {
    fn exited(&self) -> bool {
        self.log.inspect(|log| log.exit_code().is_some())
    }

    /// False once the leader was reaped and all output reached EOF.
    fn may_own_group(&self) -> bool {
        self.log
            .inspect(|log| !(log.exit_code().is_some() && log.is_closed()))
    }

    fn finished_before(&self, now: Instant, retention: Duration) -> bool {
        lock(&self.finished_at).is_some_and(|at| now.saturating_duration_since(at) >= retention)
    }

    fn push_output(&self, stream: Stream, data: Bytes) {
        self.log.update(|log| {
            let seq = log.push_chunk(stream, data.clone());
            if !self.push_output.load(Ordering::Relaxed) {
                return;
            }
            self.notifier.send(
                method::PROCESS_OUTPUT,
                &OutputNotification {
                    process_id: self.id.clone(),
                    seq,
                    stream,
                    chunk: Blob::Raw(data),
                },
            );
        });
    }

    /// One output stream reached EOF. True when that finished the process.
    fn finish_stream(&self) -> bool {
        self.log.update(|log| {
            log.finish_stream();
            self.close_if_done(log)
        })
    }

    /// True when the exit finished the process (its output was closed).
    fn record_exit(&self, exit_code: i32) -> bool {
        self.log.update(|log| {
            if let Some(seq) = log.record_exit(exit_code) {
                self.notify(
                    method::PROCESS_EXITED,
                    &ExitedNotification {
                        process_id: self.id.clone(),
                        seq,
                        exit_code,
                    },
                );
            }
            self.close_if_done(log)
        })
    }

    /// True when this call finished the process.
    fn close_if_done(&self, log: &mut OutputLog) -> bool {
        let Some(seq) = log.close_if_done() else {
            return false;
        };
        *lock(&self.finished_at) = Some(Instant::now());
        self.notify(
            method::PROCESS_CLOSED,
            &ClosedNotification {
                process_id: self.id.clone(),
                seq,
            },
        );
        true
    }

    /// Closes a stdin pipe once the process exited: no write can be
    /// accepted any more ([`Process::write_stdin`] answers `StdinClosed`),
    /// and keeping the pipe for the whole retention held one descriptor
    /// per finished process (the 240th `exec_command` failed under
    /// `ulimit -n 256`). A pty's writer stays until the process finishes:
    /// dropping it sends the terminal's EOF, which a background job still
    /// on the terminal would read.
    async fn close_stdin_pipe(&self) {
        let mut stdin = self.stdin.lock().await;
        if matches!(*stdin, Some(Stdin::Pipe(_))) {
            *stdin = None;
        }
    }

    /// Lets go of every descriptor once the process finished (exited, output
    /// at EOF): the stdin handle and the pty master. The output log keeps
    /// everything `process/read` may still ask for. From now on the group is
    /// never signalled again (see the module docs), so the reaper forgets it.
    async fn release_io(&self) {
        reaper::unregister(self.pgid);
        let stdin = self.stdin.lock().await.take();
        let master = lock(&self.master).take();
        if stdin.is_some() || master.is_some() {
            // Dropping a pty writer writes to the terminal: off the runtime.
            tokio::task::spawn_blocking(move || drop((stdin, master)));
        }
    }

    /// Called under the log's lock, so notifications leave in seq order.
    fn notify(&self, method: &str, params: &impl Serialize) {
        self.notifier.send(method, params);
    }
}

/// Reads one output pipe to EOF into the log.
async fn pump_pipe(
    mut pipe: impl AsyncRead + Unpin,
    stream: Stream,
    shared: Arc<Shared>,
    gate: GateWait,
) {
    gate.opened().await;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => shared.push_output(stream, Bytes::copy_from_slice(&buf[..n])),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(process = %shared.id, "reading {}: {err}", stream.as_str());
                break;
            }
        }
    }
    drop(pipe);
    if shared.finish_stream() {
        shared.release_io().await;
    }
}

/// Moves what the pty reader thread read into the log.
async fn pump_pty(mut chunks: mpsc::Receiver<Bytes>, shared: Arc<Shared>, gate: GateWait) {
    gate.opened().await;
    while let Some(chunk) = chunks.recv().await {
        shared.push_output(Stream::Pty, chunk);
    }
    if shared.finish_stream() {
        shared.release_io().await;
    }
}

/// The pty reader thread: blocking reads of the master until EOF (portable-pty
/// turns the EIO of a terminal with no slave left into EOF).
fn read_pty(mut reader: Box<dyn std::io::Read + Send>, chunks: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if chunks
                    .blocking_send(Bytes::copy_from_slice(&buf[..n]))
                    .is_err()
                {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::debug!("reading a pseudo-terminal: {err}");
                break;
            }
        }
    }
}

async fn wait_for_exit(
    mut child: Child,
    shared: Arc<Shared>,
    gate: GateWait,
    permit: ProcessPermit,
) {
    let exit_code = match child.wait().await {
        Ok(status) => exit_code(status),
        Err(err) => {
            tracing::warn!(process = %shared.id, "cannot wait for the child: {err}");
            -1
        }
    };
    // The process no longer counts against --max-processes.
    drop(permit);
    gate.opened().await;
    let finished = shared.record_exit(exit_code);
    shared.close_stdin_pipe().await;
    if finished {
        shared.release_io().await;
    }
}

/// The exit code, or 128 + the signal number for a child killed by a signal
/// (what a shell reports, so SIGKILL gives 137).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exit_codes_of_normal_and_killed_children() {
        let status = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(exit_code(status), 3);
        let status = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(exit_code(status), 137);
        let status = Command::new("sh")
            .args(["-c", "kill -TERM $$"])
            .status()
            .unwrap();
        assert_eq!(exit_code(status), 143);
    }

    #[test]
    fn pty_size_defaults_and_validation() {
        let size = pty_size(None, None).unwrap();
        assert_eq!((size.cols, size.rows), (80, 24));
        let size = pty_size(Some(120), Some(40)).unwrap();
        assert_eq!((size.cols, size.rows), (120, 40));
        assert!(pty_size(Some(0), None).is_err());
        assert!(pty_size(None, Some(0)).is_err());
    }
}
