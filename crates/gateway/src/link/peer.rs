//! Replicas: executor ownership (leases with a fencing epoch) and the peer
//! channel through which a replica that does not hold an executor's link
//! reaches that executor through the replica that does (docs/replicas.md,
//! "Ownership and forwarding").
//!
//! Only a gateway started with `--advertise-url` and `--cluster-secret-file`
//! has a [`Cluster`]; without one none of this runs, and nothing here is on
//! a call's path.
//!
//! - **Leases.** A link that finishes its handshake takes its executor's
//!   lease (one upsert: epoch + 1, expiry now + [`ClusterConfig::lease`])
//!   before it is registered. The [`heartbeat`] renews the leases this
//!   replica holds that are due (half a lease left) in one statement per
//!   beat; a link whose lease was due and is not among the renewed ones
//!   (another replica took it: a newer epoch), or whose lease lapsed (the
//!   store was unreachable, or the process was paused), is closed, even
//!   though its socket is still open. A link's
//!   lease is also checked in memory before every use ([`Link::lease_ok`]).
//! - **The peer channel.** `GET /peer/v1/links/{exe_id}`, authenticated by
//!   the cluster secret ([`sign`], [`verify`]), upgrades to a WebSocket on
//!   which the caller speaks the executor protocol and the owner relays each
//!   request onto its own link ([`serve`]; [`Link::relay`]: a fresh link id,
//!   the payload as it came, binary frames stay binary). The owner speaks
//!   first: [`HELLO`] carries the link's handshake, so that the caller's
//!   [`Link`] (driven by this socket: [`dial`]) looks like the owner's to
//!   `ops`. Process ids are never rewritten: a process started through one
//!   replica is read through any other. Notifications reach the caller only
//!   for the processes it watches ([`WATCH`], [`UNWATCH`], sent by a relayed
//!   link's subscriptions) and the bridge taps it holds ([`TAP`], [`UNTAP`]);
//!   the owner subscribes on its own link for them, so output pushing is
//!   counted across replicas. Before relaying each request the owner checks
//!   its lease; a lapsed one ends the channel (1013), and the caller's calls
//!   in flight fail with 503 `executor_unavailable`.
//! - **Metrics.** The caller's side counts each request it sends through
//!   the holder, by outcome, and its round trip (`Link`'s round-trip timer
//!   on a relayed link), and a call whose holder it could not reach
//!   (`unreachable`); the holder counts the requests it relays.
//! - **Moves.** When a channel ends (the owner drained and its executor
//!   moved, or the owner died), calls on that executor wait up to
//!   [`MOVE_WAIT`] for its next owner (`AppState::link`), and a `shell`
//!   in flight reads on through it (`shell::relink`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use execgate_protocol::blob::{self, Blob};
use execgate_protocol::connectors::error_code;
use execgate_protocol::exec::{
    method, ClosedNotification, EnvironmentInfo, ExitedNotification, OutputNotification,
};
use execgate_protocol::jsonrpc::{DecodeError, Encoded, Envelope, Message, RpcError};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::link::connect::{spawn_reader, spawn_writer, LinkSocket, MAX_FRAME};
use crate::link::host::{Host, LinkConfig};
use crate::link::relay_ahead::RelayAheads;
use crate::link::{Handshake, Link, LinkError, ProcessEvent};
use crate::secret::SecretString;
use crate::store::{now_ms, Store};

/// The owner's first frame: the link's handshake (params: `workspace`,
/// `name`, `epoch`, `sessionId`, `environmentInfo`).
pub const HELLO: &str = "peer/hello";
/// Owner → caller: the JSON-RPC error code of a request the owner did not
/// relay (its executor is moving away, or its link had already closed):
/// the request never reached the executor, so the caller fails it as not
/// sent (`LinkError::Disconnected { sent: false }`: an `Idempotency-Key`
/// is released and the retry goes to the next owner).
pub const NOT_RELAYED: i64 = -32098;

/// Owner → caller: the error code of a request the owner relayed whose
/// executor link went away before answering: its outcome is unknown.
pub const OUTCOME_UNKNOWN: i64 = -32097;
/// The start of the close reason of a channel that its owner ended because
/// its executor link closed, once every request it had read was answered
/// (with [`NOT_RELAYED`] or [`OUTCOME_UNKNOWN`] when not by the executor):
/// the caller's requests still unanswered were never read, so never sent.
pub const ALL_ANSWERED: &str = "answered all: ";

/// Caller → owner: relay the notifications of `processId` (with `push`:
/// turn the executor's output pushing on, as `Link::subscribe` does).
pub const WATCH: &str = "peer/watch";
/// Caller → owner: stop relaying `processId`'s notifications.
pub const UNWATCH: &str = "peer/unwatch";
/// Caller → owner: relay the bridge namespace `br-<key>-…` raw.
pub const TAP: &str = "peer/tap";
pub const UNTAP: &str = "peer/untap";

/// Where the peer endpoint is, before the exe_id.
pub const PATH: &str = "/peer/v1/links/";
/// The headers of a peer's credentials.
pub const REPLICA_HEADER: &str = "x-execgate-replica";
pub const TIME_HEADER: &str = "x-execgate-peer-time";
pub const SIGNATURE_HEADER: &str = "x-execgate-peer-signature";
/// How far a peer's timestamp may be from this replica's clock.
pub const MAX_SKEW_MS: i64 = 60_000;

/// The default lease: a replica that cannot renew (paused, partitioned,
/// store lost) stops serving its executors this long after its last
/// renewal; an executor whose owner died is unreachable through the other
/// replicas until it re-dials one of them.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// How often a replica heartbeats and renews its leases.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the owner waits for the executor's answer to a relayed
/// request (a `process/read`'s `waitMs` on top); the caller's own deadline
/// is usually shorter, and its late answer is then dropped.
const RELAY_TIMEOUT: Duration = Duration::from_secs(600);
/// Frames waiting for a peer's socket.
const OUT_QUEUE: usize = 1024;
/// How long dialling an owner may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an owner that could not be reached is not dialled again (for
/// the same lease).
const DIAL_BACKOFF: Duration = Duration::from_millis(500);
/// How long the list of executors held elsewhere (envs/list) is reused.
const ELSEWHERE_TTL: Duration = Duration::from_millis(500);
/// How old a list of executors held elsewhere may be and still answer a
/// call while it is re-read beside it ([`Cluster::held_elsewhere`]).
const ELSEWHERE_STALE: Duration = Duration::from_millis(1_500);
/// Replicas silent this long are forgotten (their rows).
const PRUNE_AFTER_MS: i64 = 3_600_000;
/// How long after a channel to an executor ended (its owner drained and
/// the executor moved, or the owner died) calls on it wait for its new
/// owner instead of failing at once ([`Cluster::moving_until`]).
pub const MOVE_WAIT: Duration = Duration::from_secs(5);
/// How often a call waiting for a moved executor looks for its new owner.
pub const MOVE_POLL: Duration = Duration::from_millis(100);

