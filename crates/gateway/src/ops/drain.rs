//! Draining: how a gateway leaves without failing the calls it serves
//! (SIGTERM on `execgate serve`, [`crate::GatewayHandle::drain`]), and
//! readiness (`GET /readyz`).
//!
//! Before a drain, a gateway may be *leaving* ([`Drain::leave`], `execgate
//! serve --drain-delay`): `/readyz` already answers 503 `draining` while
//! every request is still served, so that a load balancer which does not
//! resend refused requests (a Kubernetes Service, nginx without
//! `non_idempotent`) stops sending work here before anything is refused.
//!
//! A drain goes through [`Phase`]s:
//!
//! 1. **Draining.** New requests (new executor registrations and links
//!    included) are refused with 503 `draining` and `Retry-After` (the HTTP
//!    layer's gate asks [`Drain::enter`]); `/readyz` answers 503 `draining`,
//!    so a load balancer stops sending work here. Calls already being served
//!    go on: requests, long-polls, uploads and downloads. The drain waits for
//!    them, up to the drain timeout.
//! 2. **Closing**, once none is left (or at the deadline). Each execgate
//!    executor that announced the `move` extension gets `execgate/move`: it
//!    closes its link once its requests in flight are answered and dials
//!    again: the other live replicas the notification's `gateways` hint
//!    names (from the replicas table, least loaded first) when they are
//!    among its `--gateway`s, then its next one, or the same URL behind a
//!    load balancer, which now sends it elsewhere. Until the executor
//!    moves, this replica still serves the calls other replicas forward to
//!    it (`http::drain` lets their peer channels through). SSE streams end with an `error` event
//!    `draining`, so that their clients resume with `Last-Event-ID` on
//!    another replica. The drain waits for the moved links to close, up to
//!    the deadline. A stock codex is never sent the extension: it does not
//!    know it. Its link, and bridge sessions, end when the process exits;
//!    codex re-dials its URL, a bridge client reconnects.
//! 3. **Done**, once the moved links have closed and the streams have sent
//!    their last event (or at the deadline), and a short grace (200 ms) for
//!    the last bytes to leave the sockets: `Gateway::serve` returns, and
//!    `execgate serve` exits 0.
//!
//! Moving executors only after the calls in flight are done is deliberate:
//! a `shell` call waits on its process's notifications over the link, so a
//! link that moved earlier would fail it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use execgate_protocol::connectors::error_code as code;
use execgate_protocol::exec::{method, MoveParams};
use tokio::sync::{watch, Notify};

use crate::link::Link;
use crate::ops::state::AppState;
use crate::ops::Error;

/// The default of `--drain-timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `Retry-After` of a request refused while draining: another replica (or
/// this one, restarted) can take it at once.
pub const DRAINING_RETRY_AFTER_SECS: u64 = 1;
/// After the last call's body is handed to the connection, how long the
/// process stays up so that its last bytes leave the socket.
const FLUSH_GRACE: Duration = Duration::from_millis(200);
/// How long `/readyz` reuses the store's answer, so that probes cannot load it.
const READY_CACHE: Duration = Duration::from_secs(1);
/// The longest the readiness check waits for the store.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a gateway is in its drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// New requests are refused; calls in flight go on.
    Draining,
    /// Calls are done (or the deadline passed): executors are told to move,
    /// streams end.
    Closing,
    /// Nothing left to wait for.
    Done,
}

/// The drain's state, in [`AppState`].
pub struct Drain {
    phase: watch::Sender<Phase>,
    calls: Arc<Calls>,
    /// Long-lived streams (SSE): not waited for before the closing phase,
    /// but until they have sent their last event after it.
    streams: Arc<Calls>,
    /// The store's last answer to the readiness check.
    store_ok: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// Not ready any more, though still serving (before a drain).
    leaving: AtomicBool,
}

#[derive(Default)]
struct Calls {
    count: AtomicUsize,
    /// Woken when `count` drops to zero.
    idle: Notify,
}

/// A call being served; dropping it ends the call.
pub struct InFlight(Arc<Calls>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            phase: watch::channel(Phase::Serving).0,
            calls: Arc::default(),
            streams: Arc::default(),
            store_ok: tokio::sync::Mutex::new(None),
            leaving: AtomicBool::new(false),
        }
    }
}

impl Drain {
    /// Starts draining (once; later calls change nothing). Returns whether
    /// this call started it.
    pub fn begin(&self) -> bool {
        self.phase.send_if_modified(|p| {
            let start = *p == Phase::Serving;
            if start {
                *p = Phase::Draining;
            }
            start
        })
    }

