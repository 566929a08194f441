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
/// holds, [`Described`]), its roster row's default flag, when it was last
/// seen (Unix ms), and its listing pieces, taken once (envs/list counts
/// its answer's length before it writes it: both see the same pieces).
struct Listed {
    entry: Entry,
    is_default: bool,
    last_seen_ms: Option<i64>,
    pieces: Pieces,
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

    fn new(entry: Entry, is_default: bool, last_seen_ms: Option<i64>) -> Listed {
        let pieces = match &entry {
            Entry::Link(link) => listing(link),
            Entry::Described(d) => d.pieces.clone(),
        };
        Listed {
            entry,
            is_default,
            last_seen_ms,
            pieces,
        }
    }

    fn pieces(&self) -> &Pieces {
        &self.pieces
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
            let seen = link.last_seen_ms();
            Listed::new(Entry::Link(link), row.is_default, Some(seen))
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
                Some(Described::Open(link)) => {
                    let seen = link.last_seen_ms();
                    Listed::new(Entry::Link(link), row.is_default, Some(seen))
                }
                // Last seen as the holder recorded it.
                Some(Described::Leased(d)) => {
                    Listed::new(Entry::Described(d), row.is_default, row.last_seen_at)
                }
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
                write_env(&mut out, l, &mut Stamps::default());
                serde_json::from_slice(&out).ok()
            }
        })
        .collect())
}

/// envs/list's answer, `{"envs":[…]}` (with `,"next":"<name>"` when a
/// page's limit left environments out): the same bytes as serializing
/// [`connected_envs`] into an `EnvsListResponse`, but each environment is
/// written from its interned pieces ([`Link::listing`], or a
/// [`Description`]) instead of being built and serialized afresh, and
/// never all at once: [`EnvsAnswer`] renders it frame by frame as it is
/// sent.
pub async fn connected_envs_json(
    state: &AppState,
    caller: &Caller,
    page: &Page,
) -> Result<EnvsAnswer, Error> {
    let (listed, next) = listed(state, caller, page).await?;
    Ok(EnvsAnswer::new(listed, next))
}

/// envs/list's answer, rendered as it is sent: each [`EnvsAnswer::next`]
/// copies the next environments into a frame of about [`FRAME`] bytes.
/// Its length is counted up front (the same writer into a counter), so
/// the answer keeps its `Content-Length`.
///
/// Why frame by frame (BENCHMARKS.md, "envs/list of 10,000, rendered as
/// sent"): a workspace of 10,000 environments is 19 MB of JSON. Rendered
/// whole before the first byte went out (as 320 frames), each call
/// faulted in 19 MB of fresh pages (the allocator returns the freed
/// frames to the system between calls) and left the replica's RSS higher
/// after listing; rendered as sent, hyper holds a few frames at a time and
/// the allocator reuses the same, warm ones. Entries are copied into
/// frames: sending each one's interned pieces as frames of their own
/// (40,000 for 10,000 environments) was measured slower (BENCHMARKS.md,
/// "envs/list and memory at 30,000").
pub struct EnvsAnswer {
    listed: std::vec::IntoIter<Listed>,
    /// The page's `next`, written after the last environment.
    next: Option<String>,
    /// Whether the opening `{"envs":[` went out, and the closing.
    opened: bool,
    closed: bool,
    /// Bytes not yet returned.
    left: usize,
    stamps: Stamps,
}

impl EnvsAnswer {
    fn new(listed: Vec<Listed>, next: Option<String>) -> EnvsAnswer {
        let mut count = Count(0);
        let mut stamps = Stamps::default();
        count.put(b"{\"envs\":[");
        for (i, l) in listed.iter().enumerate() {
            if i > 0 {
                count.put(b",");
            }
            write_env(&mut count, l, &mut stamps);
        }
        write_end(&mut count, next.as_deref());
        EnvsAnswer {
            listed: listed.into_iter(),
            next,
            opened: false,
            closed: false,
            left: count.0,
            stamps,
        }
    }

    /// The bytes not yet returned by [`EnvsAnswer::next`]: the whole
    /// answer's length before the first.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl Iterator for EnvsAnswer {
    type Item = Bytes;

    /// The next frame: whole environments, about [`FRAME`] bytes.
    fn next(&mut self) -> Option<Bytes> {
        if self.closed {
            return None;
        }
        let mut out = Vec::with_capacity(FRAME + 4096);
        if !self.opened {
            out.extend_from_slice(b"{\"envs\":[");
        }
        for l in self.listed.by_ref() {
            if self.opened {
                out.push(b',');
            }
            self.opened = true;
            write_env(&mut out, &l, &mut self.stamps);
            if out.len() >= FRAME {
                break;
            }
        }
        self.opened = true;
        if self.listed.len() == 0 {
            write_end(&mut out, self.next.as_deref());
            self.closed = true;
        }
        // The count and the frames come from the same writer; a mismatch
        // would be a bug here, and hyper would end the connection.
        debug_assert!(
            out.len() <= self.left,
            "envs/list: frames past the counted length"
        );
        self.left = self.left.saturating_sub(out.len());
        Some(Bytes::from(out))
    }
}

