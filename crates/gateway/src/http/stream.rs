//! `GET /api/connectors/processes/{sid}/stream`: a process's output as
//! Server-Sent Events (or, for `Accept: application/octet-stream`, as the
//! binary frames of [`binary`]). This file owns the handler and the one
//! [`Pump`] both forms share; what differs is the [`Sink`] it writes into:
//! [`sse`] (event text) or [`binary`] (frames, and the negotiation).
//!
//! Events: `output` (id = seq, data `{stream, data_b64}`) per chunk, `lost`
//! (id = the last lost seq, data `{from_seq, to_seq, bytes}`) where the
//! executor dropped output, and a final `exit` (id = the last seq, data
//! `{exit_code}`), after which the stream ends. `error` (data `{code,
//! message}`) ends a stream that cannot go on (`executor_restarted`,
//! `session_expired`, `executor_unavailable`); the client may resume. A
//! keepalive comment goes out every 15 s. A client resumes with
//! `Last-Event-ID` (or `?since=`): it gets everything after that seq.
//!
//! **Pull, then push.** A [`Pump`] catches up with `process/read` from its
//! cursor until a read comes back empty, holding no subscription meanwhile
//! (an execgate executor pushes a process's output only while someone
//! subscribes, so bulk output being caught up does not cross the link
//! twice). Then it subscribes, reads once more (for what came in between),
//! and takes notifications as long as they continue the cursor's seq
//! exactly. Anything else (a gap from a dropped
//! notification, a subscription falling behind, silence for a while) sends it
//! back to `process/read` from the cursor. The cursor only moves over seqs
//! that were emitted (or reported lost), so nothing is delivered twice and a
//! dropped range is never passed off as delivered.
//!
//! A stream ends with an `error` event (`invalid_token`, `env_not_found`)
//! when its proxy token is revoked or its environment removed while it is
//! open: it checks again every `revocation_recheck` (see `revocation`).
//!
//! When the gateway drains (SIGTERM), a stream ends with an `error` event
//! `draining` once the calls in flight are done (`ops::drain`): the client
//! resumes with `Last-Event-ID`, on another replica. The drain does not
//! wait for streams otherwise (the response is marked `Resumable`).
//!
//! A stream is audited as one `stream` operation, recorded when it ends
//! with the output bytes it delivered (and the exit code).
//!
//! Memory stays bounded: events go to the client through a small channel; a
//! slow client stalls the pump, and a subscription whose backlog grows is
//! dropped in favour of `process/read`, which the client's pace drives.
//!
//! The sink writes straight into the bytes of the response: the `output`
//! events of one `process/read` go out together, in pieces of up to
//! [`BATCH_BYTES`](super::sse_events::BATCH_BYTES) (SSE) or as one buffer
//! (binary). Both count the output bytes they hand on, read or pushed, in
//! the audit record and `execgate_output_bytes_total`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::error_code as code;
use execgate_protocol::exec::{method, ProcessReadParams, Stream as ExecStream};
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::http::drain::Resumable;
use crate::http::error::ApiError;
use crate::http::extract::bearer_token;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::openapi::{OutputFrames, SessionErrors, SessionPath, StreamEvent};
use crate::link::read_ahead::ReadAhead;
use crate::link::{LinkError, ProcessEvent, Subscription};
use crate::ops::processes::{self, Session};
use crate::ops::revocation::Watch;
use crate::ops::state::AppState;
use crate::ops::tools::RPC_TIMEOUT;
use crate::store::audit_log::Via;

mod binary;
mod sse;

const KEEPALIVE: Duration = Duration::from_secs(15);
/// Most output one catch-up read asks for.
const READ_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// A subscription with more queued events than this is dropped: the pump
/// is behind, and `process/read` serves it better (and bounds memory).
const MAX_BACKLOG: usize = 1024;
/// With no notification for this long, check with `process/read` anyway:
/// the executor drops notifications when its queue is full.
const QUIET_RECHECK: Duration = Duration::from_secs(2);
/// How long a stream waits for a lost executor link to come back.
const RELINK_WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Resume after this seq (the `Last-Event-ID` header wins when both
    /// are given); from the start when omitted.
    #[serde(default)]
    since: Option<u64>,
}

