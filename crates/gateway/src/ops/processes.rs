//! Process sessions started by `exec_command`: stdin, output, terminate,
//! signal, resize and the workspace's listing. (The SSE stream is in
//! `crate::http::stream`, deadlines in `crate::ops::deadlines`.)
//!
//! The gateway holds only the index row; every operation goes to the
//! executor that runs the process. Output is read with `process/read` from
//! the caller's cursor, so two readers never disturb each other, a reader can
//! re-read, and a gateway restart loses nothing.
//!
//! A row remembers the executor session its process was started in. When
//! the connected executor reports another session id, the executor restarted
//! (or dropped the session) and the process is gone: `/output` then answers
//! 200 with `session_alive:false` and `error.code = executor_restarted`, and
//! the other operations answer 410 with that code.
//!
//! Every operation on a session is audited: [`resolve`] opens the record
//! (before anything runs, so fail-closed mode can refuse), the operation
//! fills in its arguments, bytes and exit code and sets the outcome, and
//! the record is written when the [`Session`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::{
    error_code as code, ErrorBody, OutputChunk, OutputResponse, ProcessInfo, SignalName,
};
use execgate_protocol::exec::{
    method, Empty, ProcessChunk, ProcessIdParams, ProcessReadParams, ProcessReadResult,
    ProcessResizeParams, ProcessSignalParams, ProcessTerminateResult, ProcessWriteParams,
    ProcessWriteResult, WriteStatus,
};
use execgate_protocol::jsonrpc::code as rpc_code;

use crate::auth::Caller;
use crate::link::{Link, LinkError};
use crate::ops::audit::RecordExt as _;
use crate::ops::revocation::Watch;
use crate::ops::state::AppState;
use crate::ops::tools::{encode_bytes, Encoding, BASE64, RPC_TIMEOUT};
use crate::ops::Error;
use crate::store::audit_log::{AuditEntry, AuditRecord, Kind, Via};
use crate::store::SessionRow;

/// The longest a long-poll may wait.
pub const MAX_WAIT_MS: u64 = 30_000;
/// The most output one /output answer carries; read on from `next_seq`.
const MAX_OUTPUT_BYTES: u64 = 8 * 1024 * 1024;

/// A session the caller may act on, and the live link to its executor.
pub struct Session {
    pub row: SessionRow,
    pub link: Arc<Link>,
    /// The executor no longer runs the session the process was started in.
    pub restarted: bool,
    /// The audit record of the operation on this session; written when
    /// the session is dropped.
    pub audit: AuditEntry,
    /// Set by a long-poll: its wait ends early when the request's token is
    /// revoked or its environment removed (see `crate::ops::revocation`).
    pub watch: Option<Watch>,
    state: AppState,
}

impl Session {
    /// 410 `executor_restarted` when the process is known to be gone with
    /// its executor session.
    pub fn require_same_executor(&self) -> Result<(), Error> {
        if self.restarted {
            return Err(Error::new(
                code::EXECUTOR_RESTARTED,
                restarted_message(self),
            ));
        }
        Ok(())
    }
}

fn restarted_message(s: &Session) -> String {
    format!(
        "executor '{}' restarted (or dropped the session process {:?} ran in): the process is gone; start it again with exec_command",
        s.link.name, s.row.sid
    )
}

/// Whether `link` serves another executor session than the one `row` was
/// started in.
pub fn is_restarted(row: &SessionRow, link: &Link) -> bool {
    match (&row.executor_session_id, link.handshake()) {
        (Some(started_in), Some(h)) => *started_in != h.session_id,
        _ => false,
    }
}

/// The caller's session `sid`, for operation `method` (audited as such,
/// refusals included).
pub async fn resolve(
    state: &AppState,
    caller: &Caller,
    sid: &str,
    via: Via,
    method: &'static str,
) -> Result<Session, Error> {
    let rec = AuditRecord::for_caller(caller, via, Kind::Process, method).with_session(sid);
    let mut audit = state.audit().begin(rec).await?;
    match lookup(state, caller, sid, &mut audit).await {
        Ok((row, link)) => {
            audit.record().set_link(&link);
            let restarted = is_restarted(&row, &link);
            Ok(Session {
                row,
                link,
                restarted,
                audit,
                watch: None,
                state: state.clone(),
            })
        }
        Err(e) => {
            audit.fail(e.code);
            Err(e)
        }
    }
}