/// What makes a gateway a replica.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How peers reach this replica (`http(s)://host:port`).
    pub advertise_url: String,
    /// Shared by every replica; authenticates the peer channel.
    pub secret: SecretString,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How often leases are renewed.
    pub heartbeat: Duration,
}

impl ClusterConfig {
    pub fn new(advertise_url: String, secret: SecretString) -> ClusterConfig {
        ClusterConfig {
            advertise_url: advertise_url.trim_end_matches('/').to_string(),
            secret,
            lease: DEFAULT_LEASE,
            heartbeat: HEARTBEAT,
        }
    }
}

/// An environment's listing pieces, as JSON: its tools (`[…]`) and the end
/// of its entry (`,"executor":{…},"policy":{…}}`); see
/// `ops::environment::listing`.
pub type Pieces = (Arc<str>, Arc<str>);

/// What envs/list shows of an executor another replica holds
/// ([`Cluster::describe`]).
pub enum Described {
    /// The channel to it through its holder, open from an earlier call.
    Open(Arc<Link>),
    /// Its name and listing pieces, from its lease.
    Leased(Arc<Description>),
}

/// An executor another replica holds, as envs/list shows it: its name and
/// its listing pieces (shared with every executor alike).
#[derive(Debug)]
pub struct Description {
    pub name: Box<str>,
    pub pieces: Pieces,
}

/// Descriptions kept at most (a replica describes the executors others
/// hold; past this the map is emptied and rebuilt as listed).
const DESCRIBED_CAP: usize = 200_000;

/// A lease's holder and epoch.
type LeaseHolder = (String, i64);
/// exe_id → epoch of the executors other replicas hold.
pub type HeldElsewhere = HashMap<String, i64>;
/// The kept list of executors held elsewhere, and when it was read.
type Elsewhere = Mutex<Option<(Instant, Arc<HeldElsewhere>)>>;
/// exe_id → a description and the epoch it was read at.
type DescribedMap = Mutex<HashMap<String, (i64, Arc<Description>)>>;

/// This replica: its id, and the links it holds to other replicas'
/// executors.
pub struct Cluster {
    pub replica_id: String,
    pub config: ClusterConfig,
    /// exe_id → the link through its owner.
    remotes: Mutex<HashMap<String, Arc<Link>>>,
    /// Moves after each link kept in or dropped from `remotes` (see
    /// [`Cluster::channels_generation`]).
    remotes_generation: AtomicU64,
    /// exe_id → the lock its one dial at a time holds.
    dialling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// exe_id → the lease (holder, epoch) whose owner could not be reached,
    /// and when.
    failures: Mutex<HashMap<String, (LeaseHolder, Instant)>>,
    elsewhere: Arc<Elsewhere>,
    /// Whether a task is re-reading `elsewhere`.
    refreshing: Arc<AtomicBool>,
    /// exe_id → a description (see [`Cluster::describe`]) and its epoch.
    described: Arc<DescribedMap>,
    /// exe_id → when its channel through its owner ended (the executor is
    /// probably moving to another replica; see [`MOVE_WAIT`]).
    lost: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Cluster {
        Cluster {
            replica_id: crate::secret::random_id("rep_", 8),
            config,
            remotes: Mutex::new(HashMap::new()),
            remotes_generation: AtomicU64::new(0),
            dialling: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            elsewhere: Arc::default(),
            refreshing: Arc::default(),
            described: Arc::default(),
            lost: Arc::default(),
        }
    }

    /// Until when calls on `exe_id` wait for its new owner: [`MOVE_WAIT`]
    /// after its channel through its former owner ended; `None` when no
    /// channel to it ended that recently.
    pub fn moving_until(&self, exe_id: &str) -> Option<tokio::time::Instant> {
        let ended = *self.lost.lock().unwrap().get(exe_id)?;
        let until = ended + MOVE_WAIT;
        (Instant::now() < until).then(|| tokio::time::Instant::from_std(until))
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }

    /// Takes `link`'s executor for this replica (epoch + 1) and records the
    /// lease on the link. A link to it through another replica is closed.
    pub async fn take_lease(&self, store: &Store, link: &Link) -> crate::store::Result<()> {
        let now = now_ms();
        let until = now + self.lease_ms();
        let info = link
            .handshake()
            .and_then(|h| serde_json::to_string(&h.info).ok());
        let epoch = store
            .take_lease(
                &link.exe_id,
                &self.replica_id,
                &self.config.advertise_url,
                until,
                info.as_deref(),
            )
            .await?;
        link.set_lease(epoch, until);
        let old = self.remotes.lock().unwrap().remove(&link.exe_id);
        if let Some(old) = old {
            old.close("the executor moved to this replica");
            self.remotes_generation.fetch_add(1, Ordering::AcqRel);
        }
        tracing::info!(exe_id = %link.exe_id, epoch, "took the executor's lease");
        Ok(())
    }

    /// Gives up `link`'s lease if it is still this replica's at its epoch;
    /// whether it was (a link closed because its lease moved was not).
    pub async fn release_lease(&self, store: &Store, link: &Link) -> bool {
        if link.epoch() == 0 {
            return false;
        }
        match store
            .release_lease(&link.exe_id, &self.replica_id, link.epoch())
            .await
        {
            Ok(released) => released,
            Err(e) => {
                tracing::warn!(exe_id = %link.exe_id, "could not release the executor's lease: {e}");
                false
            }
        }
    }

