//! Configuration and the state every handler shares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::captoken::CapTokenSecret;
use crate::auth::{self, AuthConfig, ProxyTokenVerifier};
use crate::link::bridge::TurnClaims;
use crate::link::host::{Host, LinkConfig, LinkHost};
use crate::link::peer::{count_unreachable, Cluster, ClusterConfig, Unreachable};
use crate::link::read_ahead::PollAheads;
use crate::link::registry::Registry;
use crate::link::seq_ledger::SeqLedger;
use crate::link::Link;
use crate::ops::limits::{Limits, LimitsConfig};
use crate::secret::SecretString;
use crate::store::audit_log::{Audit, AuditMode};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `--database-url`: the store on PostgreSQL (`postgres://…`) instead
    /// of SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// Base URL executors should dial (`http(s)://host:port`). By default it is
    /// derived from the `Host` header of the register request.
    pub public_url: Option<String>,
    /// The executor links' settings: pings, liveness, bridge deadlines.
    pub link: LinkConfig,
    /// How proxy tokens are verified; whether `/internal/*` is served.
    pub auth: AuthConfig,
    /// What happens to a call whose audit record cannot be written.
    pub audit: AuditMode,
    /// Per-workspace request rate and live sessions.
    pub limits: LimitsConfig,
    /// Where the admin token is; default `<data_dir>/admin-token`, created
    /// at first start.
    pub admin_token_file: Option<PathBuf>,
    /// The capability-token secret's file; `None`: `<data_dir>/cap-token-secret`,
    /// generated at first start (see `captoken::keyfile`).
    pub cap_token_secret_file: Option<PathBuf>,
    /// How often a long-lived request (SSE stream, `/output` long-poll)
    /// checks again that its proxy token is good and its environment still
    /// exists (see `revocation`).
    pub revocation_recheck: Duration,
    /// The listener's bounds: connections at once, header read timeout.
    pub listener: ListenerConfig,
    /// Replicas (`--advertise-url`, `--cluster-secret-file`): executor
    /// leases and forwarding to the replica that holds an executor
    /// (`link::peer`). `None`: a single gateway.
    pub cluster: Option<ClusterConfig>,
    /// How long a drain (SIGTERM) waits for calls in flight and for
    /// executors to move before the gateway exits (`--drain-timeout`).
    pub drain_timeout: Duration,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        GatewayConfig {
            listen,
            data_dir,
            database_url: None,
            max_body_bytes: 16 * 1024 * 1024,
            public_url: None,
            link: LinkConfig {
                ping_interval: Duration::from_secs(30),
                ping_timeout: Duration::from_secs(10),
                bridge_recheck: Duration::from_secs(5),
                bridge_request_timeout: crate::link::RPC_TIMEOUT,
            },
            auth: AuthConfig::default(),
            audit: AuditMode::default(),
            limits: LimitsConfig::default(),
            admin_token_file: None,
            cap_token_secret_file: None,
            revocation_recheck: crate::ops::revocation::DEFAULT_RECHECK,
            listener: ListenerConfig::default(),
            cluster: None,
            drain_timeout: crate::ops::drain::DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// The listener's bounds (`crate::http::listener` serves with them).
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Connections served at once; more are refused at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request head, and how long
    /// an idle kept-alive connection stays open.
    pub header_read_timeout: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// The default of `--header-read-timeout-secs`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most `--max-connections` defaults to, whatever the descriptor limit:
/// room for the 10,000 idle executor links the scale figure measures
/// (BENCHMARKS.md) plus as many agents, while bounding the memory idle
/// connections can hold (hyper's buffers, some KiB each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// A single-use permission to open an executor link, handed out by the
/// register endpoint. Short-lived, so the URL is never a standing credential.
pub(crate) struct Ticket {
    pub exe_id: String,
    pub expires: Instant,
}

pub(crate) const TICKET_TTL: Duration = Duration::from_secs(60);

pub(crate) struct Inner {
    pub config: GatewayConfig,
    pub store: Store,
    pub registry: Registry,
    pub tickets: Mutex<HashMap<String, Ticket>>,
    /// SigV4 signatures already used (see `sigv4::ReplayGuard`).
    pub sigv4_replays: crate::link::sigv4::ReplayGuard,
    /// Per exe_id; outlives the executor's links (see `seq_ledger`).
    pub ledgers: Mutex<HashMap<String, Arc<SeqLedger>>>,
    pub verifier: Arc<dyn ProxyTokenVerifier>,
    pub internal_stats: auth::internal::Stats,
    pub audit: Audit,
    pub limits: Limits,
    /// None: the admin API refuses every token.
    pub admin_token: Option<SecretString>,
    pub cap_token_secret: CapTokenSecret,
    /// Turn ids revoked through this gateway, to the live bridge sessions.
    pub revoked_turns: tokio::sync::broadcast::Sender<String>,
    /// `/output` polling's reads ahead (see `read_ahead`).
    pub poll_aheads: PollAheads,
    /// envs/list's listings, kept per workspace (see `ops::envs_list`).
    pub listings: crate::ops::envs_list::Listings,
    /// This gateway as a replica; `None` alone.
    pub cluster: Option<Cluster>,
    /// Draining on SIGTERM, and readiness (see `ops::drain`).
    pub drain: crate::ops::drain::Drain,
}

#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

impl AppState {
    /// A state without an admin token (the admin API refuses everyone) and
    /// with a random capability-token secret: for tests. Starts the audit
    /// writer, so it must run inside a Tokio runtime.
    #[cfg(test)]
    pub fn new(config: GatewayConfig, store: Store) -> Self {
        Self::with_secrets(config, store, None, CapTokenSecret::random())
    }

    /// A serving gateway's state: the admin token (`None`: the admin API
    /// refuses everyone) and the capability-token secret.
    pub fn with_secrets(
        config: GatewayConfig,
        store: Store,
        admin_token: Option<SecretString>,
        cap_token_secret: CapTokenSecret,
    ) -> Self {
        let verifier = auth::verifier(&config.auth, &store);
        AppState(Arc::new(Inner {
            cap_token_secret,
            revoked_turns: tokio::sync::broadcast::channel(64).0,
            verifier,
            internal_stats: Default::default(),
            cluster: config.cluster.clone().map(Cluster::new),
            audit: Audit::start(store.clone(), config.audit),
            limits: Limits::new(config.limits.clone()),
            admin_token,
            config,
            store,
            registry: Registry::default(),
            tickets: Mutex::new(HashMap::new()),
            sigv4_replays: Default::default(),
            ledgers: Mutex::new(HashMap::new()),
            poll_aheads: PollAheads::default(),
            listings: Default::default(),
            drain: Default::default(),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The drain's state (see `ops::drain`).
    pub fn drain(&self) -> &crate::ops::drain::Drain {
        &self.0.drain
    }

    /// `/output` polling's reads ahead, per session.
    pub fn poll_aheads(&self) -> &PollAheads {
        &self.0.poll_aheads
    }

    /// envs/list's listings, kept per workspace.
    pub fn listings(&self) -> &crate::ops::envs_list::Listings {
        &self.0.listings
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// This gateway as a replica; `None` alone.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.0.cluster.as_ref()
    }

    /// The live link of executor `exe_id`: this gateway's own, or (a
    /// replica) one through the replica that holds the executor. Alone,
    /// exactly the registry's answer: no store query, no clock.
    pub async fn link(&self, exe_id: &str) -> Option<Arc<Link>> {
        let local = self.0.registry.get(exe_id);
        let Some(cluster) = &self.0.cluster else {
            return local;
        };
        if let Some(link) = local {
            if link.lease_ok(crate::store::now_ms()) {
                return Some(link);
            }
            // Fencing: a lapsed lease serves nothing; the executor re-dials.
            link.close("this replica's lease on the executor lapsed");
            return None;
        }
        let mut unreachable = false;
        if let Some(link) = self.through_owner(cluster, exe_id, &mut unreachable).await {
            return Some(link);
        }
        // The channel to its owner ended a moment ago (the owner drained and
        // the executor is moving, or the owner died): wait, briefly, for the
        // executor to link to another replica (this one included), so that
        // a rolling restart does not fail calls (docs/replicas.md).
        if let Some(until) = cluster.moving_until(exe_id) {
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(crate::link::peer::MOVE_POLL).await;
                if let Some(link) = self.0.registry.get(exe_id) {
                    if !link.is_closed() && link.lease_ok(crate::store::now_ms()) {
                        return Some(link);
                    }
                }
                if let Some(link) = self.through_owner(cluster, exe_id, &mut unreachable).await {
                    return Some(link);
                }
            }
        }
        if unreachable {
            count_unreachable();
        }
        None
    }

    /// The link to `exe_id` through the replica that holds it, if any;
    /// sets `unreachable` when that replica could not be reached.
    async fn through_owner(
        &self,
        cluster: &Cluster,
        exe_id: &str,
        unreachable: &mut bool,
    ) -> Option<Arc<Link>> {
        match cluster
            .remote_link(self.store(), &self.0.config.link, exe_id)
            .await
        {
            Ok(link) => link,
            Err(Unreachable) => {
                *unreachable = true;
                None
            }
        }
    }

    /// [`AppState::link`] without waiting for an executor that is moving
    /// between replicas (listings).
    pub async fn link_now(&self, exe_id: &str) -> Option<Arc<Link>> {
        let local = self.0.registry.get(exe_id);
        let Some(cluster) = &self.0.cluster else {
            return local;
        };
        if let Some(link) = local {
            return link.lease_ok(crate::store::now_ms()).then_some(link);
        }
        let mut unreachable = false;
        let link = self.through_owner(cluster, exe_id, &mut unreachable).await;
        if unreachable {
            count_unreachable();
        }
        link
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.0.config
    }

    /// The audit log (see `audit`).
    pub fn audit(&self) -> &Audit {
        &self.0.audit
    }

    /// Per-workspace limits (see `limits`).
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    pub(crate) fn admin_token(&self) -> Option<&SecretString> {
        self.0.admin_token.as_ref()
    }

    /// The proxy-token verifier chosen by `config.auth`.
    pub fn verifier(&self) -> &dyn ProxyTokenVerifier {
        &*self.0.verifier
    }

    pub(crate) fn internal_stats(&self) -> &auth::internal::Stats {
        &self.0.internal_stats
    }

    /// The seq ledger of executor `exe_id`, created on first use.
    pub fn ledger(&self, exe_id: &str) -> Arc<SeqLedger> {
        self.0
            .ledgers
            .lock()
            .unwrap()
            .entry(exe_id.to_string())
            .or_default()
            .clone()
    }

    /// The HMAC secret capability tokens are minted and verified with.
    pub fn cap_token_secret(&self) -> &CapTokenSecret {
        &self.0.cap_token_secret
    }

    /// Revocations made through this gateway, for live bridge sessions.
    pub fn revoked_turns(&self) -> &tokio::sync::broadcast::Sender<String> {
        &self.0.revoked_turns
    }

    pub(crate) fn tickets(&self) -> &Mutex<HashMap<String, Ticket>> {
        &self.0.tickets
    }

    pub(crate) fn sigv4_replays(&self) -> &crate::link::sigv4::ReplayGuard {
        &self.0.sigv4_replays
    }
}

impl AppState {
    /// This state as the link layer holds it.
    pub fn host(&self) -> Host {
        Arc::new(self.clone())
    }
}

impl LinkHost for AppState {
    fn store(&self) -> &Store {
        &self.0.store
    }

    fn registry(&self) -> &Registry {
        &self.0.registry
    }

    fn config(&self) -> &LinkConfig {
        &self.0.config.link
    }

    fn ledger(&self, exe_id: &str) -> Arc<SeqLedger> {
        AppState::ledger(self, exe_id)
    }

    fn revoked_turns(&self) -> &tokio::sync::broadcast::Sender<String> {
        &self.0.revoked_turns
    }

    fn cluster(&self) -> Option<&Cluster> {
        self.0.cluster.as_ref()
    }

    fn verify_captoken(&self, token: &str) -> Result<TurnClaims, String> {
        crate::auth::captoken::verify(
            &self.0.cap_token_secret,
            token,
            crate::auth::captoken::now_s(),
        )
        .map(crate::ops::bridge::turn_claims)
        .map_err(|e| e.to_string())
    }
}

/// The unit tests' gateway state: a fresh store in a temporary directory
/// (kept alive by the returned guard) holding workspace `w1`, with the
/// default config as `tweak` leaves it.
#[cfg(test)]
pub(crate) async fn test_state(
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store.create_workspace("w1").await.unwrap();
    let mut config = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
    tweak(&mut config);
    (dir, AppState::new(config, store))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// The gateway's links' `last_seen` reaches the store every ping
    /// interval (`link::last_seen`, run with this state as its host), the
    /// link's own time; a closed link's is no longer written.
    #[tokio::test]
    async fn the_links_last_seen_is_recorded_every_ping_interval() {
        let (_dir, state) =
            super::test_state(|c| c.link.ping_interval = Duration::from_millis(100)).await;
        let store = state.store().clone();
        let (exe_id, _) = store.add_executor("w1", "laptop", false).await.unwrap();
        let (other, _) = store.add_executor("w1", "desk", false).await.unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let link = crate::link::Link::new(exe_id.clone(), "w1".into(), "laptop".into(), tx);
        let (tx, _rx2) = tokio::sync::mpsc::unbounded_channel();
        let closed = crate::link::Link::new(other.clone(), "w1".into(), "desk".into(), tx);
        closed.close("gone");
        state.registry().insert(link.clone());
        state.registry().insert(closed);
        let recorder = tokio::spawn(crate::link::last_seen::record(state.host()));
        let seen = || async { store.executor(&exe_id).await.unwrap().unwrap().last_seen_at };
        let written = |ms: i64| async move {
            // Rounds every 100 ms; a loaded machine may delay a few.
            for _ in 0..250 {
                if seen().await == Some(ms) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        };
        assert!(written(link.last_seen_ms()).await);
        // Seen again later: a next round writes the new time.
        tokio::time::sleep(Duration::from_millis(5)).await;
        link.touch();
        assert!(written(link.last_seen_ms()).await);
        let desk = store.executor(&other).await.unwrap().unwrap();
        assert_eq!(desk.last_seen_at, None, "a closed link is not recorded");
        recorder.abort();
    }
}
