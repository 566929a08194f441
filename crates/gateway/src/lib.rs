//! The execgate gateway: it accepts executors' outbound WebSocket links,
//! serves the connectors REST API (and MCP, and the bridge) to agents, and
//! routes each tool call to the right executor.
//!
//! # The layers
//!
//! The crate is five layers, as folders; a module names only layers below
//! its own (`tests/layering.rs` fails on a violation):
//!
//! ```text
//! http  >  ops  >  link, auth  >  store          (secret: a leaf any may use)
//! ```
//!
//! - `http`: everything that knows HTTP. The router, every handler
//!   (connectors REST, files, SSE, processes, admin, `/internal`, executor
//!   register/connect, the `/bridge` upgrade), MCP (`http::mcp`), OpenAPI,
//!   the extractors (`Caller`, `AdminCaller`), the listener, the web
//!   console's files (`http::ui`), and
//!   `http::error`, the one place an operation's error becomes the
//!   `{"error":{code,message}}` envelope and a status.
//! - `ops`: what a call does, callable without an HTTP request. The core
//!   tools, one file each, and their one registry (`ops::tools`); process
//!   sessions; file transfers (`ops::files`, `ops::transfer`) and patches;
//!   policy, limits, deadlines, revocation; environment resolution; admin
//!   operations; the gateway's shared state (`ops::state::AppState`);
//!   `ops::Error` (a stable code, a message, a kind; no HTTP status).
//! - `link`: executor links. The session loop and handshake
//!   (`link::connect`), the `Link` (JSON-RPC client, multiplexing), the
//!   registry, SigV4, the seq ledger, read-ahead, the bridge relay. It sees
//!   the gateway (and checks a bridge renewal token) only through
//!   `link::host::LinkHost`.
//! - `auth`: proxy-token verification (embedded, remote, cache, the
//!   authority side), capability tokens, the admin token.
//! - `store`: SQLite: workspaces, tokens, executors, sessions, and the
//!   audit log (records and their batched writer).
//!
//! # The public surface
//!
//! Modules are private. Exported: [`Gateway`] and [`GatewayConfig`] with
//! the config types of [`config`]; [`Store`]; [`admin`], what `execgate
//! admin` shares with the admin API; [`captoken`], the capability-token
//! format; [`openapi_document`]; and, hidden, `fuzz_api` for the fuzz
//! targets.

#![forbid(unsafe_code)]

mod auth;
mod http;
mod link;
mod metrics;
pub mod migrate;
mod ops;
mod secret;
mod store;
mod trace;

use std::net::SocketAddr;

pub use ops::state::GatewayConfig;
pub use store::Store;

/// The configuration types [`GatewayConfig`] is made of.
pub mod config {
    pub use crate::auth::remote::RemoteConfig;
    pub use crate::auth::{AuthConfig, CacheConfig, VerifierConfig};
    pub use crate::http::listener::default_max_connections;
    pub use crate::link::host::LinkConfig;
    pub use crate::link::peer::ClusterConfig;
    pub use crate::ops::limits::{LimitsConfig, RateConfig};
    pub use crate::ops::state::ListenerConfig;
    pub use crate::secret::SecretString;
    pub use crate::store::audit_log::AuditMode;
}

/// What `execgate admin` shares with the admin API (`/api/admin/*`): the
/// operations on a [`Store`], capability-token minting and turn revocation,
/// and the time formats the CLI prints and parses.
pub mod admin {
    pub use crate::ops::admin::*;
    pub use crate::ops::captoken::{mint, revoke_turn, MintRequest, Minted, RevokedTurn};
    pub use crate::ops::environment::rfc3339;
    pub use crate::store::audit_log::{parse_since, AuditRecord};
    pub use crate::store::{now_ms, AuditQuery};
}

/// Capability tokens (the bridge's credential): the format, minting and
/// checking, and the secret's file.
pub mod captoken {
    pub use crate::auth::captoken::{
        keyfile, mint, now_s, sign_parts, verify, CapTokenError, CapTokenSecret, Claims,
        DEFAULT_TTL_S, HEADER, MAX_TTL_S,
    };
    pub use crate::auth::shared_secrets;
}

/// The OpenAPI document of the public API, as `GET /openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    http::openapi::document()
}

/// What the fuzz targets (`fuzz/fuzz_targets/*`) exercise; not an API.
#[doc(hidden)]
pub mod fuzz_api {
    pub use crate::auth::captoken::{sign_parts, verify, CapTokenSecret, HEADER};
    pub use crate::link::sigv4::parse_authorization;
    pub use crate::ops::patch::{apply_hunks, parse, FileOp};
}

/// A running gateway's view for the process that started it (`execgate
/// up`): its store, and which executors are connected.
#[derive(Clone)]
pub struct GatewayHandle(ops::state::AppState);

impl GatewayHandle {
    pub fn store(&self) -> &Store {
        self.0.store()
    }

