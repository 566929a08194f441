//! The gateway's one listener: accepts TCP connections and serves each with
//! hyper's HTTP/1 (upgrades included: executor links, `/bridge`), bounded so
//! that a client holding sockets open cannot starve everyone else.
//!
//! `axum::serve` was used before; it sets no timer, so hyper applied no
//! header read timeout, and it admits every connection. A client that sent
//! half a request header and stopped kept its socket (and a descriptor)
//! forever: ~1,100 such sockets, with the usual 1,024-descriptor limit,
//! stopped the gateway. Here:
//!
//! - **Header read timeout** ([`ListenerConfig::header_read_timeout`],
//!   `--header-read-timeout-secs`, 10 s): a connection that has not sent
//!   the complete head of its next request within it is closed. In hyper
//!   1.x the timer runs while the connection waits for a request head, the
//!   first one *and* the next one on a kept-alive connection (after each
//!   response hyper re-arms it: `proto/h1/conn.rs`, `State::idle`), so it
//!   is also the idle keep-alive timeout. It does not run while a request
//!   is being served: not during a request body, a long-poll, an SSE
//!   response, nor after a WebSocket upgrade (the socket then belongs to
//!   the WebSocket, whose liveness the link's pings decide).
//! - **Connection cap** ([`ListenerConfig::max_connections`],
//!   `--max-connections`): past it, a new connection is accepted, answered
//!   `503 too_many_connections` (best effort, one non-blocking write) and
//!   closed at once, so the accept queue never backs up and the admitted
//!   connections are served as before. A connection counts until its
//!   socket closes, WebSockets included (the admission permit lives in the
//!   socket's wrapper, [`Admitted`], which an upgrade carries along).
//! - `EMFILE`/`ENFILE` on accept (the descriptor table is full despite the
//!   cap: other descriptors, a low limit) pause accepting for a moment
//!   instead of spinning, and are logged at most every 10 s.
//! - Every accepted socket gets TCP_NODELAY (an invariant: small frames
//!   must not wait for Nagle).
//! - **Request heads** are at most [`MAX_HEADER_SIZE`] (64 KiB) and 100
//!   header fields (hyper's default); past either, 431 `headers_too_large`.
//!   What hyper refuses on its own (431, a bad header byte or request line:
//!   400) carries the envelope like every other
//!   error: see [`parse_errors`].
//!
//! HTTP/2 is not compiled in (it was not under `axum::serve` either).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use execgate_protocol::connectors::error_code as code;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::error::ApiError;
pub use crate::ops::state::{ListenerConfig, DEFAULT_MAX_CONNECTIONS};

mod parse_errors;

/// Descriptors kept back from the connection cap for everything else the
/// gateway opens: the store's database files and pool connections, the
/// audit database, outgoing connections to a token authority, logs.
pub const FD_RESERVE: u64 = 256;
/// The most bytes a request head may take (request line and headers).
/// hyper's default is its read buffer's bound, ~400 KiB, which 20,000
/// connections could make 8 GB; bearer tokens, capability tokens and SigV4
/// headers take a few KiB at most.
pub const MAX_HEADER_SIZE: usize = 64 * 1024;
/// How long accepting pauses after `EMFILE`/`ENFILE`.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning per this long about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The default connection cap for a soft `RLIMIT_NOFILE` of `fd_limit`:
/// the limit less `FD_RESERVE`, at most `DEFAULT_MAX_CONNECTIONS`, at
/// least 16 (a tiny limit still serves a few).
pub fn default_max_connections(fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(FD_RESERVE).max(16);
    room.min(DEFAULT_MAX_CONNECTIONS as u64) as usize
}

