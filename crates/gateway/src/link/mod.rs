//! The link layer: executor links. [`connect`] runs a link's session
//! (handshake, resume, the socket's life) once `http::executor` upgraded it;
//! this module is the [`Link`] itself; [`registry`] holds the live ones,
//! whose `last_seen` [`last_seen`] records in the store; [`sigv4`]
//! verifies codex executors; [`seq_ledger`] and [`read_ahead`] serve
//! output reads; [`bridge`] relays a bridge session; [`peer`] holds a
//! replica's executor leases and both ends of the channel through which
//! another replica uses a link held here. It names neither
//! `http`, `ops` nor `auth`: it sees the gateway (its store, registry,
//! config, and the check of a bridge session's renewal token) through
//! [`host::LinkHost`].
//!
//! One live executor link: the gateway's JSON-RPC client side of a connected
//! executor's WebSocket.
//!
//! A link multiplexes many concurrent requests by id and routes the
//! executor's `process/*` notifications to whoever subscribed to that process.
//! When the WebSocket goes away, [`Link::close`] fails every request in flight
//! at once and tells every subscriber, so nothing waits on a dead link.
//!
//! The socket itself is driven by `connect.rs`: a reader task feeds
//! [`Link::dispatch`] and a writer task drains the link's outgoing queue.
//!
//! Bridge sessions (`crate::http::bridge`) share the link: [`Link::request_raw`]
//! sends a request on a bridge client's behalf (under a link id, like any
//! other) and hands back the executor's raw answer, and a [`Tap`] receives
//! the raw notifications of every process id in the bridge's namespace
//! `br-<key>-…` ([`tap_key`]). Process ids of the gateway's own tools never
//! start with `br-`.
//!
//! An executor is a tenant's machine and may misbehave; the link bounds
//! what it can cost the shared gateway (README, "Security model"):
//! - the outgoing queue holds at most [`MAX_QUEUED_BYTES`]; an executor that
//!   stops reading is closed when it fills, never buffered without end;
//! - identifiers it sends are at most [`MAX_ID_LEN`] bytes (a longer process
//!   id is a protocol error, and nothing is kept under it), and the method
//!   name echoed in an error reply is cut to [`MAX_ECHOED_METHOD`];
//! - protocol errors (undecodable frames, answers to ids never sent, requests
//!   to the gateway, malformed notifications) are counted: at most
//!   [`WARNINGS_PER_WINDOW`] are logged per [`ERROR_WINDOW`], and past
//!   [`MAX_ERRORS_PER_WINDOW`] in one window the link is closed with the
//!   reason logged.
pub mod bridge;
pub mod connect;
pub mod host;
pub mod last_seen;
pub mod liveness;
pub mod peer;
pub mod read_ahead;
pub mod registry;
pub mod relay_ahead;
pub mod seq_ledger;
pub mod sigv4;

/// How long a plain executor request (not a long-poll) may take.
pub const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use execgate_protocol::blob;
use execgate_protocol::exec::{
    method, ClosedNotification, EnvironmentInfo, ExitedNotification, ExtCapabilities,
    OutputNotification, Stream,
};
use execgate_protocol::jsonrpc::{
    code as rpc_code, DecodeError, Encoded, Envelope, Id, Message, RpcError,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::link::seq_ledger::SeqLedger;
use crate::store::now_ms;

/// Why a request on a link did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// `sent`: the request had been handed to the link's writer when the
    /// link went away (it may have reached the executor, and may have
    /// run: its outcome is unknown); false when it never left this
    /// gateway (the link was already closed, or its send queue full).
    #[error("executor '{name}' disconnected ({reason}){}", disconnected_tail(*.sent))]
    Disconnected {
        name: String,
        reason: String,
        sent: bool,
    },
    #[error("executor '{name}' did not answer {method} within {after:?}")]
    Timeout {
        name: String,
        method: String,
        after: Duration,
    },
    #[error("executor '{name}' failed {method}: {error}")]
    Rpc {
        name: String,
        method: String,
        error: RpcError,
    },
    /// The executor's policy refused the request (an execgate executor's
    /// -32030 or -32031): 403 or 429, never a tool failure or a 5xx.
    #[error("executor '{name}' refused {method}: {}", error.message)]
    Denied {
        name: String,
        method: String,
        error: RpcError,
    },
    #[error("executor '{name}' answered {method} with an unexpected result: {detail}")]
    BadResponse {
        name: String,
        method: String,
        detail: String,
    },
}

/// The end of [`LinkError::Disconnected`]'s message.
fn disconnected_tail(sent: bool) -> &'static str {
    if sent {
        " after the request was sent: its outcome is unknown"
    } else {
        "; retry when it reconnects"
    }
}

/// Something the executor reported about one process.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessEvent {
    Output {
        seq: u64,
        stream: Stream,
        data: Bytes,
    },
    Exited {
        seq: u64,
        exit_code: i32,
    },
    Closed {
        seq: u64,
    },
    /// The link went away; nothing more will arrive through this subscription.
    LinkLost,
}

/// An answer: the result or error, and the payload of its frame (empty
/// unless it came in a binary frame), which the result's blobs point into.
pub type Answer = (Result<Value, RpcError>, Bytes);
type Pending = HashMap<i64, oneshot::Sender<Answer>>;
type Subscribers = HashMap<String, Vec<(u64, mpsc::UnboundedSender<ProcessEvent>)>>;
/// A raw notification: method and params, as the executor sent them.
pub type RawNotification = (String, Value);
type Taps = HashMap<String, mpsc::Sender<RawNotification>>;

/// Most bytes of frames queued for the executor and not yet written to its
/// socket. Agents' writes fill it (16 MiB bodies at most, ~22 MiB as base64)
/// and the executor drains it; one that stops reading is closed when it is
/// full, and every call in flight on it fails with 503.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// The longest identifier (process id) accepted from an executor. The
/// gateway's own are ~16 bytes; a bridge client's ids are its own choice.
pub const MAX_ID_LEN: usize = 1024;
/// How much of an unknown method's name is echoed in the error reply.
pub const MAX_ECHOED_METHOD: usize = 64;
/// The window protocol errors are counted in.
pub const ERROR_WINDOW: Duration = Duration::from_secs(60);
/// Protocol errors logged per window; the rest are counted, and summed up
/// in the next warning (or the close).
pub const WARNINGS_PER_WINDOW: u32 = 5;
/// More protocol errors than this in one window close the link. A correct
/// executor makes none.
pub const MAX_ERRORS_PER_WINDOW: u32 = 100;

/// Where bridged process ids start: `br-<key>-<the client's id>`.
pub const TAP_PREFIX: &str = "br-";

/// The tap key of a process id in the bridge namespace (`br-<key>-…`).
pub fn tap_key(process_id: &str) -> Option<&str> {
    let rest = process_id.strip_prefix(TAP_PREFIX)?;
    let (key, _) = rest.split_once('-')?;
    Some(key)
}

/// What an executor told the gateway in `initialize`.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub session_id: String,
    pub info: EnvironmentInfo,
    pub ext: ExtCapabilities,
}

