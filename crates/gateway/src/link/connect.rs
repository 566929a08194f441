//! An executor's link, once its WebSocket is upgraded: the handshake
//! (`initialize` with `resumeSessionId` when the executor's session is
//! known, so processes survive reconnects and gateway restarts, then
//! `initialized`), registering the link, and driving the socket for the
//! link's whole life: a reader task feeds [`Link::dispatch`], a writer task
//! sends queued frames and pings. The HTTP side (register, tickets, SigV4,
//! the upgrade itself) is `crate::http::executor`.
//!
//! What an executor can make the gateway hold is bounded (README, "Security
//! model"): at most [`HANDSHAKE_READ_BUDGET`] bytes read from its socket
//! before the handshake is done ([`Budgeted`]); frames of at most
//! [`MAX_FRAME`] after (the one read buffer a link keeps is at most that
//! large). A link silent for the ping timeout is declared dead.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use execgate_protocol::exec::{method, ClientExt, InitializeParams, InitializeResult};
use execgate_protocol::jsonrpc::Encoded;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::link::host::Host;
use crate::link::registry::HandshakeSlot;
use crate::link::{Handshake, Link, LinkError};
use crate::store::{now_ms, ConnectInfo, ExecutorRow};

/// Largest frame (and message) accepted on a link once its handshake is
/// done. The largest legitimate ones: `read_file`'s 32 MiB through
/// `fs/readRange` (raw, in a binary frame), and a stock codex's whole-file
/// `fs/readFile` as base64 (files up to ~48 MiB this way).
///
/// tungstenite reads each frame into one buffer and keeps reading the next
/// frames into what is left of it, reusing the whole allocation when it can:
/// after a large frame, a live link keeps up to this much allocated (60 MiB
/// measured after a 60 MiB frame) until it closes or a frame needs more.
/// Hence a cap sized to the largest legitimate frame, not 256 MiB.
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes a link may read from its socket before its handshake is done: the
/// executor has only `initialize`'s answer to send (a few KiB, more with
/// custom tools' schemas). Past it the link is dropped.
pub const HANDSHAKE_READ_BUDGET: u64 = 1 << 20;

/// Bytes the link reads from its socket at a time, and the read buffer a
/// link starts with. tungstenite's default (128 KiB) is allocated up front
/// per connection and dominated an idle link's memory (~139 KiB each at
/// 10,000 links); a large frame still gets a buffer of its own size, read
/// in steps of this many bytes. See BENCHMARKS.md, "Idle executors".
pub const LINK_READ_BUFFER: usize = 16 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// After a write to the socket failed, how long the reader may go on
/// delivering what the executor sent before it (it ends at the socket's end,
/// which comes at once after a reset) before the link closes anyway.
const WRITE_FAILED_GRACE: Duration = Duration::from_secs(1);
/// codex answers -32010 to a `resumeSessionId` whose session is still
/// attached to its previous connection; it detaches once that socket is gone.
const SESSION_ATTACHED: i64 = -32010;
/// How long to keep retrying a resume that codex says is still attached.
const ATTACHED_RETRY_FOR: Duration = Duration::from_secs(10);

pub type LinkSocket = WebSocketStream<Budgeted<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>>;

/// A stream whose reads draw on `budget` (bytes) until it is `u64::MAX`:
/// past it, reads fail, and the WebSocket with them. This caps what a link
/// reads before its handshake whatever frame sizes the executor announces.
pub struct Budgeted<T> {
    inner: T,
    budget: Arc<AtomicU64>,
}

impl<T> Budgeted<T> {
    /// `inner`, read through `budget`.
    pub fn new(inner: T, budget: Arc<AtomicU64>) -> Self {
        Budgeted { inner, budget }
    }
}

/// The budget of a link whose handshake is done.
pub const UNLIMITED: u64 = u64::MAX;

impl<T: AsyncRead + Unpin> AsyncRead for Budgeted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        let left = self.budget.load(Ordering::Acquire);
        if left != UNLIMITED {
            if n > left {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the executor sent more than {HANDSHAKE_READ_BUDGET} bytes before its handshake was done"),
                )));
            }
            // Only this reader spends, and only `lift` raises it to UNLIMITED.
            let _ =
                self.budget
                    .compare_exchange(left, left - n, Ordering::AcqRel, Ordering::Acquire);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Budgeted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves one executor link until its socket closes. `slot` is held until