/// Accepts and serves connections on `listener` until the process ends.
pub async fn serve(listener: TcpListener, router: Router, config: ListenerConfig) {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(MAX_HEADER_SIZE)
        .keep_alive(true);
    let refused = Refusals::new(config.max_connections);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                accept_error(&refused, e).await;
                continue;
            }
        };
        // Small frames must not wait for Nagle: every socket gets TCP_NODELAY.
        let _ = tcp.set_nodelay(true);
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                refused.refuse(tcp);
                continue;
            }
        };
        let io = TokioIo::new(Admitted {
            tcp,
            _permit: permit,
            watch: true,
            replacing: None,
        });
        let service = TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(io, service).with_upgrades();
        tokio::spawn(async move {
            // Header timeouts, resets and clients going away end up here;
            // none is the gateway's problem.
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// An admitted connection's socket. Its permit is given back when the
/// socket closes, which for an upgraded connection (a WebSocket) is when
/// the WebSocket ends, not when hyper hands the socket over.
///
/// It also puts the envelope on the answers hyper writes on its own to a
/// request it cannot parse ([`parse_errors`]).
struct Admitted {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Whether writes are still looked at: until a `101` (after it the
    /// socket carries WebSocket frames, never hyper's error answers).
    watch: bool,
    /// An answer with the envelope being written in place of hyper's own.
    replacing: Option<Replacing>,
}

/// [`parse_errors::replacement`] being written.
struct Replacing {
    bytes: Vec<u8>,
    written: usize,
    /// How many bytes of hyper's it stands for: what the write reports once
    /// the replacement is all written, so hyper sees its own answer sent.
    stands_for: usize,
}

impl Admitted {
    /// Looks at a write of `total` bytes starting with `first` (hyper's
    /// error answer is one head, in one buffer): a `101` ends the watch;
    /// hyper's own error answer starts a replacement.
    fn look_at(&mut self, first: &[u8], total: usize) {
        if !first.starts_with(b"HTTP/1.") {
            return;
        }
        if first.get(9..13) == Some(b"101 ") {
            self.watch = false;
        } else if first.len() == total {
            if let Some(bytes) = parse_errors::replacement(first) {
                self.replacing = Some(Replacing {
                    bytes,
                    written: 0,
                    stands_for: total,
                });
            }
        }
    }

    /// Writes the replacement on; done, reports hyper's bytes written.
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(r) = self.replacing.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while r.written < r.bytes.len() {
            match Pin::new(&mut self.tcp).poll_write(cx, &r.bytes[r.written..]) {
                Poll::Ready(Ok(0)) => {
                    self.replacing = None;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => r.written += n,
                Poll::Ready(Err(e)) => {
                    self.replacing = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = r.stands_for;
        self.replacing = None;
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.watch && this.replacing.is_none() {
            this.look_at(buf, buf.len());
        }
        if this.replacing.is_some() {
            return this.poll_replacing(cx);
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.watch && this.replacing.is_none() {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                if first.starts_with(b"HTTP/1.") {
                    let total = bufs.iter().map(|b| b.len()).sum();
                    this.look_at(first, total);
                }
            }
        }
        if this.replacing.is_some() {
            return this.poll_replacing(cx);
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Refusing connections over the cap, and saying so in the log now and then.
struct Refusals {
    /// The whole 503 answer, made once.
    answer: Vec<u8>,
    count: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

impl Refusals {
    fn new(max_connections: usize) -> Self {
        let error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TOO_MANY_CONNECTIONS,
            format!(
                "the gateway serves {max_connections} connections at once (--max-connections); retry shortly"
            ),
        );
        let body = serde_json::to_string(&error.envelope()).unwrap_or_default();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        Refusals {
            answer: answer.into_bytes(),
            count: AtomicU64::new(0),
            last_warned: Mutex::new(None),
        }
    }

    /// Answers 503 if the socket takes it at once (it has room: a fresh
    /// socket does), then closes it. Never waits on the client.
    fn refuse(&self, tcp: TcpStream) {
        let _ = tcp.try_write(&self.answer);
        drop(tcp);
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if self.due() {
            tracing::warn!(
                refused_total = n,
                "connection limit reached: refusing new connections (--max-connections)"
            );
        }
    }

    /// Whether a warning is due (at most one per [`WARN_EVERY`]).
    fn due(&self) -> bool {
        let mut last = self.last_warned.lock().unwrap();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// An accept that failed. Out of descriptors: pause, so that connections
/// closing (header timeouts, clients leaving) free some, rather than spin.
/// Anything else (a connection reset before it was accepted) concerns one
/// connection only.
async fn accept_error(refused: &Refusals, e: io::Error) {
    let out_of_fds = matches!(e.raw_os_error(), Some(EMFILE | ENFILE));
    if out_of_fds {
        if refused.due() {
            tracing::warn!(
                "cannot accept connections: {e} (raise RLIMIT_NOFILE or lower --max-connections)"
            );
        }
        tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
    } else {
        tracing::debug!("accept failed: {e}");
    }
}

/// `EMFILE` and `ENFILE` on Linux and the BSDs (this crate has no libc).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_other_descriptors() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(20_000), 19_744);
        assert_eq!(default_max_connections(1 << 20), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(default_max_connections(100), 16);
    }

    #[test]
    fn the_refusal_is_a_complete_http_answer_with_the_envelope() {
        let r = Refusals::new(7);
        let text = String::from_utf8(r.answer.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], code::TOO_MANY_CONNECTIONS);
        assert!(v["error"]["message"].as_str().unwrap().contains('7'));
    }
}

#[cfg(test)]
mod admitted_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An [`Admitted`] socket and its peer.
    async fn pair() -> (Admitted, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let admitted = Admitted {
            tcp,
            _permit: permit,
            watch: true,
            replacing: None,
        };
        (admitted, peer)
    }

    async fn received(mut admitted: Admitted, mut peer: TcpStream) -> Vec<u8> {
        admitted.shutdown().await.unwrap();
        drop(admitted);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        got
    }

    const HYPERS_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 09:21:14 GMT\r\n\r\n";

    #[tokio::test]
    async fn hypers_error_answer_is_replaced_and_reported_written() {
        let (mut a, peer) = pair().await;
        let bufs = [io::IoSlice::new(HYPERS_431), io::IoSlice::new(b"")];
        // hyper sees its whole answer written.
        assert_eq!(a.write_vectored(&bufs).await.unwrap(), HYPERS_431.len());
        let got = received(a, peer).await;
        let want = crate::http::error::raw_http1_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request's header section is too large: at most 64 KiB and 100 header fields",
        );
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn other_writes_pass_byte_for_byte() {
        let (mut a, peer) = pair().await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let mut sent = [&head[..], b"ok"].concat();
        let bufs = [io::IoSlice::new(head), io::IoSlice::new(b"ok")];
        let n = a.write_vectored(&bufs).await.unwrap();
        a.write_all(&sent[n..]).await.unwrap();
        // After an upgrade nothing is looked at, even hyper's shape.
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
        a.write_all(upgrade).await.unwrap();
        a.write_all(HYPERS_431).await.unwrap();
        sent.extend_from_slice(upgrade);
        sent.extend_from_slice(HYPERS_431);
        assert_eq!(received(a, peer).await, sent);
    }
}
