//! Environment resolution: which environments a caller has, the live link
//! of one of them, and the `executor_unavailable` answer for one without a
//! link. Shared by REST, MCP, the bridge, copy_path and the processes.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use execgate_protocol::connectors::{error_code as code, ConnectorEnv, ExecutorInfo};

use crate::auth::Caller;
use crate::link::peer::{Described, Description, Pieces};
use crate::link::Link;
use crate::ops::state::AppState;
use crate::ops::tools;
use crate::ops::Error;
use crate::store::now_ms;

/// One environment envs/list shows: its link (this replica's, or a channel
/// kept to its holder) or a description of it (an executor another replica
/// holds, [`Described`]), its roster row's default flag, and when it was
/// last seen (Unix ms).
struct Listed {
    entry: Entry,
    is_default: bool,
    last_seen_ms: Option<i64>,
}

enum Entry {
    Link(Arc<Link>),
    Described(Arc<Description>),
}

impl Listed {
    fn name(&self) -> &str {
        match &self.entry {
            Entry::Link(link) => &link.name,
            Entry::Described(d) => &d.name,
        }
    }

    fn pieces(&self) -> Pieces {
        match &self.entry {
            Entry::Link(link) => listing(link),
            Entry::Described(d) => d.pieces.clone(),
        }
    }
}

/// A page of envs/list (`{"limit": N, "after": "<name>"}`, both optional):
/// the environments named after `after` (in byte order of their names), at
/// most `limit` of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub limit: Option<usize>,
    pub after: Option<String>,
}

/// The largest `limit` a page may ask for.
pub const MAX_PAGE: usize = 1000;

impl Page {
    /// The page a request body asks for: its `limit` (an integer in
    /// 1..=[`MAX_PAGE`]) and `after` (a string), each optional (`null` is
    /// absent). Any other field, and any body that is not an object, is
    /// ignored as it always was.
    pub fn of_body(body: &serde_json::Value) -> Result<Page, Error> {
        let bad = |m: String| Error::new(code::BAD_REQUEST, m);
        let mut page = Page::default();
        match body.get("limit") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_PAGE as u64).contains(&n) => page.limit = Some(n as usize),
                _ => {
                    return Err(bad(format!(
                        "limit: expected an integer from 1 to {MAX_PAGE}, got {v}"
                    )))
                }
            },
        }
        match body.get("after") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(a)) => page.after = Some(a.clone()),
            Some(v) => return Err(bad(format!("after: expected a string, got {v}"))),
        }
        Ok(page)
    }
}

/// The caller's environments that have a live link, ordered by name (byte
/// order), within `page`; and the name to ask the next page after, when a
/// `limit` left connected environments out.
/// The workspace's roster comes from memory while no executor of the
/// store was added, removed or changed (`store::roster`): one single-row
/// read per call, not the workspace's every row.
async fn listed(
    state: &AppState,
    caller: &Caller,
    page: &Page,
) -> Result<(Vec<Listed>, Option<String>), Error> {
    let rows = state.store().roster(&caller.workspace).await?;
    let start = match &page.after {
        Some(after) => rows.partition_point(|r| r.name.as_str() <= after.as_str()),
        None => 0,
    };
    let limit = page.limit.unwrap_or(usize::MAX);
    // A replica: the executors other live replicas hold are connected too,
    // described from the handshake their holder wrote into the lease (no
    // channel is opened to list them).
    let elsewhere = match state.cluster() {
        Some(cluster) => Some((cluster, cluster.held_elsewhere(state.store()).await)),
        None => None,
    };
    let mut envs = Vec::new();
    for row in &rows[start..] {
        let entry = if let Some(link) = state.registry().get(&row.exe_id) {
            Listed {
                last_seen_ms: Some(link.last_seen_ms()),
                entry: Entry::Link(link),
                is_default: row.is_default,
            }
        } else if let Some((cluster, held)) = &elsewhere {
            let Some(&epoch) = held.get(&row.exe_id) else {
                continue;
            };
            let described = cluster
                .describe(
                    state.store(),
                    &row.exe_id,
                    &caller.workspace,
                    &row.name,
                    epoch,
                    listing,
                )
                .await;
            match described {
                Some(Described::Open(link)) => Listed {
                    last_seen_ms: Some(link.last_seen_ms()),
                    entry: Entry::Link(link),
                    is_default: row.is_default,
                },
                // Last seen as the holder recorded it.
                Some(Described::Leased(d)) => Listed {
                    last_seen_ms: row.last_seen_at,
                    entry: Entry::Described(d),
                    is_default: row.is_default,
                },
                None => continue,
            }
        } else {
            continue;
        };
        if envs.len() == limit {
            // One more is connected: the page ends before it.
            let next = envs.last().map(|l: &Listed| l.name().to_string());
            return Ok((envs, next));
        }
        envs.push(entry);
    }
    Ok((envs, None))
}

/// The caller's environments that have a live link, as envs/list shows
/// them (MCP's list_environments too).
pub async fn connected_envs(state: &AppState, caller: &Caller) -> Result<Vec<ConnectorEnv>, Error> {
    let (listed, _) = listed(state, caller, &Page::default()).await?;
    Ok(listed
        .iter()
        .filter_map(|l| match &l.entry {
            Entry::Link(link) => Some(env_of(link, l.is_default, l.last_seen_ms)),
            // Read back from the bytes envs/list sends.
            Entry::Described(_) => {
                let mut out = Vec::new();
                write_env(&mut out, l);
                serde_json::from_slice(&out).ok()
            }
        })
        .collect())
}