/// the link is registered (or fails its handshake).
pub async fn run_link(
    state: Host,
    row: ExecutorRow,
    socket: LinkSocket,
    budget: Arc<AtomicU64>,
    slot: Option<HandshakeSlot>,
) {
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::unbounded_channel::<Encoded>();
    let link = Link::new(
        row.exe_id.clone(),
        row.workspace.clone(),
        row.name.clone(),
        tx,
    );
    link.set_ledger(state.ledger(&row.exe_id));

    let writer = spawn_writer(link.clone(), sink, rx, state.config().ping_timeout);
    let mut reader = spawn_reader(link.clone(), stream, "the executor");

    let mut slot = slot;
    let reason = tokio::select! {
        hs = handshake(&state, &link, row.session_id.clone()) => match hs {
            Ok(hs) => {
                // The handshake is done: full-size frames from now on.
                budget.store(UNLIMITED, Ordering::Release);
                let slot = slot.take();
                serve_link(&state, &link, hs, row.session_id.as_deref(), slot, &mut reader).await
            }
            Err(e) => format!("handshake failed: {e}"),
        },
        r = &mut reader => r.unwrap_or_else(|e| format!("reader failed: {e}")),
        // The link closed itself (its protocol errors, a full send queue).
        _ = link.closed() => link.close_reason().unwrap_or("closed").to_string(),
    };

    link.close(&reason);
    // A failed handshake frees the executor's slot at once: its retry must
    // not meet a 409 for a link that is already gone.
    drop(slot.take());
    reader.abort();
    let _ = writer.await;
    state.registry().remove_if_same(&link);
    if let Some(m) = crate::metrics::get().filter(|_| link.handshake().is_some()) {
        m.link(crate::metrics::LinkEvent::Disconnected);
    }
    // A replica's link that lost its lease leaves the record to the new
    // holder.
    let released = match state.cluster() {
        Some(cluster) if link.epoch() > 0 => cluster.release_lease(state.store(), &link).await,
        _ => true,
    };
    if released && state.registry().get(&link.exe_id).is_none() {
        if let Err(e) = state
            .store()
            .mark_disconnected(&link.exe_id, link.last_seen_ms())
            .await
        {
            tracing::warn!("could not record the disconnect of {}: {e}", link.exe_id);
        }
    }
    tracing::info!(exe_id = %link.exe_id, name = %link.name, workspace = %link.workspace, "executor disconnected: {reason}");
}

/// Drives `link`'s outgoing queue `rx` into `sink` until the link closes:
/// the frames, and the pings of [`Liveness`] (a link silent for
/// `ping_timeout` is closed as dead). An executor's link and a link to an
/// executor through a peer replica (`peer`) are driven alike.
pub(crate) fn spawn_writer<S>(
    link: Arc<Link>,
    mut sink: S,
    mut rx: mpsc::UnboundedReceiver<Encoded>,
    ping_timeout: Duration,
) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Sink<WsMessage> + Unpin + Send + 'static,
    S::Error: std::fmt::Display,
{
    let liveness = Liveness::new(ping_timeout);
    let writer_link = link;
    tokio::spawn(async move {
        let mut liveness = liveness;
        // One timer per link, set to the next moment that matters: the
        // next ping, or the ping timeout (see `Liveness`).
        let timer =
            tokio::time::sleep_until(on_grid(tokio::time::Instant::now() + liveness.ping_after));
        tokio::pin!(timer);
        let mut write_failed: Option<String> = None;
        'frames: loop {
            let frame = tokio::select! {
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        writer_link.written(&frame);
                        match frame {
                            Encoded::Text(text) => WsMessage::Text(text.into()),
                            Encoded::Binary(data) => WsMessage::Binary(data.into()),
                        }
                    }
                    None => break,
                },
                _ = &mut timer => {
                    let (ping, next) = liveness.check(&writer_link, true);
                    timer.as_mut().reset(next);
                    if !ping {
                        continue;
                    }
                    WsMessage::Ping(Bytes::new())
                }
                _ = writer_link.closed() => break,
            };
            // An executor that does not read (hung, or hostile) must not hold
            // the writer once the link is closed, and is declared dead on
            // time even while a frame waits for its socket.
            let send = sink.send(frame);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    sent = &mut send => match sent {
                        Ok(()) => break,
                        Err(e) => {
                            write_failed = Some(format!("could not write to the executor: {e}"));
                            break 'frames;
                        }
                    },
                    _ = writer_link.closed() => break 'frames,
                    _ = &mut timer => {
                        let (_, next) = liveness.check(&writer_link, false);
                        timer.as_mut().reset(next);
                    }
                }
            }
            if liveness.owed {
                timer.as_mut().reset(tokio::time::Instant::now());
            }
        }
        if let Some(reason) = write_failed {
            // The socket failed, but the answers the executor sent before
            // it went (say a moving executor's last answers, then a reset)
            // may still wait unread: closing the link now would fail
            // requests whose answers are here. The reader delivers them and
            // ends at the socket's end, which closes the link; nobody else
            // watches the link's silence now, so this waits
            // `WRITE_FAILED_GRACE` at most. What is queued was never written:
            // new requests are refused (unsent) from now on.
            rx.close();
            let _ = tokio::time::timeout(WRITE_FAILED_GRACE, writer_link.closed()).await;
            writer_link.close(&reason);
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    })
}