pub struct Link {
    pub exe_id: String,
    pub workspace: String,
    pub name: String,
    handshake: OnceLock<Handshake>,
    outgoing: mpsc::UnboundedSender<Encoded>,
    /// The pending map doubles as the closed flag's lock: `close` drains it
    /// and sets `closed` while holding it, so a request either lands before
    /// the drain (and is failed by it) or sees `closed`.
    pending: Mutex<Pending>,
    closed: AtomicBool,
    /// Set by a draining gateway just before it sends `execgate/move`: the
    /// peer channel relays no new request onto this link (`peer::serve`).
    moving: AtomicBool,
    /// Orders `execgate/move` against relayed requests: a request relayed
    /// is queued before the move (the executor answers it) or refused.
    move_order: Mutex<()>,
    /// A relayed link whose owner closed the channel having answered every
    /// request it read ([`peer::ALL_ANSWERED`]): the requests left
    /// unanswered were never sent to the executor.
    all_answered: AtomicBool,
    close_reason: OnceLock<String>,
    next_id: AtomicI64,
    subscribers: Mutex<Subscribers>,
    next_sub: AtomicU64,
    last_seen_ms: AtomicI64,
    closed_notify: tokio::sync::Notify,
    /// Where every process event is also recorded, for exact lost bytes.
    ledger: OnceLock<Arc<SeqLedger>>,
    /// Bridge sessions' notification taps, by key; `taps_live` lets the
    /// notification path skip the lock when there are none.
    taps: Mutex<Taps>,
    taps_live: AtomicUsize,
    /// Bytes in `outgoing` not yet taken by the writer (see [`Link::written`]).
    queued: AtomicUsize,
    errors: Mutex<ProtocolErrors>,
    /// A link to another replica's executor, through that replica
    /// ([`peer`]): subscriptions and taps are announced to the owner
    /// (`peer/watch`, `peer/tap`) instead of `process/setPush`.
    relayed: AtomicBool,
    /// Until when (Unix ms) this replica's lease on the executor holds, and
    /// its fencing epoch ([`peer`]). `i64::MAX` without replicas.
    lease_until_ms: AtomicI64,
    epoch: AtomicI64,
    /// envs/list's JSON of what does not change over the link's life once
    /// its handshake is in (the tools; the executor and policy fields),
    /// interned so that links alike share one copy: filled by the first
    /// listing (`ops::environment`).
    pub listing: OnceLock<(Arc<str>, Arc<str>)>,
}

/// Protocol errors of the current window.
struct ProtocolErrors {
    window_start: Instant,
    count: u32,
    /// Not logged in the windows so far, to be mentioned in the next log line.
    suppressed: u64,
}

