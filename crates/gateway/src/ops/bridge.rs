//! Who may open `/bridge/{exe_id}`: a capability token checked in the
//! order the HTTP handler (`crate::http::bridge`) documents, and the live
//! link of the executor it names. The relay itself is `crate::link::bridge`.

use execgate_protocol::connectors::error_code as code;

use crate::auth::captoken;
use crate::link::bridge::{Grant, TurnClaims};
use crate::ops::state::AppState;
use crate::ops::Error;

/// Checks the bearer capability token and finds the executor's live link,
/// in the order the module docs give.
pub async fn authorize(state: &AppState, target: &str, token: &str) -> Result<Grant, Error> {
    let claims = captoken::verify(state.cap_token_secret(), token, captoken::now_s())?;
    if state.store().turn_revoked(&claims.turn_id).await? {
        return Err(Error::new(
            code::TURN_REVOKED,
            format!(
                "turn {:?} was revoked; its capability tokens are no longer accepted",
                claims.turn_id
            ),
        ));
    }
    let row = match state.store().executor(target).await? {
        Some(row) => Some(row),
        None => {
            state
                .store()
                .executor_by_name(&claims.workspace_id, target)
                .await?
        }
    };
    // A missing executor and another workspace's look the same, so a token
    // cannot probe which exe_ids exist elsewhere.
    let Some(row) = row.filter(|r| r.workspace == claims.workspace_id) else {
        return Err(Error::new(code::FORBIDDEN,
            format!(
                "executor {target:?} is not in workspace {:?}; a capability token reaches only its own workspace's executors",
                claims.workspace_id
            ),
        ));
    };
    match state.link(&row.exe_id).await {
        Some(link) => Ok(Grant {
            claims: turn_claims(claims),
            link,
            audit: None,
        }),
        None => Err(crate::ops::environment::executor_unavailable(state, &row.exe_id).await),
    }
}

/// A verified token's claims, as the bridge relay keeps them.
pub fn turn_claims(c: captoken::Claims) -> TurnClaims {
    TurnClaims {
        turn_id: c.turn_id,
        workspace_id: c.workspace_id,
        user_id: c.user_id,
        exp: c.exp,
        skip_audit: c.skip_audit,
    }
}
