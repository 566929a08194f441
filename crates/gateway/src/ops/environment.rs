//! Environment resolution: the live link of a caller's environment, the
//! `executor_unavailable` answer for one without a link, and what an
//! environment shows of itself (its JSON, and the listing pieces
//! `envs_list` writes it from). Shared by REST, MCP, the bridge,
//! copy_path and the processes.

use std::collections::HashSet;
use std::sync::Arc;

use execgate_protocol::connectors::{error_code as code, ConnectorEnv, ExecutorInfo};

use crate::auth::Caller;
use crate::link::peer::Pieces;
use crate::link::Link;
use crate::ops::state::AppState;
use crate::ops::tools;
use crate::ops::Error;
use crate::store::now_ms;

/// An environment as envs/list shows it.
pub(crate) fn env_of(link: &Link, is_default: bool, last_seen_ms: Option<i64>) -> ConnectorEnv {
    ConnectorEnv {
        name: link.name.clone(),
        kind: "executor".into(),
        is_default,
        tools: tools::list(link),
        last_seen: last_seen_ms.map(rfc3339),
        executor: executor_info(link),
        policy: crate::ops::policy::info(link),
    }
}

fn executor_info(link: &Link) -> Option<ExecutorInfo> {
    link.handshake().map(|h| ExecutorInfo {
        kind: crate::link::connect::executor_kind(h).into(),
        version: h.info.executor_version.clone(),
        os: h.info.platform_os.clone(),
    })
}

/// What a link's environment shows that does not change once its
/// handshake is in, as JSON: `[…]` (the tools) and the end of the object,
/// `,"executor":{…},"policy":{…}}` (each only when present). Kept on the
/// link ([`Link::listing`]) and interned, so that links alike share them.
pub(crate) fn listing(link: &Link) -> Pieces {
    if let Some(pieces) = link.listing.get() {
        return pieces.clone();
    }
    let tools = serde_json::to_string(&tools::list(link)).unwrap_or_else(|_| "[]".into());
    let mut tail = String::new();
    if let Some(e) = executor_info(link) {
        tail.push_str(",\"executor\":");
        tail.push_str(&serde_json::to_string(&e).unwrap_or_else(|_| "null".into()));
    }
    if let Some(p) = crate::ops::policy::info(link) {
        tail.push_str(",\"policy\":");
        tail.push_str(&serde_json::to_string(&p).unwrap_or_else(|_| "null".into()));
    }
    tail.push('}');
    let pieces = (intern(tools), intern(tail));
    // Only once the handshake is in: before it, the pieces are not final.
    if link.handshake().is_some() {
        let _ = link.listing.set(pieces.clone());
    }
    pieces
}

/// The one copy of each distinct listing piece. An entry that no link
/// holds any more is dropped when the set has doubled since the last
/// sweep, so the set stays within twice the pieces in use.
fn intern(piece: String) -> Arc<str> {
    type Set = std::sync::Mutex<(HashSet<Arc<str>>, usize)>;
    static SET: std::sync::LazyLock<Set> = std::sync::LazyLock::new(Default::default);
    let mut guard = SET.lock().unwrap_or_else(|e| e.into_inner());
    let (set, swept_at) = &mut *guard;
    if let Some(found) = set.get(piece.as_str()) {
        return found.clone();
    }
    if set.len() >= 2 * (*swept_at).max(64) {
        set.retain(|p| Arc::strong_count(p) > 1);
        *swept_at = set.len();
    }
    let piece: Arc<str> = piece.into();
    set.insert(piece.clone());
    piece
}

/// RFC 3339 in UTC, to the second, as the seed's `last_seen`.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn ago(ms: i64) -> String {
    let secs = (now_ms() - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

/// 503 for an environment that exists but has no live link, saying when it
/// was last seen.
pub async fn executor_unavailable(state: &AppState, exe_id: &str) -> Error {
    // Only to say when it was last seen: not worth waiting for a store
    // that does not answer (an outage).
    let row = tokio::time::timeout(
        crate::store::lookups::READ_TIMEOUT,
        state.store().executor(exe_id),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .flatten();
    let message = match row {
        Some(r) => match r.last_seen_at {
            Some(seen) => format!(
                "executor '{}' is not connected (last seen {})",
                r.name,
                ago(seen)
            ),
            None => format!("executor '{}' has never connected", r.name),
        },
        None => "the executor is not connected".to_string(),
    };
    Error::new(code::EXECUTOR_UNAVAILABLE, message).with_retry_after(5)
}

/// The live link of the caller's environment `name`.
pub async fn environment(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<Arc<Link>, Error> {
    let row = state
        .store()
        .executor_by_name(&caller.workspace, name)
        .await?
        .ok_or_else(|| {
            Error::new(code::ENV_NOT_FOUND,
                format!(
                    "workspace {:?} has no environment {name:?}; envs/list shows the connected ones",
                    caller.workspace
                ),
            )
        })?;
    match state.link(&row.exe_id).await {
        Some(link) => Ok(link),
        None => Err(executor_unavailable(state, &row.exe_id).await),
    }
}

/// The live link of environment `name` given as `arguments.environment_id`
/// (MCP): an unknown name says which argument named it.
pub async fn environment_argument(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<Arc<Link>, Error> {
    environment(state, caller, name).await.map_err(|e| {
        if e.code == code::ENV_NOT_FOUND {
            Error {
                message: format!("arguments.environment_id: {}", e.message),
                ..e
            }
        } else {
            e
        }
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }
}
