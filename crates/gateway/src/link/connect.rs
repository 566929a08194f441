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
const UNLIMITED: u64 = u64::MAX;

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
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Encoded>();
    let link = Link::new(
        row.exe_id.clone(),
        row.workspace.clone(),
        row.name.clone(),
        tx,
    );
    link.set_ledger(state.ledger(&row.exe_id));

    let ping_timeout = state.config().ping_timeout;
    // Three pings per timeout, so that one lost or late pong is no death.
    let ping_every = (ping_timeout / 3).max(Duration::from_millis(100));
    let writer_link = link.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
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
                _ = ping.tick() => {
                    // A link that just spoke needs no ping.
                    let quiet_ms = now_ms() - writer_link.last_seen_ms();
                    if quiet_ms < ping_every.as_millis() as i64 / 2 {
                        continue;
                    }
                    WsMessage::Ping(Bytes::new())
                }
                _ = writer_link.closed() => break,
            };
            // An executor that does not read (hung, or hostile) must not hold
            // the writer once the link is closed.
            tokio::select! {
                sent = sink.send(frame) => if sent.is_err() { break },
                _ = writer_link.closed() => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });

    let reader_link = link.clone();
    let mut reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(WsMessage::Text(t)) => reader_link.dispatch(t.as_bytes()),
                Ok(WsMessage::Binary(b)) => reader_link.dispatch_binary(b),
                Ok(WsMessage::Close(_)) => return "the executor closed the connection".to_string(),
                Ok(_) => reader_link.touch(),
                Err(e) => return format!("connection error: {e}"),
            }
        }
        "the connection ended".to_string()
    });

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
    if state.registry().get(&link.exe_id).is_none() {
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

/// Registers a handshaken link and keeps its bookkeeping until it closes:
/// declares it dead when the executor is silent for the ping timeout.
/// Returns why it closed.
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
    state.registry().insert(link.clone());
    drop(slot);
    if let Err(e) = state.store().mark_connected(&link.exe_id, &info).await {
        tracing::warn!("could not record the connect of {}: {e}", link.exe_id);
    }
    tracing::info!(exe_id = %link.exe_id, name = %link.name, workspace = %link.workspace, kind = %info.kind, version = %info.version, "executor connected");

    let ping_timeout = state.config().ping_timeout;
    let record_every = state.config().ping_interval;
    let mut tick = tokio::time::interval((ping_timeout / 4).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut recorded = Instant::now();
    loop {
        tokio::select! {
            r = &mut *reader => return r.unwrap_or_else(|e| format!("reader failed: {e}")),
            _ = link.closed() => {
                return link.close_reason().unwrap_or("closed by the gateway").to_string()
            }
            _ = tick.tick() => {
                let seen = link.last_seen_ms();
                let silent_ms = now_ms() - seen;
                // Pings go out every third of the timeout: the executor (or
                // the network to it) is hung or gone.
                if silent_ms > ping_timeout.as_millis() as i64 {
                    return format!(
                        "no frame or pong from the executor for {:.1}s (ping timeout {}s); declared dead",
                        silent_ms as f64 / 1000.0,
                        ping_timeout.as_secs_f64()
                    );
                }
                if recorded.elapsed() >= record_every {
                    recorded = Instant::now();
                    if let Err(e) = state.store().touch_executor(&link.exe_id, seen).await {
                        tracing::warn!("could not record last_seen of {}: {e}", link.exe_id);
                    }
                }
            }
        }
    }
}

/// `"execgate"` when the executor announced execgate's extensions, else `"codex"`.
pub fn executor_kind(hs: &Handshake) -> &'static str {
    if hs.info.execgate.is_some() {
        "execgate"
    } else {
        "codex"
    }
}
