//! Revocation reaches what is already open.
//!
//! A request is authorized when it starts. Most end within milliseconds, but
//! some stay open: a `/stream` (SSE, for as long as the process runs), an
//! `/output` long-poll (`wait_ms`, up to 30 s, REST and MCP's
//! `read_output`), a bridge session, an executor link. Before this module a
//! stream opened before its token was revoked went on delivering output for
//! as long as the process ran.
//!
//! - [`Watch`]: the proxy token a long-lived request came with (and the
//!   environment it reads from), checked again every
//!   `GatewayConfig::revocation_recheck` (2 s by default) through the same
//!   [`crate::auth::ProxyTokenVerifier`] that admitted the request, so there
//!   is one path for "is this token good". A token that is no longer
//!   accepted ends the request with `invalid_token`; an environment whose
//!   executor was removed ends it with `env_not_found`. A verifier that
//!   cannot answer (the store failing, the token authority down) ends
//!   nothing: that is not a revocation.
//!   - Embedded verifier (the store): exact. `execgate admin token revoke`
//!     in another process commits to the database; the next check sees it
//!     (`store::lookups` keys its memory on the database files), so an
//!     open request ends within one recheck interval (plus the check).
//!   - Remote verifier (a token authority): the check goes through the
//!     same verdict cache as every request, where an accepted verdict
//!     lives up to `--auth-cache-accepted-secs` (5 min by default). A
//!     revocation at the authority therefore ends open requests within
//!     that TTL plus one recheck interval, exactly when it starts refusing
//!     new requests on this gateway: "within 5 s" holds from the moment
//!     this gateway learns of it, not from the authority's revocation.
//! - [`sweep_removed_executors`]: one task closes the live link of an
//!   executor whose row is gone (`execgate admin executor remove`, which
//!   runs in another process on the store directly), within
//!   [`SWEEP_EVERY`] plus one query. The admin API's removal closes the
//!   link at once. Closing a link fails what is in flight on it (503
//!   `executor_unavailable`) and ends its bridge sessions (close 1013).
//!
//! Bridge sessions check their capability token's turn themselves
//! (`bridge::session`, every `bridge_recheck`, 5 s, and at once for a
//! revocation through this gateway's admin API).

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use execgate_protocol::connectors::error_code as code;

use crate::ops::state::AppState;
use crate::ops::Error;
use crate::secret::SecretString;
use crate::store::{next_change, ANYTHING};

/// The default of `GatewayConfig::revocation_recheck`.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(2);
/// How often the executor sweep looks at the store.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What authorized a long-lived request, to check again while it is open.
pub struct Watch {
    state: AppState,
    token: SecretString,
    workspace: String,
    /// `(name, exe_id)` of the environment the request reads from.
    environment: Option<(String, String)>,
}

impl Watch {
    /// A request of `workspace` that came with proxy token `token`.
    pub fn new(state: &AppState, token: &str, workspace: &str) -> Watch {
        Watch {
            state: state.clone(),
            token: SecretString::new(token),
            workspace: workspace.to_string(),
            environment: None,
        }
    }

    /// Also end the request when environment `name` is removed (or now
    /// names another executor than `exe_id`).
    pub fn with_environment(mut self, name: &str, exe_id: &str) -> Watch {
        self.environment = Some((name.to_string(), exe_id.to_string()));
        self
    }

    /// One check: `Err` with the reason the request may no longer go on.
    pub async fn check(&self) -> Result<(), Error> {
        match self.state.verifier().verify(self.token.expose()).await {
            Ok(Some(grant)) if grant.workspace == self.workspace => {}
            Ok(_) => {
                return Err(Error::new(
                    code::INVALID_TOKEN,
                    "the proxy token was revoked while this request was open",
                ))
            }
            // Not a revocation: the verifier cannot answer right now.
            Err(e) => tracing::debug!("revocation recheck: cannot verify the token: {e}"),
        }
        if let Some((name, exe_id)) = &self.environment {
            match self
                .state
                .store()
                .executor_by_name(&self.workspace, name)
                .await
            {
                Ok(Some(row)) if row.exe_id == *exe_id => {}
                Ok(_) => {
                    return Err(Error::new(
                        code::ENV_NOT_FOUND,
                        format!("environment {name:?} was removed while this request was open"),
                    ))
                }
                Err(e) => tracing::debug!("revocation recheck: cannot read executor {name}: {e}"),
            }
        }
        Ok(())
    }

    /// Resolves, with the reason, once a check fails; checks every
    /// `revocation_recheck`. Never resolves while the grant holds.
    /// Also checks at once when the store announces a token's change or an
    /// executor's removal (`Store::changes`: this process's writes, and
    /// other replicas' hints on PostgreSQL).
    pub async fn ended(&self) -> Error {
        let every = self.state.config().revocation_recheck;
        let mut changes = Some(self.state.store().changes());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                hint = next_change(&mut changes) => if !(hint.starts_with("token:")
                    || hint.starts_with("executor-removed:")
                    || hint == ANYTHING)
                {
                    continue;
                },
            }
            if let Err(e) = self.check().await {
                return e;
            }
        }
    }

    /// `fut`, unless the grant ends first (then `fut` is dropped).
    pub async fn guard<F: Future>(&self, fut: F) -> Result<F::Output, Error> {
        tokio::select! {
            biased;
            out = fut => Ok(out),
            e = self.ended() => Err(e),
        }
    }
}