/// `s`, cut to at most `max` bytes (at a char boundary), for echoing
/// something an executor sent.
fn shortened(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

fn encoded_len(frame: &Encoded) -> usize {
    match frame {
        Encoded::Text(t) => t.len(),
        Encoded::Binary(b) => b.len(),
    }
}

impl Link {
    /// A link whose outgoing frames go to `outgoing`.
    pub fn new(
        exe_id: String,
        workspace: String,
        name: String,
        outgoing: mpsc::UnboundedSender<Encoded>,
    ) -> Arc<Link> {
        Arc::new(Link {
            exe_id,
            workspace,
            name,
            handshake: OnceLock::new(),
            outgoing,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            moving: AtomicBool::new(false),
            move_order: Mutex::new(()),
            all_answered: AtomicBool::new(false),
            close_reason: OnceLock::new(),
            next_id: AtomicI64::new(1),
            subscribers: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(1),
            last_seen_ms: AtomicI64::new(now_ms()),
            closed_notify: tokio::sync::Notify::new(),
            ledger: OnceLock::new(),
            taps: Mutex::new(HashMap::new()),
            taps_live: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            errors: Mutex::new(ProtocolErrors {
                window_start: Instant::now(),
                count: 0,
                suppressed: 0,
            }),
            relayed: AtomicBool::new(false),
            lease_until_ms: AtomicI64::new(i64::MAX),
            epoch: AtomicI64::new(0),
            listing: OnceLock::new(),
        })
    }

    /// Marks this link as driven by a peer replica's socket (see
    /// [`peer`]), before it is used.
    pub fn set_relayed(&self) {
        self.relayed.store(true, Ordering::Release);
    }

    /// Whether this link reaches its executor through another replica.
    /// Marks the link as being moved away by this (draining) gateway and
    /// sends `method` (`execgate/move`), so that no relayed request is
    /// queued after it ([`Link::relay`] refuses them, unsent).
    pub fn start_moving(&self, method: &str, params: Value) -> Result<(), LinkError> {
        let _order = self.move_order.lock().unwrap();
        self.moving.store(true, Ordering::Release);
        self.notify(method, params)
    }

    pub fn is_moving(&self) -> bool {
        self.moving.load(Ordering::Acquire)
    }

    /// Whether `error`, on a relayed link, is the owner's refusal to relay
    /// ([`peer::NOT_RELAYED`]): the request never reached the executor.
    fn not_relayed(&self, error: &RpcError) -> bool {
        error.code == peer::NOT_RELAYED && self.is_relayed()
    }

    /// Whether `error`, on a relayed link, is the owner's report that the
    /// executor's link went away with the request sent
    /// ([`peer::OUTCOME_UNKNOWN`]).
    fn outcome_unknown(&self, error: &RpcError) -> bool {
        error.code == peer::OUTCOME_UNKNOWN && self.is_relayed()
    }

    pub fn is_relayed(&self) -> bool {
        self.relayed.load(Ordering::Acquire)
    }

    /// Records this replica's lease on the executor: `epoch`, valid until
    /// `until_ms`.
    pub fn set_lease(&self, epoch: i64, until_ms: i64) {
        self.epoch.store(epoch, Ordering::Release);
        self.lease_until_ms.store(until_ms, Ordering::Release);
    }

    /// Extends the lease of `epoch` to `until_ms`; `false` (and nothing
    /// changed) when the link holds another epoch.
    pub fn renew_lease(&self, epoch: i64, until_ms: i64) -> bool {
        if self.epoch.load(Ordering::Acquire) != epoch {
            return false;
        }
        self.lease_until_ms.store(until_ms, Ordering::Release);
        true
    }

    /// Until when (Unix ms) this replica's lease on the executor holds
    /// (`i64::MAX` without replicas).
    pub fn lease_until(&self) -> i64 {
        self.lease_until_ms.load(Ordering::Acquire)
    }

    /// The fencing epoch of this replica's lease (0 without replicas).
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether this replica's lease on the executor holds at `now_ms`
    /// (always, without replicas).
    pub fn lease_ok(&self, now_ms: i64) -> bool {
        self.lease_until_ms.load(Ordering::Acquire) > now_ms
    }

    /// Queues `frame` for the writer. Closes the link when the queue would
    /// pass [`MAX_QUEUED_BYTES`]: the executor is not reading.
    fn send(&self, frame: Encoded) -> Result<(), LinkError> {
        let len = encoded_len(&frame);
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        // One frame alone may be larger than the cap: it goes, if the queue
        // is otherwise empty.
        if before > 0 && before + len > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            let reason =
                format!("its send queue is full ({before} bytes not yet read by the executor)");
            tracing::warn!(exe_id = %self.exe_id, "closing the link: {reason}");
            self.close(&reason);
            return Err(self.disconnected());
        }
        if self.outgoing.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(self.disconnected());
        }
        Ok(())
    }

    /// The writer took `frame` off the queue (to write it to the socket).
    pub fn written(&self, frame: &Encoded) {
        self.queued.fetch_sub(encoded_len(frame), Ordering::AcqRel);
    }

    /// Bytes queued for the executor and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Counts one protocol error of the executor: logged while under the
    /// window's warning quota, and past [`MAX_ERRORS_PER_WINDOW`] the link is
    /// closed.
    fn protocol_error(&self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let (log, close, suppressed) = {
            let mut e = self.errors.lock().unwrap();
            if now.duration_since(e.window_start) >= ERROR_WINDOW {
                e.suppressed += u64::from(e.count.saturating_sub(WARNINGS_PER_WINDOW));
                e.window_start = now;
                e.count = 0;
            }
            e.count += 1;
            let log = e.count <= WARNINGS_PER_WINDOW;
            let close = e.count == MAX_ERRORS_PER_WINDOW + 1;
            let suppressed = if log {
                std::mem::take(&mut e.suppressed)
            } else {
                0
            };
            (log, close, suppressed)
        };
        if log {
            if suppressed > 0 {
                tracing::warn!(exe_id = %self.exe_id, "protocol error from the executor: {what} ({suppressed} earlier ones not logged)");
            } else {
                tracing::warn!(exe_id = %self.exe_id, "protocol error from the executor: {what}");
            }
        }
        if close {
            let reason = format!(
                "more than {MAX_ERRORS_PER_WINDOW} protocol errors within {}s (the last: {what})",
                ERROR_WINDOW.as_secs()
            );
            tracing::warn!(exe_id = %self.exe_id, "closing the link: {reason}");
            self.close(&reason);
        }
    }

    /// Records every later process event in `ledger`. Set before the
    /// socket is read, so that no event goes by unrecorded.
    pub fn set_ledger(&self, ledger: Arc<SeqLedger>) {
        let _ = self.ledger.set(ledger);
    }

    /// Output bytes of `process_id` with a seq in `(after_seq, first_seq)`,
    /// as this executor's ledger saw them; `None` when it cannot tell.
    pub fn lost_between(&self, process_id: &str, after_seq: u64, first_seq: u64) -> Option<u64> {
        if first_seq <= after_seq + 1 {
            return Some(0);
        }
        self.ledger
            .get()?
            .lost_between(process_id, after_seq, first_seq)
    }

    pub fn set_handshake(&self, h: Handshake) {
        let _ = self.handshake.set(h);
    }

    /// The executor's `initialize` answer. Links are only registered after
    /// the handshake, so this is always set for a link found in the registry.
    pub fn handshake(&self) -> Option<&Handshake> {
        self.handshake.get()
    }

    pub fn ext(&self) -> ExtCapabilities {
        self.handshake().map(|h| h.ext.clone()).unwrap_or_default()
    }

    /// Whether the executor announced the `move` extension, so that a
    /// draining gateway may send it `execgate/move`. Never a stock codex:
    /// it drops its connection on a notification it does not know.
    pub fn moves_on_drain(&self) -> bool {
        self.handshake().is_some_and(|h| h.ext.move_on_drain)
    }

    /// Whether the executor reads binary frames, so that file data and
    /// stdin can go to it raw. Never during the handshake.
    fn binary(&self) -> bool {
        self.handshake().is_some_and(|h| h.ext.binary_frames)
    }

    /// The executor's working directory, for resolving relative paths.
    pub fn cwd(&self) -> Option<std::path::PathBuf> {
        self.handshake()
            .and_then(|h| execgate_protocol::uri::uri_to_path(&h.info.cwd))
    }

    /// Records that the executor showed signs of life (any frame, a pong).
    pub fn touch(&self) {
        self.last_seen_ms.store(now_ms(), Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn set_last_seen_ms(&self, ms: i64) {
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Why the link closed, once it has.
    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.get().map(String::as_str)
    }

    /// Resolves when the link has closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// The link is gone and the request never left this gateway.
    fn disconnected(&self) -> LinkError {
        self.disconnected_sent(false)
    }

    /// The link went away with the request sent and unanswered (but see
    /// [`Link::set_all_answered`]).
    fn lost(&self) -> LinkError {
        self.disconnected_sent(!self.all_answered.load(Ordering::Acquire))
    }

    /// The owner ended this relayed link's channel having answered every
    /// request it read ([`peer::ALL_ANSWERED`]).
    pub fn set_all_answered(&self) {
        if self.is_relayed() {
            self.all_answered.store(true, Ordering::Release);
        }
    }

    fn disconnected_sent(&self, sent: bool) -> LinkError {
        LinkError::Disconnected {
            name: self.name.clone(),
            reason: self
                .close_reason
                .get()
                .cloned()
                .unwrap_or_else(|| "link closed".into()),
            sent,
        }
    }

    /// Sends a request and waits for its result, at most `timeout`. Bytes
    /// in the result are base64 text, however they travelled.
    pub async fn request_value(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, LinkError> {
        let (mut value, payload) = self
            .request_envelope(method, params, Bytes::new(), timeout)
            .await?;
        blob::inline(&mut value, &payload);
        Ok(value)
    }

    /// Sends a request (with its frame's payload) and waits for the result
    /// and the payload its blobs point into, at most `timeout`.
    async fn request_envelope(
        &self,
        method: &str,
        mut params: Value,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(Value, Bytes), LinkError> {
        if !crate::trace::spans() {
            return self
                .request_envelope_now(method, params, payload, timeout)
                .await;
        }
        let span = tracing::info_span!(
            "link.request",
            otel.name = %format_args!("link {method}"),
            otel.kind = "client",
            rpc.method = method,
            executor = %self.name,
        );
        if crate::trace::otel() && self.handshake().is_some_and(|h| h.ext.trace_context) {
            // [ext] The executor's spans join this one (see `trace`).
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let headers = crate::trace::inject(&span.context());
            if let (Some(tp), Value::Object(map)) = (headers.get("traceparent"), &mut params) {
                map.insert("_meta".into(), serde_json::json!({ "traceparent": tp }));
            }
        }
        tracing::Instrument::instrument(
            self.request_envelope_now(method, params, payload, timeout),
            span,
        )
        .await
    }

    async fn request_envelope_now(
        &self,
        method: &str,
        params: Value,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(Value, Bytes), LinkError> {
        let mut timer = RoundTrip::start(method, self.is_relayed());
        let result = self
            .request_envelope_timed(method, params, payload, timeout)
            .await;
        timer.ended(match &result {
            Ok(_) => crate::metrics::Forwarded::Ok,
            Err(e) => forwarded_outcome(e),
        });
        result
    }

    async fn request_envelope_timed(
        &self,
        method: &str,
        params: Value,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(Value, Bytes), LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap();
            if self.is_closed() {
                return Err(self.disconnected());
            }
            pending.insert(id, tx);
        }
        let frame = Envelope {
            message: Message::request(Id::Num(id), method, params),
            payload,
        }
        .encode();
        if let Err(e) = self.send(frame) {
            self.pending.lock().unwrap().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((Ok(v), payload))) => Ok((v, payload)),
            Ok(Ok((Err(error), _))) if self.not_relayed(&error) => Err(self.disconnected()),
            Ok(Ok((Err(error), _))) if self.outcome_unknown(&error) => {
                Err(self.disconnected_sent(true))
            }
            Ok(Ok((Err(error), _))) if self.is_policy_refusal(&error) => Err(LinkError::Denied {
                name: self.name.clone(),
                method: method.to_string(),
                error,
            }),
            Ok(Ok((Err(error), _))) => Err(LinkError::Rpc {
                name: self.name.clone(),
                method: method.to_string(),
                error,
            }),
            // The sender was dropped: the link closed with the request
            // sent.
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(LinkError::Timeout {
                    name: self.name.clone(),
                    method: method.to_string(),
                    after: timeout,
                })
            }
        }
    }

    /// Whether `error` is a policy refusal. Only an execgate executor (one
    /// that announced `environmentInfo.execgate`) uses these codes; from
    /// anything else they stay plain errors.
    fn is_policy_refusal(&self, error: &RpcError) -> bool {
        matches!(
            error.code,
            rpc_code::POLICY_DENIED | rpc_code::TOO_MANY_PROCESSES
        ) && self.handshake().is_some_and(|h| h.info.execgate.is_some())
    }

    /// Sends a typed request and decodes its typed result. Raw bytes in
    /// either travel in a binary frame when the executor reads them, so
    /// `R` types its bytes as [`Blob`](execgate_protocol::blob::Blob); for
    /// an untyped result use [`Link::request_value`], which inlines them.
    pub async fn request<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<R, LinkError> {
        let (params, payload) =
            blob::to_value(params, self.binary()).map_err(|e| LinkError::BadResponse {
                name: self.name.clone(),
                method: method.to_string(),
                detail: format!("could not encode params: {e}"),
            })?;
        let (value, payload) = self
            .request_envelope(method, params, payload, timeout)
            .await?;
        blob::from_value(value, &payload).map_err(|e| LinkError::BadResponse {
            name: self.name.clone(),
            method: method.to_string(),
            detail: e.to_string(),
        })
    }

    /// Sends a request on behalf of a bridge client and waits, at most
    /// `timeout` (the bridge's gateway-side deadline), for the executor's
    /// raw answer: `Ok(Ok(result))`, `Ok(Err(its JSON-RPC error))`, or
    /// `Err`: [`LinkError::Disconnected`] when the link is gone,
    /// [`LinkError::Timeout`] past the deadline. The request gets a link id
    /// like any other, so it cannot collide with the gateway's own; a
    /// timeout or dropping the future forgets the id (a late answer is then
    /// dropped, as for any request).
    pub async fn request_raw(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Result<Value, RpcError>, LinkError> {
        let (answer, payload) = self.relay(method, params, Bytes::new(), timeout).await?;
        // The bridge's client speaks text: its bytes go back as base64.
        Ok(answer.map(|mut result| {
            blob::inline(&mut result, &payload);
            result
        }))
    }

    /// [`Link::request_raw`] with the frame's payload both ways: a peer
    /// replica's request, relayed as it came (binary stays binary), and
    /// the executor's answer with the payload its blobs point into.
    pub async fn relay(
        &self,
        method: &str,
        params: Value,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Answer, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap();
            if self.is_closed() {
                return Err(self.disconnected());
            }
            pending.insert(id, tx);
        }
        /// Removes the pending entry when the caller stops waiting (a bridge
        /// client that went away), so a never-answered id does not linger.
        struct Forget<'a>(&'a Link, i64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending.lock().unwrap().remove(&self.1);
            }
        }
        let _forget = Forget(self, id);
        let mut timer = RoundTrip::start(method, self.is_relayed());
        let frame = Envelope {
            message: Message::request(Id::Num(id), method, params),
            payload,
        }
        .encode();
        let sent = {
            let _order = self.move_order.lock().unwrap();
            if self.is_moving() {
                Err(self.disconnected())
            } else {
                self.send(frame)
            }
        };
        let result = match sent {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok((Err(error), _))) if self.not_relayed(&error) => Err(self.disconnected()),
                Ok(Ok((Err(error), _))) if self.outcome_unknown(&error) => {
                    Err(self.disconnected_sent(true))
                }
                Ok(answer) => answer.map_err(|_| self.lost()),
                Err(_) => Err(LinkError::Timeout {
                    name: self.name.clone(),
                    method: method.to_string(),
                    after: timeout,
                }),
            },
        };
        timer.ended(match &result {
            Ok((Ok(_), _)) => crate::metrics::Forwarded::Ok,
            Ok((Err(_), _)) => crate::metrics::Forwarded::Error,
            Err(e) => forwarded_outcome(e),
        });
        result
    }

    /// Receives the raw notifications of every process `br-<key>-…`, until
    /// dropped. Notifications are dropped (not queued) when `capacity` are
    /// already waiting: the executor's output log still has the data, and
    /// `process/read` catches up, as with the executor's own notification
    /// queue. The channel closes when the link does.
    pub fn tap(self: &Arc<Self>, key: &str, capacity: usize) -> Tap {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        {
            let mut taps = self.taps.lock().unwrap();
            if !self.is_closed() {
                taps.insert(key.to_string(), tx);
                self.taps_live.store(taps.len(), Ordering::Release);
            }
        }
        if self.is_relayed() {
            let _ = self.notify(peer::TAP, serde_json::json!({ "key": key }));
        }
        Tap {
            link: self.clone(),
            key: key.to_string(),
            rx,
        }
    }

    /// Sends a notification (no answer expected).
    pub fn notify(&self, method: &str, params: Value) -> Result<(), LinkError> {
        self.send(Encoded::Text(
            Message::notification(method, params).encode(),
        ))
    }

    /// Receives every later event of `process_id`. Subscribe *before* the
    /// action whose events you want (push, then pull: catch up with
    /// `process/read` for anything older).
    ///
    /// With an executor that serves `process/setPush` [ext], the first
    /// subscriber of a process turns the pushing of its output on and the
    /// last one to go turns it off: output nobody follows (a process read
    /// only by `/output`, or a stream catching up by reading) does not
    /// cross the link twice.
    pub fn subscribe(self: &Arc<Self>, process_id: &str) -> Subscription {
        self.subscribe_with(process_id, true)
    }

    /// [`Link::subscribe`] for a process the caller is about to start with
    /// its output pushed (`process/start` without `pushOutput: false`, as
    /// `shell` does): pushing is already on, so no `process/setPush`. That
    /// notification would go out as a frame of its own just before
    /// `process/start`, and wake the executor once more on the way to the
    /// spawn.
    pub fn subscribe_to_start(self: &Arc<Self>, process_id: &str) -> Subscription {
        self.subscribe_with(process_id, false)
    }

    fn subscribe_with(self: &Arc<Self>, process_id: &str, turn_on: bool) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut subs = self.subscribers.lock().unwrap();
            if self.is_closed() {
                let _ = tx.send(ProcessEvent::LinkLost);
                false
            } else {
                let list = subs.entry(process_id.to_string()).or_default();
                list.push((id, tx));
                list.len() == 1
            }
        };
        if first && self.is_relayed() {
            let params = serde_json::json!({ "processId": process_id, "push": turn_on });
            let _ = self.notify(peer::WATCH, params);
        } else if first && turn_on {
            self.set_push(process_id, true);
        }
        Subscription {
            link: self.clone(),
            process_id: process_id.to_string(),
            id,
            rx,
            closed: false,
        }
    }

    /// `closed`: the subscriber saw the process close, so there is no
    /// output left to stop pushing.
    fn unsubscribe(&self, process_id: &str, id: u64, closed: bool) {
        let last = {
            let mut subs = self.subscribers.lock().unwrap();
            match subs.get_mut(process_id) {
                Some(list) => {
                    list.retain(|(i, _)| *i != id);
                    let empty = list.is_empty();
                    if empty {
                        subs.remove(process_id);
                    }
                    empty
                }
                None => false,
            }
        };
        if last && self.is_relayed() && !self.is_closed() {
            let params = serde_json::json!({ "processId": process_id });
            let _ = self.notify(peer::UNWATCH, params);
        } else if last && !closed && !self.is_closed() {
            self.set_push(process_id, false);
        }
    }

    /// `process/setPush` [ext], when the executor serves it. A notification:
    /// it is ordered with the requests that follow it on the link.
    fn set_push(&self, process_id: &str, output: bool) {
        // Borrowed, not `ext()`: that clones the whole announcement (custom
        // tools and all), and this runs twice per shell call.
        if self.handshake().is_some_and(|h| h.ext.push_control) {
            let params = serde_json::json!({ "processId": process_id, "output": output });
            let _ = self.notify(method::PROCESS_SET_PUSH, params);
        }
    }

    /// Handles one text frame from the executor.
    pub fn dispatch(&self, frame: &[u8]) {
        self.receive(Message::decode(frame).map(Envelope::text));
    }

    /// Handles one binary frame from the executor [ext]: a message and the
    /// payload its blobs point into.
    pub fn dispatch_binary(&self, frame: Bytes) {
        self.receive(Envelope::decode_binary(frame));
    }

    fn receive(&self, decoded: Result<Envelope, DecodeError>) {
        self.touch();
        let Envelope { message, payload } = match decoded {
            Ok(envelope) => envelope,
            Err(e) => {
                return self.protocol_error(format_args!(
                    "undecodable frame: {}",
                    shortened(&e.error.to_string(), 200)
                ));
            }
        };
        match message {
            Message::Response {
                id: Id::Num(id),
                result,
            } => {
                let waiter = self.pending.lock().unwrap().remove(&id);
                if let Some(tx) = waiter {
                    let _ = tx.send((result, payload));
                } else if id <= 0 || id >= self.next_id.load(Ordering::Relaxed) {
                    self.protocol_error(format_args!("answer to id {id}, never sent"));
                } else {
                    // The request timed out (or its caller left) before the
                    // answer came: a late answer, not a fault.
                    tracing::debug!(exe_id = %self.exe_id, id, "late answer dropped");
                }
            }
            Message::Response { id, .. } => {
                let id = shortened(&id.to_string(), 64);
                self.protocol_error(format_args!("answer to id {id}, never sent"));
            }
            Message::Notification { method, params } => {
                self.route_notification(&method, params, &payload)
            }
            Message::Request { id, method, .. } => {
                // Executors do not call the gateway; say so instead of leaving
                // them waiting. The name is cut: an executor must not grow the
                // queue by sending long ones (nor an id: a long one is not
                // echoed at all).
                let method = shortened(&method, MAX_ECHOED_METHOD);
                self.protocol_error(format_args!("request {method:?} to the gateway"));
                if matches!(&id, Id::Str(s) if s.len() > MAX_ID_LEN) {
                    return;
                }
                let answer = Message::response(id, Err(RpcError::method_not_found(&method)));
                let _ = self.send(Encoded::Text(answer.encode()));
            }
        }
    }

    fn route_notification(&self, method: &str, mut params: Value, payload: &Bytes) {
        if let Some(long) = params
            .get("processId")
            .and_then(Value::as_str)
            .filter(|id| id.len() > MAX_ID_LEN)
        {
            return self.protocol_error(format_args!(
                "{} with a {}-byte processId (at most {MAX_ID_LEN})",
                shortened(method, MAX_ECHOED_METHOD),
                long.len()
            ));
        }
        // A bridged process: its events go to its bridge only, raw. Gateway
        // tools never subscribe to (or account for) these ids.
        if let Some(key) = params
            .get("processId")
            .and_then(Value::as_str)
            .and_then(tap_key)
        {
            if self.taps_live.load(Ordering::Acquire) > 0 {
                if let Some(tx) = self.taps.lock().unwrap().get(key) {
                    // The bridge's client speaks text: bytes as base64.
                    blob::inline(&mut params, payload);
                    let _ = tx.try_send((method.to_string(), params));
                }
            }
            return;
        }
        let (process_id, event) = match method {
            method::PROCESS_OUTPUT => {
                match blob::from_value::<OutputNotification>(params, payload) {
                    Ok(n) => {
                        let Ok(data) = n.chunk.to_bytes() else {
                            return self.protocol_error(format_args!(
                                "process/output chunk is not base64"
                            ));
                        };
                        (
                            n.process_id,
                            ProcessEvent::Output {
                                seq: n.seq,
                                stream: n.stream,
                                data,
                            },
                        )
                    }
                    Err(e) => return self.bad_notification(method, e),
                }
            }
            method::PROCESS_EXITED => match serde_json::from_value::<ExitedNotification>(params) {
                Ok(n) => (
                    n.process_id,
                    ProcessEvent::Exited {
                        seq: n.seq,
                        exit_code: n.exit_code,
                    },
                ),
                Err(e) => return self.bad_notification(method, e),
            },
            method::PROCESS_CLOSED => match serde_json::from_value::<ClosedNotification>(params) {
                Ok(n) => (n.process_id, ProcessEvent::Closed { seq: n.seq }),
                Err(e) => return self.bad_notification(method, e),
            },
            _ => return,
        };
        // Only for an executor that does not count its lost bytes itself (a
        // stock codex): ours does ([ext] lostBytes), so its events cost no
        // ledger memory. Before the handshake is known, record.
        let counts_itself = self.handshake().is_some_and(|h| h.ext.lost_bytes);
        if let Some(ledger) = self.ledger.get().filter(|_| !counts_itself) {
            match &event {
                ProcessEvent::Output { seq, data, .. } => {
                    ledger.record(&process_id, *seq, data.len() as u64, false)
                }
                ProcessEvent::Exited { seq, .. } => ledger.record(&process_id, *seq, 0, false),
                ProcessEvent::Closed { seq } => ledger.record(&process_id, *seq, 0, true),
                ProcessEvent::LinkLost => {}
            }
        }
        let subs = self.subscribers.lock().unwrap();
        if let Some(list) = subs.get(&process_id) {
            for (_, tx) in list {
                let _ = tx.send(event.clone());
            }
        }
    }

    fn bad_notification(&self, method: &str, e: serde_json::Error) {
        let e = shortened(&e.to_string(), 200);
        self.protocol_error(format_args!("malformed {method} notification: {e}"));
    }

    /// Marks the link closed: fails every request in flight, tells every
    /// subscriber, and stops the writer. Idempotent.
    pub fn close(&self, reason: &str) {
        let drained: Vec<_> = {
            let mut pending = self.pending.lock().unwrap();
            if self.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            let _ = self.close_reason.set(reason.to_string());
            pending.drain().collect()
        };
        // Dropping the senders wakes each waiter with "disconnected".
        drop(drained);
        let subs = std::mem::take(&mut *self.subscribers.lock().unwrap());
        for (_, list) in subs {
            for (_, tx) in list {
                let _ = tx.send(ProcessEvent::LinkLost);
            }
        }
        // Dropping the senders ends every tap's stream.
        drop(std::mem::take(&mut *self.taps.lock().unwrap()));
        self.closed_notify.notify_waiters();
    }
}

