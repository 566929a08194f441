//! The binary form of `GET /api/connectors/processes/{sid}/stream`, for a
//! client whose `Accept` prefers `application/octet-stream` over
//! `text/event-stream` ([`wants_binary`]): length-prefixed frames with the
//! output bytes raw (the framing: `execgate_protocol::output_frames`),
//! instead of base64 in JSON. The executor link already carries the bytes
//! raw, so from the executor to the client nobody encodes or decodes them.
//!
//! [`BinPump`] follows the SSE [`super::Pump`] step for step (pull with one
//! read ahead until caught up, subscribe, read once more, take
//! notifications while they continue the cursor, back to reading at any
//! gap; the same loss reports, relinks, revocation and drain endings and
//! audit), so that both forms deliver exactly the same seqs. What differs is
//! the sink: instead of one event per chunk it writes the chunks of one
//! read (or the notifications already queued) into one buffer, consecutive
//! chunks of a stream coalesced into one frame, and sends that buffer as
//! one body chunk. It is kept apart from the SSE pump so that either can
//! change without the other.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use execgate_protocol::connectors::error_code as code;
use execgate_protocol::exec::{method, ProcessReadParams, Stream as ExecStream};
use execgate_protocol::output_frames::{self as frames, HEADER_LEN};
use futures_util::FutureExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::{Next, Stop, KEEPALIVE, MAX_BACKLOG, QUIET_RECHECK, READ_MAX_BYTES, RELINK_WAIT};
use crate::http::drain::Resumable;
use crate::http::error::ApiError;
use crate::link::read_ahead::ReadAhead;
use crate::link::{LinkError, ProcessEvent, Subscription};
use crate::ops::processes::{self, Session};
use crate::ops::revocation::Watch;
use crate::ops::state::AppState;
use crate::ops::tools::RPC_TIMEOUT;

/// Buffers (each up to one read: 4 MiB) queued towards the client.
const CLIENT_QUEUE: usize = 4;
/// Notifications taken without waiting go out together up to this size.
const BATCH_BYTES: usize = 1 << 20;

/// Whether the request's `Accept` prefers the binary form: it names
/// `application/octet-stream` with a q-value above that of
/// `text/event-stream` (named, or through `text/*` or `*/*`), or equal to
/// it and listed first. Anything else is SSE, as before. An `Accept` that
/// is not a list of media ranges (not visible ASCII, a range without `/`,
/// a q that is not a qvalue) is 400 `bad_request`.
pub fn wants_binary(headers: &HeaderMap) -> Result<bool, ApiError> {
    // (q in thousandths, position) of each form's most specific range.
    let mut bin: Option<(u16, usize)> = None;
    let mut sse: Option<(u8, u16, usize)> = None;
    let mut pos = 0;
    for value in headers.get_all(header::ACCEPT) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("Accept must be visible ASCII"))?;
        for range in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (media, q) = parse_range(range)?;
            pos += 1;
            let media = media.to_ascii_lowercase();
            // Binary only when named: `*/*`, what most clients send, stays SSE.
            if media == frames::CONTENT_TYPE {
                bin.get_or_insert((q, pos));
            }
            let rank = match media.as_str() {
                "text/event-stream" => 3,
                "text/*" => 2,
                "*/*" => 1,
                _ => 0,
            };
            if rank > 0 && sse.is_none_or(|(r, _, _)| rank > r) {
                sse = Some((rank, q, pos));
            }
        }
    }
    Ok(match (bin, sse) {
        (Some((0, _)), _) => false,
        (Some(_), None) => true,
        (Some((bq, bp)), Some((_, sq, sp))) => bq > sq || (bq == sq && bp < sp),
        (None, _) => false,
    })
}

/// A media range's `type/subtype` and its q-value in thousandths.
fn parse_range(range: &str) -> Result<(&str, u16), ApiError> {
    let bad = || ApiError::bad_request(format!("Accept: '{range}' is not a media range"));
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or_default().trim();
    let (ty, sub) = media.split_once('/').ok_or_else(bad)?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(ty) || !token(sub) {
        return Err(bad());
    }
    let mut q = 1000;
    for p in parts {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("q") {
            q = qvalue(value.trim()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Accept: '{range}' has a q that is not a qvalue (0 to 1, three decimals at most)"
                ))
            })?;
        }
    }
    Ok((media, q))
}

