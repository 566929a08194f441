//! Environment resolution: which environments a caller has, the live link
//! of one of them, and the `executor_unavailable` answer for one without a
//! link. Shared by REST, MCP, the bridge, copy_path and the processes.

use std::collections::HashSet;
use std::sync::Arc;

use execgate_protocol::connectors::{error_code as code, ConnectorEnv, ExecutorInfo};

use crate::auth::Caller;
use crate::link::Link;
use crate::ops::state::AppState;
use crate::ops::tools;
use crate::ops::Error;
use crate::store::now_ms;

/// One environment envs/list shows: its link (this replica's, a channel
/// kept to its holder, or a description of it), its roster row's default
/// flag, and when it was last seen (Unix ms).
struct Listed {
    link: Arc<Link>,
    is_default: bool,
    last_seen_ms: Option<i64>,
}

/// The caller's environments that have a live link, ordered by name.
/// The workspace's roster comes from memory while no executor of the
/// store was added, removed or changed (`store::roster`): one single-row
/// read per call, not the workspace's every row.
async fn listed(state: &AppState, caller: &Caller) -> Result<Vec<Listed>, Error> {
    let rows = state.store().roster(&caller.workspace).await?;
    let local = |link: Arc<Link>, is_default: bool| Listed {
        last_seen_ms: Some(link.last_seen_ms()),
        link,
        is_default,
    };
    let Some(cluster) = state.cluster() else {
        return Ok(rows
            .iter()
            .filter_map(|row| Some(local(state.registry().get(&row.exe_id)?, row.is_default)))
            .collect());
    };
    // A replica: the executors other live replicas hold are connected too,
    // described from the handshake their holder wrote into the lease (no
    // channel is opened to list them).
    let elsewhere = cluster.held_elsewhere(state.store()).await;
    let mut envs = Vec::new();
    for row in rows.iter() {
        if let Some(link) = state.registry().get(&row.exe_id) {
            envs.push(local(link, row.is_default));
        } else if let Some(&epoch) = elsewhere.get(&row.exe_id) {
            let described = cluster
                .describe(
                    state.store(),
                    &row.exe_id,
                    &caller.workspace,
                    &row.name,
                    epoch,
                )
                .await;
            if let Some(link) = described {
                let mut env = local(link, row.is_default);
                if env.link.is_closed() {
                    // A description: last seen as the holder recorded it.
                    env.last_seen_ms = row.last_seen_at;
                }
                envs.push(env);
            }
        }
    }
    Ok(envs)
}

/// The caller's environments that have a live link, as envs/list shows
/// them (MCP's list_environments too).
pub async fn connected_envs(state: &AppState, caller: &Caller) -> Result<Vec<ConnectorEnv>, Error> {
    Ok(listed(state, caller)
        .await?
        .iter()
        .map(|l| env_of(&l.link, l.is_default, l.last_seen_ms))
        .collect())
}

/// envs/list's answer, `{"envs":[…]}`, as JSON in pieces of at most
/// [`ENVS_PER_PIECE`] environments, to be sent as they are made: the same
/// bytes as serializing [`connected_envs`] into an `EnvsListResponse`, but
/// each environment is written from its link's interned pieces
/// ([`Link::listing`]) instead of being built and serialized afresh, and
/// never all at once: a workspace of 10,000 environments is 19 MB of JSON,
/// which as one buffer the allocator kept after each call (BENCHMARKS.md,
/// "Fleet").
pub async fn connected_envs_json(
    state: &AppState,
    caller: &Caller,
) -> Result<impl Iterator<Item = Vec<u8>> + Send + 'static, Error> {
    let listed = listed(state, caller).await?;
    let count = listed.len();
    let pieces = count.div_ceil(ENVS_PER_PIECE).max(1);
    let mut listed = listed.into_iter();
    Ok((0..pieces).map(move |piece| {
        let mut out = Vec::with_capacity(ENVS_PER_PIECE * 2048);
        if piece == 0 {
            out.extend_from_slice(b"{\"envs\":[");
        }
        for (i, l) in listed.by_ref().take(ENVS_PER_PIECE).enumerate() {
            if piece > 0 || i > 0 {
                out.push(b',');
            }
            write_env(&mut out, &l.link, l.is_default, l.last_seen_ms);
        }
        if piece + 1 == pieces {
            out.extend_from_slice(b"]}");
        }
        out
    }))
}

