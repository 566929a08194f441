//! One WebSocket connection to the gateway: reading frames, writing frames,
//! and handing each message to [`RpcConnection`].
//!
//! - **One writer.** A single task owns the socket's sink. Responses and
//!   notifications reach it through one bounded queue, so they leave in the
//!   order they were queued. Responses wait for room in the queue;
//!   notifications are dropped when it is full (see [`crate::notify`]).
//! - **One task per request.** A long-poll `process/read` or a blocked
//!   `process/write` must not hold up other requests. Only `initialize` is
//!   answered inline, so that requests sent right after it see its effect.
//! - **Liveness.** The gateway pings every 30 s; tungstenite answers pings
//!   while we keep reading. If nothing at all arrives for the idle timeout
//!   (90 s), the link is presumed dead and dropped, and `run` reconnects.
//! - **Moving [ext].** On `execgate/move` (a draining gateway; the method
//!   table hands it to the connection, which tells this loop): once the requests in flight on this connection are answered (long-poll
//!   `process/read`s excepted: an empty answer is as good as a late one),
//!   the queued frames are flushed, a Close frame is sent, and `serve`
//!   returns [`Ended::Moved`] so that `run` dials again at once.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use execgate_protocol::exec::{method, MoveParams};
use execgate_protocol::jsonrpc::{DecodeError, Encoded, Envelope, Message};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::WebSocketStream;

use crate::rpc::RpcConnection;
use crate::state::ExecutorState;

/// Drop the link if nothing at all arrives for this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a moving link may take to flush, send its Close frame and
/// read the gateway's.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued for the writer. Bounds memory when the gateway reads
/// slowly; notifications beyond it are dropped, responses wait.
const OUTGOING_QUEUE: usize = 1024;

/// Why a connection ended, for the log.
pub(crate) enum Ended {
    ClosedByGateway,
    Idle(Duration),
    ReadFailed(tungstenite::Error),
    WriteFailed(String),
    /// The gateway asked this executor to move (`execgate/move`); the link
    /// was closed gracefully.
    Moved(MoveParams),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::ClosedByGateway => write!(f, "the gateway closed the connection"),
            Ended::Idle(after) => write!(f, "nothing received for {} s", after.as_secs()),
            Ended::ReadFailed(err) => write!(f, "read failed: {err}"),
            Ended::WriteFailed(err) => write!(f, "write failed: {err}"),
            Ended::Moved(p) => match &p.reason {
                Some(reason) => write!(f, "the gateway asked this executor to move: {reason}"),
                None => write!(f, "the gateway asked this executor to move"),
            },
        }
    }
}

/// Aborts a task when dropped, so that a cancelled `serve` leaves no writer behind.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves JSON-RPC on `ws` until the connection ends. Request tasks are
/// spawned on `tasks`, which outlives the connection: a request in progress
/// (say a write to a slow child) finishes even if the link drops, and all of
/// them are cancelled when `run` is.
pub(crate) async fn serve<S>(
    ws: WebSocketStream<S>,
    state: Arc<ExecutorState>,
    tasks: &mut JoinSet<()>,
    idle_timeout: Duration,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
    let close = Arc::new(Notify::new());
    let mut writer = AbortOnDrop(tokio::spawn(write_frames(sink, rx, close.clone())));
    let conn = Arc::new(RpcConnection::new(state, tx.clone()));
    let mut last_frame = Instant::now();
    let in_flight = InFlight::default();
    // Set by `execgate/move`: leave once nothing is in flight.
    let mut moving: Option<MoveParams> = None;

    // One future for the connection's life: registered once, not per frame.
    let move_asked = conn.move_asked();
    tokio::pin!(move_asked);

    let ended = loop {
        tokio::select! {
            frame = stream.next() => {
                last_frame = Instant::now();
                let decoded = match frame {
                    None => break Ended::ClosedByGateway,
                    Some(Err(err)) => break Ended::ReadFailed(err),
                    Some(Ok(Frame::Close(_))) => break Ended::ClosedByGateway,
                    Some(Ok(Frame::Text(text))) => {
                        Message::decode(text.as_bytes()).map(Envelope::text)
                    }
                    // [ext] A message with its bytes beside it (see
                    // execgate_protocol::blob).
                    Some(Ok(Frame::Binary(data))) => Envelope::decode_binary(data),
                    // Pings are answered by tungstenite itself.
                    Some(Ok(_)) => continue,
                };
                on_frame(decoded, &conn, &tx, tasks, &in_flight).await;
            }
            params = &mut move_asked, if moving.is_none() => {
                tracing::info!(
                    in_flight = in_flight.count(),
                    "the gateway asked this executor to move; leaving once the requests in flight are answered"
                );
                moving = Some(params);
                in_flight.idle.notify_one();
            }
            _ = in_flight.idle.notified(), if moving.is_some() => {
                if in_flight.count() == 0 {
                    break Ended::Moved(moving.take().unwrap_or_default());
                }
            }
            _ = tokio::time::sleep_until(last_frame + idle_timeout) => {
                break Ended::Idle(idle_timeout);
            }
            result = &mut writer.0 => {
                break Ended::WriteFailed(match result {
                    Ok(Ok(())) => "the writer stopped".into(),
                    Ok(Err(err)) => err.to_string(),
                    Err(err) => err.to_string(),
                });
            }
            // Reap finished request tasks so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    if matches!(ended, Ended::Moved(_)) {
        // Flush what is queued (the last answers), then a Close frame.
        close.notify_one();
        let deadline = tokio::time::Instant::now() + CLOSE_FLUSH_TIMEOUT;
        let _ = tokio::time::timeout_at(deadline, &mut writer.0).await;
        // Then the closing handshake: read until the gateway's Close,
        // dropping what it sent meanwhile (a ping, a request that crossed
        // our Close: it is not served, and the gateway reports its outcome
        // unknown). Dropping a socket with bytes unread resets the
        // connection, and a reset can cost the gateway our last answers: it
        // fails its side at once, and ours discards what it had not sent.
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(Ok(frame)) = stream.next().await {
                if let Frame::Close(_) = frame {
                    break;
                }
            }
        })
        .await;
    }
    conn.close();
    ended
}