/// RFC 9110's qvalue, in thousandths.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// The binary answer: starts the pump and returns the frames as the body.
pub fn respond(state: AppState, session: Session, since: u64, watch: Watch) -> Response {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let pump = BinPump {
        state,
        session,
        cursor: since,
        tx,
        exit_code: None,
    };
    tokio::spawn(pump.run(watch));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(bytes)) => Some((Ok::<_, Infallible>(bytes), rx)),
            Ok(None) => None,
            Err(_) => {
                let mut b = BytesMut::with_capacity(HEADER_LEN);
                frames::put_header(&mut b, frames::KEEPALIVE, 0, 0);
                Some((Ok(b.freeze()), rx))
            }
        }
    });
    (
        axum::Extension(Resumable),
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(frames::CONTENT_TYPE),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::VARY, HeaderValue::from_static("accept")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// A `process/read` of what follows `after_seq` (as the SSE pump's).
fn read_params(session: &Session, after_seq: u64) -> ProcessReadParams {
    ProcessReadParams {
        process_id: session.row.process_id.clone(),
        after_seq: Some(after_seq),
        max_bytes: Some(READ_MAX_BYTES),
        wait_ms: None,
    }
}

/// Frames being written into one buffer; consecutive output of one stream
/// goes into one frame (its header's seq and length patched as it grows).
#[derive(Default)]
struct Frames {
    buf: BytesMut,
    /// Where the open output frame's header is, and its type.
    open: Option<(usize, u8)>,
}

impl Frames {
    fn output(&mut self, stream: ExecStream, seq: u64, data: &[u8]) {
        let kind = frames::output_type(stream);
        if let Some((at, k)) = self.open {
            let len = self.buf.len() - at - HEADER_LEN;
            if k == kind && len + data.len() <= frames::MAX_PAYLOAD {
                self.buf[at + 1..at + 9].copy_from_slice(&seq.to_be_bytes());
                self.buf[at + 9..at + 13]
                    .copy_from_slice(&((len + data.len()) as u32).to_be_bytes());
                self.buf.extend_from_slice(data);
                return;
            }
        }
        self.open = Some((self.buf.len(), kind));
        frames::put_frame(&mut self.buf, kind, seq, data);
    }

    fn control(&mut self, kind: u8, seq: u64, payload: &[u8]) {
        self.open = None;
        frames::put_frame(&mut self.buf, kind, seq, payload);
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self) -> Bytes {
        self.open = None;
        self.buf.split().freeze()
    }
}

struct BinPump {
    state: AppState,
    session: Session,
    /// The last seq written for the client (or reported lost).
    cursor: u64,
    tx: mpsc::Sender<Bytes>,
    /// From a `process/exited` notification, for an `exit` whose close
    /// arrives by notification.
    exit_code: Option<i32>,
}

impl BinPump {
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
            // As the SSE pump: catch up with no subscription, then follow.
            self.pull().await?;
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

    /// Catches up with `process/read` (one read ahead) until a read returns
    /// nothing new; each read's chunks go out as one buffer. Sends `exit`
    /// and stops if the process is closed.
    async fn pull(&mut self) -> Result<(), Stop> {
        let mut ahead: Option<ReadAhead> = None;
        loop {
            let read = match ahead.take() {
                Some(next) if next.after_seq == self.cursor => next.result().await,
                _ => {
                    let params = read_params(&self.session, self.cursor);
                    let link = &self.session.link;
                    link.request(method::PROCESS_READ, &params, RPC_TIMEOUT)
                        .await
                }
            };
            let r = match read {
                Ok(r) => r,
                Err(LinkError::Disconnected { .. }) => {
                    self.relink().await?;
                    continue;
                }
                Err(e) => {
                    let e = processes::map_rpc(&self.session, e);
                    return self.fail(e.code, &e.message).await;
                }
            };
            if let Some(last) = r.chunks.last() {
                let params = read_params(&self.session, last.seq.max(self.cursor));
                ahead = Some(ReadAhead::send(self.session.link.clone(), params));
            }
            let mut out = Frames::default();
            if let Some(first) = r.chunks.first() {
                let lost = r.lost_bytes.or_else(|| {
                    self.session.link.lost_between(
                        &self.session.row.process_id,
                        self.cursor,
                        first.seq,
                    )
                });
                self.report_loss(&mut out, first.seq, lost);
            }
            let got_chunks = !r.chunks.is_empty();
            let size: u64 = r.chunks.iter().map(|c| c.chunk.len()).sum();
            out.buf.reserve(size as usize + HEADER_LEN * 2);
            let mut bytes_out = 0u64;
            for c in r.chunks {
                if c.seq <= self.cursor {
                    continue;
                }
                // Raw from an execgate executor; base64 from a stock codex.
                let Ok(data) = c.chunk.to_bytes() else {
                    return self
                        .fail(
                            code::EXECUTOR_ERROR,
                            "the executor sent output that is not base64",
                        )
                        .await;
                };
                out.output(c.stream, c.seq, &data);
                self.cursor = c.seq;
                bytes_out += data.len() as u64;
            }
            self.count_out(bytes_out);
            if !out.is_empty() {
                self.send(out.take()).await?;
            }
            if got_chunks {
                continue;
            }
            if r.closed {
                let last = r.next_seq.saturating_sub(1).max(self.cursor);
                return self.exit(last, r.exit_code.or(self.exit_code)).await;
            }
            return Ok(());
        }
    }

    fn count_out(&mut self, bytes: u64) {
        if bytes > 0 {
            self.session.audit.record().add_bytes_out(bytes);
            if let Some(m) = crate::metrics::get() {
                m.output(bytes, 0);
            }
        }
    }

    /// A `lost` frame for the seqs between the cursor and `first`, exactly
    /// as the SSE pump's `lost` event.
    fn report_loss(&mut self, out: &mut Frames, first: u64, lost_bytes: Option<u64>) {
        if first <= self.cursor + 1 {
            return;
        }
        let (from_seq, to_seq) = (self.cursor + 1, first - 1);
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
        let data = json!({"from_seq": from_seq, "to_seq": to_seq, "bytes": bytes}).to_string();
        out.control(frames::LOST, to_seq, data.as_bytes());
        self.cursor = to_seq;
    }

    /// Takes notifications while they continue the cursor exactly; those
    /// already queued go out together.
    async fn follow(&mut self, sub: &mut Subscription) -> Result<Next, Stop> {
        let mut out = Frames::default();
        let mut bytes_out = 0u64;
        let next = loop {
            if sub.backlog() > MAX_BACKLOG {
                break Next::Resubscribe;
            }
            // What is already queued, without waiting (recv is cancel-safe).
            let ready = if out.len() < BATCH_BYTES {
                sub.recv().now_or_never()
            } else {
                None
            };
            let event = match ready {
                Some(e) => e,
                None => {
                    if !out.is_empty() {
                        self.count_out(std::mem::take(&mut bytes_out));
                        self.send(out.take()).await?;
                    }
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
                    if seq <= self.cursor => {}
                ProcessEvent::Output { seq, stream, data } if seq == self.cursor + 1 => {
                    out.output(stream, seq, &data);
                    bytes_out += data.len() as u64;
                    self.cursor = seq;
                }
                ProcessEvent::Exited { seq, exit_code } if seq == self.cursor + 1 => {
                    self.exit_code = Some(exit_code);
                    self.cursor = seq;
                }
                ProcessEvent::Closed { seq } if seq == self.cursor + 1 => {
                    if let Some(code) = self.exit_code {
                        self.count_out(std::mem::take(&mut bytes_out));
                        self.exit_frame(&mut out, seq, Some(code));
                        self.send(out.take()).await?;
                        self.finish(Some(code));
                        return Err(Stop::Done);
                    }
                    break Next::Pull;
                }
                _ => break Next::Pull,
            }
        };
        self.count_out(bytes_out);
        if !out.is_empty() {
            self.send(out.take()).await?;
        }
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

    fn exit_frame(&mut self, out: &mut Frames, last_seq: u64, exit_code: Option<i32>) {
        let data = json!({ "exit_code": exit_code }).to_string();
        out.control(frames::EXIT, last_seq, data.as_bytes());
        self.cursor = self.cursor.max(last_seq);
    }

    fn finish(&mut self, exit_code: Option<i32>) {
        self.session.audit.record().exit_code = exit_code;
        self.session.audit.succeed();
    }

    async fn exit(&mut self, last_seq: u64, exit_code: Option<i32>) -> Result<(), Stop> {
        let mut out = Frames::default();
        self.exit_frame(&mut out, last_seq, exit_code);
        self.send(out.take()).await?;
        self.finish(exit_code);
        Err(Stop::Done)
    }

    async fn fail(&mut self, code: &str, message: &str) -> Result<(), Stop> {
        self.session.audit.fail(code);
        let mut out = Frames::default();
        let data = json!({"code": code, "message": message}).to_string();
        out.control(frames::ERROR, self.cursor, data.as_bytes());
        self.send(out.take()).await?;
        Err(Stop::Done)
    }

    async fn send(&self, bytes: Bytes) -> Result<(), Stop> {
        self.tx.send(bytes).await.map_err(|_| Stop::ClientGone)
    }
}