    /// Executors other live replicas hold, with their lease's epoch
    /// (envs/list), reused for [`ELSEWHERE_TTL`]; past it, and up to
    /// [`ELSEWHERE_STALE`], the call still answers from the kept list
    /// while one task re-reads the leases beside it (at 30,000 executors,
    /// 20,000 rows: the wait for it was envs/list's p90), and only a list
    /// older than that is read on the call's path.
    pub async fn held_elsewhere(&self, store: &Store) -> Arc<HeldElsewhere> {
        if let Some((at, held)) = &*self.elsewhere.lock().unwrap() {
            let age = at.elapsed();
            if age < ELSEWHERE_TTL {
                return held.clone();
            }
            if age < ELSEWHERE_STALE {
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let (store, replica_id) = (store.clone(), self.replica_id.clone());
                    let (elsewhere, described, refreshing) = (
                        self.elsewhere.clone(),
                        self.described.clone(),
                        self.refreshing.clone(),
                    );
                    tokio::spawn(async move {
                        read_elsewhere(&store, &replica_id, &elsewhere, &described).await;
                        refreshing.store(false, Ordering::Release);
                    });
                }
                return held.clone();
            }
        }
        read_elsewhere(store, &self.replica_id, &self.elsewhere, &self.described).await
    }

    /// The other live replicas' advertise URLs (a heartbeat within three
    /// beats) from the replicas table, those holding the fewest executors
    /// first: where a draining replica's executors move, and where a
    /// cancellation is passed on.
    pub async fn other_live_replicas(&self, store: &Store) -> crate::store::Result<Vec<String>> {
        let now = now_ms();
        let live_ms = 3 * self.config.heartbeat.as_millis() as i64;
        let live = store
            .list_replicas(now)
            .await?
            .into_iter()
            .filter(|r| now - r.heartbeat_at < live_ms)
            .map(|r| (r.peer_url, r.executors));
        Ok(least_loaded_first(live, &self.config.advertise_url))
    }

    /// What envs/list shows of executor `exe_id` (workspace, name) held
    /// elsewhere at `epoch`: the open channel to it if there is one, else a
    /// [`Description`]: its listing pieces, rendered by `render` from the
    /// handshake its holder wrote into the lease (read once per epoch and
    /// name), so that listing never opens channels. `None` when the lease
    /// has no handshake. Only the pieces are kept (interned, shared by
    /// executors alike), not a [`Link`]: at 30,000 executors on three
    /// replicas a kept closed link with its parsed handshake cost each
    /// replica ~3.9 KB for each of the ~6,700 it described (BENCHMARKS.md).
    pub async fn describe(
        &self,
        store: &Store,
        exe_id: &str,
        workspace: &str,
        name: &str,
        epoch: i64,
        render: impl FnOnce(&Link) -> Pieces,
    ) -> Option<Described> {
        if let Some(link) = self.kept(exe_id) {
            return Some(Described::Open(link));
        }
        if let Some((at, d)) = self.described.lock().unwrap().get(exe_id) {
            if *at == epoch && &*d.name == name {
                return Some(Described::Leased(d.clone()));
            }
        }
        let leased = store.leased_info(exe_id).await.ok()??;
        let info: EnvironmentInfo =
            serde_json::from_str(leased.environment_info.as_deref()?).ok()?;
        // A closed link that lives only to be rendered: no socket behind it.
        let (tx, _) = mpsc::unbounded_channel();
        let link = Link::new(
            exe_id.to_string(),
            workspace.to_string(),
            name.to_string(),
            tx,
        );
        link.set_relayed();
        link.set_handshake(Handshake {
            session_id: String::new(),
            ext: info.ext(),
            info,
        });
        link.close("a description of an executor another replica holds");
        let description = Arc::new(Description {
            name: name.into(),
            pieces: render(&link),
        });
        let mut described = self.described.lock().unwrap();
        // Past the executors there can be, the ones no longer held
        // elsewhere are dropped (see also `held_elsewhere`).
        if described.len() >= DESCRIBED_CAP {
            described.clear();
        }
        described.insert(exe_id.to_string(), (leased.epoch, description.clone()));
        Some(Described::Leased(description))
    }

    /// A link to executor `exe_id` through the replica that holds it: the
    /// one kept from an earlier call while it is open, else a new channel
    /// to the holder of its lease (when that lease is unexpired and its
    /// holder heartbeats). `None` when no other replica holds it.
    pub async fn remote_link(
        &self,
        store: &Store,
        config: &LinkConfig,
        exe_id: &str,
    ) -> Result<Option<Arc<Link>>, Unreachable> {
        if let Some(link) = self.kept(exe_id) {
            return Ok(Some(link));
        }
        // One dial per executor at a time: calls that arrive meanwhile wait
        // for it and share its channel.
        let gate = self
            .dialling
            .lock()
            .unwrap()
            .entry(exe_id.to_string())
            .or_default()
            .clone();
        let _dialling = gate.lock().await;
        if let Some(link) = self.kept(exe_id) {
            return Ok(Some(link));
        }
        // Bounded: a store that does not answer (an outage) would hold
        // the call for the pool's whole acquire timeout.
        let read =
            tokio::time::timeout(crate::store::lookups::READ_TIMEOUT, store.lease(exe_id)).await;
        let lease = match read {
            Ok(Ok(Some(lease))) => lease,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => {
                tracing::warn!(exe_id, "could not read the executor's lease: {e}");
                return Ok(None);
            }
            Err(_) => {
                tracing::warn!(
                    exe_id,
                    "could not read the executor's lease: the store did not answer"
                );
                return Ok(None);
            }
        };
        let now = now_ms();
        let heartbeat_fresh = lease
            .heartbeat_at
            .is_some_and(|at| now - at < self.lease_ms());
        if lease.replica_id == self.replica_id || lease.expires_at <= now || !heartbeat_fresh {
            return Ok(None);
        }
        // An owner that could not be reached is not dialled again for the
        // same lease (holder and epoch) within DIAL_BACKOFF: calls answer
        // 503 at once instead of each waiting for a dial to fail.
        let attempt = (lease.replica_id.clone(), lease.epoch);
        if let Some((failed, at)) = self.failures.lock().unwrap().get(exe_id) {
            if *failed == attempt && at.elapsed() < DIAL_BACKOFF {
                return Err(Unreachable);
            }
        }
        let link = match tokio::time::timeout(
            DIAL_TIMEOUT,
            dial(self, config, &lease.peer_url, exe_id),
        )
        .await
        {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => {
                tracing::warn!(exe_id, owner = %lease.replica_id, "could not reach the executor through its owner: {e}");
                self.failures
                    .lock()
                    .unwrap()
                    .insert(exe_id.to_string(), (attempt, Instant::now()));
                return Err(Unreachable);
            }
            Err(_) => {
                tracing::warn!(exe_id, owner = %lease.replica_id, "could not reach the executor through its owner within {DIAL_TIMEOUT:?}");
                self.failures
                    .lock()
                    .unwrap()
                    .insert(exe_id.to_string(), (attempt, Instant::now()));
                return Err(Unreachable);
            }
        };
        self.failures.lock().unwrap().remove(exe_id);
        self.lost.lock().unwrap().remove(exe_id);
        self.remotes
            .lock()
            .unwrap()
            .insert(exe_id.to_string(), link.clone());
        self.remotes_generation.fetch_add(1, Ordering::AcqRel);
        Ok(Some(link))
    }

    /// Moves after each channel to another replica's executor kept or
    /// dropped, never before the change is seen (see
    /// [`Registry::generation`](super::registry::Registry::generation)).
    pub fn channels_generation(&self) -> u64 {
        self.remotes_generation.load(Ordering::Acquire)
    }

    /// The open channel kept for `exe_id`, if any.
    fn kept(&self, exe_id: &str) -> Option<Arc<Link>> {
        self.remotes
            .lock()
            .unwrap()
            .get(exe_id)
            .filter(|link| !link.is_closed())
            .cloned()
    }

    /// The credentials headers for a channel to `exe_id`.
    fn credentials(&self, exe_id: &str) -> [(&'static str, String); 3] {
        let ts = now_ms();
        [
            (REPLICA_HEADER, self.replica_id.clone()),
            (TIME_HEADER, ts.to_string()),
            (
                SIGNATURE_HEADER,
                sign(self.config.secret.expose(), &self.replica_id, exe_id, ts),
            ),
        ]
    }
}