    /// Marks the gateway not ready (`/readyz` 503 `draining`) while it
    /// still serves every request, ahead of [`Drain::begin`].
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    /// Whether `/readyz` must say `draining`: leaving, or draining.
    fn unready(&self) -> bool {
        self.leaving.load(Ordering::Acquire) || self.is_draining()
    }

    /// Whether this gateway is on its way out (leaving or draining): its
    /// links do not hold their executors against another replica
    /// (`link::peer::LIVE_PATH`).
    pub fn going_away(&self) -> bool {
        self.unready()
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.phase() != Phase::Serving
    }

    /// Counts a new call in, or refuses it (`None`) while draining.
    pub fn enter(&self) -> Option<InFlight> {
        self.calls.count.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.calls.clone());
        // Counted first, checked second: a call the drain did not see
        // counted has seen the drain.
        (!self.is_draining()).then_some(guard)
    }

    /// Calls being served (SSE streams and bridge sessions aside).
    pub fn in_flight(&self) -> usize {
        self.calls.count.load(Ordering::Acquire)
    }

    /// Counts a long-lived stream (already admitted as a call), which the
    /// drain ends at its closing phase and then waits for.
    pub fn enter_stream(&self) -> InFlight {
        self.streams.count.fetch_add(1, Ordering::AcqRel);
        InFlight(self.streams.clone())
    }

    /// Resolves once the phase is `at_least`.
    pub async fn reached(&self, at_least: Phase) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= at_least).await;
    }

    /// Resolves when long-lived streams must end (the Closing phase).
    pub async fn closing(&self) {
        self.reached(Phase::Closing).await;
    }

    fn set(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    /// Waits until no call is in flight, or `deadline`; whether none is.
    async fn calls_done(&self, deadline: tokio::time::Instant) -> bool {
        self.calls.done(deadline).await
    }
}

