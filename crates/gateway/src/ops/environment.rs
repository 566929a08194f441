//! Environment resolution: which environments a caller has, the live link
//! of one of them, and the `executor_unavailable` answer for one without a
//! link. Shared by REST, MCP, the bridge, copy_path and the processes.

use std::sync::Arc;

use execgate_protocol::connectors::{error_code as code, ConnectorEnv, ExecutorInfo};

use crate::auth::Caller;
use crate::link::Link;
use crate::ops::state::AppState;
use crate::ops::tools;
use crate::ops::Error;
use crate::store::now_ms;

/// The caller's environments that have a live link, as envs/list shows
/// them (MCP's list_environments too).
pub async fn connected_envs(state: &AppState, caller: &Caller) -> Result<Vec<ConnectorEnv>, Error> {
    let rows = state
        .store()
        .list_executors(Some(&caller.workspace))
        .await?;
    let Some(cluster) = state.cluster() else {
        return Ok(rows
            .into_iter()
            .filter_map(|row| {
                let link = state.registry().get(&row.exe_id)?;
                Some(env_of(&link, row.is_default))
            })
            .collect());
    };
    // A replica: the executors other live replicas hold are connected too,
    // described from the handshake their holder wrote into the lease (no
    // channel is opened to list them).
    let elsewhere = cluster.held_elsewhere(state.store()).await;
    let mut envs = Vec::new();
    for row in rows {
        if let Some(link) = state.registry().get(&row.exe_id) {
            envs.push(env_of(&link, row.is_default));
        } else if let Some(&epoch) = elsewhere.get(&row.exe_id) {
            let described = cluster
                .describe(state.store(), &row.exe_id, &row.workspace, &row.name, epoch)
                .await;
            if let Some(link) = described {
                let mut env = env_of(&link, row.is_default);
                if link.is_closed() {
                    // A description: last seen as the holder recorded it.
                    env.last_seen = row.last_seen_at.map(rfc3339);
                }
                envs.push(env);
            }
        }
    }
    Ok(envs)
}

fn env_of(link: &Link, is_default: bool) -> ConnectorEnv {
    ConnectorEnv {
        name: link.name.clone(),
        kind: "executor".into(),
        is_default,
        tools: tools::list(link),
        last_seen: Some(rfc3339(link.last_seen_ms())),
        executor: link.handshake().map(|h| ExecutorInfo {
            kind: crate::link::connect::executor_kind(h).into(),
            version: h.info.executor_version.clone(),
            os: h.info.platform_os.clone(),
        }),
        policy: crate::ops::policy::info(link),
    }
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
    let row = state.store().executor(exe_id).await.ok().flatten();
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