/// Reads the executors other live replicas hold into `elsewhere`, and drops
/// the descriptions of executors no longer held elsewhere at that epoch
/// (moved here, to another holder, or gone).
async fn read_elsewhere(
    store: &Store,
    replica_id: &str,
    elsewhere: &Elsewhere,
    described: &DescribedMap,
) -> Arc<HeldElsewhere> {
    let read_at = Instant::now();
    let held: HeldElsewhere = match store.leased_elsewhere(replica_id, now_ms()).await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::warn!("could not read the leases: {e}");
            HashMap::new()
        }
    };
    described
        .lock()
        .unwrap()
        .retain(|exe_id, (epoch, _)| held.get(exe_id) == Some(epoch));
    let mut kept = elsewhere.lock().unwrap();
    // The same leases as the kept list: keep its `Arc`, so that a
    // workspace's listing built from it stays current (`ops::envs_list`).
    // Compared here, off the calls' path.
    let held = match kept.as_ref() {
        Some((_, same)) if **same == held => same.clone(),
        _ => Arc::new(held),
    };
    // A read begun earlier but done later does not replace a newer one.
    if kept.as_ref().is_none_or(|(at, _)| *at <= read_at) {
        *kept = Some((read_at, held.clone()));
    }
    held
}

/// From live replicas' (advertise URL, executors held): this replica's URL
/// left out (its former incarnations too), each URL once, the least loaded
/// first.
fn least_loaded_first(live: impl IntoIterator<Item = (String, i64)>, me: &str) -> Vec<String> {
    let me = me.trim_end_matches('/');
    let mut by_url: Vec<(String, i64)> = Vec::new();
    for (url, held) in live {
        let url = url.trim_end_matches('/').to_string();
        if url == me {
            continue;
        }
        match by_url.iter_mut().find(|(u, _)| *u == url) {
            Some((_, n)) => *n = (*n).max(held),
            None => by_url.push((url, held)),
        }
    }
    by_url.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    by_url.into_iter().map(|(url, _)| url).collect()
}

/// Another replica holds the executor, and it could not be reached.
#[derive(Debug)]
pub struct Unreachable;

/// A call that needed the executor's holder and could not reach it
/// (`execgate_forwarded_calls_total{outcome="unreachable"}`): counted once
/// per call, however many dials its wait for a moving executor made.
pub fn count_unreachable() {
    if let Some(m) = crate::metrics::get() {
        m.forwarded(crate::metrics::Forwarded::Unreachable);
    }
}