/// Environments per piece of envs/list's answer (~60 KiB: below the
/// allocator's threshold for a mapping of its own).
const ENVS_PER_PIECE: usize = 32;

fn env_of(link: &Link, is_default: bool, last_seen_ms: Option<i64>) -> ConnectorEnv {
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
fn listing(link: &Link) -> (Arc<str>, Arc<str>) {
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

/// Writes one environment as [`env_of`] would serialize (the same fields,
/// in the same order).
fn write_env(out: &mut Vec<u8>, link: &Link, is_default: bool, last_seen_ms: Option<i64>) {
    let (tools, tail) = listing(link);
    out.extend_from_slice(b"{\"name\":");
    let _ = serde_json::to_writer(&mut *out, &link.name);
    out.extend_from_slice(b",\"type\":\"executor\",\"is_default\":");
    out.extend_from_slice(if is_default { b"true" } else { b"false" });
    out.extend_from_slice(b",\"tools\":");
    out.extend_from_slice(tools.as_bytes());
    if let Some(ms) = last_seen_ms {
        out.extend_from_slice(b",\"last_seen\":");
        let _ = serde_json::to_writer(&mut *out, &rfc3339(ms));
    }
    out.extend_from_slice(tail.as_bytes());
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

    fn link_with(name: &str, info: serde_json::Value) -> Arc<Link> {
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        let link = Link::new("exe_1".into(), "w".into(), name.into(), tx);
        let info: execgate_protocol::exec::EnvironmentInfo = serde_json::from_value(info).unwrap();
        link.set_handshake(crate::link::Handshake {
            session_id: "s".into(),
            ext: info.ext(),
            info,
        });
        link
    }

    /// envs/list's writer gives exactly the bytes serde gives for the same
    /// environments: with and without a policy, custom tools, last_seen, a
    /// name that needs escaping, the default flag; twice (the second from
    /// the pieces kept on the link).
    #[test]
    fn the_envs_list_writer_matches_serde() {
        let plain = link_with(
            "laptop",
            serde_json::json!({"executorVersion": "1.2", "platformOs": "linux"}),
        );
        let limited = link_with(
            "odd \"name\" \u{e9}",
            serde_json::json!({"executorVersion": "1.2", "platformOs": "linux", "execgate": {
                "policy": {"root": "/srv", "allowTools": ["read_file", "lint"], "readOnly": true},
                "tools": [{"name": "lint", "description": "Lint it", "argv": ["lint", "{path}"],
                           "timeoutMs": 1000, "schema": {"type": "object"}}]
            }}),
        );
        let stock = link_with("codex", serde_json::json!({}));
        for _ in 0..2 {
            let cases = [
                (&plain, true, Some(1_700_000_000_123)),
                (&limited, false, Some(1_700_000_001_000)),
                (&stock, false, None),
            ];
            let expected = serde_json::to_vec(&execgate_protocol::connectors::EnvsListResponse {
                envs: cases
                    .iter()
                    .map(|(l, d, seen)| env_of(l, *d, *seen))
                    .collect(),
            })
            .unwrap();
            let mut got = b"{\"envs\":[".to_vec();
            for (i, (l, d, seen)) in cases.iter().enumerate() {
                if i > 0 {
                    got.push(b',');
                }
                write_env(&mut got, l, *d, *seen);
            }
            got.extend_from_slice(b"]}");
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(expected).unwrap()
            );
            assert!(plain.listing.get().is_some());
        }
        // Links alike share their pieces.
        let twin = link_with(
            "other",
            serde_json::json!({"executorVersion": "1.2", "platformOs": "linux"}),
        );
        let (a, b) = (listing(&plain), listing(&twin));
        assert!(Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.1, &b.1));
        assert!(!Arc::ptr_eq(&a.0, &listing(&limited).0));
    }
}