async fn lookup(
    state: &AppState,
    caller: &Caller,
    sid: &str,
    audit: &mut AuditEntry,
) -> Result<(SessionRow, Arc<Link>), Error> {
    // Another workspace's session answers exactly as an unknown one: a 403
    // would tell a tenant that another tenant's session exists.
    let row = state
        .store()
        .session(sid)
        .await?
        .filter(|row| row.workspace == caller.workspace)
        .ok_or_else(|| session_not_found(sid))?;
    audit.record().exe_id = Some(row.exe_id.clone());
    let link = match state.link(&row.exe_id).await {
        Some(link) => link,
        None => {
            return Err(crate::ops::environment::executor_unavailable(state, &row.exe_id).await)
        }
    };
    Ok((row, link))
}

/// 404 `session_not_found`: the same answer whether `sid` was never issued
/// or belongs to another workspace.
pub fn session_not_found(sid: &str) -> Error {
    Error::new(
        code::SESSION_NOT_FOUND,
        format!("no process session {sid:?}; exec_command returns the session_id to use"),
    )
}

/// The executor no longer knows the process: it restarted, or the process
/// outlived the executor's retention.
pub fn gone(s: &Session) -> Error {
    Error::new(code::SESSION_EXPIRED,
        format!(
            "executor '{}' no longer has process session {:?}: it expired or the executor restarted",
            s.link.name, s.row.sid
        ),
    )
}

pub fn map_rpc(s: &Session, e: LinkError) -> Error {
    match e {
        LinkError::Rpc { error, .. } if error.code == rpc_code::INVALID_REQUEST => gone(s),
        other => other.into(),
    }
}

/// Writes to the process's stdin (and closes it with `eof`).
pub async fn write_stdin(s: &mut Session, data_b64: &str, eof: bool) -> Result<(), Error> {
    let r = write_stdin_inner(s, data_b64, eof).await;
    s.audit.finish(&r);
    r
}

async fn write_stdin_inner(s: &mut Session, data_b64: &str, eof: bool) -> Result<(), Error> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(data_b64.as_bytes())
        .map_err(|e| Error::bad_base64("data_b64", e))?;
    let rec = s.audit.record();
    rec.set_args(&data);
    rec.add_bytes_in(data.len() as u64);
    s.require_same_executor()?;
    let ext = s.link.ext();
    if eof && !ext.close_stdin {
        return Err(not_supported(s, "closing stdin (eof)"));
    }
    if !data.is_empty() || !eof {
        let r: ProcessWriteResult = s
            .link
            .request(
                method::PROCESS_WRITE,
                &ProcessWriteParams {
                    process_id: s.row.process_id.clone(),
                    chunk: Blob::Base64(data_b64.to_string()),
                    write_id: crate::secret::random_id("w_", 8),
                },
                RPC_TIMEOUT,
            )
            .await
            .map_err(|e| map_rpc(s, e))?;
        match r.status {
            WriteStatus::Accepted => {}
            WriteStatus::StdinClosed => return Err(stdin_closed(s)),
            WriteStatus::UnknownProcess => return Err(gone(s)),
            WriteStatus::Starting => {
                return Err(Error::new(
                    code::CONFLICT,
                    "the process is still starting; retry the write",
                )
                .with_retry_after(1))
            }
        }
    }
    if eof {
        s.link
            .request::<_, Empty>(
                method::PROCESS_CLOSE_STDIN,
                &ProcessIdParams {
                    process_id: s.row.process_id.clone(),
                },
                RPC_TIMEOUT,
            )
            .await
            .map_err(|e| map_rpc(s, e))?;
    }
    Ok(())
}

fn stdin_closed(s: &Session) -> Error {
    Error::new(code::STDIN_CLOSED,
        format!(
            "the stdin of process session {:?} is closed (after eof, after exit, or started with pipe_stdin:false)",
            s.row.sid
        ),
    )
}

pub fn not_supported(s: &Session, what: &str) -> Error {
    let version = s
        .link
        .handshake()
        .map(|h| h.info.executor_version.clone())
        .unwrap_or_default();
    Error::new(
        code::NOT_SUPPORTED_BY_EXECUTOR,
        format!(
            "executor '{}' (version {version}) does not support {what}",
            s.link.name
        ),
    )
}

