//! `GET /api/connectors/processes/{sid}/stream`: a process's output as
//! Server-Sent Events (or, for `Accept: application/octet-stream`, as the
//! binary frames of [`binary`], which follow the same steps).
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
//! The events are written by [`super::sse_events`] straight into the bytes
//! of the response (the same text as axum's `Sse`); the `output` events of
//! one `process/read` go out together, in pieces of up to
//! [`BATCH_BYTES`](super::sse_events::BATCH_BYTES).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::connectors::error_code as code;
#[cfg(test)]
use execgate_protocol::exec::Stream as ExecStream;
use execgate_protocol::exec::{method, ProcessReadParams};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::http::drain::Resumable;
use crate::http::error::ApiError;
use crate::http::extract::bearer_token;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::openapi::{OutputFrames, SessionErrors, SessionPath, StreamEvent};
use crate::http::sse_events::{Events, BATCH_BYTES, KEEPALIVE_COMMENT};
use crate::link::read_ahead::ReadAhead;
use crate::link::{LinkError, ProcessEvent, Subscription};
use crate::ops::processes::{self, Session};
use crate::ops::revocation::Watch;
use crate::ops::state::AppState;
use crate::ops::tools::RPC_TIMEOUT;
use crate::store::audit_log::Via;

mod binary;

const KEEPALIVE: Duration = Duration::from_secs(15);
/// Most output one catch-up read asks for.
const READ_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Pieces of events (each up to `BATCH_BYTES`) buffered towards the
/// client; a slow client stalls the pump here.
const CLIENT_QUEUE: usize = 16;
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
    if binary {
        return Ok(binary::respond(state, session, since, watch));
    }
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let pump = Pump {
        state,
        session,
        cursor: since,
        tx,
        exit_code: None,
    };
    tokio::spawn(pump.run(watch));
    // A keepalive comment after KEEPALIVE without an event, as axum's Sse.
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(piece)) => piece,
            Ok(None) => return None,
            Err(_) => Bytes::from_static(KEEPALIVE_COMMENT),
        };
        Some((Ok::<_, Infallible>(piece), rx))
    });
    let response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response();
    Ok((axum::Extension(Resumable), response).into_response())
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

struct Pump {
    state: AppState,
    session: Session,
    /// The last seq delivered to the client (or reported lost).
    cursor: u64,
    /// Pieces of the event stream's text (see `sse_events`).
    tx: mpsc::Sender<Bytes>,
    /// From a `process/exited` notification, for an `exit` whose close
    /// arrives by notification.
    exit_code: Option<i32>,
}

impl Pump {
    async fn run(mut self, watch: Watch) {
        let state = self.state.clone();
        let ended = tokio::select! {
            _ = self.pump() => None,
            e = watch.ended() => Some(e),
            _ = state.drain().closing() => Some(crate::ops::drain::draining_error()),
        };
        if let Some(e) = ended {
            tracing::info!(sid = %self.session.row.sid, code = e.code, "stream ended: {}", e.message);
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
                Some(next) if next.after_seq == self.cursor => next.result().await,
                // Nothing ahead, or it was asked before a loss moved the
                // cursor: ask now.
                _ => {
                    let params = self.read_params(self.cursor);
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
                let params = self.read_params(last.seq.max(self.cursor));
                ahead = Some(ReadAhead::send(self.session.link.clone(), params));
            }
            if let Some(first) = r.chunks.first() {
                // The executor's exact count, or for a stock codex what the
                // link's seq ledger saw go by.
                let lost = r.lost_bytes.or_else(|| {
                    self.session.link.lost_between(
                        &self.session.row.process_id,
                        self.cursor,
                        first.seq,
                    )
                });
                self.report_loss(first.seq, lost).await?;
            }
            let got_chunks = !r.chunks.is_empty();
            // The chunks' events, in pieces of about BATCH_BYTES: the cursor
            // moves over a piece's chunks once it is handed on.
            let mut events = Events::default();
            let (mut last, mut bytes) = (self.cursor, 0u64);
            // What the rest of the events take, to size each piece's buffer.
            let mut rest: usize = r.chunks.iter().map(|c| Events::output_size(&c.chunk)).sum();
            for c in r.chunks {
                let size = Events::output_size(&c.chunk);
                rest -= size;
                if c.seq <= self.cursor {
                    continue;
                }
                if events.is_empty() {
                    events = Events::with_capacity((rest + size).min(BATCH_BYTES + size));
                }
                events.output(c.seq, c.stream, &c.chunk);
                (last, bytes) = (c.seq, bytes + c.chunk.len());
                if events.len() >= BATCH_BYTES {
                    self.send_output(events.take(), last, bytes).await?;
                    bytes = 0;
                }
            }
            if !events.is_empty() {
                self.send_output(events.take(), last, bytes).await?;
            }
            if got_chunks {
                continue;
            }
            if r.closed {
                // Everything up to the close is delivered.
                let last = r.next_seq.saturating_sub(1).max(self.cursor);
                return self.exit(last, r.exit_code.or(self.exit_code)).await;
            }
            return Ok(());
        }
    }