/// A bridge session's raw notifications (see [`Link::tap`]).
pub struct Tap {
    link: Arc<Link>,
    key: String,
    rx: mpsc::Receiver<RawNotification>,
}

impl Tap {
    /// The next notification; `None` once the link is gone.
    pub async fn recv(&mut self) -> Option<RawNotification> {
        self.rx.recv().await
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        {
            let mut taps = self.link.taps.lock().unwrap();
            taps.remove(&self.key);
            self.link.taps_live.store(taps.len(), Ordering::Release);
        }
        if self.link.is_relayed() && !self.link.is_closed() {
            let _ = self
                .link
                .notify(peer::UNTAP, serde_json::json!({ "key": self.key }));
        }
    }
}

/// Events of one process, until dropped.
pub struct Subscription {
    link: Arc<Link>,
    process_id: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<ProcessEvent>,
    /// `Closed` was received.
    closed: bool,
}

impl Subscription {
    /// The next event; `LinkLost` once the link is gone.
    pub async fn recv(&mut self) -> ProcessEvent {
        let ev = self.rx.recv().await.unwrap_or(ProcessEvent::LinkLost);
        self.closed |= matches!(ev, ProcessEvent::Closed { .. });
        ev
    }

    /// Events queued and not yet received: how far the subscriber is behind.
    pub fn backlog(&self) -> usize {
        self.rx.len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.link
            .unsubscribe(&self.process_id, self.id, self.closed);
    }
}