/// Closes the live links of executors that no longer exist in the store,
/// forever. The store is read only when its files changed since the last
/// look (the same generation `store::lookups` uses), and only while links
/// are registered.
pub async fn sweep_removed_executors(state: AppState) {
    // The roster counter the executors were last read under, and when:
    // the counter moves with every executor row added or removed
    // (`store::roster`), so while it stays no row can have gone, and a
    // fleet's 30,000 ids are not re-read every second (on PostgreSQL that
    // was 11 % of an idle replica's CPU; BENCHMARKS.md, "envs/list of
    // 10,000, profiled"). The counter is read *before* the ids, so a
    // removal that races with the read moves it again and is seen at the
    // next look. A full read still runs every FULL_SWEEP_EVERY, for a link
    // that registered after its row was read as removed.
    let mut last_read: Option<(i64, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An executor's change announced by the store (a removal through
    // another replica on PostgreSQL) is looked at without waiting for the
    // tick.
    let mut changes = Some(state.store().changes());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            hint = next_change(&mut changes) => if !(hint.starts_with("executor-removed:") || hint == ANYTHING) {
                continue;
            },
        }
        let registry = state.registry();
        if registry.is_empty() {
            continue;
        }
        let version = match state.store().roster_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("executor sweep: cannot read the store: {e}");
                continue;
            }
        };
        if last_read.is_some_and(|(v, at)| v == version && at.elapsed() < FULL_SWEEP_EVERY) {
            continue;
        }
        // Links before the ids: a link registered after the read (whose
        // row the read may not have seen) is left for the next look. Taken
        // only when the ids are read: a copy of 10,000 links every second
        // was a tenth of an idle replica's CPU.
        let links = registry.links();
        let live: HashSet<String> = match state.store().executor_ids().await {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::debug!("executor sweep: cannot read the store: {e}");
                continue;
            }
        };
        last_read = Some((version, tokio::time::Instant::now()));
        for link in links {
            if !live.contains(&link.exe_id) {
                tracing::info!(exe_id = %link.exe_id, "executor removed from the store: closing its link");
                close_removed(&state, &link);
            }
        }
    }
}

/// How often the sweep reads every executor id even though the roster
/// counter has not moved.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Passes the store's hints of revoked turns (another replica's revocation
/// on PostgreSQL, see `store::invalidate`) to the live bridge sessions,
/// which otherwise see it at their next periodic check. A hint of
/// unknown extent (`*`: the listener reconnected) is left to those checks.
pub async fn relay_store_hints(state: AppState) {
    let mut changes = Some(state.store().changes());
    loop {
        let hint = next_change(&mut changes).await;
        if let Some(turn) = hint.strip_prefix("turn:") {
            let _ = state.revoked_turns().send(turn.to_string());
        }
    }
}

/// Closes the link of an executor that was removed, and forgets it.
pub fn close_removed(state: &AppState, link: &std::sync::Arc<crate::link::Link>) {
    link.close("the environment was removed");
    state.registry().remove_if_same(link);
}

#[cfg(test)]
mod tests {
    // The statuses callers see: through the HTTP layer.
    use super::*;
    use crate::http::error::ApiError;
    use crate::link::Link;
    use axum::http::StatusCode;

    async fn state() -> (tempfile::TempDir, AppState) {
        crate::ops::state::test_state(|c| c.revocation_recheck = Duration::from_millis(50)).await
    }

    #[tokio::test]
    async fn a_watch_ends_at_revocation_and_at_removal() {
        let (_dir, state) = state().await;
        let store = state.store().clone();
        let (token_id, token) = store.create_proxy_token("w1", None).await.unwrap();
        let (exe_id, _) = store.add_executor("w1", "laptop", true).await.unwrap();
        let watch = Watch::new(&state, &token, "w1").with_environment("laptop", &exe_id);
        watch.check().await.unwrap();
        // Another workspace's grant is no grant here.
        assert!(Watch::new(&state, &token, "w2").check().await.is_err());

        store.remove_executor("w1", "laptop").await.unwrap();
        let e = ApiError::from(watch.check().await.unwrap_err());
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, code::ENV_NOT_FOUND)
        );

        let watch = Watch::new(&state, &token, "w1");
        let pending = watch.guard(std::future::pending::<()>());
        store.revoke_proxy_token(&token_id).await.unwrap();
        let e = ApiError::from(
            tokio::time::timeout(Duration::from_secs(5), pending)
                .await
                .expect("the guard ends within a few rechecks")
                .unwrap_err(),
        );
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNAUTHORIZED, code::INVALID_TOKEN)
        );
    }

    #[tokio::test]
    async fn the_sweep_closes_links_of_removed_executors_only() {
        let (_dir, state) = state().await;
        let store = state.store().clone();
        let (gone, _) = store.add_executor("w1", "a", true).await.unwrap();
        let (kept, _) = store.add_executor("w1", "b", false).await.unwrap();
        let link = |id: &str, name: &str| {
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            Link::new(id.into(), "w1".into(), name.into(), tx)
        };
        let (a, b) = (link(&gone, "a"), link(&kept, "b"));
        state.registry().insert(a.clone());
        state.registry().insert(b.clone());
        tokio::spawn(sweep_removed_executors(state.clone()));
        store.remove_executor("w1", "a").await.unwrap();
        tokio::time::timeout(SWEEP_EVERY * 5, a.closed())
            .await
            .expect("the removed executor's link closes");
        assert_eq!(a.close_reason(), Some("the environment was removed"));
        assert!(state.registry().get(&gone).is_none());
        assert!(!b.is_closed());
        assert!(state.registry().get(&kept).is_some());
    }
}