    /// Hands on a piece of `output` events whose last seq is `last` and
    /// which carry `bytes` of output; moves the cursor over them.
    async fn send_output(&mut self, piece: Bytes, last: u64, bytes: u64) -> Result<(), Stop> {
        self.send(piece).await?;
        self.cursor = last;
        self.session.audit.record().add_bytes_out(bytes);
        if let Some(m) = crate::metrics::get() {
            m.output(bytes, 0);
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

    /// Emits a `lost` event for the seqs between the cursor and `first`, the
    /// first seq a read returned, when bytes were lost there. When the count
    /// is unknown (codex, with no ledger entry for the range), a gap wider
    /// than the one seq an exit event may take is reported with `bytes: null`.
    async fn report_loss(&mut self, first: u64, lost_bytes: Option<u64>) -> Result<(), Stop> {
        if first <= self.cursor + 1 {
            return Ok(());
        }
        let (from_seq, to_seq) = (self.cursor + 1, first - 1);
        let bytes = match lost_bytes {
            Some(0) => return Ok(()),
            Some(n) => {
                if let Some(m) = crate::metrics::get() {
                    m.output(0, n);
                }
                json!(n)
            }
            None if to_seq - from_seq >= 1 => serde_json::Value::Null,
            None => return Ok(()),
        };
        let data = json!({"from_seq": from_seq, "to_seq": to_seq, "bytes": bytes});
        self.send_event("lost", Some(to_seq), &data.to_string())
            .await?;
        self.cursor = to_seq;
        Ok(())
    }

    /// Takes notifications while they continue the cursor exactly.
    async fn follow(&mut self, sub: &mut Subscription) -> Result<Next, Stop> {
        loop {
            if sub.backlog() > MAX_BACKLOG {
                return Ok(Next::Resubscribe);
            }
            let event = tokio::select! {
                e = sub.recv() => e,
                _ = tokio::time::sleep(QUIET_RECHECK) => return Ok(Next::Pull),
                _ = self.tx.closed() => return Err(Stop::ClientGone),
            };
            match event {
                ProcessEvent::LinkLost => return Ok(Next::LinkLost),
                ProcessEvent::Output { seq, .. }
                | ProcessEvent::Exited { seq, .. }
                | ProcessEvent::Closed { seq }
                    if seq <= self.cursor =>
                {
                    // Already delivered by a read.
                }
                ProcessEvent::Output { seq, stream, data } if seq == self.cursor + 1 => {
                    let bytes = data.len() as u64;
                    let data = Blob::Raw(data);
                    let mut event = Events::with_capacity(Events::output_size(&data));
                    event.output(seq, stream, &data);
                    self.send(event.take()).await?;
                    self.cursor = seq;
                    self.session.audit.record().add_bytes_out(bytes);
                }
                ProcessEvent::Exited { seq, exit_code } if seq == self.cursor + 1 => {
                    self.exit_code = Some(exit_code);
                    self.cursor = seq;
                }
                ProcessEvent::Closed { seq } if seq == self.cursor + 1 => {
                    if self.exit_code.is_some() {
                        self.exit(seq, self.exit_code).await?;
                    }
                    // Without the exit code (never seen here), ask for it.
                    return Ok(Next::Pull);
                }
                // A gap: something was not pushed. Read from the cursor.
                _ => return Ok(Next::Pull),
            }
        }
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

    async fn exit(&mut self, last_seq: u64, exit_code: Option<i32>) -> Result<(), Stop> {
        let data = json!({ "exit_code": exit_code }).to_string();
        self.send_event("exit", Some(last_seq), &data).await?;
        self.session.audit.record().exit_code = exit_code;
        self.session.audit.succeed();
        Err(Stop::Done)
    }

    async fn fail(&mut self, code: &str, message: &str) -> Result<(), Stop> {
        self.session.audit.fail(code);
        let data = json!({"code": code, "message": message}).to_string();
        self.send_event("error", None, &data).await?;
        Err(Stop::Done)
    }

    async fn send(&self, piece: Bytes) -> Result<(), Stop> {
        self.tx.send(piece).await.map_err(|_| Stop::ClientGone)
    }

    /// Sends one event other than `output`.
    async fn send_event(&self, name: &str, id: Option<u64>, data: &str) -> Result<(), Stop> {
        let mut event = Events::default();
        event.event(name, id, data);
        self.send(event.take()).await
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