/// The requests in flight on one connection that a move waits for.
#[derive(Default, Clone)]
struct InFlight {
    count: Arc<AtomicUsize>,
    /// Woken when the count drops to zero.
    idle: Arc<Notify>,
}

impl InFlight {
    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn enter(&self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
}

struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

async fn on_frame(
    decoded: Result<Envelope, DecodeError>,
    conn: &Arc<RpcConnection>,
    tx: &mpsc::Sender<Envelope>,
    tasks: &mut JoinSet<()>,
    in_flight: &InFlight,
) {
    let (message, payload) = match decoded {
        Ok(Envelope { message, payload }) => (Ok(message), payload),
        Err(e) => (Err(e), Bytes::new()),
    };
    match message {
        Ok(Message::Request { id, method, params }) if method == method::INITIALIZE => {
            let reply = conn.request(id, &method, params, payload).await;
            let _ = tx.send(reply.envelope).await;
        }
        Ok(Message::Request { id, method, params }) => {
            let conn = conn.clone();
            let tx = tx.clone();
            // A move waits for every request but the long-polls.
            let guard = (method != method::PROCESS_READ).then(|| in_flight.enter());
            tasks.spawn(async move {
                let reply = conn.request(id, &method, params, payload).await;
                // If the connection is gone the response is lost; the gateway
                // retries on its next connection if it cares.
                let _ = tx.send(reply.envelope).await;
                // Only now may the new process's notifications follow.
                drop(reply.gate);
                drop(guard);
            });
        }
        Ok(Message::Notification { method, params }) => conn.notification(&method, params),
        Ok(Message::Response { id, .. }) => {
            tracing::debug!(%id, "ignoring a response: the executor sends no requests");
        }
        Err(DecodeError {
            id: Some(id),
            error,
        }) => {
            let _ = tx
                .send(Envelope::text(Message::response(id, Err(error))))
                .await;
        }
        Err(DecodeError { id: None, error }) => {
            // JSON-RPC would answer with a null id, which our framing cannot
            // express and no client could match to a request anyway.
            tracing::warn!("dropping an undecodable frame: {error}");
        }
    }
}

/// The writer task: sends queued messages, batching whatever is queued into
/// one flush. When `close` fires, it sends what is queued, then a Close
/// frame, and stops.
async fn write_frames<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Frame>,
    mut rx: mpsc::Receiver<Envelope>,
    close: Arc<Notify>,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            biased;
            envelope = rx.recv() => {
                let Some(envelope) = envelope else { return Ok(()) };
                sink.feed(frame(&envelope)).await?;
                while let Ok(envelope) = rx.try_recv() {
                    sink.feed(frame(&envelope)).await?;
                }
                sink.flush().await?;
            }
            _ = close.notified() => {
                while let Ok(envelope) = rx.try_recv() {
                    sink.feed(frame(&envelope)).await?;
                }
                sink.send(Frame::Close(None)).await?;
                return Ok(());
            }
        }
    }
}

fn frame(envelope: &Envelope) -> Frame {
    match envelope.encode() {
        Encoded::Text(text) => Frame::text(text),
        Encoded::Binary(data) => Frame::binary(data),
    }
}
