//! What the link layer needs from the gateway that holds it, as a trait:
//! the ops layer's `AppState` implements it, so that links name no layer
//! above them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::link::bridge::TurnClaims;
use crate::link::peer::Cluster;
use crate::link::registry::Registry;
use crate::link::seq_ledger::SeqLedger;
use crate::store::Store;

/// The link layer's settings (a part of the gateway's config).
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// How often a live executor's `last_seen` is recorded in the store
    /// (and a bridge client pinged).
    pub ping_interval: Duration,
    /// An executor link silent this long (no frame, no answer to the pings
    /// sent after half of it in silence) is declared dead: its calls in
    /// flight fail at once with 503 `executor_unavailable`.
    /// `--executor-ping-timeout-secs`.
    pub ping_timeout: Duration,
    /// How often a live bridge session asks the store whether its turn was
    /// revoked by another process (`execgate admin captoken revoke-turn`).
    /// A revocation through this gateway's own admin API closes it at once.
    pub bridge_recheck: Duration,
    /// A bridge client's request the executor has not answered within this
    /// (a `process/read` its `waitMs` on top) is answered by the gateway
    /// with an error (`link::bridge`). `--bridge-request-timeout-secs`.
    pub bridge_request_timeout: Duration,
}

/// The gateway a link lives in.
pub trait LinkHost: Send + Sync + 'static {
    fn store(&self) -> &Store;
    fn registry(&self) -> &Registry;
    /// The link layer's settings.
    fn config(&self) -> &LinkConfig;
    /// The seq ledger of executor `exe_id`, created on first use.
    fn ledger(&self, exe_id: &str) -> Arc<SeqLedger>;
    /// Turn ids revoked through this gateway, to the live bridge sessions.
    fn revoked_turns(&self) -> &broadcast::Sender<String>;
    /// The claims of capability token `token`, or why it is refused: a
    /// bridge session checks the token a client renews it with.
    fn verify_captoken(&self, token: &str) -> Result<TurnClaims, String>;
    /// This gateway as a replica (`--advertise-url`); `None` alone.
    fn cluster(&self) -> Option<&Cluster>;
}

/// A handle on the gateway, as links hold it.
pub type Host = Arc<dyn LinkHost>;