/// The process's output after seq `since`, waiting up to `wait_ms` for some.
pub async fn output(s: &mut Session, since: u64, wait_ms: u64) -> Result<Output, Error> {
    s.audit
        .record()
        .set_args_json(&serde_json::json!({"since": since, "wait_ms": wait_ms}));
    let r = output_inner(s, since, wait_ms).await;
    match &r {
        Ok(out) => {
            let bytes: u64 = out.chunks.iter().map(|c| c.chunk.len()).sum();
            let rec = s.audit.record();
            rec.add_bytes_out(bytes);
            rec.exit_code = out.head.exit_code;
            match &out.head.error {
                Some(e) if e.code == code::EXECUTOR_RESTARTED => {
                    s.audit.fail(code::EXECUTOR_RESTARTED)
                }
                _ => s.audit.succeed(),
            }
        }
        Err(e) => s.audit.fail(e.code),
    }
    r
}

/// A `/output` answer with its chunks' bytes as they came from the
/// executor. [`Output::into_response_as`] gives the [`OutputResponse`];
/// [`Output::to_json`] writes the same JSON straight from the bytes.
pub struct Output {
    /// Everything but the chunks (its `chunks` is empty).
    pub head: OutputResponse,
    pub chunks: Vec<ProcessChunk>,
}

impl Output {
    /// The answer with the chunks in `encoding`: base64 chunk by chunk, or
    /// text, where consecutive chunks of one stream are joined first (under
    /// the last one's seq), so that a character split between two chunks
    /// stays whole.
    pub fn into_response_as(self, encoding: Encoding) -> OutputResponse {
        let chunks = if encoding == Encoding::Base64 {
            self.chunks
                .into_iter()
                .map(|c| OutputChunk {
                    stream: c.stream.as_str().to_string(),
                    data_b64: Some(c.chunk.into_base64()),
                    text: None,
                    encoding: None,
                    seq: c.seq,
                })
                .collect()
        } else {
            let mut runs: Vec<(execgate_protocol::exec::Stream, Vec<u8>, u64)> = Vec::new();
            for c in self.chunks {
                // Undecodable base64 from a broken executor: left out, as
                // the stream would count it lost.
                let data = c.chunk.to_bytes().unwrap_or_default();
                match runs.last_mut() {
                    Some((stream, bytes, seq)) if *stream == c.stream => {
                        bytes.extend_from_slice(&data);
                        *seq = c.seq;
                    }
                    _ => runs.push((c.stream, data.to_vec(), c.seq)),
                }
            }
            runs.into_iter()
                .map(|(stream, bytes, seq)| {
                    let (text, enc) = encode_bytes(&bytes, encoding);
                    let (data_b64, text, enc) = if enc == BASE64 {
                        (Some(text), None, None)
                    } else {
                        (None, Some(text), Some(enc.to_string()))
                    };
                    OutputChunk {
                        stream: stream.as_str().to_string(),
                        data_b64,
                        text,
                        encoding: enc,
                        seq,
                    }
                })
                .collect()
        };
        OutputResponse {
            chunks,
            ..self.head
        }
    }
}

async fn output_inner(s: &Session, since: u64, wait_ms: u64) -> Result<Output, Error> {
    if s.restarted {
        // 200, not an error: the seed's fields say "over", and `error` why.
        return Ok(Output {
            head: OutputResponse {
                chunks: Vec::new(),
                exit_code: None,
                session_alive: false,
                truncated: false,
                lost_bytes: 0,
                lost_bytes_unknown: false,
                next_since: Some(since),
                error: Some(ErrorBody {
                    code: code::EXECUTOR_RESTARTED.into(),
                    message: restarted_message(s),
                }),
            },
            chunks: Vec::new(),
        });
    }
    let wait_ms = wait_ms.min(MAX_WAIT_MS);
    let r = match read_ahead(s, since).await {
        Some(r) => r,
        None => {
            let params = read_params(s, since, wait_ms);
            let read = s.link.request(
                method::PROCESS_READ,
                &params,
                Duration::from_millis(wait_ms) + RPC_TIMEOUT,
            );
            let read = match &s.watch {
                Some(watch) if wait_ms > 0 => watch.guard(read).await?,
                _ => read.await,
            };
            read.map_err(|e| map_rpc(s, e))?
        }
    };
    // Output evicted before the first returned chunk: our executor counts it
    // ([ext] lostBytes); for a stock codex the link's seq ledger does, or
    // says it cannot (see `seq_ledger`).
    let lost = match (r.lost_bytes, r.chunks.first()) {
        (Some(n), _) => Some(n),
        (None, Some(first)) => s.link.lost_between(&s.row.process_id, since, first.seq),
        (None, None) => Some(0),
    };
    let lost_bytes = lost.unwrap_or(0);
    // `closed` is process state. When the answer may have been cut at
    // max_bytes, more chunks can follow, so the session is still "alive" to
    // this reader until a read comes back short.
    let returned: u64 = r.chunks.iter().map(|c| c.chunk.len()).sum();
    let maybe_cut = returned >= MAX_OUTPUT_BYTES * 9 / 10;
    if let Some(m) = crate::metrics::get() {
        m.output(returned, lost_bytes);
    }
    let next_since = r.next_seq.saturating_sub(1).max(since);
    if maybe_cut {
        // A client catching up on a backlog: the executor reads the next
        // part while this one is encoded, sent and decoded.
        s.state
            .poll_aheads()
            .start(&s.row.sid, s.link.clone(), read_params(s, next_since, 0));
    }
    Ok(Output {
        head: OutputResponse {
            chunks: Vec::new(),
            exit_code: if r.exited { r.exit_code } else { None },
            // Alive until the process has exited and all its output was read.
            session_alive: !r.closed || maybe_cut,
            truncated: lost != Some(0),
            lost_bytes,
            lost_bytes_unknown: lost.is_none(),
            next_since: Some(next_since),
            error: None,
        },
        chunks: r.chunks,
    })
}