/// The signature of a channel from replica `replica_id` to `exe_id` at
/// `ts_ms`: hex HMAC-SHA256 under the cluster secret.
pub fn sign(secret: &str, replica_id: &str, exe_id: &str, ts_ms: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("execgate-peer-v1\n{replica_id}\n{exe_id}\n{ts_ms}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a peer's credentials for a channel to `exe_id`: the signature
/// (constant time) and the timestamp (within [`MAX_SKEW_MS`] of `now_ms`).
/// A refusal says which part failed, never the expected value.
pub fn verify(
    secret: &str,
    replica_id: Option<&str>,
    ts: Option<&str>,
    signature: Option<&str>,
    exe_id: &str,
    now_ms: i64,
) -> Result<(), String> {
    let (Some(replica_id), Some(ts), Some(signature)) = (replica_id, ts, signature) else {
        return Err(format!(
            "peer credentials missing: send {REPLICA_HEADER}, {TIME_HEADER} and {SIGNATURE_HEADER}"
        ));
    };
    let ts: i64 = ts
        .parse()
        .map_err(|_| format!("{TIME_HEADER} is not a number of milliseconds"))?;
    let expected = sign(secret, replica_id, exe_id, ts);
    if !crate::secret::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(
            "bad peer signature (is --cluster-secret-file the same on every replica?)".into(),
        );
    }
    if (now_ms - ts).abs() > MAX_SKEW_MS {
        return Err(format!(
            "peer credentials expired: {TIME_HEADER} is {} ms from this replica's clock",
            now_ms - ts
        ));
    }
    Ok(())
}

/// Opens a channel to `exe_id` through the replica at `peer_url` and
/// returns the [`Link`] it drives.
async fn dial(
    cluster: &Cluster,
    config: &LinkConfig,
    peer_url: &str,
    exe_id: &str,
) -> Result<Arc<Link>, String> {
    let base = peer_url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .or_else(|| {
            peer_url
                .strip_prefix("https://")
                .map(|rest| format!("wss://{rest}"))
        })
        .unwrap_or_else(|| peer_url.to_string());
    let mut request = format!("{base}{PATH}{exe_id}")
        .into_client_request()
        .map_err(|e| format!("bad peer URL {peer_url:?}: {e}"))?;
    for (name, value) in cluster.credentials(exe_id) {
        request.headers_mut().insert(
            name,
            value
                .parse()
                .map_err(|_| "credentials are not a header value".to_string())?,
        );
    }
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true)
        .await
        .map_err(|e| format!("{peer_url}: {e}"))?;
    let (sink, mut stream) = socket.split();
    let hello = loop {
        match stream.next().await {
            Some(Ok(WsMessage::Text(t))) => break t,
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(format!(
                    "the owner closed the channel: {}",
                    frame.map(|f| f.reason.to_string()).unwrap_or_default()
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the owner closed the channel".into()),
        }
    };
    let Ok(Message::Notification { method, params }) = Message::decode(hello.as_bytes()) else {
        return Err("the owner's first frame is not a notification".into());
    };
    if method != HELLO {
        return Err(format!(
            "the owner's first frame is {method:?}, not {HELLO}"
        ));
    }
    let field = |name: &str| params.get(name).and_then(Value::as_str).map(String::from);
    let (Some(workspace), Some(name), Some(session_id)) =
        (field("workspace"), field("name"), field("sessionId"))
    else {
        return Err(format!("{HELLO} lacks workspace, name or sessionId"));
    };
    let info: EnvironmentInfo = serde_json::from_value(params["environmentInfo"].clone())
        .map_err(|e| format!("{HELLO}: environmentInfo: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel::<Encoded>();
    let link = Link::new(exe_id.to_string(), workspace, name, tx);
    link.set_relayed();
    let epoch = params.get("epoch").and_then(Value::as_i64).unwrap_or(0);
    link.set_lease(epoch, i64::MAX);
    link.set_handshake(Handshake {
        session_id,
        ext: info.ext(),
        info,
    });
    let writer = spawn_writer(link.clone(), sink, rx, config.ping_timeout);
    let reader = spawn_reader(link.clone(), stream, "the owner replica");
    let watched = link.clone();
    let lost = cluster.lost.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            r = reader => r.unwrap_or_else(|e| format!("reader failed: {e}")),
            _ = watched.closed() => watched.close_reason().unwrap_or("closed").to_string(),
        };
        {
            // Calls on the executor now wait a moment for its next owner.
            let mut lost = lost.lock().unwrap();
            if lost.len() >= 4096 {
                lost.retain(|_, at| at.elapsed() < MOVE_WAIT);
            }
            lost.insert(watched.exe_id.clone(), Instant::now());
        }
        watched.close(&format!(
            "the channel through the owner replica ended: {reason}"
        ));
        let _ = writer.await;
    });
    tracing::info!(
        exe_id,
        peer_url,
        epoch,
        "opened a channel to the executor through its owner"
    );
    Ok(link)
}

/// The lease upkeep: every [`ClusterConfig::heartbeat`], this replica's
/// heartbeat and the renewal of the leases it holds that are due (one
/// statement each); links whose lease was due and not renewed, or lapsed,
/// are closed. Runs for the gateway's life.
///
/// A lease is due once less than half of [`ClusterConfig::lease`] is left
/// ([`renewal_due`]): each lease is rewritten about every half lease (5 s)
/// rather than every beat, and a beat reads back only the leases it
/// renewed. A lease another replica took is noticed by a count: when the
/// store has fewer of this replica's leases than it has links with one,
/// the next beat renews every lease and judges every link (so within two
/// beats); when the two counts happen to match (a lost lease and an
/// orphan), when it falls due, within half a lease and a beat. The first
/// beat, and the one after a failed renewal (whose statement may have
/// committed unseen), renew every lease too.
pub async fn heartbeat(host: Host) {
    let Some(cluster) = host.cluster() else {
        return;
    };
    let mut tick = tokio::time::interval(cluster.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Leases this replica renewed without a live link to them (exe_id →
    // epoch, when): released when a later renewal returns them again (a
    // link takes its lease just before it is registered), forgotten after
    // a lease without (another replica took it, or it lapsed).
    let mut orphans: HashMap<String, (i64, i64)> = HashMap::new();
    let mut last_prune = Instant::now();
    let mut renew_all = true;
    loop {
        tick.tick().await;
        let store = host.store();
        let now = now_ms();
        if let Err(e) = store
            .replica_heartbeat(&cluster.replica_id, &cluster.config.advertise_url, now)
            .await
        {
            tracing::warn!("replica heartbeat failed: {e}");
        }
        let until = now + cluster.lease_ms();
        let due = if renew_all {
            i64::MAX
        } else {
            renewal_due(now, cluster.lease_ms())
        };
        // The links judged below are those due, registered before the
        // renewal began: a link takes its lease (committed) before it is
        // registered, so the renewal sees each of their rows. A link
        // registered while the statement ran may have taken its lease after
        // the statement's snapshot: not renewed, yet not lapsed. Judged so,
        // it was closed, and under a connect storm (the bench's fleet of
        // 30,000 executors) 7,770 were in one run (BENCHMARKS.md, session
        // 9); it is judged when it falls due instead. The same pass counts
        // the links with a lease, for the count below.
        let mut leased = 0usize;
        let due_links = host.registry().links_where(|l| {
            let has_lease = l.epoch() != 0;
            leased += usize::from(has_lease);
            has_lease && l.lease_until() <= due
        });
        match store
            .renew_leases(&cluster.replica_id, now, due, until)
            .await
        {
            Ok(renewed) => {
                renew_all = false;
                let mut renewed: HashMap<String, i64> = renewed.into_iter().collect();
                for (link, why) in judge_renewal(&due_links, &mut renewed, until) {
                    link.close(&why);
                }
                // Renewed, but not among the links due: one this replica
                // holds whose lease it saw later than the store did
                // (extended here too, never closed: it may be a link newer
                // than the renewal), or an orphan.
                for (exe_id, epoch) in renewed {
                    if let Some(link) = host.registry().get(&exe_id) {
                        link.renew_lease(epoch, until);
                        orphans.remove(&exe_id);
                    } else if orphans.get(&exe_id).is_some_and(|(e, _)| *e == epoch) {
                        orphans.remove(&exe_id);
                        let _ = store
                            .release_lease(&exe_id, &cluster.replica_id, epoch)
                            .await;
                    } else {
                        orphans.insert(exe_id, (epoch, now));
                    }
                }
                let lease_ms = cluster.lease_ms();
                orphans.retain(|_, (_, seen)| now - *seen <= lease_ms);
                // A lease another replica took is in the store no longer
                // this replica's: fewer rows than links with a lease, and
                // the next beat renews (and judges) them all, rather than
                // waiting for it to fall due. Links counted first (before
                // the renewal): one registered meanwhile has its row
                // already, so the count only runs short when a lease went
                // (or a link closed and released its own, or was closed
                // above: a full renewal for nothing).
                if let Ok(rows) = store.count_leases(&cluster.replica_id, now).await {
                    if (rows as usize) < leased {
                        renew_all = true;
                    }
                }
            }
            Err(e) => {
                renew_all = true;
                tracing::warn!("could not renew the executor leases: {e}");
                let now = now_ms();
                for link in host.registry().links_where(|l| !l.lease_ok(now)) {
                    link.close(
                        "this replica's lease on the executor lapsed (the store is unreachable)",
                    );
                }
            }
        }
        if last_prune.elapsed() > Duration::from_secs(600) {
            last_prune = Instant::now();
            let _ = store.prune_replicas(now - PRUNE_AFTER_MS).await;
        }
    }
}

/// The leases a beat at `now` renews: those that expire within half a
/// lease of `lease_ms`.
fn renewal_due(now: i64, lease_ms: i64) -> i64 {
    now + lease_ms / 2
}

/// Applies one renewal (`renewed`: exe_id → epoch, of the leases due,
/// extended to `until`) to `due`, the links whose lease was due,
/// registered before it; takes their rows out of `renewed`. Returns the
/// links to close, and why: one renewed at another epoch than its own lost
/// its lease to a newer one; one not renewed lost it (another replica took
/// it, or it lapsed).
fn judge_renewal(
    due: &[Arc<Link>],
    renewed: &mut HashMap<String, i64>,
    until: i64,
) -> Vec<(Arc<Link>, String)> {
    let mut lost = Vec::new();
    for link in due {
        match renewed.remove(&link.exe_id) {
            Some(epoch) if link.renew_lease(epoch, until) => {}
            Some(epoch) => lost.push((
                link.clone(),
                format!(
                    "this replica's lease on the executor is at epoch {epoch}, not the link's {}",
                    link.epoch()
                ),
            )),
            None => lost.push((
                link.clone(),
                "this replica no longer holds the executor's lease (it lapsed, or another replica took it)"
                    .to_string(),
            )),
        }
    }
    lost
}

/// What the owner's side of a channel shares between its tasks.
struct Channel {
    link: Arc<Link>,
    out: mpsc::Sender<WsMessage>,
    /// The reads of processes' output sent ahead for this peer.
    aheads: RelayAheads,
}

impl Channel {
    async fn send(&self, frame: Encoded) -> bool {
        let msg = match frame {
            Encoded::Text(t) => WsMessage::Text(t.into()),
            Encoded::Binary(b) => WsMessage::Binary(b.into()),
        };
        self.out.send(msg).await.is_ok()
    }
}

/// The answer to a request this owner did not relay ([`NOT_RELAYED`]).
fn not_relayed(why: &str) -> RpcError {
    RpcError::new(NOT_RELAYED, format!("not relayed to the executor: {why}"))
}

/// A `process/read`'s process id and `afterSeq`.
fn read_of(params: &Value) -> Option<(String, u64)> {
    let pid = params.get("processId")?.as_str()?.to_string();
    let after = params.get("afterSeq").and_then(Value::as_u64).unwrap_or(0);
    Some((pid, after))
}

/// A stock codex does not count the output it evicted (`lostBytes`, an
/// [ext] of execgate executors); the owner's link counts it from the
/// notifications it saw go by (its seq ledger), which a replica reading
/// through this channel never saw. So the owner fills `lostBytes` into a
/// relayed `process/read` answer that lacks it, when its ledger can tell
/// (otherwise the reader reports the loss as unknown, as before).
fn count_lost_bytes(link: &Link, process_id: &str, after_seq: u64, result: &mut Value) {
    let Value::Object(map) = result else { return };
    if map.contains_key("lostBytes") {
        return;
    }
    let Some(first) = map
        .get("chunks")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("seq"))
        .and_then(Value::as_u64)
    else {
        return;
    };
    if let Some(n) = link.lost_between(process_id, after_seq, first) {
        map.insert("lostBytes".into(), json!(n));
    }
}

/// The owner's side of a channel from replica `peer`: relays its requests
/// onto `link` and the notifications it watches back, until either side
/// goes, the link closes, or this replica's lease on the executor lapses.
pub async fn serve(host: Host, link: Arc<Link>, socket: LinkSocket, peer: String) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<WsMessage>(OUT_QUEUE);
    let ping_every = (host.config().ping_timeout / 2).max(Duration::from_millis(100));
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        loop {
            let msg = tokio::select! {
                msg = out_rx.recv() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
                _ = ping.tick() => WsMessage::Ping(Bytes::new()),
            };
            let close = matches!(msg, WsMessage::Close(_));
            if sink.send(msg).await.is_err() || close {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });
    let channel = Arc::new(Channel {
        link: link.clone(),
        out: out_tx.clone(),
        aheads: RelayAheads::default(),
    });
    let hello = {
        let hs = link.handshake();
        let params = json!({
            "workspace": link.workspace,
            "name": link.name,
            "epoch": link.epoch(),
            "sessionId": hs.map(|h| h.session_id.clone()),
            "environmentInfo": hs.map(|h| h.info.clone()),
        });
        Message::notification(HELLO, params).encode()
    };
    let _ = out_tx.send(WsMessage::Text(hello.into())).await;

    let mut tasks = tokio::task::JoinSet::new();
    let mut watches: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut taps: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut last_heard = now_ms();
    let silence_limit = (host.config().ping_timeout.as_millis() as i64).max(1000);
    // The lease and the peer's silence, checked once a second (the
    // heartbeat also closes a link whose lease it could not renew, which
    // ends the channel at once).
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut requests = 0u64;
    let mut link_closed = false;
    let end: String = loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = link.closed() => {
                link_closed = true;
                break format!(
                    "executor '{}' disconnected from its owner: {}",
                    link.name, link.close_reason().unwrap_or("closed")
                )
            }
            _ = check.tick() => {
                if !link.lease_ok(now_ms()) {
                    break "the owner's lease on the executor lapsed".into();
                }
                if now_ms() - last_heard > silence_limit {
                    break "the peer replica went silent".into();
                }
                continue;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        last_heard = now_ms();
        let decoded: Result<Envelope, DecodeError> = match msg {
            Some(Ok(WsMessage::Text(t))) => Message::decode(t.as_bytes()).map(Envelope::text),
            Some(Ok(WsMessage::Binary(b))) => Envelope::decode_binary(b),
            Some(Ok(WsMessage::Close(_))) | None => {
                break "the peer replica closed the channel".into()
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("channel error: {e}"),
        };
        let Ok(Envelope { message, payload }) = decoded else {
            tracing::warn!(exe_id = %link.exe_id, peer, "undecodable frame from a peer replica");
            continue;
        };
        match message {
            Message::Request { id, method, params } => {
                // Fencing: a replica whose lease lapsed answers nothing more.
                if !link.lease_ok(now_ms()) {
                    break "the owner's lease on the executor lapsed".into();
                }
                requests += 1;
                if let Some(m) = crate::metrics::get() {
                    m.peer_relayed();
                }
                let channel = channel.clone();
                tasks.spawn(async move {
                    let timeout = crate::link::bridge::deadline(&method, &params, RELAY_TIMEOUT);
                    let read = (method == method::PROCESS_READ).then(|| read_of(&params));
                    let answer = match method.as_str() {
                        method::INITIALIZE | method::INITIALIZED => {
                            Ok((Err(RpcError::method_not_found(&method)), Bytes::new()))
                        }
                        // After `execgate/move` went out, a new request
                        // could reach the executor after it decided to
                        // leave, unanswered: refuse it, unsent.
                        _ if channel.link.is_moving() => Ok((
                            Err(not_relayed("the executor is moving to another replica")),
                            Bytes::new(),
                        )),
                        // A process/read may be answered by the owner's
                        // read-ahead (`relay_ahead`).
                        _ => match channel
                            .aheads
                            .relay(&channel.link, &method, params, payload, timeout)
                            .await
                        {
                            Err(LinkError::Disconnected {
                                sent: false,
                                reason,
                                ..
                            }) => Ok((Err(not_relayed(&reason)), Bytes::new())),
                            other => other,
                        },
                    };
                    let (result, payload) = match answer {
                        Ok((Ok(mut result), payload)) => {
                            if let Some(Some((pid, after))) = read {
                                count_lost_bytes(&channel.link, &pid, after, &mut result);
                            }
                            (Ok(result), payload)
                        }
                        Ok(answer) => answer,
                        Err(e @ LinkError::Timeout { .. }) => (
                            Err(crate::link::bridge::gateway_error(
                                &e,
                                error_code::GATEWAY_TIMEOUT,
                            )),
                            Bytes::new(),
                        ),
                        // The link is gone with the request sent: the
                        // channel ends with it, and the caller learns that
                        // this one's outcome is unknown.
                        Err(e) => (
                            Err(RpcError::new(OUTCOME_UNKNOWN, e.to_string())),
                            Bytes::new(),
                        ),
                    };
                    let frame = Envelope {
                        message: Message::response(id, result),
                        payload,
                    }
                    .encode();
                    channel.send(frame).await;
                });
            }
            Message::Notification { method, params } => {
                let key = |name: &str| params.get(name).and_then(Value::as_str).map(String::from);
                match method.as_str() {
                    WATCH => {
                        let Some(pid) = key("processId") else {
                            continue;
                        };
                        watches.retain(|_, task| !task.is_finished());
                        if watches.contains_key(&pid) {
                            continue;
                        }
                        let push = params.get("push").and_then(Value::as_bool).unwrap_or(true);
                        let sub = if push {
                            link.subscribe(&pid)
                        } else {
                            link.subscribe_to_start(&pid)
                        };
                        let task = tokio::spawn(forward_events(channel.clone(), pid.clone(), sub));
                        watches.insert(pid, task);
                    }
                    UNWATCH => {
                        if let Some(task) = key("processId").and_then(|pid| watches.remove(&pid)) {
                            task.abort();
                        }
                    }
                    TAP => {
                        let Some(k) = key("key") else { continue };
                        if taps.contains_key(&k) {
                            continue;
                        }
                        let tap = link.tap(&k, 1024);
                        let channel = channel.clone();
                        let task = tokio::spawn(async move {
                            let mut tap = tap;
                            while let Some((method, params)) = tap.recv().await {
                                let frame = Message::notification(&method, params).encode();
                                if !channel.send(Encoded::Text(frame)).await {
                                    return;
                                }
                            }
                        });
                        taps.insert(k, task);
                    }
                    UNTAP => {
                        if let Some(task) = key("key").and_then(|k| taps.remove(&k)) {
                            task.abort();
                        }
                    }
                    _ => {}
                }
            }
            Message::Response { .. } => {}
        }
    };
    if link_closed {
        // The executor's last answers and notifications (a moving executor
        // answers its requests in flight before it closes) are on their
        // way to the peer: let them go first. Everything left on the link
        // has failed with it, so this is quick.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
            for (_, task) in watches.iter_mut() {
                let _ = task.await;
            }
        })
        .await;
    }
    let all_answered = link_closed && tasks.is_empty();
    tasks.abort_all();
    for (_, task) in watches.drain().chain(taps.drain()) {
        task.abort();
    }
    tracing::debug!(exe_id = %link.exe_id, peer, requests, "peer channel ended: {end}");
    let mut reason = if all_answered {
        format!("{ALL_ANSWERED}{end}")
    } else {
        end
    };
    reason.truncate(120);
    let close = CloseFrame {
        code: CloseCode::Again,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        out_tx.send(WsMessage::Close(Some(close))),
    )
    .await;
    drop(out_tx);
    drop(channel);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Relays one watched process's events to the peer as the executor's
/// notifications (output bytes raw, in a binary frame), until it closes.
async fn forward_events(channel: Arc<Channel>, pid: String, mut sub: crate::link::Subscription) {
    loop {
        let event = sub.recv().await;
        let (method, value, payload, last) = match event {
            ProcessEvent::Output { seq, stream, data } => {
                let n = OutputNotification {
                    process_id: pid.clone(),
                    seq,
                    stream,
                    chunk: Blob::raw(data),
                };
                let Ok((value, payload)) = blob::to_value(&n, true) else {
                    continue;
                };
                (method::PROCESS_OUTPUT, value, payload, false)
            }
            ProcessEvent::Exited { seq, exit_code } => {
                let n = ExitedNotification {
                    process_id: pid.clone(),
                    seq,
                    exit_code,
                };
                (
                    method::PROCESS_EXITED,
                    serde_json::to_value(n).unwrap_or_default(),
                    Bytes::new(),
                    false,
                )
            }
            ProcessEvent::Closed { seq } => {
                let n = ClosedNotification {
                    process_id: pid.clone(),
                    seq,
                };
                (
                    method::PROCESS_CLOSED,
                    serde_json::to_value(n).unwrap_or_default(),
                    Bytes::new(),
                    true,
                )
            }
            ProcessEvent::LinkLost => return,
        };
        let frame = Envelope {
            message: Message::notification(method, value),
            payload,
        }
        .encode();
        if !channel.send(frame).await || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased_link(exe_id: &str, epoch: i64, until: i64) -> Arc<Link> {
        let (tx, _) = mpsc::unbounded_channel();
        let link = Link::new(exe_id.into(), "w".into(), "n".into(), tx);
        link.set_lease(epoch, until);
        link
    }

    /// A beat renews only the leases due (half a lease left), and judges
    /// the links that were due: renewed at its epoch, one is extended;
    /// renewed at another, or not renewed, it lost its lease. A link not
    /// due is not picked (its lease is kept even though the renewal did
    /// not return it), nor one without a lease; a renewed row of a link
    /// not due is left for the caller.
    #[test]
    fn a_beat_judges_the_links_whose_lease_was_due() {
        let (now, lease) = (100_000, 10_000);
        let due = renewal_due(now, lease);
        assert_eq!(due, 105_000);
        let until = now + lease;
        let registry = crate::link::registry::Registry::default();
        for (exe_id, epoch, lease_until) in [
            ("e1", 1, 104_000),
            ("e2", 1, 104_000),
            ("e3", 1, 105_000),
            ("e4", 1, 105_001),
            ("e5", 0, i64::MAX),
        ] {
            registry.insert(leased_link(exe_id, epoch, lease_until));
        }
        let mut picked: Vec<Arc<Link>> =
            registry.links_where(|l| l.epoch() != 0 && l.lease_until() <= due);
        picked.sort_by(|a, b| a.exe_id.cmp(&b.exe_id));
        let ids: Vec<&str> = picked.iter().map(|l| l.exe_id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2", "e3"]);
        let mut renewed = HashMap::from([
            ("e1".to_string(), 1),
            ("e2".to_string(), 2),
            ("e4".to_string(), 1),
        ]);
        let lost: Vec<String> = judge_renewal(&picked, &mut renewed, until)
            .into_iter()
            .map(|(l, _)| l.exe_id.clone())
            .collect();
        assert_eq!(lost, ["e2", "e3"]);
        assert_eq!(picked[0].lease_until(), until);
        assert_eq!(picked[1].lease_until(), 104_000);
        assert_eq!(renewed, HashMap::from([("e4".to_string(), 1)]));
        assert_eq!(registry.get("e4").unwrap().lease_until(), 105_001);
    }

    /// The descriptions of executors another replica holds are kept per
    /// (epoch, name): reused while both hold, rendered again from the
    /// lease when the executor re-linked (a new epoch, a new handshake) or
    /// was renamed, and dropped when the list of executors held elsewhere
    /// no longer has them at that epoch.
    #[tokio::test]
    async fn a_description_lasts_as_long_as_its_epoch_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_either(None, dir.path()).await.unwrap();
        store.create_workspace("w").await.unwrap();
        let (exe, _) = store.add_executor("w", "x", false).await.unwrap();
        let cluster = Cluster::new(ClusterConfig::new(
            "http://a".into(),
            SecretString::new("s"),
        ));
        let far = now_ms() + 60_000;
        let info = |v: &str| format!(r#"{{"executorVersion":"{v}","platformOs":"linux"}}"#);
        let epoch = store
            .take_lease(&exe, "rb", "http://b", far, Some(&info("1.0")))
            .await
            .unwrap();
        let renders = std::sync::atomic::AtomicUsize::new(0);
        let render = |link: &Link| -> Pieces {
            renders.fetch_add(1, Ordering::SeqCst);
            let v = link.handshake().unwrap().info.executor_version.clone();
            (
                Arc::from(format!("[{v:?}]").as_str()),
                Arc::from(link.name.as_str()),
            )
        };
        let describe = |name: &'static str, epoch: i64| {
            let (cluster, store, exe, render) = (&cluster, &store, exe.clone(), &render);
            async move {
                match cluster
                    .describe(store, &exe, "w", name, epoch, render)
                    .await
                {
                    Some(Described::Leased(d)) => d,
                    Some(Described::Open(_)) => panic!("no channel was opened"),
                    None => panic!("the lease has a handshake"),
                }
            }
        };
        let first = describe("x", epoch).await;
        assert_eq!(&*first.pieces.0, "[\"1.0\"]");
        assert_eq!(&*first.name, "x");
        // Kept: the same description, not rendered again.
        let again = describe("x", epoch).await;
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        // Renamed: rendered again under the new name.
        let renamed = describe("y", epoch).await;
        assert_eq!((&*renamed.name, &*renamed.pieces.1), ("y", "y"));
        assert_eq!(renders.load(Ordering::SeqCst), 2);
        // The executor re-linked with another handshake: a new epoch.
        let epoch2 = store
            .take_lease(&exe, "rc", "http://c", far, Some(&info("2.0")))
            .await
            .unwrap();
        assert_eq!(epoch2, epoch + 1);
        let moved = describe("y", epoch2).await;
        assert_eq!(&*moved.pieces.0, "[\"2.0\"]");
        assert_eq!(renders.load(Ordering::SeqCst), 3);
        assert!(Arc::ptr_eq(&moved, &describe("y", epoch2).await));
        assert_eq!(renders.load(Ordering::SeqCst), 3);
        // The list of executors held elsewhere has it at epoch2: kept.
        assert_eq!(
            cluster.held_elsewhere(&store).await.get(&exe),
            Some(&epoch2)
        );
        assert_eq!(cluster.described.lock().unwrap().len(), 1);
        // Its holder let it go: the next list drops its description.
        assert!(store.release_lease(&exe, "rc", epoch2).await.unwrap());
        *cluster.elsewhere.lock().unwrap() = None;
        assert!(cluster.held_elsewhere(&store).await.is_empty());
        assert!(cluster.described.lock().unwrap().is_empty());
        // A lease without a handshake describes nothing.
        let epoch3 = store
            .take_lease(&exe, "rb", "http://b", far, None)
            .await
            .unwrap();
        assert!(cluster
            .describe(&store, &exe, "w", "y", epoch3, &render)
            .await
            .is_none());
    }

    /// A list of executors held elsewhere older than its TTL still answers
    /// (up to ELSEWHERE_STALE) while one task re-reads it; older than that,
    /// the call reads it itself.
    #[tokio::test]
    async fn a_stale_list_of_executors_held_elsewhere_is_reread_beside_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_either(None, dir.path()).await.unwrap();
        store.create_workspace("w").await.unwrap();
        let (exe, _) = store.add_executor("w", "x", false).await.unwrap();
        let cluster = Cluster::new(ClusterConfig::new(
            "http://a".into(),
            SecretString::new("s"),
        ));
        assert!(cluster.held_elsewhere(&store).await.is_empty());
        let far = now_ms() + 60_000;
        let epoch = store
            .take_lease(&exe, "rb", "http://b", far, None)
            .await
            .unwrap();
        // Fresh: reused as it is.
        assert!(cluster.held_elsewhere(&store).await.is_empty());
        // Stale: the old list answers, and a re-read follows at once.
        let age = |d: Duration| {
            let mut kept = cluster.elsewhere.lock().unwrap();
            let (at, _) = kept.as_mut().unwrap();
            *at = Instant::now() - d;
        };
        age(ELSEWHERE_TTL + Duration::from_millis(10));
        assert!(cluster.held_elsewhere(&store).await.is_empty());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let held = cluster
                .elsewhere
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .1
                .clone();
            if held.get(&exe) == Some(&epoch) {
                break;
            }
            assert!(Instant::now() < deadline, "the list was not re-read");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cluster.held_elsewhere(&store).await.get(&exe), Some(&epoch));
        // Too old: read on the call's path.
        assert!(store.release_lease(&exe, "rb", epoch).await.unwrap());
        age(ELSEWHERE_STALE + Duration::from_millis(10));
        assert!(cluster.held_elsewhere(&store).await.is_empty());
    }

    #[test]
    fn the_other_live_replicas_leave_this_one_out_least_loaded_first() {
        let live = [
            ("http://c:1".to_string(), 5),
            ("http://a:1/".to_string(), 0),
            ("http://b:1".to_string(), 2),
            ("http://a:1".to_string(), 9),
            ("http://d:1".to_string(), 2),
        ];
        assert_eq!(
            least_loaded_first(live, "http://a:1"),
            ["http://b:1", "http://d:1", "http://c:1"]
        );
        assert!(least_loaded_first([], "http://a:1").is_empty());
    }

    #[test]
    fn credentials_verify_only_with_the_secret_the_exe_and_a_fresh_time() {
        let sig = sign("s3cret", "rep_a", "exe_1", 1_000_000);
        let ok =
            |secret, exe, now| verify(secret, Some("rep_a"), Some("1000000"), Some(&sig), exe, now);
        assert_eq!(ok("s3cret", "exe_1", 1_000_500), Ok(()));
        assert!(ok("other", "exe_1", 1_000_500)
            .unwrap_err()
            .contains("bad peer signature"));
        assert!(ok("s3cret", "exe_2", 1_000_500)
            .unwrap_err()
            .contains("bad peer signature"));
        assert!(ok("s3cret", "exe_1", 1_000_000 + MAX_SKEW_MS + 1)
            .unwrap_err()
            .contains("expired"));
        assert!(verify("s3cret", None, None, None, "exe_1", 0)
            .unwrap_err()
            .contains("missing"));
        // Another replica id under the same signature fails.
        assert!(verify(
            "s3cret",
            Some("rep_b"),
            Some("1000000"),
            Some(&sig),
            "exe_1",
            1_000_000
        )
        .is_err());
    }
}