impl Calls {
    /// Waits until the count is zero, or `deadline`; whether it is.
    async fn done(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// The error a request gets while the gateway drains.
pub fn draining_error() -> Error {
    Error::new(
        code::DRAINING,
        "this gateway is draining (shutting down); retry, another replica will serve it",
    )
    .with_retry_after(DRAINING_RETRY_AFTER_SECS)
}

/// Whether this gateway can serve: not draining, and its store answers (a
/// cheap query with a short timeout, its answer kept for a second).
pub async fn readiness(state: &AppState) -> Result<(), Error> {
    let drain = state.drain();
    if drain.unready() {
        return Err(draining_error());
    }
    let ok = {
        // Held across the query: concurrent probes wait for one answer.
        let mut cached = drain.store_ok.lock().await;
        match *cached {
            Some((at, ok)) if at.elapsed() < READY_CACHE => ok,
            _ => {
                let ok = match tokio::time::timeout(STORE_PING_TIMEOUT, state.store().ping()).await
                {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!("readiness: the store failed: {e}");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(
                            "readiness: the store did not answer within {} ms",
                            STORE_PING_TIMEOUT.as_millis()
                        );
                        false
                    }
                };
                *cached = Some((Instant::now(), ok));
                ok
            }
        }
    };
    if !ok {
        return Err(Error::new(
            code::STORE_UNAVAILABLE,
            "this gateway cannot reach its store",
        )
        .with_retry_after(DRAINING_RETRY_AFTER_SECS));
    }
    // The drain may have begun while the store was asked.
    if drain.unready() {
        return Err(draining_error());
    }
    Ok(())
}

/// The links to send `execgate/move` to: those whose executor announced
/// the extension (never a stock codex).
pub fn movable(links: Vec<Arc<Link>>) -> Vec<Arc<Link>> {
    links
        .into_iter()
        .filter(|l| !l.is_closed() && l.moves_on_drain())
        .collect()
}

/// The `gateways` hint of `execgate/move`: the other live replicas'
/// advertise URLs, those holding the fewest executors first (a replica: none
/// alone). An executor dials a hint only when it is one of its own
/// `--gateway` URLs.
async fn move_hints(state: &AppState) -> Vec<String> {
    let Some(cluster) = state.cluster() else {
        return Vec::new();
    };
    match cluster.other_live_replicas(state.store()).await {
        Ok(urls) => urls,
        Err(e) => {
            tracing::warn!("draining: no gateways hint, the replicas table cannot be read: {e}");
            Vec::new()
        }
    }
}

/// Runs a drain once it begins (see the module's header), for at most
/// `timeout` after it began. Returns when the gateway may exit.
pub async fn run(state: AppState, timeout: Duration) {
    let drain = state.drain();
    drain.reached(Phase::Draining).await;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        in_flight = drain.in_flight(),
        links = state.registry().len(),
        timeout_secs = timeout.as_secs_f64(),
        "draining: refusing new requests and links; waiting for the calls in flight"
    );
    let calls_done = drain.calls_done(deadline).await;
    drain.set(Phase::Closing);
    let links = movable(state.registry().links());
    let codex = state.registry().len().saturating_sub(links.len());
    let hints = move_hints(&state).await;
    for (i, link) in links.iter().enumerate() {
        // Each link its own rotation of the hints: the executors of this
        // replica spread over the others rather than all landing on one.
        let mut gateways = hints.clone();
        if !gateways.is_empty() {
            let n = gateways.len();
            gateways.rotate_left(i % n);
        }
        let params = serde_json::to_value(MoveParams {
            gateways,
            reason: Some("the gateway is draining".into()),
        })
        .unwrap_or_default();
        if let Err(e) = link.start_moving(method::EXECGATE_MOVE, params) {
            tracing::debug!(exe_id = %link.exe_id, "execgate/move not sent: {e}");
        }
    }
    tracing::info!(
        hints = %hints.join(","),
        moving = links.len(),
        without_the_extension = codex,
        calls_done,
        "draining: executors told to move, streams ending"
    );
    let moved = futures_util::future::join_all(links.iter().map(|l| l.closed()));
    let all_moved = tokio::time::timeout_at(deadline, moved).await.is_ok();
    // Streams have sent their `error` event and ended (or the deadline).
    let streams_done = drain.streams.done(deadline).await;
    drain.set(Phase::Done);
    // The last answers are written; let them leave the sockets.
    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + FLUSH_GRACE)).await;
    let left = drain.in_flight();
    if calls_done && all_moved && streams_done {
        tracing::info!(
            after_ms = started.elapsed().as_millis() as u64,
            "drained: exiting"
        );
    } else {
        tracing::warn!(
            calls_cut = left,
            links_not_moved = links.iter().filter(|l| !l.is_closed()).count(),
            streams_cut = drain.streams.count.load(Ordering::Acquire),
            "drain timeout reached: exiting with work in flight"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_counted_until_the_drain_then_refused() {
        let drain = Drain::default();
        assert_eq!(drain.phase(), Phase::Serving);
        let a = drain.enter().expect("serving: admitted");
        let b = drain.enter().expect("serving: admitted");
        assert_eq!(drain.in_flight(), 2);
        assert!(drain.begin());
        assert!(!drain.begin(), "a second begin changes nothing");
        assert!(drain.is_draining());
        assert!(drain.enter().is_none(), "draining: refused");
        assert_eq!(drain.in_flight(), 2, "a refused call is not counted");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(!drain.calls_done(deadline).await, "two calls still run");
        drop(a);
        let waiter = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let done = drain.calls_done(deadline).await;
            (done, drain)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b);
        let (done, drain) = waiter.await.unwrap();
        assert!(done);
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test]
    async fn phases_only_move_forward_and_wake_their_waiters() {
        let drain = Arc::new(Drain::default());
        let d = drain.clone();
        let closing = tokio::spawn(async move { d.closing().await });
        drain.begin();
        drain.set(Phase::Closing);
        drain.set(Phase::Draining);
        assert_eq!(drain.phase(), Phase::Closing);
        tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn readiness_follows_the_store_and_the_drain() {
        let (_dir, state) = crate::ops::state::test_state(|_| {}).await;
        readiness(&state).await.expect("ready");
        // A lost store shows once the cached answer is older than a second.
        state.store().close_for_tests().await;
        readiness(&state).await.expect("the cached answer still");
        tokio::time::sleep(READY_CACHE + Duration::from_millis(50)).await;
        let e = readiness(&state).await.unwrap_err();
        assert_eq!(e.code, code::STORE_UNAVAILABLE);
        assert_eq!(e.kind(), crate::ops::ErrorKind::Unavailable);
        // Draining wins over everything.
        state.drain().begin();
        assert_eq!(readiness(&state).await.unwrap_err().code, code::DRAINING);
    }

    #[tokio::test]
    async fn readiness_of_a_draining_gateway_is_draining() {
        let (_dir, state) = crate::ops::state::test_state(|_| {}).await;
        state.drain().begin();
        assert_eq!(readiness(&state).await.unwrap_err().code, code::DRAINING);
    }

    #[test]
    fn the_draining_error_says_when_to_retry() {
        let e = draining_error();
        assert_eq!(e.code, code::DRAINING);
        assert_eq!(e.retry_after, Some(DRAINING_RETRY_AFTER_SECS));
        assert_eq!(e.kind(), crate::ops::ErrorKind::Unavailable);
    }
}