fn read_params(s: &Session, since: u64, wait_ms: u64) -> ProcessReadParams {
    ProcessReadParams {
        process_id: s.row.process_id.clone(),
        after_seq: Some(since),
        max_bytes: Some(MAX_OUTPUT_BYTES),
        wait_ms: (wait_ms > 0).then_some(wait_ms),
    }
}

/// The answer of the read the previous poll left ahead for this one (see
/// `crate::link::read_ahead`), if it reads from `since` and found something. An
/// empty one is not used: this poll may want to wait for output, and a
/// failed one is not either: a read of its own reports the error.
async fn read_ahead(s: &Session, since: u64) -> Option<ProcessReadResult> {
    let ahead = s.state.poll_aheads().take(&s.row.sid, since)?;
    match ahead.result().await {
        Ok(r) if !r.chunks.is_empty() || r.closed => Some(r),
        _ => None,
    }
}

/// Kills the process's group. Its session stops counting as live (see
/// `crate::ops::limits`).
pub async fn terminate(s: &mut Session) -> Result<(), Error> {
    let r = terminate_inner(s).await;
    s.audit.finish(&r);
    r
}

async fn terminate_inner(s: &Session) -> Result<(), Error> {
    s.require_same_executor()?;
    s.link
        .request::<_, ProcessTerminateResult>(
            method::PROCESS_TERMINATE,
            &ProcessIdParams {
                process_id: s.row.process_id.clone(),
            },
            RPC_TIMEOUT,
        )
        .await
        .map_err(|e| map_rpc(s, e))?;
    let ended = [s.row.sid.clone()];
    if let Err(e) = s.state.store().mark_sessions_ended(&ended).await {
        tracing::warn!(sid = %s.row.sid, "cannot mark a terminated session ended: {e}");
    }
    Ok(())
}

/// `POST /processes/{sid}/resize`: the terminal size of a tty process.
pub async fn resize(s: &mut Session, cols: u16, rows: u16) -> Result<(), Error> {
    s.audit
        .record()
        .set_args_json(&serde_json::json!({"cols": cols, "rows": rows}));
    let r = resize_inner(s, cols, rows).await;
    s.audit.finish(&r);
    r
}

async fn resize_inner(s: &Session, cols: u16, rows: u16) -> Result<(), Error> {
    if cols == 0 || rows == 0 {
        return Err(Error::bad_arguments(
            "cols and rows must both be at least 1",
        ));
    }
    s.require_same_executor()?;
    if !s.link.ext().resize {
        return Err(not_supported(s, "resizing a terminal (process/resize)"));
    }
    s.link
        .request::<_, Empty>(
            method::PROCESS_RESIZE,
            &ProcessResizeParams {
                process_id: s.row.process_id.clone(),
                cols,
                rows,
            },
            RPC_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            // Our executor's answer for a process started without tty.
            LinkError::Rpc { error, .. } if error.code == rpc_code::INVALID_PARAMS => {
                Error::new(code::NOT_A_TERMINAL,
                    format!(
                        "process session {:?} has no terminal to resize; start it with exec_command tty:true",
                        s.row.sid
                    ),
                )
            }
            other => map_rpc(s, other),
        })?;
    Ok(())
}

