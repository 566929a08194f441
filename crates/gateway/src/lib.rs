//! The execgate gateway: it accepts executors' outbound WebSocket links,
//! serves the connectors REST API to agents, and routes each tool call to
//! the right executor.
//!
//! Map of the crate (see ARCHITECTURE.md for the whole picture):
//! - [`api`]: the router and the connectors API handlers.
//! - [`admin`]: the admin API (`/api/admin/*`) and what `execgate admin`
//!   shares with it; the admin token.
//! - [`auth`]: proxy token → [`auth::Caller`].
//! - [`audit`]: the audit log: records, and their batched writer.
//! - [`limits`]: per-workspace request rate and live-session cap.
//! - [`captoken`]: capability tokens (mint, verify, the secret, the admin
//!   operations); [`bridge`]: `/bridge/{exe_id}`, a capability-token holder
//!   speaking the executor protocol over the gateway's link.
//! - [`listener`]: accepting connections: header read timeout, connection
//!   cap, TCP_NODELAY.
//! - [`connect`]: executor register + WebSocket link, handshake, resume.
//! - [`link`]: one executor link: JSON-RPC client, request multiplexing,
//!   notification routing.
//! - [`mcp`]: the MCP server at `/mcp`, over the same tools.
//! - [`openapi`]: `/openapi.json`, generated from the handlers.
//! - [`registry`]: live links by exe_id.
//! - [`revocation`]: long-lived requests re-check their token; links of
//!   removed executors close.
//! - [`tools`]: tool semantics (shell, files, exec_command).
//! - [`policy`]: an executor's announced policy: hidden and refused tools.
//! - [`processes`]: exec_command sessions: stdin, output, terminate,
//!   signal, resize, listing. [`stream`]: their output as Server-Sent Events.
//!   [`deadlines`]: `max_runtime_ms`, enforced from the store.
//! - [`store`]: SQLite: workspaces, tokens, executors, sessions.
//! - [`sigv4`]: SigV4 verification of codex executors.
//! - [`seq_ledger`]: bytes per output seq, for exact `lost_bytes` on codex.
//! - [`ui`]: the web console's embedded files at `/ui/`.
//! - [`error`]: the API error and its envelope; [`extract`]: extractors
//!   whose rejections use it.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod bridge;
pub mod captoken;
pub mod connect;
pub mod deadlines;
pub mod error;
pub mod extract;
pub mod file_stream;
pub mod limits;
pub mod link;
pub mod listener;
pub mod mcp;
pub mod openapi;
pub mod patch;
pub mod policy;
pub mod processes;
pub mod read_ahead;
pub mod registry;
pub mod revocation;
pub mod secret;
pub mod seq_ledger;
pub mod sigv4;
pub mod state;
pub mod store;
pub mod stream;
pub mod tools;
pub mod transfer;
pub mod ui;

use std::net::SocketAddr;

pub use state::{AppState, GatewayConfig};
pub use store::Store;

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
    CapTokenSecret(#[from] captoken::keyfile::KeyFileError),
}

/// A gateway bound to its address, ready to serve.
pub struct Gateway {
    state: AppState,
    listener: tokio::net::TcpListener,
}

impl Gateway {
    /// Opens the store (running migrations), reads (or creates) the admin
    /// token and the capability-token secret, and binds the listener.
    pub async fn bind(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let store = Store::open(&config.data_dir).await?;
        let admin_token =
            admin::token::load_or_create(&config.data_dir, config.admin_token_file.as_deref())
                .map_err(GatewayError::AdminToken)?;
        let secret =
            captoken::keyfile::load(config.cap_token_secret_file.as_deref(), &config.data_dir)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Gateway {
            state: AppState::with_secrets(config, store, Some(admin_token), secret),
            listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the process ends.
    pub async fn serve(self) -> Result<(), GatewayError> {
        tokio::spawn(deadlines::run(self.state.clone()));
        tokio::spawn(revocation::sweep_removed_executors(self.state.clone()));
        tokio::spawn(captoken::admin::prune_periodically(
            self.state.store().clone(),
        ));
        let config = self.state.config().listener.clone();
        tracing::info!(
            max_connections = config.max_connections,
            header_read_timeout_secs = config.header_read_timeout.as_secs_f64(),
            "accepting connections"
        );
        listener::serve(self.listener, api::router(self.state), config).await;
        Ok(())
    }
}