/// envs/list's answer, `{"envs":[…]}` (with `,"next":"<name>"` when a
/// page's limit left environments out), as JSON in pieces to be sent as
/// they are made, and its length: the same bytes as serializing
/// [`connected_envs`] into an `EnvsListResponse`, but each environment is
/// written from its interned pieces ([`Link::listing`], or a
/// [`Description`]) instead of being built and serialized afresh, and never
/// all at once: a workspace of 10,000 environments is 19 MB of JSON, which
/// as one buffer the allocator kept after each call (BENCHMARKS.md,
/// "Fleet"). Entries are copied into frames of [`FRAME`] bytes: sending
/// each one's interned pieces as frames of their own (40,000 for 10,000
/// environments) was measured slower (BENCHMARKS.md, "envs/list and memory
/// at 30,000").
pub async fn connected_envs_json(
    state: &AppState,
    caller: &Caller,
    page: &Page,
) -> Result<(Vec<Bytes>, usize), Error> {
    let (listed, next) = listed(state, caller, page).await?;
    let mut frames = Vec::new();
    let mut out = Vec::with_capacity(FRAME);
    out.extend_from_slice(b"{\"envs\":[");
    for (i, l) in listed.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_env(&mut out, l);
        if out.len() >= FRAME {
            let full = std::mem::replace(&mut out, Vec::with_capacity(FRAME + 4096));
            frames.push(Bytes::from(full));
        }
    }
    out.push(b']');
    if let Some(next) = next {
        out.extend_from_slice(b",\"next\":");
        let _ = serde_json::to_writer(&mut out, &next);
    }
    out.push(b'}');
    frames.push(Bytes::from(out));
    let len = frames.iter().map(Bytes::len).sum();
    Ok((frames, len))
}

/// The size of a frame of envs/list's answer (~60
/// KiB: below the allocator's threshold for a mapping of its own).
const FRAME: usize = 60 * 1024;

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
fn listing(link: &Link) -> Pieces {
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
fn write_env(out: &mut Vec<u8>, l: &Listed) {
    let (tools, tail) = l.pieces();
    write_head(out, l);
    out.extend_from_slice(tools.as_bytes());
    write_last_seen(out, l);
    out.extend_from_slice(tail.as_bytes());
}

/// An entry up to its tools: `{"name":…,"type":"executor","is_default":…,"tools":`.
fn write_head(out: &mut Vec<u8>, l: &Listed) {
    out.extend_from_slice(b"{\"name\":");
    let _ = serde_json::to_writer(&mut *out, l.name());
    out.extend_from_slice(b",\"type\":\"executor\",\"is_default\":");
    out.extend_from_slice(if l.is_default { b"true" } else { b"false" });
    out.extend_from_slice(b",\"tools\":");
}

/// An entry's `,"last_seen":"…"`, when it has one.
fn write_last_seen(out: &mut Vec<u8>, l: &Listed) {
    if let Some(ms) = l.last_seen_ms {
        out.extend_from_slice(b",\"last_seen\":");
        let _ = serde_json::to_writer(&mut *out, &rfc3339(ms));
    }
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

    fn listed_link(link: &Arc<Link>, is_default: bool, last_seen_ms: Option<i64>) -> Listed {
        Listed {
            entry: Entry::Link(link.clone()),
            is_default,
            last_seen_ms,
        }
    }

    /// A description (an executor another replica holds) is written as its
    /// link would be, and envs/list's frames (zero-copy or not) join into
    /// the same bytes as one writer's.
    #[test]
    fn a_description_lists_as_its_link_would() {
        let link = link_with(
            "far \"away\"",
            serde_json::json!({"executorVersion": "1.2", "platformOs": "linux", "execgate": {
                "policy": {"allowTools": ["read_file"]}}}),
        );
        let described = Listed {
            entry: Entry::Described(Arc::new(Description {
                name: link.name.as_str().into(),
                pieces: listing(&link),
            })),
            is_default: true,
            last_seen_ms: Some(1_700_000_000_000),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_env(&mut a, &described);
        write_env(&mut b, &listed_link(&link, true, Some(1_700_000_000_000)));
        assert_eq!(
            String::from_utf8(a.clone()).unwrap(),
            String::from_utf8(b).unwrap()
        );
        let mut split = Vec::new();
        write_head(&mut split, &described);
        split.extend_from_slice(described.pieces().0.as_bytes());
        write_last_seen(&mut split, &described);
        split.extend_from_slice(described.pieces().1.as_bytes());
        assert_eq!(split, a);
        let env: ConnectorEnv = serde_json::from_slice(&a).unwrap();
        assert_eq!(env.tools.len(), 1);
        assert_eq!(env.name, "far \"away\"");
    }

    #[test]
    fn a_page_takes_only_a_valid_limit_and_after() {
        use serde_json::json;
        assert_eq!(Page::of_body(&json!({})).unwrap(), Page::default());
        assert_eq!(Page::of_body(&json!([1])).unwrap(), Page::default());
        assert_eq!(
            Page::of_body(&json!({"limit": 1000, "after": "e1", "x": 1})).unwrap(),
            Page {
                limit: Some(1000),
                after: Some("e1".into())
            }
        );
        assert_eq!(
            Page::of_body(&json!({"limit": null, "after": null})).unwrap(),
            Page::default()
        );
        for bad in [
            json!({"limit": 0}),
            json!({"limit": 1001}),
            json!({"limit": -1}),
            json!({"limit": 1.5}),
            json!({"limit": "10"}),
            json!({"after": 3}),
        ] {
            let e = Page::of_body(&bad).unwrap_err();
            assert_eq!(e.code, code::BAD_REQUEST, "{bad}");
        }
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
                next: None,
            })
            .unwrap();
            let mut got = b"{\"envs\":[".to_vec();
            for (i, (l, d, seen)) in cases.iter().enumerate() {
                if i > 0 {
                    got.push(b',');
                }
                write_env(&mut got, &listed_link(l, *d, *seen));
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
