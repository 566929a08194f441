//! Invalidation across replicas (PostgreSQL).
//!
//! Every write that changes what `store::lookups` answer (a proxy token
//! created or revoked, an executor added, removed, rotated, made default or
//! connected, a turn revoked) sends `NOTIFY execgate_invalidate, '<hint>'`
//! in its own transaction, so the hint goes out exactly when the change
//! commits. A hint is a kind and an id (`token:tok_…`, `executor:exe_…`,
//! `executor-removed:<workspace>/<name or exe_id>`, `turn:<turn id>`),
//! never a payload or a secret.
//!
//! Each store runs one [`listen`] task on a connection of its own
//! (`PgListener`). A hint makes `lookups` drop what they hold and is
//! passed on to [`crate::store::Store::changes`]' subscribers (the
//! executor sweep, bridge sessions' turn checks). When the listener's
//! connection drops, sqlx reconnects it; since hints may have been missed
//! meanwhile, that counts as a `*` hint (everything changed). Whatever
//! else goes wrong, lookups' entries live at most `lookups::MAX_AGE`
//! (1 s), the bound on a missed hint.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

use super::lookups::Lookups;

/// The channel of the hints.
pub const CHANNEL: &str = "execgate_invalidate";

/// The hint of a change of unknown extent.
pub const ANYTHING: &str = "*";

/// Starts listening (once the `LISTEN` is in place, so that no change
/// committed after this returns goes unheard).
pub(crate) async fn listen(pool: PgPool, lookups: Arc<Lookups>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    let task = tokio::spawn(run(listener, Arc::downgrade(&lookups)));
    lookups.set_listener(task.abort_handle());
    Ok(())
}

async fn run(mut listener: PgListener, lookups: Weak<Lookups>) {
    loop {
        let hint = match listener.try_recv().await {
            Ok(Some(n)) => n.payload().to_string(),
            // The connection was lost; the next call reconnects (and
            // listens again). Hints may have been missed.
            Ok(None) => {
                tracing::debug!("invalidation listener: connection lost, reconnecting");
                ANYTHING.to_string()
            }
            Err(e) => {
                tracing::warn!("invalidation listener: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                ANYTHING.to_string()
            }
        };
        let Some(lookups) = lookups.upgrade() else {
            return;
        };
        lookups.invalidate(&hint);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::store::lookups::MAX_AGE;
    use crate::store::testing::{on_both, Fx};
    use crate::store::Store;

    on_both!(
        a_revocation_through_one_replica_is_refused_by_the_other,
        without_hints_the_other_replica_still_refuses_within_max_age,
    );

    /// Polls `verify` on `store` until the token is refused; how long it took.
    async fn refused_within(store: &Store, token: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if store.verify_proxy_token(token).await.unwrap().is_none() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "the other replica still accepts the revoked token after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Two replicas on one database: a token revoked, an executor removed
    /// and a turn revoked through one are seen by the other within 1 s,
    /// while the other had them cached.
    async fn a_revocation_through_one_replica_is_refused_by_the_other(fx: Fx) {
        let (a, b) = (fx.open().await, fx.open().await);
        a.create_workspace("w").await.unwrap();
        let (id, token) = a.create_proxy_token("w", None).await.unwrap();
        a.add_executor("w", "laptop", true).await.unwrap();
        // b reads both, and so holds them in memory.
        assert!(b.verify_proxy_token(&token).await.unwrap().is_some());
        assert!(b.executor_by_name("w", "laptop").await.unwrap().is_some());
        let mut changes = b.changes();

        a.revoke_proxy_token(&id).await.unwrap();
        let took = refused_within(&b, &token, Duration::from_secs(1)).await;
        println!("revocation seen by the other replica after {took:?}");
        a.remove_executor("w", "laptop").await.unwrap();
        let started = Instant::now();
        while b.executor_by_name("w", "laptop").await.unwrap().is_some() {
            assert!(started.elapsed() < Duration::from_secs(1), "removal unseen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if fx.is_postgres() {
            // The other replica's consumers hear the hints (no payload).
            let first = tokio::time::timeout(Duration::from_secs(1), changes.recv())
                .await
                .expect("a hint within 1 s")
                .unwrap();
            assert_eq!(first, format!("token:{id}"));
            a.revoke_turn("turn_x").await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let hint = tokio::time::timeout_at(deadline.into(), changes.recv())
                    .await
                    .expect("the turn's hint within 1 s")
                    .unwrap();
                if hint == "turn:turn_x" {
                    break;
                }
            }
        }
    }

    /// The fallback: with its listener gone, a replica still refuses a
    /// revoked token within MAX_AGE (plus slack).
    async fn without_hints_the_other_replica_still_refuses_within_max_age(fx: Fx) {
        let (a, b) = (fx.open().await, fx.open().await);
        b.lookups.stop_listener();
        a.create_workspace("w").await.unwrap();
        let (id, token) = a.create_proxy_token("w", None).await.unwrap();
        assert!(b.verify_proxy_token(&token).await.unwrap().is_some());
        a.revoke_proxy_token(&id).await.unwrap();
        let took = refused_within(&b, &token, MAX_AGE + Duration::from_millis(300)).await;
        println!("revocation seen without hints after {took:?}");
    }
}