/// Feeds `link` the frames read from `stream` until it ends; returns why.
/// `peer` names the other end in that reason.
pub(crate) fn spawn_reader<St>(
    link: Arc<Link>,
    mut stream: St,
    peer: &'static str,
) -> tokio::task::JoinHandle<String>
where
    St: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin
        + Send
        + 'static,
{
    let reader_link = link;
    tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(WsMessage::Text(t)) => reader_link.dispatch(t.as_bytes()),
                Ok(WsMessage::Binary(b)) => reader_link.dispatch_binary(b),
                Ok(WsMessage::Close(frame)) => {
                    if frame.is_some_and(|f| f.reason.starts_with(super::peer::ALL_ANSWERED)) {
                        reader_link.set_all_answered();
                    }
                    return format!("{peer} closed the connection");
                }
                Ok(_) => reader_link.touch(),
                Err(e) => return format!("connection error: {e}"),
            }
        }
        "the connection ended".to_string()
    })
}

async fn handshake(
    state: &Host,
    link: &Arc<Link>,
    resume: Option<String>,
) -> Result<Handshake, String> {
    let params = InitializeParams {
        client_name: "execgate-gateway".into(),
        resume_session_id: resume.clone(),
        // Output and file data may come raw (an execgate executor); a
        // stock codex ignores this.
        execgate: Some(ClientExt {
            binary_frames: true,
        }),
    };
    let attached_until = Instant::now() + ATTACHED_RETRY_FOR;
    let first = loop {
        let r = link
            .request::<_, InitializeResult>(method::INITIALIZE, &params, HANDSHAKE_TIMEOUT)
            .await;
        match r {
            // codex still holds the session for the executor's previous
            // connection (the gateway may not have noticed it die yet):
            // drop the gateway's side of it and ask again.
            Err(LinkError::Rpc { ref error, .. })
                if error.code == SESSION_ATTACHED && Instant::now() < attached_until =>
            {
                if let Some(old) = state.registry().get(&link.exe_id) {
                    if !Arc::ptr_eq(&old, link) {
                        old.close("the executor reconnected");
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => break other,
        }
    };
    let result: InitializeResult = match first {
        Ok(r) => r,
        // codex refuses an unknown or expired resumeSessionId (-32600):
        // start a fresh session instead.
        Err(LinkError::Rpc { error, .. }) if resume.is_some() => {
            tracing::warn!(exe_id = %link.exe_id, "executor refused to resume its session: {error}");
            let fresh = InitializeParams {
                resume_session_id: None,
                ..params.clone()
            };
            link.request(method::INITIALIZE, &fresh, HANDSHAKE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    link.notify(method::INITIALIZED, serde_json::json!({}))
        .map_err(|e| e.to_string())?;
    if let Some(old) = resume {
        if old != result.session_id {
            // The executor no longer has the session its processes lived in:
            // it restarted, or the session outlived its detach TTL.
            tracing::warn!(exe_id = %link.exe_id, "executor did not resume session {old}; its processes are gone");
        }
    }
    let ext = result.environment_info.ext();
    Ok(Handshake {
        session_id: result.session_id,
        info: result.environment_info,
        ext,
    })
}

/// Registers a handshaken link (its lease, the registry, the store's
/// record) and waits for it to close (its writer declares it dead when the
/// executor is silent for the ping timeout). Returns why it closed.
async fn serve_link(
    state: &Host,
    link: &Arc<Link>,
    hs: Handshake,
    previous_session: Option<&str>,
    slot: Option<HandshakeSlot>,
    reader: &mut tokio::task::JoinHandle<String>,
) -> String {
    let info = ConnectInfo {
        session_id: hs.session_id.clone(),
        os: hs.info.platform_os.clone(),
        version: hs.info.executor_version.clone(),
        kind: executor_kind(&hs).into(),
    };
    if previous_session != Some(hs.session_id.as_str()) {
        // Another session: the processes the ledger knew are gone.
        state.ledger(&link.exe_id).clear();
    }
    link.set_handshake(hs);
    // A replica takes the executor's lease (epoch + 1) before serving it.
    if let Some(cluster) = state.cluster() {
        if let Err(e) = cluster.take_lease(state.store(), link).await {
            return format!("could not take the executor's lease: {e}");
        }
    }
    state.registry().insert(link.clone());
    if let Some(m) = crate::metrics::get() {
        m.link(crate::metrics::LinkEvent::Connected);
    }
    drop(slot);
    if let Err(e) = state.store().mark_connected(&link.exe_id, &info).await {
        tracing::warn!("could not record the connect of {}: {e}", link.exe_id);
    }
    tracing::info!(exe_id = %link.exe_id, name = %link.name, workspace = %link.workspace, kind = %info.kind, version = %info.version, "executor connected");

    // The ping timeout is the writer's (`Liveness`); `last_seen` is
    // recorded for every link at once (`link::last_seen`).
    tokio::select! {
        r = &mut *reader => r.unwrap_or_else(|e| format!("reader failed: {e}")),
        _ = link.closed() => link.close_reason().unwrap_or("closed by the gateway").to_string(),
    }
}

/// When a link is pinged and when it is declared dead, on one timer per
/// link (the writer's). A link quiet for half the ping timeout gets a
/// WebSocket ping; one silent (no frame, no pong) for the whole timeout is
/// closed as dead, failing its calls in flight. An idle link thus costs
/// one timer wake-up and one ping per half timeout (a third before, with
/// a second timer checking every quarter), and a hung executor is declared
/// dead within [`LIVENESS_GRID`] of its timeout, even while a frame waits
/// for its socket.
struct Liveness {
    timeout_ms: i64,
    ping_after: Duration,
    /// The `last_seen_ms` a ping went out for (no answer since, if it is
    /// still the link's).
    pinged_for: Option<i64>,
    /// A ping fell due while a frame was being written.
    owed: bool,
}

impl Liveness {
    fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout_ms: timeout.as_millis() as i64,
            ping_after: (timeout / 2).max(Duration::from_millis(50)),
            pinged_for: None,
            owed: false,
        }
    }

    /// At a timer: closes a silent link; else whether to ping now (only
    /// when the writer `can_ping`), and when to look again.
    fn check(&mut self, link: &Link, can_ping: bool) -> (bool, tokio::time::Instant) {
        let now = now_ms();
        let seen = link.last_seen_ms();
        let silent_ms = now - seen;
        let at = |ms: i64| {
            on_grid(tokio::time::Instant::now() + Duration::from_millis((ms - now).max(1) as u64))
        };
        if silent_ms > self.timeout_ms {
            let reason = format!(
                "no frame or pong from the executor for {:.1}s (ping timeout {}s); declared dead",
                silent_ms as f64 / 1000.0,
                self.timeout_ms as f64 / 1000.0
            );
            link.close(&reason);
            return (false, at(now + self.timeout_ms));
        }
        let ping_after_ms = self.ping_after.as_millis() as i64;
        let dead_at = seen + self.timeout_ms + 1;
        if self.pinged_for == Some(seen) {
            // A ping is out and unanswered: look again at the timeout.
            return (false, at(dead_at));
        }
        // A link that spoke within half the ping interval needs no ping yet.
        if silent_ms < ping_after_ms / 2 {
            return (false, at((seen + ping_after_ms).min(dead_at)));
        }
        if !can_ping {
            // A frame is being written: ping right after it.
            self.owed = true;
            return (false, at(dead_at));
        }
        self.owed = false;
        self.pinged_for = Some(seen);
        (true, at((now + ping_after_ms).min(dead_at)))
    }
}

/// The liveness timers of all links fall on a common grid of this step, so
/// that pings go out (and pongs come back) in batches: a wake-up of the
/// runtime per step for thousands of idle links, not one per link, which
/// is most of what an idle link costs (BENCHMARKS.md, session 7).
const LIVENESS_GRID: Duration = Duration::from_millis(100);

/// `t`, rounded up to the next point of [`LIVENESS_GRID`].
fn on_grid(t: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = tokio::time::Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now));
    let step = LIVENESS_GRID.as_nanos();
    let steps = t.saturating_duration_since(epoch).as_nanos().div_ceil(step);
    epoch + Duration::from_nanos((steps * step) as u64)
}

/// `"execgate"` when the executor announced execgate's extensions, else `"codex"`.
pub fn executor_kind(hs: &Handshake) -> &'static str {
    if hs.info.execgate.is_some() {
        "execgate"
    } else {
        "codex"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One timer per link: a quiet link is pinged once per silence, a
    /// silent one is declared dead at its timeout; timers fall on the grid.
    #[tokio::test]
    async fn liveness_pings_a_quiet_link_once_and_declares_a_silent_one_dead() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let link = Link::new("e".into(), "w".into(), "laptop".into(), tx);
        let mut l = Liveness::new(Duration::from_secs(2));
        let (ping, next) = l.check(&link, true);
        assert!(!ping, "a link just heard from needs no ping");
        assert!(next > tokio::time::Instant::now() + Duration::from_millis(800));
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Writing a frame: the ping is owed, sent at the next look.
        assert!(!l.check(&link, false).0);
        assert!(l.owed);
        assert!(l.check(&link, true).0, "quiet for half the ping interval");
        assert!(!l.check(&link, true).0, "one ping per silence");
        link.touch();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(!link.is_closed());
        assert!(!l.check(&link, true).0);
        assert!(link.is_closed());
        assert!(link.close_reason().unwrap().contains("declared dead"));

        let t = tokio::time::Instant::now();
        let (a, b) = (on_grid(t), on_grid(t + Duration::from_millis(1)));
        assert!(a >= t && a - t <= LIVENESS_GRID);
        assert!(b == a || b - a == LIVENESS_GRID);
        assert_eq!(on_grid(a), a);
    }

    /// Regression (rolling restart under load, CI of stop 28): a moving
    /// executor answered a request, sent its Close and reset the
    /// connection; the writer's next write failed and closed the link at
    /// once, so the answer, already on this side, was lost and the request
    /// reported with its outcome unknown. Now the reader delivers what came
    /// before the socket's end; requests made after the failure are
    /// refused unsent.
    #[tokio::test]
    async fn a_failed_write_loses_no_answer_already_received() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let link = Link::new("e".into(), "w".into(), "laptop".into(), tx);
        // A socket whose writes go through until the peer resets it.
        let (wire, mut written) = tokio::sync::mpsc::unbounded_channel::<WsMessage>();
        let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = reset.clone();
        let sink = futures_util::sink::unfold((), move |(), frame: WsMessage| {
            let result = if failing.load(Ordering::Acquire) {
                Err("IO error: Connection reset by peer (os error 104)".to_string())
            } else {
                wire.send(frame).map_err(|e| e.to_string())
            };
            async move { result }
        });
        let (answers, received) = tokio::sync::mpsc::unbounded_channel::<WsMessage>();
        let stream = futures_util::stream::unfold(received, |mut received| async move {
            let frame = received.recv().await?;
            Some((
                Ok::<_, tokio_tungstenite::tungstenite::Error>(frame),
                received,
            ))
        });
        let writer = spawn_writer(link.clone(), Box::pin(sink), rx, Duration::from_secs(60));
        let reader = spawn_reader(link.clone(), Box::pin(stream), "the executor");

        let l = link.clone();
        let call = tokio::spawn(async move {
            l.request_value(
                "fs/readFile",
                serde_json::json!({}),
                Duration::from_secs(10),
            )
            .await
        });
        let WsMessage::Text(request) = written.recv().await.unwrap() else {
            panic!("a text frame");
        };
        let id = serde_json::from_str::<serde_json::Value>(&request).unwrap()["id"].clone();
        // The executor answers and goes; our next write meets the reset
        // before the reader has looked at the answer.
        reset.store(true, Ordering::Release);
        link.notify("initialized", serde_json::json!({})).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!link.is_closed(), "the link waits for its reader");
        assert!(matches!(
            link.request_value("fs/readFile", serde_json::json!({}), Duration::from_secs(1))
                .await,
            Err(LinkError::Disconnected { sent: false, .. })
        ));
        let answer = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}});
        answers
            .send(WsMessage::Text(answer.to_string().into()))
            .unwrap();
        assert_eq!(
            call.await.unwrap().unwrap(),
            serde_json::json!({"ok": true})
        );
        drop(answers);
        assert_eq!(reader.await.unwrap(), "the connection ended");
        writer.await.unwrap();
        assert!(link.is_closed());
    }
}