/// Records a request's round trip in `execgate_link_request_duration_seconds`
/// when dropped (answered, failed or abandoned alike), and on a link
/// through another replica (`relayed`) its outcome and round trip in
/// `execgate_forwarded_calls_total` and
/// `execgate_peer_request_duration_seconds`; nothing while metrics are off.
struct RoundTrip<'a> {
    timing: Option<(
        &'static crate::metrics::Metrics,
        &'a str,
        std::time::Instant,
        bool,
    )>,
    /// How it ended; `Cancelled` until told (the caller's future dropped).
    outcome: crate::metrics::Forwarded,
}

impl<'a> RoundTrip<'a> {
    fn start(method: &'a str, relayed: bool) -> Self {
        RoundTrip {
            timing: crate::metrics::get().map(|m| (m, method, std::time::Instant::now(), relayed)),
            outcome: crate::metrics::Forwarded::Cancelled,
        }
    }

    fn ended(&mut self, outcome: crate::metrics::Forwarded) {
        self.outcome = outcome;
    }
}

impl Drop for RoundTrip<'_> {
    fn drop(&mut self) {
        if let Some((m, method, start, relayed)) = self.timing.take() {
            let took = start.elapsed();
            m.link_request(method, took);
            if relayed {
                m.forwarded_request(method, self.outcome, took);
            }
        }
    }
}