/// The process's output as Server-Sent Events: `output` (id = seq, data
/// `{stream, data_b64}`), `lost` (data `{from_seq, to_seq, bytes}`), a
/// final `exit` (data `{exit_code}`), or `error` (data `{code, message}`)
/// when the stream cannot go on. Resume with `Last-Event-ID`.
///
/// **Binary form.** With `Accept: application/octet-stream` (preferred over
/// `text/event-stream` by q-value, or by order at equal q) the answer is
/// `Content-Type: application/octet-stream`: the same events as
/// length-prefixed frames with the output bytes raw, each
/// `[u8 type][u64 BE seq][u32 BE length][payload]`; see `OutputFrames`.
/// Any other `Accept` gets SSE, and so does every client of a gateway
/// older than this form: the answer's `Content-Type` says which came. A
/// malformed `Accept` is 400 `bad_request`.
#[utoipa::path(get, path = "/api/connectors/processes/{sid}/stream", tag = "processes",
    params(
        SessionPath,
        StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq"),
    ),
    responses(
        (status = 200, description = "An event stream, or with `Accept: application/octet-stream` binary frames; ends after the `exit` or `error` event", content(
            (StreamEvent = "text/event-stream"),
            (OutputFrames = "application/octet-stream"),
        )),
        SessionErrors,
    ))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "Last-Event-ID must be the numeric id of an event this stream sent",
                )
            })?,
        None => q.since.unwrap_or(0),
    };
    // Content negotiation: the binary form (`binary`) or SSE.
    let binary = binary::wants_binary(&headers)?;
    let mut session = processes::resolve(&state, &caller, &sid, Via::Rest, "stream").await?;
    // The Caller extractor has checked it; the stream checks it again
    // while it is open.
    let watch = Watch::new(&state, bearer_token(&headers)?, &caller.workspace)
        .with_environment(&session.link.name, &session.row.exe_id);
    // Audited as one operation, written when the stream ends.
    session
        .audit
        .record()
        .set_args_json(&json!({ "since": since }));
    Ok(if binary {
        respond::<binary::Frames>(state, session, since, watch)
    } else {
        respond::<sse::Sse>(state, session, since, watch)
    })
}

/// Where the pump writes what the client gets: SSE event text
/// ([`sse::Sse`]) or binary frames ([`binary::Frames`]). A sink buffers
/// what it is given until the pump takes it as one piece of the body; the
/// pump decides what happens and when a piece goes out, the sink only how
/// it is written.
trait Sink: Default + Send + Sync + 'static {
    /// Pieces queued towards the client; a slow client stalls the pump here.
    const CLIENT_QUEUE: usize;
    /// A read's output goes out once a piece holds this many bytes.
    const READ_PIECE: usize;
    /// Notifications already queued go out together up to this many
    /// bytes (0: each on its own).
    const PUSH_BATCH: usize;

    /// The answer around the body (its headers).
    fn response(body: Body) -> Response;
    /// What goes out after [`KEEPALIVE`] without anything else.
    fn keepalive() -> Bytes;
    /// The bytes output `data` takes in the sink, at most (to size buffers).
    fn output_size(data: &Blob) -> usize;
    /// The chunks of one read, which take `size` bytes, come next.
    fn start_read(&mut self, size: usize);
    /// Writes output `data` with seq `seq`; `rest` is what the chunks after
    /// it in the same read take. Returns the output bytes it carries, or
    /// `None` when the sink cannot carry them (base64 that does not decode).
    fn output(&mut self, seq: u64, stream: ExecStream, data: &Blob, rest: usize) -> Option<u64>;
    /// Writes a `lost` report (`data` is its JSON).
    fn lost(&mut self, to_seq: u64, data: &str);
    /// Writes the `exit` (`data` is its JSON).
    fn exit(&mut self, last_seq: u64, data: &str);
    /// Writes an `error` (`data` is its JSON) after output up to `delivered`.
    fn error(&mut self, delivered: u64, data: &str);
    /// Bytes written since the last [`take`](Sink::take).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What was written, as one piece of the body.
    fn take(&mut self) -> Bytes;
}

