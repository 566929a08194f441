//! The one-live-link rule across replicas (docs/replicas.md, "One live
//! link per executor, cluster-wide"). On one gateway a second executor with
//! the token of an executor whose link is live gets 409
//! `executor_already_connected` (`registry::Registry::check_free`). A
//! replica also refuses it when *another* replica holds the executor's
//! link: the lease is unexpired, the holder's heartbeat is fresh, and the
//! holder, asked over the peer route [`LIVE_PATH`] (signed with the cluster
//! secret), confirms that its link is open, heard from within the ping
//! timeout, under that lease's epoch, and that it is not leaving or
//! draining. Without that check two machines with one token took the lease
//! from each other forever, each re-dial fencing the other's link.
//!
//! Whatever the holder cannot confirm does not block, so that failover
//! never waits for a lease to expire: a holder that is dead (SIGKILL: its
//! port refuses at once), unreachable within [`ASK_TIMEOUT`], draining, or
//! whose link is gone, or a store that cannot be read.

use std::time::Duration;

use serde_json::Value;

use crate::link::peer::{self, Cluster};
use crate::store::{now_ms, Store};

/// Where a replica asks another whether it holds a live link of an
/// executor, before the exe_id (`?epoch=N`: the lease's epoch).
pub const LIVE_PATH: &str = "/peer/v1/live/";
/// How long asking a holder may take in all (connecting: at most
/// [`ASK_CONNECT_TIMEOUT`]); a holder that does not answer within it does
/// not block.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
const ASK_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a liveness query's peer signature covers, in place of a channel's
/// exe_id (so that neither signature opens the other route).
pub fn subject(exe_id: &str, epoch: i64) -> String {
    format!("live:{exe_id}:{epoch}")
}

/// Another replica that holds a live link of `exe_id`, by its advertise
/// URL (see the module's header); `None` when the executor may link here.
pub async fn held_elsewhere(cluster: &Cluster, store: &Store, exe_id: &str) -> Option<String> {
    let read = tokio::time::timeout(crate::store::lookups::READ_TIMEOUT, store.lease(exe_id)).await;
    let lease = match read {
        Ok(Ok(lease)) => lease?,
        Ok(Err(e)) => {
            tracing::debug!(exe_id, "could not read the executor's lease: {e}");
            return None;
        }
        Err(_) => return None,
    };
    let now = now_ms();
    let lease_ms = cluster.config.lease.as_millis() as i64;
    let fresh = lease.heartbeat_at.is_some_and(|at| now - at < lease_ms);
    if lease.replica_id == cluster.replica_id || lease.expires_at <= now || !fresh {
        return None;
    }
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let http = HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(ASK_TIMEOUT)
            .connect_timeout(ASK_CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default()
    });
    let ts = now_ms();
    let signature = peer::sign(
        cluster.config.secret.expose(),
        &cluster.replica_id,
        &subject(exe_id, lease.epoch),
        ts,
    );
    let url = format!(
        "{}{LIVE_PATH}{exe_id}?epoch={}",
        lease.peer_url.trim_end_matches('/'),
        lease.epoch
    );
    let asked = http
        .get(&url)
        .header(peer::REPLICA_HEADER, &cluster.replica_id)
        .header(peer::TIME_HEADER, ts.to_string())
        .header(peer::SIGNATURE_HEADER, signature)
        .send()
        .await;
    let live = match asked {
        Ok(resp) if resp.status().is_success() => resp
            .json::<Value>()
            .await
            .is_ok_and(|v| v["live"] == Value::Bool(true)),
        Ok(resp) => {
            // 503 `draining` (the gate) or 401 (another cluster secret).
            tracing::debug!(exe_id, holder = %lease.peer_url, status = %resp.status(), "the holder of the executor's lease did not confirm its link");
            false
        }
        Err(e) => {
            tracing::info!(exe_id, holder = %lease.peer_url, "the holder of the executor's lease could not be asked whether its link is alive: {e}");
            false
        }
    };
    live.then_some(lease.peer_url)
}
