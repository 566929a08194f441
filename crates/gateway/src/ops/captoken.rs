//! Minting capability tokens and revoking turns, against the store: the
//! logic shared by `execgate admin captoken …` and the admin HTTP routes
//! `POST /api/admin/captokens` and `POST /api/admin/revoke-turn`.
//! The routes are in `crate::http::admin`.

use execgate_protocol::connectors::error_code as code;
use serde::{Deserialize, Serialize};

use std::time::Duration;

use crate::auth::captoken::{
    mint as mint_token, new_turn_id, validate_ttl, validate_turn_id, CapTokenSecret, Claims,
    DEFAULT_TTL_S, IAT_SKEW_S, MAX_TTL_S,
};
use crate::ops::Error;
use crate::store::{now_ms, Store, StoreError};

/// `POST /api/admin/captokens`, and `execgate admin captoken create`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub workspace: String,
    /// Lifetime in seconds, 1–86400; default 3600.
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// The turn the token belongs to (revocation is per turn); generated
    /// (`turn_…`) when absent.
    #[serde(default)]
    pub turn_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub skip_audit: Option<bool>,
}

/// A minted token and what it says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Minted {
    pub token: String,
    pub turn_id: String,
    pub workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeTurnRequest {
    pub turn_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedTurn {
    pub ok: bool,
    pub turn_id: String,
    /// When the turn was first revoked (RFC 3339, UTC).
    pub revoked_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "workspace {0:?} does not exist (create it with `execgate admin workspace create {0}`)"
    )]
    NoWorkspace(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AdminError> for Error {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) => Error::bad_request(m),
            AdminError::NoWorkspace(_) => Error::new(code::NOT_FOUND, e.to_string()),
            AdminError::Store(e) => e.into(),
        }
    }
}

/// Mints a capability token for `req.workspace`, valid from `now` (Unix
/// seconds) for `req.ttl_s`.
pub async fn mint(
    store: &Store,
    secret: &CapTokenSecret,
    req: &MintRequest,
    now: i64,
) -> Result<Minted, AdminError> {
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TTL_S);
    validate_ttl(ttl).map_err(AdminError::Invalid)?;
    let turn_id = match &req.turn_id {
        Some(t) => {
            validate_turn_id(t).map_err(AdminError::Invalid)?;
            t.clone()
        }
        None => new_turn_id(),
    };
    if let Some(u) = &req.user_id {
        if u.is_empty() || u.len() > 256 {
            return Err(AdminError::Invalid(
                "user_id must be 1-256 characters".into(),
            ));
        }
    }
    if !store.workspace_exists(&req.workspace).await? {
        return Err(AdminError::NoWorkspace(req.workspace.clone()));
    }
    // A token of a revoked turn would be refused at once: say so now.
    if store.turn_revoked(&turn_id).await? {
        return Err(AdminError::Invalid(format!(
            "turn {turn_id:?} is revoked; use another turn_id"
        )));
    }
    let claims = Claims {
        turn_id,
        workspace_id: req.workspace.clone(),
        user_id: req.user_id.clone(),
        iat: now,
        exp: now + ttl as i64,
        skip_audit: req.skip_audit,
    };
    Ok(Minted {
        token: mint_token(secret, &claims),
        turn_id: claims.turn_id,
        workspace: claims.workspace_id,
        user_id: claims.user_id,
        iat: claims.iat,
        exp: claims.exp,
    })
}

/// How long a revoked turn is remembered. A token lives at most
/// [`MAX_TTL_S`] from its `iat` (verification refuses longer ones), and its
/// `iat` may lie up to [`IAT_SKEW_S`] ahead of a gateway's clock; twice the
/// skew covers the clocks of the gateway that revoked and the one that
/// verifies. Past that, every token of the turn minted before its
/// revocation has expired, and the row can go.
pub const REVOKED_TURN_RETENTION: Duration = Duration::from_secs(MAX_TTL_S + 2 * IAT_SKEW_S as u64);

/// How often the gateway prunes the revoked turns (also at each revocation).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Forgets turns revoked more than `retention` before `now_ms`.
pub async fn prune_revoked_turns(
    store: &Store,
    retention: Duration,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    store.prune_revoked_turns(cutoff).await
}

/// The gateway's periodic prune of revoked turns; runs for the life of
/// the process.
pub async fn prune_periodically(store: Store) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        match prune_revoked_turns(&store, REVOKED_TURN_RETENTION, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("pruned {n} revoked turns past their tokens' lifetime"),
            Err(e) => tracing::warn!("pruning revoked turns: {e}"),
        }
    }
}