/// Starts the pump over sink `S` and answers with what it writes.
fn respond<S: Sink>(state: AppState, session: Session, since: u64, watch: Watch) -> Response {
    let (tx, rx) = mpsc::channel(S::CLIENT_QUEUE);
    let pump = Pump {
        state,
        session,
        cursor: since,
        written: since,
        out: S::default(),
        out_bytes: 0,
        tx,
        exit_code: None,
    };
    tokio::spawn(pump.run(watch));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(piece)) => piece,
            Ok(None) => return None,
            Err(_) => S::keepalive(),
        };
        Some((Ok::<_, Infallible>(piece), rx))
    });
    (
        axum::Extension(Resumable),
        S::response(Body::from_stream(body)),
    )
        .into_response()
}

/// Why the pump stopped.
enum Stop {
    /// The stream is complete (exit sent) or ended with an error event.
    Done,
    /// The client went away.
    ClientGone,
}

/// What to do after looking at the subscription.
enum Next {
    Pull,
    Resubscribe,
    LinkLost,
}

struct Pump<S> {
    state: AppState,
    session: Session,
    /// The last seq handed on to the client (or reported lost).
    cursor: u64,
    /// The last seq written to `out` (or skipped by an exit notification):
    /// where the pump is; `cursor` catches up when `out` is handed on.
    written: u64,
    /// What is written and not yet handed on.
    out: S,
    /// The output bytes in `out`.
    out_bytes: u64,
    /// Pieces of the body (see `Sink::take`).
    tx: mpsc::Sender<Bytes>,
    /// From a `process/exited` notification, for an `exit` whose close
    /// arrives by notification.
    exit_code: Option<i32>,
}

impl<S: Sink> Pump<S> {
    async fn run(mut self, watch: Watch) {
        let state = self.state.clone();
        let ended = tokio::select! {
            _ = self.pump() => None,
            e = watch.ended() => Some(e),
            _ = state.drain().closing() => Some(crate::ops::drain::draining_error()),
        };
        if let Some(e) = ended {
            tracing::info!(sid = %self.session.row.sid, code = e.code, "stream ended: {}", e.message);
            // Cut off: what was not handed on is not delivered.
            self.written = self.cursor;
            self.out_bytes = 0;
            self.out.take();
            let _ = self.fail(e.code, &e.message).await;
        }
    }

    async fn pump(&mut self) -> Result<(), Stop> {
        if self.session.restarted {
            return self
                .fail(
                    code::EXECUTOR_RESTARTED,
                    "the executor restarted; the process is gone",
                )
                .await;
        }
        loop {
            // Catch up by reading, with no subscription: pushed output would
            // only cross the link a second time (an execgate executor pushes
            // a process's output only while someone subscribes).
            self.pull().await?;
            // Then follow. Subscribe first, then read: whatever happens in
            // between shows up in one or the other (and seqs weed out doubles).
            let mut sub = self.session.link.subscribe(&self.session.row.process_id);
            loop {
                self.pull().await?;
                match self.follow(&mut sub).await? {
                    Next::Pull => continue,
                    Next::Resubscribe => break,
                    Next::LinkLost => {
                        self.relink().await?;
                        break;
                    }
                }
            }
        }
    }