/// The end of the answer: `]`, the page's `,"next":…`, `}`.
fn write_end(out: &mut impl Sink, next: Option<&str>) {
    out.put(b"]");
    if let Some(next) = next {
        out.put(b",\"next\":");
        let _ = serde_json::to_writer(Writer(&mut *out), next);
    }
    out.put(b"}");
}

/// Where envs/list is written: a buffer, or a [`Count`] of its bytes.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts what would be written.
struct Count(usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// A [`Sink`] as an `io::Write`, for serde_json's string escaping.
struct Writer<'a, S: Sink + ?Sized>(&'a mut S);

impl<S: Sink + ?Sized> std::io::Write for Writer<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.put(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of a frame of envs/list's answer (~60
/// KiB: below the allocator's threshold for a mapping of its own).
const FRAME: usize = 60 * 1024;

/// `last_seen` as JSON (`"2023-11-14T22:13:20Z"`), the last second's kept:
/// links seen in the same second (most of them, pinged on a common grid)
/// share it.
#[derive(Default)]
struct Stamps {
    last: Option<(i64, [u8; 22])>,
}

impl Stamps {
    fn put(&mut self, out: &mut impl Sink, ms: i64) {
        let secs = ms.div_euclid(1000);
        if let Some((at, text)) = &self.last {
            if *at == secs {
                return out.put(text);
            }
        }
        match rfc3339_json(secs) {
            Some(text) => {
                out.put(&text);
                self.last = Some((secs, text));
            }
            // Out of RFC 3339's years: as `rfc3339` has it.
            None => {
                let _ = serde_json::to_writer(Writer(&mut *out), &rfc3339(ms));
            }
        }
    }
}

/// `secs` (Unix) as `"YYYY-MM-DDTHH:MM:SSZ"` with its quotes, the bytes
/// serde writes for [`rfc3339`]'s string; `None` outside years 0 to 9999,
/// which RFC 3339 cannot write.
fn rfc3339_json(secs: i64) -> Option<[u8; 22]> {
    // Days to a civil date (proleptic Gregorian; H. Hinnant's algorithm).
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut t = *b"\"0000-00-00T00:00:00Z\"";
    let mut digits = |at: usize, n: i64, width: usize| {
        let mut n = n;
        for i in (0..width).rev() {
            t[at + i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    digits(1, year, 4);
    digits(6, month, 2);
    digits(9, day, 2);
    digits(12, rem / 3600, 2);
    digits(15, rem / 60 % 60, 2);
    digits(18, rem % 60, 2);
    Some(t)
}

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
fn write_env(out: &mut impl Sink, l: &Listed, stamps: &mut Stamps) {
    let (tools, tail) = l.pieces();
    write_head(out, l);
    out.put(tools.as_bytes());
    write_last_seen(out, l, stamps);
    out.put(tail.as_bytes());
}

/// An entry up to its tools: `{"name":…,"type":"executor","is_default":…,"tools":`.
fn write_head(out: &mut impl Sink, l: &Listed) {
    out.put(b"{\"name\":");
    let _ = serde_json::to_writer(Writer(&mut *out), l.name());
    out.put(b",\"type\":\"executor\",\"is_default\":");
    out.put(if l.is_default { b"true" } else { b"false" });
    out.put(b",\"tools\":");
}

/// An entry's `,"last_seen":"…"`, when it has one.
fn write_last_seen(out: &mut impl Sink, l: &Listed, stamps: &mut Stamps) {
    if let Some(ms) = l.last_seen_ms {
        out.put(b",\"last_seen\":");
        stamps.put(out, ms);
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
        Listed::new(Entry::Link(link.clone()), is_default, last_seen_ms)
    }

    /// A description (an executor another replica holds) is written as its
    /// link would be, and envs/list's frames join into
    /// the same bytes as one writer's.
    #[test]
    fn a_description_lists_as_its_link_would() {
        let link = link_with(
            "far \"away\"",
            serde_json::json!({"executorVersion": "1.2", "platformOs": "linux", "execgate": {
                "policy": {"allowTools": ["read_file"]}}}),
        );
        let described = Listed::new(
            Entry::Described(Arc::new(Description {
                name: link.name.as_str().into(),
                pieces: listing(&link),
            })),
            true,
            Some(1_700_000_000_000),
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_env(&mut a, &described, &mut Stamps::default());
        write_env(
            &mut b,
            &listed_link(&link, true, Some(1_700_000_000_000)),
            &mut Stamps::default(),
        );
        assert_eq!(
            String::from_utf8(a.clone()).unwrap(),
            String::from_utf8(b).unwrap()
        );
        let mut split = Vec::new();
        write_head(&mut split, &described);
        split.extend_from_slice(described.pieces().0.as_bytes());
        write_last_seen(&mut split, &described, &mut Stamps::default());
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
                write_env(&mut got, &listed_link(l, *d, *seen), &mut Stamps::default());
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

    /// The last_seen writer gives the bytes serde gives for `rfc3339`'s
    /// string, in and out of RFC 3339's years, kept second or not.
    #[test]
    fn last_seen_is_written_as_serde_writes_rfc3339() {
        let mut cases: Vec<i64> = vec![
            0,
            -1,
            999,
            -62_167_219_200_000, // 0000-01-01T00:00:00Z
            -62_167_219_200_001, // year -1: none
            253_402_300_799_999, // 9999-12-31T23:59:59Z
            253_402_300_800_000, // year 10000: none
            951_782_400_000,     // 2000-02-29
            4_107_542_400_000,   // 2100-03-01
            1_700_000_000_123,
            i64::MAX,
            i64::MIN,
        ];
        // Every day of 1969 to 2105, at a time of day that moves.
        let mut ms = -86_400_000 * 365;
        while ms < 4_260_000_000_000 {
            cases.push(ms);
            ms += 86_400_000 + 3_601_001;
        }
        let mut stamps = Stamps::default();
        for ms in cases {
            let expected = serde_json::to_vec(&rfc3339(ms)).unwrap();
            for _ in 0..2 {
                let mut got = Vec::new();
                stamps.put(&mut got, ms);
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(expected.clone()).unwrap(),
                    "{ms}"
                );
                let mut fresh = Vec::new();
                Stamps::default().put(&mut fresh, ms);
                assert_eq!(fresh, expected, "{ms}");
            }
        }
    }

    /// envs/list's answer, rendered frame by frame, joins into the bytes
    /// serde gives for the same environments (with a page's `next` or
    /// without, empty or past several frames), its frames are of about
    /// [`FRAME`] bytes, and its counted length is exact at every step.
    #[test]
    fn the_answer_frame_by_frame_is_serde_s_and_as_long_as_counted() {
        let plain = link_with(
            "laptop",
            serde_json::json!({"executorVersion": "1.2", "platformOs": "linux"}),
        );
        let limited = link_with(
            "odd \"name\" \u{e9}",
            serde_json::json!({"executorVersion": "1.2", "platformOs": "linux", "execgate": {
                "policy": {"root": "/srv", "allowTools": ["read_file"], "readOnly": true}}}),
        );
        for (n, next) in [
            (0, None),
            (1, None),
            (3, Some("e \"2\"".to_string())),
            (2_000, None),
            (2_001, Some("laptop".to_string())),
        ] {
            let cases: Vec<(&Arc<Link>, bool, Option<i64>)> = (0..n)
                .map(|i| {
                    let link = if i % 3 == 0 { &limited } else { &plain };
                    let seen = (i % 5 != 0).then_some(1_700_000_000_000 + 700 * i as i64);
                    (link, i == 1, seen)
                })
                .collect();
            let expected = serde_json::to_vec(&execgate_protocol::connectors::EnvsListResponse {
                envs: cases
                    .iter()
                    .map(|(l, d, seen)| env_of(l, *d, *seen))
                    .collect(),
                next: next.clone(),
            })
            .unwrap();
            let listed = cases
                .iter()
                .map(|(l, d, seen)| listed_link(l, *d, *seen))
                .collect();
            let mut answer = EnvsAnswer::new(listed, next);
            assert_eq!(answer.len(), expected.len(), "{n}");
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            while let Some(frame) = answer.next() {
                got.extend_from_slice(&frame);
                sizes.push(frame.len());
                assert_eq!(answer.len(), expected.len() - got.len());
            }
            assert!(answer.is_empty() && answer.next().is_none());
            // Whole environments to at least FRAME bytes, but the last.
            let (last, full) = sizes.split_last().unwrap();
            assert!(
                full.iter().all(|s| (FRAME..FRAME + 4096).contains(s)),
                "{sizes:?}"
            );
            assert!(*last < FRAME + 4096);
            assert_eq!(sizes.len() > 1, n >= 2_000, "{n}: {sizes:?}");
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }
}