/// The forwarded-call outcome of a request that failed with `e`.
fn forwarded_outcome(e: &LinkError) -> crate::metrics::Forwarded {
    use crate::metrics::Forwarded;
    match e {
        LinkError::Timeout { .. } => Forwarded::Timeout,
        LinkError::Disconnected { .. } => Forwarded::Disconnected,
        LinkError::Rpc { .. } | LinkError::Denied { .. } | LinkError::BadResponse { .. } => {
            Forwarded::Error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgate_protocol::blob::Blob;
    use serde_json::json;

    fn link() -> (Arc<Link>, mpsc::UnboundedReceiver<Encoded>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Link::new("exe_1".into(), "w".into(), "laptop".into(), tx),
            rx,
        )
    }

    /// A link whose executor announced `ext`.
    fn link_with(ext: ExtCapabilities) -> (Arc<Link>, mpsc::UnboundedReceiver<Encoded>) {
        let (link, out) = link();
        link.set_handshake(Handshake {
            session_id: "s".into(),
            info: EnvironmentInfo::default(),
            ext,
        });
        (link, out)
    }

    /// The binary frame an executor sends for `body` (with its raw bytes in
    /// the payload), wrapped into a message by `message`.
    fn binary_frame(message: impl FnOnce(Value) -> Message, body: &impl Serialize) -> Bytes {
        let (value, payload) = blob::to_value(body, true).unwrap();
        let envelope = Envelope {
            message: message(value),
            payload,
        };
        let Encoded::Binary(frame) = envelope.encode() else {
            panic!("a body with raw bytes makes a binary frame")
        };
        Bytes::from(frame)
    }

    /// A text frame the link sent.
    fn decode(frame: Encoded) -> Message {
        let Encoded::Text(text) = frame else {
            panic!("expected a text frame: {frame:?}")
        };
        Message::decode(text.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn responses_route_by_id_out_of_order() {
        let (link, mut out) = link();
        let l1 = link.clone();
        let a = tokio::spawn(async move {
            l1.request_value("a", json!({}), Duration::from_secs(5))
                .await
        });
        let l2 = link.clone();
        let b = tokio::spawn(async move {
            l2.request_value("b", json!({}), Duration::from_secs(5))
                .await
        });
        let mut ids = HashMap::new();
        for _ in 0..2 {
            let frame = out.recv().await.unwrap();
            let Message::Request { id, method, .. } = decode(frame) else {
                panic!()
            };
            ids.insert(method, id);
        }
        link.dispatch(
            Message::response(ids["b"].clone(), Ok(json!("B")))
                .encode()
                .as_bytes(),
        );
        link.dispatch(
            Message::response(ids["a"].clone(), Err(RpcError::internal("no")))
                .encode()
                .as_bytes(),
        );
        assert_eq!(b.await.unwrap().unwrap(), json!("B"));
        assert!(matches!(a.await.unwrap(), Err(LinkError::Rpc { .. })));
    }

    #[tokio::test]
    async fn close_fails_in_flight_requests_at_once() {
        let (link, _out) = link();
        let l = link.clone();
        let req = tokio::spawn(async move {
            l.request_value("slow", json!({}), Duration::from_secs(60))
                .await
        });
        let mut sub = link.subscribe("p1");
        tokio::task::yield_now().await;
        link.close("socket reset");
        let err = tokio::time::timeout(Duration::from_secs(2), req)
            .await
            .expect("request must not hang")
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("socket reset"), "{err}");
        assert_eq!(sub.recv().await, ProcessEvent::LinkLost);
        // After close, new requests fail immediately.
        assert!(link
            .request_value("x", json!({}), Duration::from_secs(60))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn notifications_reach_subscribers_of_that_process_only() {
        let (link, _out) = link();
        let mut a = link.subscribe("a");
        let mut b = link.subscribe("b");
        link.dispatch(
            br#"{"method":"process/output","params":{"processId":"a","seq":1,"stream":"stdout","chunk":"aGk="}}"#,
        );
        link.dispatch(br#"{"method":"process/closed","params":{"processId":"b","seq":9}}"#);
        assert_eq!(
            a.recv().await,
            ProcessEvent::Output {
                seq: 1,
                stream: Stream::Stdout,
                data: Bytes::from_static(b"hi")
            }
        );
        assert_eq!(b.recv().await, ProcessEvent::Closed { seq: 9 });
        drop(a);
        assert!(!link.subscribers.lock().unwrap().contains_key("a"));
    }

    #[tokio::test]
    async fn a_timed_out_request_is_forgotten() {
        let (link, _out) = link();
        let err = link
            .request_value("m", json!({}), Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Timeout { .. }));
        assert!(link.pending.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn raw_requests_get_link_ids_and_raw_answers() {
        let (link, mut out) = link();
        let l = link.clone();
        let own = tokio::spawn(async move {
            l.request_value("mine", json!({}), Duration::from_secs(5))
                .await
        });
        let l = link.clone();
        let raw = tokio::spawn(async move {
            l.request_raw("fs/readFile", json!({"p":1}), Duration::from_secs(5))
                .await
        });
        let mut ids = HashMap::new();
        for _ in 0..2 {
            let frame = out.recv().await.unwrap();
            let Message::Request { id, method, params } = decode(frame) else {
                panic!()
            };
            if method == "fs/readFile" {
                assert_eq!(params, json!({"p":1}));
            }
            ids.insert(method, id);
        }
        assert_ne!(ids["mine"], ids["fs/readFile"]);
        let err = RpcError::new(-32004, "no such file");
        link.dispatch(
            Message::response(ids["fs/readFile"].clone(), Err(err.clone()))
                .encode()
                .as_bytes(),
        );
        link.dispatch(
            Message::response(ids["mine"].clone(), Ok(json!(1)))
                .encode()
                .as_bytes(),
        );
        assert_eq!(raw.await.unwrap().unwrap(), Err(err));
        assert_eq!(own.await.unwrap().unwrap(), json!(1));

        // A raw request whose caller gives up leaves no pending entry.
        let l = link.clone();
        let gone = tokio::spawn(async move {
            l.request_raw("process/read", json!({}), Duration::from_secs(60))
                .await
        });
        out.recv().await.unwrap();
        gone.abort();
        let _ = gone.await;
        assert!(link.pending.lock().unwrap().is_empty());
        // And one in flight when the link closes fails at once.
        let l = link.clone();
        let pending = tokio::spawn(async move {
            l.request_raw("process/read", json!({}), Duration::from_secs(60))
                .await
        });
        out.recv().await.unwrap();
        let l = link.clone();
        let typed = tokio::spawn(async move {
            l.request_value("process/read", json!({}), Duration::from_secs(60))
                .await
        });
        out.recv().await.unwrap();
        link.close("bye");
        assert!(matches!(
            pending.await.unwrap(),
            Err(LinkError::Disconnected { sent: true, .. })
        ));
        assert!(matches!(
            typed.await.unwrap(),
            Err(LinkError::Disconnected { sent: true, .. })
        ));
        // One made on the closed link never left: its outcome is known.
        assert!(matches!(
            link.request_raw("process/read", json!({}), Duration::from_secs(1))
                .await,
            Err(LinkError::Disconnected { sent: false, .. })
        ));
        assert!(matches!(
            link.request_value("process/read", json!({}), Duration::from_secs(1))
                .await,
            Err(LinkError::Disconnected { sent: false, .. })
        ));
    }

    /// Regression (#15): a raw (bridge) request waited for its answer
    /// without a deadline. Past it, it fails with a timeout, its id is
    /// forgotten, and the late answer is dropped without a protocol error.
    #[tokio::test]
    async fn a_raw_request_fails_at_its_deadline_and_is_forgotten() {
        let (link, mut out) = link();
        let started = Instant::now();
        let err = link
            .request_raw("fs/readFile", json!({}), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(
            matches!(&err, LinkError::Timeout { method, .. } if method == "fs/readFile"),
            "{err:?}"
        );
        assert!(link.pending.lock().unwrap().is_empty());
        let Message::Request { id, .. } = decode(out.recv().await.unwrap()) else {
            panic!()
        };
        link.dispatch(Message::response(id, Ok(json!({}))).encode().as_bytes());
        assert_eq!(link.errors.lock().unwrap().count, 0);
        assert!(!link.is_closed());
    }

    /// Only an executor that announced `move` is one a drain may move;
    /// a stock codex (no `execgate` announcement) never is.
    #[test]
    fn only_links_that_announced_move_are_moved() {
        let (codex, _out) = link();
        codex.set_handshake(Handshake {
            session_id: "s".into(),
            info: EnvironmentInfo::default(),
            ext: EnvironmentInfo::default().ext(),
        });
        assert!(!codex.moves_on_drain());
        let (old, _out) = link_with(ExtCapabilities {
            binary_frames: true,
            ..Default::default()
        });
        assert!(!old.moves_on_drain());
        let (ours, _out) = link_with(ExtCapabilities {
            move_on_drain: true,
            ..Default::default()
        });
        assert!(ours.moves_on_drain());
        let (unshaken, _out) = link();
        assert!(!unshaken.moves_on_drain());
    }

    /// With an executor that reads binary frames, bytes go raw both ways;
    /// a bridge's tap still gets base64.
    #[tokio::test]
    async fn binary_frames_carry_raw_bytes_both_ways() {
        use execgate_protocol::exec::{ReadRangeResult, WriteRangeParams};
        let (link, mut out) = link_with(ExtCapabilities {
            binary_frames: true,
            ..Default::default()
        });
        let l = link.clone();
        let write = tokio::spawn(async move {
            let params = WriteRangeParams {
                path: "file:///f".into(),
                offset: 0,
                data_base64: Blob::raw(&b"\0raw"[..]),
                truncate: false,
                digest: None,
            };
            l.request::<_, execgate_protocol::exec::Empty>(
                "fs/writeRange",
                &params,
                Duration::from_secs(5),
            )
            .await
        });
        let Some(Encoded::Binary(frame)) = out.recv().await else {
            panic!("expected a binary frame")
        };
        let sent = Envelope::decode_binary(Bytes::from(frame)).unwrap();
        assert_eq!(&sent.payload[..], b"\0raw");
        let Message::Request { id, params, .. } = sent.message else {
            panic!()
        };
        assert_eq!(params["dataBase64"], json!({"$bin": [0, 4]}));

        link.dispatch(Message::response(id, Ok(json!({}))).encode().as_bytes());
        write.await.unwrap().unwrap();

        // An answer with bytes comes back binary, and decodes without base64.
        let l = link.clone();
        let read = tokio::spawn(async move {
            l.request::<_, ReadRangeResult>("fs/readRange", &json!({}), Duration::from_secs(5))
                .await
        });
        let Some(frame) = out.recv().await else {
            panic!()
        };
        let Message::Request { id, .. } = decode(frame) else {
            panic!()
        };
        let result = ReadRangeResult {
            data_base64: Blob::raw(&b"\xffbytes"[..]),
            size: 9,
        };
        link.dispatch_binary(binary_frame(|r| Message::response(id, Ok(r)), &result));
        let read = read.await.unwrap().unwrap();
        assert_eq!(read.data_base64, Blob::raw(&b"\xffbytes"[..]));

        // Notifications: raw to subscribers, base64 to a bridge's tap.
        let mut sub = link.subscribe("p");
        let mut tap = link.tap("k", 4);
        for pid in ["p", "br-k-p"] {
            let output = OutputNotification {
                process_id: pid.into(),
                seq: 1,
                stream: Stream::Stdout,
                chunk: Blob::raw(&b"hi"[..]),
            };
            let note = |p| Message::notification("process/output", p);
            link.dispatch_binary(binary_frame(note, &output));
        }
        assert_eq!(
            sub.recv().await,
            ProcessEvent::Output {
                seq: 1,
                stream: Stream::Stdout,
                data: Bytes::from_static(b"hi")
            }
        );
        let (_, params) = tap.recv().await.unwrap();
        assert_eq!(params["chunk"], "aGk=");
    }

    /// The first subscriber of a process turns its output pushing on, the
    /// last one off; only with an executor that announced the extension.
    #[tokio::test]
    async fn subscriptions_turn_output_pushing_on_and_off() {
        for push_control in [false, true] {
            let (link, mut out) = link_with(ExtCapabilities {
                push_control,
                ..Default::default()
            });
            let a = link.subscribe("p");
            let b = link.subscribe("p");
            drop(a);
            drop(b);
            let mut sent = Vec::new();
            while let Ok(frame) = out.try_recv() {
                let Message::Notification { method, params } = decode(frame) else {
                    panic!("expected a notification")
                };
                assert_eq!(method, method::PROCESS_SET_PUSH);
                assert_eq!(params["processId"], "p");
                sent.push(params["output"].as_bool().unwrap());
            }
            let expected: &[bool] = if push_control { &[true, false] } else { &[] };
            assert_eq!(sent, expected);
        }
    }

    /// A link through a peer replica announces its subscriptions and taps
    /// to the owner (first subscriber: `peer/watch`, last one gone:
    /// `peer/unwatch`, even after the process closed) and never sends
    /// `process/setPush`, which is the owner's business.
    #[tokio::test]
    async fn a_relayed_link_announces_watches_and_taps_to_the_owner() {
        let (link, mut out) = link_with(ExtCapabilities {
            push_control: true,
            ..Default::default()
        });
        link.set_relayed();
        let mut sent = || {
            let mut sent = Vec::new();
            while let Ok(frame) = out.try_recv() {
                let Message::Notification { method, params } = decode(frame) else {
                    panic!("expected a notification")
                };
                sent.push((method, params));
            }
            sent
        };
        let a = link.subscribe("p");
        let b = link.subscribe_to_start("p");
        let mut c = link.subscribe_to_start("q");
        assert_eq!(
            sent(),
            vec![
                (peer::WATCH.into(), json!({"processId": "p", "push": true})),
                (peer::WATCH.into(), json!({"processId": "q", "push": false})),
            ]
        );
        drop(a);
        assert_eq!(sent(), vec![]);
        drop(b);
        link.dispatch(br#"{"method":"process/closed","params":{"processId":"q","seq":1}}"#);
        assert_eq!(c.recv().await, ProcessEvent::Closed { seq: 1 });
        drop(c);
        assert_eq!(
            sent(),
            vec![
                (peer::UNWATCH.into(), json!({"processId": "p"})),
                (peer::UNWATCH.into(), json!({"processId": "q"})),
            ]
        );
        let tap = link.tap("k", 4);
        drop(tap);
        assert_eq!(
            sent(),
            vec![
                (peer::TAP.into(), json!({"key": "k"})),
                (peer::UNTAP.into(), json!({"key": "k"})),
            ]
        );
        // A closed link announces nothing more.
        let d = link.subscribe("r");
        link.close("gone");
        sent();
        drop(d);
        assert_eq!(sent(), vec![]);
    }

    /// `relay` sends the payload as it came (a binary frame) and hands
    /// back the answer's payload untouched.
    #[tokio::test]
    async fn relay_keeps_binary_payloads_both_ways() {
        let (link, mut out) = link_with(ExtCapabilities {
            binary_frames: true,
            ..Default::default()
        });
        let l = link.clone();
        let relayed = tokio::spawn(async move {
            l.relay(
                "fs/writeRange",
                json!({"dataBase64": {"$bin": [0, 3]}}),
                Bytes::from_static(b"\0ab"),
                Duration::from_secs(5),
            )
            .await
        });
        let Some(Encoded::Binary(frame)) = out.recv().await else {
            panic!("expected a binary frame")
        };
        let sent = Envelope::decode_binary(Bytes::from(frame)).unwrap();
        assert_eq!(&sent.payload[..], b"\0ab");
        let Message::Request { id, .. } = sent.message else {
            panic!()
        };
        let answer = Envelope {
            message: Message::response(id, Ok(json!({"data": {"$bin": [0, 2]}}))),
            payload: Bytes::from_static(b"\xff\x01"),
        };
        let Encoded::Binary(frame) = answer.encode() else {
            panic!()
        };
        link.dispatch_binary(Bytes::from(frame));
        let (result, payload) = relayed.await.unwrap().unwrap();
        assert_eq!(result.unwrap(), json!({"data": {"$bin": [0, 2]}}));
        assert_eq!(&payload[..], b"\xff\x01");
    }

    /// A subscription to a process about to be started with push on sends
    /// no `setPush`, and one that saw the process close sends no `setPush`
    /// off; one that left early still turns pushing off.
    #[tokio::test]
    async fn no_set_push_around_a_process_started_pushed_and_closed() {
        let (link, mut out) = link_with(ExtCapabilities {
            push_control: true,
            ..Default::default()
        });
        let sent = |out: &mut mpsc::UnboundedReceiver<Encoded>| {
            let mut sent = Vec::new();
            while let Ok(frame) = out.try_recv() {
                let Message::Notification { params, .. } = decode(frame) else {
                    panic!("expected a notification")
                };
                sent.push(params["output"].as_bool().unwrap());
            }
            sent
        };
        let mut sub = link.subscribe_to_start("p");
        link.dispatch(
            br#"{"jsonrpc":"2.0","method":"process/closed","params":{"processId":"p","seq":1}}"#,
        );
        assert_eq!(sub.recv().await, ProcessEvent::Closed { seq: 1 });
        drop(sub);
        assert_eq!(sent(&mut out), Vec::<bool>::new());
        // Left before the close: the executor must stop pushing.
        drop(link.subscribe_to_start("q"));
        assert_eq!(sent(&mut out), vec![false]);
    }

    /// Regression: an executor that never read its link made the gateway
    /// queue without bound (error replies to 600 requests with 1 MiB method
    /// names: +607 MB). Names are cut, and a full queue closes the link.
    #[tokio::test]
    async fn requests_from_the_executor_cannot_grow_the_send_queue() {
        let (link, mut out) = link();
        let long = "m".repeat(1 << 20);
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": long});
        link.dispatch(req.to_string().as_bytes());
        let answer = out.try_recv().unwrap();
        let Encoded::Text(text) = &answer else {
            panic!()
        };
        assert!(text.len() < 300, "{} bytes", text.len());
        assert!(link.queued_bytes() > 0);
        link.written(&answer);
        assert_eq!(link.queued_bytes(), 0);

        // Nobody drains `out`: the queue fills, then the link closes.
        let big = "x".repeat(8 << 20);
        let mut refused = None;
        for i in 0..20 {
            if let Err(e) = link.notify("big", json!(big)) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("a full queue must refuse");
        assert!(i <= MAX_QUEUED_BYTES / (8 << 20) + 1, "{i}");
        assert!(link.is_closed());
        assert!(e.to_string().contains("send queue is full"), "{e}");
        assert!(link.queued_bytes() <= MAX_QUEUED_BYTES);
    }

    /// Regression: undecodable frames and answers to unknown ids were
    /// logged one warning each and never closed the link.
    #[tokio::test]
    async fn protocol_errors_close_the_link_past_the_threshold() {
        let (link, _out) = link();
        for _ in 0..MAX_ERRORS_PER_WINDOW / 2 {
            link.dispatch(b"{not json");
            link.dispatch(br#"{"jsonrpc":"2.0","id":987654,"result":{}}"#);
        }
        assert!(!link.is_closed());
        link.dispatch(b"\xff");
        assert!(link.is_closed());
        assert!(link.close_reason().unwrap().contains("protocol errors"));
    }

    /// A late answer (its request timed out) is no protocol error; an id
    /// never sent is one; a long process id is refused and not routed.
    #[tokio::test]
    async fn late_answers_are_no_fault_but_long_process_ids_are() {
        let (link, _out) = link();
        let _ = link
            .request_value("m", json!({}), Duration::from_millis(1))
            .await;
        for _ in 0..(MAX_ERRORS_PER_WINDOW * 2) {
            link.dispatch(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        }
        assert!(!link.is_closed());
        assert_eq!(link.errors.lock().unwrap().count, 0);

        let long = "p".repeat(MAX_ID_LEN + 1);
        let mut sub = link.subscribe(&long);
        let note = json!({"method": "process/closed", "params": {"processId": long, "seq": 1}});
        link.dispatch(note.to_string().as_bytes());
        assert_eq!(link.errors.lock().unwrap().count, 1);
        assert!(sub.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn taps_get_their_namespace_raw_and_nothing_else() {
        let (link, _out) = link();
        assert_eq!(tap_key("br-k1-p"), Some("k1"));
        assert_eq!(tap_key("br-k1-a-b"), Some("k1"));
        assert_eq!(tap_key("sh_1"), None);
        assert_eq!(tap_key("br-nodash"), None);
        let mut own = link.subscribe("sh_1");
        let mut t1 = link.tap("k1", 8);
        let mut t12 = link.tap("k12", 8);
        let n = br#"{"method":"process/output","params":{"processId":"br-k1-p","seq":1,"stream":"stdout","chunk":"aGk=","extra":true}}"#;
        link.dispatch(n);
        link.dispatch(br#"{"method":"process/closed","params":{"processId":"br-k12-p","seq":2}}"#);
        link.dispatch(br#"{"method":"process/closed","params":{"processId":"sh_1","seq":3}}"#);
        let (m, p) = t1.recv().await.unwrap();
        assert_eq!(m, "process/output");
        // Raw: fields the gateway does not know pass through.
        assert_eq!(p["extra"], true);
        assert_eq!(p["processId"], "br-k1-p");
        let (_, p) = t12.recv().await.unwrap();
        assert_eq!(p["processId"], "br-k12-p");
        assert_eq!(own.recv().await, ProcessEvent::Closed { seq: 3 });
        assert!(t1.rx.try_recv().is_err());
        // A full tap drops instead of blocking the link's reader.
        for _ in 0..20 {
            link.dispatch(n);
        }
        let mut got = 0;
        while t1.rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 8);
        drop(t12);
        assert_eq!(link.taps_live.load(Ordering::Acquire), 1);
        link.close("gone");
        assert!(t1.recv().await.is_none());
    }
}