    /// Whether executor `exe_id` has a live link.
    pub fn is_connected(&self, exe_id: &str) -> bool {
        self.0.registry().get(exe_id).is_some()
    }

    /// Marks the gateway not ready: `GET /readyz` answers 503 `draining`
    /// while every request is still served, so that a load balancer stops
    /// sending work here before [`GatewayHandle::drain`] refuses any
    /// (`execgate serve --drain-delay`).
    pub fn leave(&self) {
        self.0.drain().leave()
    }

    /// Starts draining (what SIGTERM does to `execgate serve`): new
    /// requests and links are refused with 503 `draining`, the calls in
    /// flight finish, executors are told to move, and [`Gateway::serve`]
    /// returns once that is done or after `GatewayConfig::drain_timeout`.
    /// Returns whether this call started the drain (false: it had begun).
    pub fn drain(&self) -> bool {
        self.0.drain().begin()
    }

    /// Whether the gateway is draining (or has drained).
    pub fn is_draining(&self) -> bool {
        self.0.drain().is_draining()
    }

    /// The drain timeout this gateway was configured with.
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.0.config().drain_timeout
    }

    /// `GET /metrics`'s body: the Prometheus text format (0.0.4) of this
    /// gateway's metrics, or `None` while they are off (see
    /// [`enable_metrics`]).
    pub async fn metrics_text(&self) -> Option<String> {
        ops::metrics::render(&self.0).await
    }
}

/// Turns on the gateway's Prometheus metrics for this process (off by
/// default: a recording site then costs one atomic load). Call it before
/// [`Gateway::bind`]; serve [`GatewayHandle::metrics_text`] on a listener
/// of your own (`execgate serve --metrics-listen`).
pub fn enable_metrics() {
    metrics::enable();
}

/// Turns on the gateway's spans (off by default: none is made). `otel`:
/// the process installed an OpenTelemetry layer and the W3C trace-context
/// propagator, so spans take their parent from a request's `traceparent`
/// and hand their context on to executors that announced `traceContext`;
/// else spans only feed the logs (`--log-format json`). Call it before
/// [`Gateway::serve`]: the router's per-request layer is there only when
/// metrics or spans are on when it is built.
pub fn enable_tracing(otel: bool) {
    trace::enable(otel);
}

/// The `Content-Type` of [`GatewayHandle::metrics_text`].
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("admin token: {0}")]
    AdminToken(String),
    #[error(transparent)]
    CapTokenSecret(#[from] auth::captoken::keyfile::KeyFileError),
    #[error("{0}")]
    SharedSecret(String),
}

/// A gateway bound to its address, ready to serve.
pub struct Gateway {
    state: ops::state::AppState,
    listener: tokio::net::TcpListener,
}

impl Gateway {
    /// Opens the store (running migrations), reads (or creates) the admin
    /// token and the capability-token secret, and binds the listener.
    pub async fn bind(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let store = Store::open_either(config.database_url.as_deref(), &config.data_dir).await?;
        let admin_token = auth::shared_secrets::admin_token(
            &store,
            &config.data_dir,
            config.admin_token_file.as_deref(),
        )
        .await
        .map_err(GatewayError::AdminToken)?;
        let secret = auth::shared_secrets::cap_token_secret(
            &store,
            &config.data_dir,
            config.cap_token_secret_file.as_deref(),
        )
        .await
        .map_err(GatewayError::SharedSecret)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Gateway {
            state: ops::state::AppState::with_secrets(config, store, Some(admin_token), secret),
            listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// A handle on the gateway's state, valid while it serves.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle(self.state.clone())
    }

    /// Serves until a drain ([`GatewayHandle::drain`]) is complete (or
    /// times out); without one, until the process ends.
    pub async fn serve(self) -> Result<(), GatewayError> {
        tokio::spawn(ops::deadlines::run(self.state.clone()));
        tokio::spawn(ops::revocation::sweep_removed_executors(self.state.clone()));
        tokio::spawn(ops::revocation::relay_store_hints(self.state.clone()));
        tokio::spawn(link::last_seen::record(self.state.host()));
        tokio::spawn(ops::captoken::prune_periodically(
            self.state.store().clone(),
        ));
        if let Some(cluster) = self.state.cluster() {
            tracing::info!(replica_id = %cluster.replica_id, advertise_url = %cluster.config.advertise_url, lease_ms = cluster.config.lease.as_millis() as u64, "serving as a replica");
            tokio::spawn(link::peer::heartbeat(self.state.host()));
        }
        tokio::spawn(ops::idempotency::sweep_periodically(
            self.state.store().clone(),
        ));
        let config = self.state.config().listener.clone();
        tracing::info!(
            max_connections = config.max_connections,
            header_read_timeout_secs = config.header_read_timeout.as_secs_f64(),
            "accepting connections"
        );
        let drained = ops::drain::run(self.state.clone(), self.state.config().drain_timeout);
        tokio::select! {
            () = http::listener::serve(self.listener, http::router(self.state), config) => {}
            () = drained => {}
        }
        Ok(())
    }
}