/// Revokes every token of `turn_id`, persisted in the store. Idempotent.
/// Live bridge sessions of the turn notice within
/// `LinkConfig::bridge_recheck` (at once when revoked through the
/// gateway's own route).
pub async fn revoke_turn(store: &Store, turn_id: &str) -> Result<RevokedTurn, AdminError> {
    validate_turn_id(turn_id).map_err(AdminError::Invalid)?;
    let at = store.revoke_turn(turn_id).await?;
    // Pruned here too, so that a gateway that only ever serves the CLI's
    // revocations (no periodic task) stays bounded as well. Best effort:
    // the revocation itself is recorded.
    if let Err(e) = prune_revoked_turns(store, REVOKED_TURN_RETENTION, at).await {
        tracing::warn!("pruning revoked turns: {e}");
    }
    Ok(RevokedTurn {
        ok: true,
        turn_id: turn_id.to_string(),
        revoked_at: crate::ops::environment::rfc3339(at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::captoken::{verify, CapTokenError};
    use crate::ops::state::AppState;

    async fn state() -> (tempfile::TempDir, AppState) {
        crate::ops::state::test_state(|_| {}).await
    }

    #[tokio::test]
    async fn revoked_turns_are_pruned_past_their_tokens_lifetime() {
        let (_d, st) = state().await;
        let store = st.store();
        revoke_turn(store, "t-old").await.unwrap();
        revoke_turn(store, "t-new").await.unwrap();
        // Within the retention nothing goes, whatever is pruned.
        let now = now_ms();
        assert_eq!(
            prune_revoked_turns(store, REVOKED_TURN_RETENTION, now)
                .await
                .unwrap(),
            0
        );
        assert!(store.turn_revoked("t-old").await.unwrap());
        // A short retention (as a test may set) drops both once past it.
        let later = now + 10_000;
        assert_eq!(
            prune_revoked_turns(store, Duration::from_secs(5), later)
                .await
                .unwrap(),
            2
        );
        assert!(!store.turn_revoked("t-old").await.unwrap());
        assert!(!store.turn_revoked("t-new").await.unwrap());
        // The real retention outlives the longest token, skew included.
        assert!(REVOKED_TURN_RETENTION.as_secs() >= MAX_TTL_S + IAT_SKEW_S as u64);
    }

    #[tokio::test]
    async fn a_revocation_prunes_what_is_past_the_retention() {
        let (_d, st) = state().await;
        let store = st.store();
        // A row revoked longer ago than the retention, as an old database
        // has: written directly, with its old time.
        store.revoke_turn("t-ancient").await.unwrap();
        let ancient = now_ms() - REVOKED_TURN_RETENTION.as_millis() as i64 - 1_000;
        store
            .set_turn_revoked_at_for_test("t-ancient", ancient)
            .await;
        assert!(store.turn_revoked("t-ancient").await.unwrap());
        revoke_turn(store, "t-today").await.unwrap();
        assert!(!store.turn_revoked("t-ancient").await.unwrap());
        assert!(store.turn_revoked("t-today").await.unwrap());
    }

    #[tokio::test]
    async fn mint_verifies_and_checks_its_inputs() {
        let (_d, st) = state().await;
        let (store, secret) = (st.store(), st.cap_token_secret());
        let req = MintRequest {
            workspace: "w1".into(),
            ..Default::default()
        };
        let m = mint(store, secret, &req, 1_000).await.unwrap();
        assert!(m.turn_id.starts_with("turn_"));
        assert_eq!((m.iat, m.exp), (1_000, 1_000 + 3600));
        let c = verify(secret, &m.token, 1_001).unwrap();
        assert_eq!(c.workspace_id, "w1");
        assert_eq!(c.turn_id, m.turn_id);

        let with = MintRequest {
            workspace: "w1".into(),
            ttl_s: Some(5),
            turn_id: Some("t-1".into()),
            user_id: Some("alice".into()),
            skip_audit: Some(true),
        };
        let m = mint(store, secret, &with, 1_000).await.unwrap();
        let c = verify(secret, &m.token, 1_004).unwrap();
        assert_eq!(c.turn_id, "t-1");
        assert_eq!(c.user_id.as_deref(), Some("alice"));
        assert_eq!(c.skip_audit, Some(true));
        assert!(matches!(
            verify(secret, &m.token, 1_005),
            Err(CapTokenError::Expired { .. })
        ));

        for (bad, want) in [
            (
                MintRequest {
                    ttl_s: Some(0),
                    ..with.clone()
                },
                "86400",
            ),
            (
                MintRequest {
                    ttl_s: Some(86_401),
                    ..with.clone()
                },
                "86400",
            ),
            (
                MintRequest {
                    turn_id: Some("a b".into()),
                    ..with.clone()
                },
                "turn_id",
            ),
            (
                MintRequest {
                    workspace: "nope".into(),
                    ..with.clone()
                },
                "does not exist",
            ),
        ] {
            let e = mint(store, secret, &bad, 1_000)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        revoke_turn(store, "t-1").await.unwrap();
        let e = mint(store, secret, &with, 1_000)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("revoked"), "{e}");
    }
}
