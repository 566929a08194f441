//! Process sessions started by `exec_command`: stdin, output and terminate.
//!
//! The gateway holds only the index row; every operation goes to the
//! executor that runs the process. Output is read with `process/read` from
//! the caller's cursor, so two readers never disturb each other, a reader can
//! re-read, and a gateway restart loses nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine;
use execgate_protocol::connectors::{error_code as code, OutputChunk, OutputResponse};
use execgate_protocol::exec::{
    method, Empty, ProcessIdParams, ProcessReadParams, ProcessReadResult, ProcessTerminateResult,
    ProcessWriteParams, ProcessWriteResult, WriteStatus,
};
use execgate_protocol::jsonrpc::code as rpc_code;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::link::{Link, LinkError};
use crate::state::AppState;
use crate::store::SessionRow;
use crate::tools::RPC_TIMEOUT;

/// The longest a long-poll may wait.
pub const MAX_WAIT_MS: u64 = 30_000;
/// The most output one /output answer carries; read on from `next_seq`.
const MAX_OUTPUT_BYTES: u64 = 8 * 1024 * 1024;

/// A session the caller may act on, and the live link to its executor.
pub struct Session {
    pub row: SessionRow,
    pub link: Arc<Link>,
}

pub async fn resolve(state: &AppState, caller: &Caller, sid: &str) -> Result<Session, ApiError> {
    let row = state.store().session(sid).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::SESSION_NOT_FOUND,
            format!("no process session {sid:?}; exec_command returns the session_id to use"),
        )
    })?;
    if row.workspace != caller.workspace {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!("process session {sid:?} belongs to another workspace"),
        ));
    }
    let link = match state.registry().get(&row.exe_id) {
        Some(link) => link,
        None => return Err(crate::api::executor_unavailable(state, &row.exe_id).await),
    };
    Ok(Session { row, link })
}

/// The executor no longer knows the process: it restarted, or the process
/// outlived the executor's retention.
fn gone(s: &Session) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "session_expired",
        format!(
            "executor '{}' no longer has process session {:?}: it expired or the executor restarted",
            s.link.name, s.row.sid
        ),
    )
}

fn map_rpc(s: &Session, e: LinkError) -> ApiError {
    match e {
        LinkError::Rpc { error, .. } if error.code == rpc_code::INVALID_REQUEST => gone(s),
        other => other.into(),
    }
}

pub async fn write_stdin(s: &Session, data_b64: &str, eof: bool) -> Result<(), ApiError> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(data_b64.as_bytes())
        .map_err(|e| ApiError::bad_base64("data_b64", e))?;
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
                    chunk: data_b64.to_string(),
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
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
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

fn stdin_closed(s: &Session) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        code::STDIN_CLOSED,
        format!(
            "the stdin of process session {:?} is closed (after eof, after exit, or started with pipe_stdin:false)",
            s.row.sid
        ),
    )
}

fn not_supported(s: &Session, what: &str) -> ApiError {
    let version = s
        .link
        .handshake()
        .map(|h| h.info.executor_version.clone())
        .unwrap_or_default();
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        code::NOT_SUPPORTED_BY_EXECUTOR,
        format!(
            "executor '{}' (version {version}) does not support {what}",
            s.link.name
        ),
    )
}

pub async fn output(s: &Session, since: u64, wait_ms: u64) -> Result<OutputResponse, ApiError> {
    let wait_ms = wait_ms.min(MAX_WAIT_MS);
    let r: ProcessReadResult = s
        .link
        .request(
            method::PROCESS_READ,
            &ProcessReadParams {
                process_id: s.row.process_id.clone(),
                after_seq: Some(since),
                max_bytes: Some(MAX_OUTPUT_BYTES),
                wait_ms: (wait_ms > 0).then_some(wait_ms),
            },
            Duration::from_millis(wait_ms) + RPC_TIMEOUT,
        )
        .await
        .map_err(|e| map_rpc(s, e))?;
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
    let returned: u64 = r.chunks.iter().map(|c| c.chunk.len() as u64 / 4 * 3).sum();
    let maybe_cut = returned >= MAX_OUTPUT_BYTES * 9 / 10;
    let next_since = r.next_seq.saturating_sub(1).max(since);
    Ok(OutputResponse {
        chunks: r
            .chunks
            .into_iter()
            .map(|c| OutputChunk {
                stream: c.stream.as_str().to_string(),
                data_b64: c.chunk,
                seq: c.seq,
            })
            .collect(),
        exit_code: if r.exited { r.exit_code } else { None },
        // Alive until the process has exited and all its output was read.
        session_alive: !r.closed || maybe_cut,
        truncated: lost != Some(0),
        lost_bytes,
        lost_bytes_unknown: lost.is_none(),
        next_since: Some(next_since),
    })
}

pub async fn terminate(s: &Session) -> Result<(), ApiError> {
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
    Ok(())
}