/// `POST /processes/{sid}/signal`: a signal to the process group.
///
/// codex only knows `interrupt`; on codex `kill` becomes `process/terminate`
/// (SIGKILL to the group, the same thing), and the others are refused.
pub async fn signal(s: &mut Session, signal: SignalName) -> Result<(), Error> {
    s.audit
        .record()
        .set_args_json(&serde_json::json!({"signal": signal.as_str()}));
    let r = signal_inner(s, signal).await;
    s.audit.finish(&r);
    r
}

async fn signal_inner(s: &Session, signal: SignalName) -> Result<(), Error> {
    s.require_same_executor()?;
    if signal != SignalName::Interrupt && !s.link.ext().signals {
        if signal == SignalName::Kill {
            return terminate_inner(s).await;
        }
        return Err(not_supported(
            s,
            &format!(
                "the {:?} signal (it only has interrupt; kill works as terminate)",
                signal.as_str()
            ),
        ));
    }
    s.link
        .request::<_, Empty>(
            method::PROCESS_SIGNAL,
            &ProcessSignalParams {
                process_id: s.row.process_id.clone(),
                signal: signal.as_str().to_string(),
            },
            RPC_TIMEOUT,
        )
        .await
        .map_err(|e| map_rpc(s, e))?;
    Ok(())
}

/// One row of `GET /processes`: the index row, completed with what the
/// executor says about the process when it is connected.
pub async fn describe(state: &AppState, row: SessionRow) -> ProcessInfo {
    let link = state.link_now(&row.exe_id).await;
    let env = match &link {
        Some(link) => link.name.clone(),
        None => state
            .store()
            .executor(&row.exe_id)
            .await
            .ok()
            .flatten()
            .map(|e| e.name)
            .unwrap_or_default(),
    };
    let mut info = ProcessInfo {
        sid: row.sid.clone(),
        env,
        command: serde_json::from_str(&row.command).unwrap_or_default(),
        started_at: crate::ops::environment::rfc3339(row.created_at),
        session_alive: None,
        exit_code: None,
        status: "executor_unavailable".into(),
    };
    let Some(link) = link else {
        return info;
    };
    if is_restarted(&row, &link) {
        info.session_alive = Some(false);
        info.status = code::EXECUTOR_RESTARTED.into();
        return info;
    }
    // A read past the end returns no chunks, only the process's state.
    let read = link
        .request::<_, ProcessReadResult>(
            method::PROCESS_READ,
            &ProcessReadParams {
                process_id: row.process_id.clone(),
                after_seq: Some(u64::MAX / 2),
                max_bytes: Some(1),
                wait_ms: None,
            },
            RPC_TIMEOUT,
        )
        .await;
    match read {
        Ok(r) => {
            info.session_alive = Some(!r.closed);
            info.exit_code = if r.exited { r.exit_code } else { None };
            info.status = if r.exited { "exited" } else { "running" }.into();
        }
        Err(LinkError::Rpc { error, .. }) if error.code == rpc_code::INVALID_REQUEST => {
            info.session_alive = Some(false);
            info.status = "expired".into();
        }
        Err(_) => {}
    }
    info
}

/// The caller's process session `sid` given as `arguments.session_id`
/// (the MCP tools), checked against `arguments.environment_id` when given.
/// Another workspace's session is as unknown as a made-up one.
pub async fn resolve_argument(
    state: &AppState,
    caller: &Caller,
    sid: &str,
    environment_id: Option<String>,
    via: Via,
    method: &'static str,
) -> Result<Session, Error> {
    let mut s = resolve(state, caller, sid, via, method)
        .await
        .map_err(|e| match e.code {
            code::SESSION_NOT_FOUND => Error::new(
                code::SESSION_NOT_FOUND,
                format!(
                    "arguments.session_id: no process session {sid:?} in this workspace; exec_command returns the session_id to use"
                ),
            ),
            _ => e,
        })?;
    if let Some(env) = environment_id {
        if env != s.link.name {
            let e = Error::bad_arguments(format!(
                "arguments.environment_id: session {sid:?} runs in {:?}, not {env:?}",
                s.link.name
            ));
            s.audit.fail(e.code);
            return Err(e);
        }
    }
    Ok(s)
}