    /// Catches up with `process/read` until a read returns nothing new;
    /// sends `exit` and stops if the process is closed.
    ///
    /// While one read's chunks go to the client, the next read is already
    /// on its way (after the last seq of this one), so the executor reads
    /// its log while the gateway encodes and the client decodes.
    async fn pull(&mut self) -> Result<(), Stop> {
        let mut ahead: Option<ReadAhead> = None;
        loop {
            let read = match ahead.take() {
                Some(next) if next.after_seq == self.written => next.result().await,
                // Nothing ahead, or it was asked before a loss moved the
                // cursor: ask now.
                _ => {
                    let params = self.read_params(self.written);
                    let link = &self.session.link;
                    link.request(method::PROCESS_READ, &params, RPC_TIMEOUT)
                        .await
                }
            };
            let r = match read {
                Ok(r) => r,
                Err(LinkError::Disconnected { .. }) => {
                    // Handled like a lost subscription: wait for the link.
                    self.relink().await?;
                    continue;
                }
                Err(e) => {
                    let e = processes::map_rpc(&self.session, e);
                    return self.fail(e.code, &e.message).await;
                }
            };
            if let Some(last) = r.chunks.last() {
                let params = self.read_params(last.seq.max(self.written));
                ahead = Some(ReadAhead::send(self.session.link.clone(), params));
            }
            if let Some(first) = r.chunks.first() {
                // The executor's exact count, or for a stock codex what the
                // link's seq ledger saw go by.
                let lost = r.lost_bytes.or_else(|| {
                    self.session.link.lost_between(
                        &self.session.row.process_id,
                        self.written,
                        first.seq,
                    )
                });
                self.report_loss(first.seq, lost);
            }
            let got_chunks = !r.chunks.is_empty();
            // The chunks, in pieces of about READ_PIECE: the cursor moves
            // over a piece's chunks once it is handed on.
            let mut rest: usize = r.chunks.iter().map(|c| S::output_size(&c.chunk)).sum();
            self.out.start_read(rest);
            for c in r.chunks {
                rest -= S::output_size(&c.chunk);
                if c.seq <= self.written {
                    continue;
                }
                let Some(bytes) = self.out.output(c.seq, c.stream, &c.chunk, rest) else {
                    return self
                        .fail(
                            code::EXECUTOR_ERROR,
                            "the executor sent output that is not base64",
                        )
                        .await;
                };
                (self.written, self.out_bytes) = (c.seq, self.out_bytes + bytes);
                if self.out.len() >= S::READ_PIECE {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            if got_chunks {
                continue;
            }
            if r.closed {
                // Everything up to the close is delivered.
                let last = r.next_seq.saturating_sub(1).max(self.written);
                return self.exit(last, r.exit_code.or(self.exit_code)).await;
            }
            return Ok(());
        }
    }

    /// Hands on what is written (if anything) and moves the cursor over it.
    async fn flush(&mut self) -> Result<(), Stop> {
        if !self.out.is_empty() {
            let piece = self.out.take();
            self.send(piece).await?;
        }
        self.cursor = self.written;
        let bytes = std::mem::take(&mut self.out_bytes);
        if bytes > 0 {
            self.session.audit.record().add_bytes_out(bytes);
            if let Some(m) = crate::metrics::get() {
                m.output(bytes, 0);
            }
        }
        Ok(())
    }

    /// A `process/read` of what follows `after_seq`.
    fn read_params(&self, after_seq: u64) -> ProcessReadParams {
        ProcessReadParams {
            process_id: self.session.row.process_id.clone(),
            after_seq: Some(after_seq),
            max_bytes: Some(READ_MAX_BYTES),
            wait_ms: None,
        }
    }

    /// Writes a `lost` report for the seqs between where the pump is and
    /// `first`, the first seq a read returned, when bytes were lost there.
    /// When the count is unknown (codex, with no ledger entry for the
    /// range), a gap wider than the one seq an exit event may take is
    /// reported with `bytes: null`.
    fn report_loss(&mut self, first: u64, lost_bytes: Option<u64>) {
        if first <= self.written + 1 {
            return;
        }
        let (from_seq, to_seq) = (self.written + 1, first - 1);
        let bytes = match lost_bytes {
            Some(0) => return,
            Some(n) => {
                if let Some(m) = crate::metrics::get() {
                    m.output(0, n);
                }
                json!(n)
            }
            None if to_seq - from_seq >= 1 => serde_json::Value::Null,
            None => return,
        };
        let data = json!({"from_seq": from_seq, "to_seq": to_seq, "bytes": bytes});
        self.out.lost(to_seq, &data.to_string());
        self.written = to_seq;
    }

    /// Takes notifications while they continue the cursor exactly; those
    /// already queued go out together, up to `S::PUSH_BATCH`.
    async fn follow(&mut self, sub: &mut Subscription) -> Result<Next, Stop> {
        let next = loop {
            if sub.backlog() > MAX_BACKLOG {
                break Next::Resubscribe;
            }
            // What is already queued, without waiting (recv is cancel-safe).
            let ready = if self.out.len() < S::PUSH_BATCH {
                sub.recv().now_or_never()
            } else {
                None
            };
            let event = match ready {
                Some(e) => e,
                None => {
                    self.flush().await?;
                    tokio::select! {
                        e = sub.recv() => e,
                        _ = tokio::time::sleep(QUIET_RECHECK) => break Next::Pull,
                        _ = self.tx.closed() => return Err(Stop::ClientGone),
                    }
                }
            };
            match event {
                ProcessEvent::LinkLost => break Next::LinkLost,
                ProcessEvent::Output { seq, .. }
                | ProcessEvent::Exited { seq, .. }
                | ProcessEvent::Closed { seq }
                    if seq <= self.written =>
                {
                    // Already delivered by a read.
                }
                ProcessEvent::Output { seq, stream, data } if seq == self.written + 1 => {
                    // Raw bytes, which every sink carries.
                    let bytes = self.out.output(seq, stream, &Blob::Raw(data), 0);
                    (self.written, self.out_bytes) = (seq, self.out_bytes + bytes.unwrap_or(0));
                }
                ProcessEvent::Exited { seq, exit_code } if seq == self.written + 1 => {
                    self.exit_code = Some(exit_code);
                    self.written = seq;
                }
                ProcessEvent::Closed { seq } if seq == self.written + 1 => {
                    if self.exit_code.is_some() {
                        self.exit(seq, self.exit_code).await?;
                    }
                    // Without the exit code (never seen here), ask for it.
                    break Next::Pull;
                }
                // A gap: something was not pushed. Read from the cursor.
                _ => break Next::Pull,
            }
        };
        self.flush().await?;
        Ok(next)
    }

    /// Waits for the executor's link to come back after it dropped.
    async fn relink(&mut self) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + RELINK_WAIT;
        loop {
            if let Some(link) = self.state.link(&self.session.row.exe_id).await {
                if !link.is_closed() && !Arc::ptr_eq(&link, &self.session.link) {
                    self.session.restarted = processes::is_restarted(&self.session.row, &link);
                    self.session.link = link;
                    if self.session.restarted {
                        return self
                            .fail(
                                code::EXECUTOR_RESTARTED,
                                "the executor restarted; the process is gone",
                            )
                            .await;
                    }
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let message = format!(
                    "executor '{}' disconnected and did not come back; resume with Last-Event-ID later",
                    self.session.link.name
                );
                return self.fail(code::EXECUTOR_UNAVAILABLE, &message).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = self.tx.closed() => return Err(Stop::ClientGone),
            }
        }
    }

    /// Sends `exit` (after whatever is written) and stops.
    async fn exit(&mut self, last_seq: u64, exit_code: Option<i32>) -> Result<(), Stop> {
        let data = json!({ "exit_code": exit_code }).to_string();
        self.out.exit(last_seq, &data);
        self.flush().await?;
        self.session.audit.record().exit_code = exit_code;
        self.session.audit.succeed();
        Err(Stop::Done)
    }

    /// Sends an `error` (after whatever is written) and stops.
    async fn fail(&mut self, code: &str, message: &str) -> Result<(), Stop> {
        self.session.audit.fail(code);
        let data = json!({"code": code, "message": message}).to_string();
        self.out.error(self.written, &data);
        self.flush().await?;
        Err(Stop::Done)
    }

    async fn send(&self, piece: Bytes) -> Result<(), Stop> {
        self.tx.send(piece).await.map_err(|_| Stop::ClientGone)
    }
}

/// The data of an `output` event: `{"stream":…,"data_b64":…}` (what
/// `sse_events` writes; kept for the test below).
#[cfg(test)]
fn output_data(stream: ExecStream, data: &Blob) -> String {
    let mut out = String::with_capacity(48 + (data.len() as usize).div_ceil(3) * 4);
    out.push('{');
    crate::http::processes::push_chunk_fields(&mut out, stream, data);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::Value;

    #[test]
    fn output_data_is_the_same_json_whichever_way_the_bytes_came() {
        let bytes = b"\x00line\n\"quoted\"\xff".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let raw: Value =
            serde_json::from_str(&output_data(ExecStream::Stderr, &Blob::from(bytes))).unwrap();
        let text: Value =
            serde_json::from_str(&output_data(ExecStream::Stderr, &Blob::Base64(b64.clone())))
                .unwrap();
        assert_eq!(raw, json!({"stream": "stderr", "data_b64": b64}));
        assert_eq!(text, raw);
        // An executor's text that is not base64 still makes valid JSON.
        let odd = output_data(ExecStream::Stdout, &Blob::Base64("a\"b\n".into()));
        let odd: Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(odd["data_b64"], "a\"b\n");
    }
}
