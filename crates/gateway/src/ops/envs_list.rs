//! envs/list: the environments a workspace lists (those with a live link
//! on this replica, or held by another live one), kept per workspace while
//! nothing they were built from moved, and the answer rendered as it is
//! sent (MCP's `list_environments` lists the same).
//!
//! Why kept (BENCHMARKS.md, "Session 12: envs/list kept"): building the
//! list looks each of the workspace's executors up in the registry, the
//! leases held elsewhere, the kept channels and the descriptions, and
//! counts the answer's bytes: at 10,000 executors about half of the
//! replica's CPU for the call, as much as writing and sending the 19 MB.
//! A [`Listing`] is reused while the workspace's roster and the leases
//! held elsewhere are the very ones it was built from (the same `Arc`s:
//! `store::roster` and `Cluster::held_elsewhere` keep them while they
//! stand still) and no link was registered or removed, nor a channel to
//! another replica's executor kept or dropped, since (their generations).
//! `last_seen`, which moves without those, is read from each link as the
//! answer is written. A listing keeps each entry's head (name, default
//! flag) rendered, one after the other, and its pieces: writing the answer
//! reads no link or description but for a live `last_seen`, and those
//! reads are done a frame's worth at a time, apart from the copying (at
//! 10,000 the misses on links and names were most of the time spent
//! writing; BENCHMARKS.md, "Session 13"). A link closed but not yet
//! removed is listed, as it was before listings were kept; a description
//! stands for its lease.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use execgate_protocol::connectors::{error_code as code, ConnectorEnv};

use crate::auth::Caller;
use crate::link::peer::{Described, Description, HeldElsewhere, Pieces};
use crate::link::Link;
use crate::ops::environment::{env_of, listing, rfc3339};
use crate::ops::state::AppState;
use crate::ops::Error;
use crate::store::roster::{Roster, RosterEntry};

/// One environment envs/list shows: its link (this replica's, or a channel
/// kept to its holder) or a description of it (an executor another replica
/// holds, [`Described`]), its roster row's default flag and when it was
/// last seen. Its listing pieces are the ones kept on its link or
/// description, which never change once there: its length counted when
/// the listing is built is the length written. 40 bytes; with its head
/// and pieces' index ([`Listing`]), a kept listing of 10,000 is ~1.1 MB.
pub(crate) struct Listed {
    entry: Entry,
    last_seen: LastSeen,
    is_default: bool,
}

enum Entry {
    Link(Arc<Link>),
    Described(Arc<Description>),
}

/// Where an entry's `last_seen` comes from.
enum LastSeen {
    /// The link's, as the entry is written (a kept listing stays fresh).
    /// From this machine's clock, so always within RFC 3339's years: its
    /// length never changes.
    Live,
    /// As the holder recorded it in the roster (a description), or given.
    At(Option<i64>),
}

impl Listed {
    fn name(&self) -> &str {
        match &self.entry {
            Entry::Link(link) => &link.name,
            Entry::Described(d) => &d.name,
        }
    }

    /// `None` for a link whose handshake is not in: its pieces are not
    /// final, so it is not listed yet (a registered link always has one).
    fn new(entry: Entry, is_default: bool, last_seen: LastSeen) -> Option<Listed> {
        if let Entry::Link(link) = &entry {
            // Renders and keeps the link's pieces.
            listing(link);
            link.listing.get()?;
        }
        Some(Listed {
            entry,
            last_seen,
            is_default,
        })
    }

    /// The pieces kept on the link or the description (always there: see
    /// [`Listed::new`]).
    fn pieces(&self) -> Option<&Pieces> {
        match &self.entry {
            Entry::Link(link) => link.listing.get(),
            Entry::Described(d) => Some(&d.pieces),
        }
    }

    fn last_seen_ms(&self) -> Option<i64> {
        match (&self.last_seen, &self.entry) {
            (LastSeen::At(at), _) => *at,
            (LastSeen::Live, Entry::Link(link)) => Some(link.last_seen_ms()),
            (LastSeen::Live, Entry::Described(_)) => None,
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

/// A workspace's connected environments in name order (byte order), and
/// what they were built from.
pub(crate) struct Listing {
    entries: Vec<Listed>,
    /// `ends[i]`: the bytes of entries `0..=i`, each written alone.
    ends: Vec<usize>,
    /// Each entry's head (`{"name":…,"tools":`, [`write_head`]), one after
    /// the other: `heads[head_ends[i - 1]..head_ends[i]]` is entry `i`'s.
    heads: Vec<u8>,
    head_ends: Vec<usize>,
    /// Each entry's pieces, as an index into `pieces` (the distinct ones:
    /// executors alike share them); [`NO_PIECES`] for one without.
    piece_of: Vec<u32>,
    pieces: Vec<Pieces>,
    /// The roster and the leases held elsewhere it was built from: weak,
    /// so as not to keep them, but their allocations stay while a listing
    /// points at them, so another can never take the same address.
    roster: Weak<Vec<RosterEntry>>,
    held: Option<Weak<HeldElsewhere>>,
    generation: u64,
}

impl Listing {
    fn new(
        entries: Vec<Listed>,
        roster: &Roster,
        held: Option<&Arc<HeldElsewhere>>,
        generation: u64,
    ) -> Listing {
        let mut ends = Vec::with_capacity(entries.len());
        let mut heads = Vec::new();
        let mut head_ends = Vec::with_capacity(entries.len());
        let mut piece_of = Vec::with_capacity(entries.len());
        let mut pieces: Vec<Pieces> = Vec::new();
        let mut distinct: HashMap<(*const u8, *const u8), u32> = HashMap::new();
        let (mut count, mut stamps) = (Count(0), Stamps::default());
        for l in &entries {
            match l.pieces() {
                Some(p) => {
                    let at = *distinct
                        .entry((p.0.as_ptr(), p.1.as_ptr()))
                        .or_insert_with(|| {
                            pieces.push(p.clone());
                            (pieces.len() - 1) as u32
                        });
                    piece_of.push(at);
                    let before = heads.len();
                    write_head(&mut heads, l);
                    count.0 += heads.len() - before;
                    write_body(&mut count, p, l.last_seen_ms(), &mut stamps);
                }
                // Never (see `Listed::new`); were it, nothing is written.
                None => piece_of.push(NO_PIECES),
            }
            head_ends.push(heads.len());
            ends.push(count.0);
        }
        Listing {
            entries,
            ends,
            heads,
            head_ends,
            piece_of,
            pieces,
            roster: Arc::downgrade(roster),
            held: held.map(Arc::downgrade),
            generation,
        }
    }

    /// Whether this listing was built from `roster`, `held` and the links
    /// as they are at `generation`.
    fn is_for(&self, roster: &Roster, held: Option<&Arc<HeldElsewhere>>, generation: u64) -> bool {
        let held_same = match (&self.held, held) {
            (None, None) => true,
            (Some(kept), Some(now)) => std::ptr::eq(kept.as_ptr(), Arc::as_ptr(now)),
            _ => false,
        };
        self.generation == generation
            && held_same
            && std::ptr::eq(self.roster.as_ptr(), Arc::as_ptr(roster))
    }

    /// The entries of `page`, and the name to ask the next page after when
    /// its `limit` left connected environments out.
    fn page(&self, page: &Page) -> (Range<usize>, Option<String>) {
        let n = self.entries.len();
        let start = match &page.after {
            Some(after) => self
                .entries
                .partition_point(|l| l.name().as_bytes() <= after.as_bytes()),
            None => 0,
        };
        let end = start
            .saturating_add(page.limit.unwrap_or(usize::MAX))
            .min(n);
        // One more is connected: the page ends before it.
        let next = (end < n && end > start).then(|| self.entries[end - 1].name().to_string());
        (start..end, next)
    }

    /// Entry `i`'s bytes, written alone.
    fn bytes_at(&self, i: usize) -> usize {
        entry_span(&self.ends, i).len()
    }

    /// Writes entry `i`, whose `last_seen` is `last_seen_ms`, from its
    /// kept head and pieces: no look at its link or description.
    fn write_entry(
        &self,
        out: &mut impl Sink,
        i: usize,
        last_seen_ms: Option<i64>,
        stamps: &mut Stamps,
    ) {
        let Some(pieces) = self.pieces.get(self.piece_of[i] as usize) else {
            return;
        };
        out.put(&self.heads[entry_span(&self.head_ends, i)]);
        write_body(out, pieces, last_seen_ms, stamps);
    }

    /// The bytes of `range`'s entries, commas between them included.
    fn bytes_of(&self, range: &Range<usize>) -> usize {
        if range.is_empty() {
            return 0;
        }
        let before = entry_span(&self.ends, range.start).start;
        self.ends[range.end - 1] - before + (range.len() - 1)
    }
}

/// Entry `i`'s span in what `ends` (each entry's end, one after the
/// other) measures.
fn entry_span(ends: &[usize], i: usize) -> Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] };
    start..ends[i]
}

/// Workspaces of fewer executors than this are not kept: they are cheap
/// to list afresh.
const KEEP_FROM: usize = 256;
/// Listings kept at most (one per workspace); past it, all are dropped.
/// A listing holds its links alive: those from before a link came or went
/// are dropped whenever another listing is kept.
const KEPT: usize = 64;

/// The listings kept, by workspace (in the gateway's state).
#[derive(Default)]
pub struct Listings {
    kept: Mutex<HashMap<String, Arc<Listing>>>,
}

/// The caller's workspace's listing: the kept one while it stands (see
/// the module's header), else built afresh.
async fn listing_of(state: &AppState, workspace: &str) -> Result<Arc<Listing>, Error> {
    // Read before what the listing is built from: a change meanwhile
    // leaves the listing with an older generation, rebuilt next time. Both
    // only grow, so their sum moves whenever either does.
    let generation =
        state.registry().generation() + state.cluster().map_or(0, |c| c.channels_generation());
    let roster = state.store().roster(workspace).await?;
    // A replica: the executors other live replicas hold are connected too,
    // described from the handshake their holder wrote into the lease (no
    // channel is opened to list them).
    let held = match state.cluster() {
        Some(cluster) => Some(cluster.held_elsewhere(state.store()).await),
        None => None,
    };
    let listings = &state.listings().kept;
    if let Some(kept) = listings.lock().unwrap().get(workspace) {
        if kept.is_for(&roster, held.as_ref(), generation) {
            return Ok(kept.clone());
        }
    }
    let (entries, complete) = build(state, workspace, &roster, held.as_deref()).await;
    let listing = Arc::new(Listing::new(entries, &roster, held.as_ref(), generation));
    // One left out because its lease could not be read is asked again
    // next time, not kept out.
    if complete && roster.len() >= KEEP_FROM {
        let mut kept = listings.lock().unwrap();
        // Listings from before a link came or went are rebuilt at their
        // next use anyway: dropped now, they do not keep the links of
        // executors that left alive until then.
        kept.retain(|_, l| l.generation == generation);
        if kept.len() >= KEPT {
            kept.clear();
        }
        kept.insert(workspace.to_string(), listing.clone());
    }
    Ok(listing)
}

/// The workspace's environments that have a live link, here or on
/// another live replica, in the roster's order; and whether every one
/// held elsewhere could be described.
async fn build(
    state: &AppState,
    workspace: &str,
    roster: &Roster,
    held: Option<&HeldElsewhere>,
) -> (Vec<Listed>, bool) {
    let cluster = state.cluster();
    let mut complete = true;
    let mut envs = Vec::new();
    for row in roster.iter() {
        if let Some(link) = state.registry().get(&row.exe_id) {
            envs.extend(Listed::new(
                Entry::Link(link),
                row.is_default,
                LastSeen::Live,
            ));
            continue;
        }
        let (Some(cluster), Some(held)) = (cluster, held) else {
            continue;
        };
        let Some(&epoch) = held.get(&row.exe_id) else {
            continue;
        };
        let described = cluster
            .describe(
                state.store(),
                &row.exe_id,
                workspace,
                &row.name,
                epoch,
                listing,
            )
            .await;
        envs.extend(match described {
            Some(Described::Open(link)) => {
                Listed::new(Entry::Link(link), row.is_default, LastSeen::Live)
            }
            // Last seen as the holder recorded it.
            Some(Described::Leased(d)) => Listed::new(
                Entry::Described(d),
                row.is_default,
                LastSeen::At(row.last_seen_at),
            ),
            None => {
                complete = false;
                continue;
            }
        });
    }
    (envs, complete)
}

/// The caller's environments that have a live link, as envs/list shows
/// them (MCP's list_environments too).
pub async fn connected_envs(state: &AppState, caller: &Caller) -> Result<Vec<ConnectorEnv>, Error> {
    let listing = listing_of(state, &caller.workspace).await?;
    Ok(listing
        .entries
        .iter()
        .filter_map(|l| match &l.entry {
            Entry::Link(link) => Some(env_of(link, l.is_default, l.last_seen_ms())),
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
    let listing = listing_of(state, &caller.workspace).await?;
    let (range, next) = listing.page(page);
    Ok(EnvsAnswer::new(listing, range, next))
}

/// envs/list's answer, rendered as it is sent: each [`EnvsAnswer::next`]
/// copies the next environments into a frame of about [`FRAME`] bytes.
/// Its length is summed up front from the lengths its [`Listing`] counted
/// with the same writer, so the answer keeps its `Content-Length`.
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
    listing: Arc<Listing>,
    /// The entries not yet written.
    left_entries: Range<usize>,
    /// The page's `next`, written after the last environment.
    next: Option<String>,
    /// Whether the opening `{"envs":[` went out, and the closing.
    opened: bool,
    closed: bool,
    /// Bytes not yet returned.
    left: usize,
    stamps: Stamps,
    /// The `last_seen`s of the frame being written (kept for its buffer).
    seen: Vec<Option<i64>>,
}

impl EnvsAnswer {
    fn new(listing: Arc<Listing>, range: Range<usize>, next: Option<String>) -> EnvsAnswer {
        // Counted from the listing's lengths: no pass over the entries.
        let mut count = Count(0);
        count.put(b"{\"envs\":[");
        count.0 += listing.bytes_of(&range);
        write_end(&mut count, next.as_deref());
        EnvsAnswer {
            listing,
            left_entries: range,
            next,
            opened: false,
            closed: false,
            left: count.0,
            stamps: Stamps::default(),
            seen: Vec::new(),
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
        // The frame's entries, from their counted lengths: whole ones, up
        // to the first that reaches FRAME bytes.
        let listing = &*self.listing;
        let (start, mut size) = (self.left_entries.start, 0);
        let mut end = start;
        while end < self.left_entries.end && size < FRAME {
            size += listing.bytes_at(end) + 1;
            end += 1;
        }
        // Their `last_seen`s first, in a loop of its own: each live one is
        // a load from its link, which is rarely in the cache. Loaded one
        // after the other here they overlap; loaded between copies of the
        // entries, each stalled the writing (most of envs/list's time at
        // 10,000 before, BENCHMARKS.md, "Session 13").
        self.seen.clear();
        self.seen
            .extend(listing.entries[start..end].iter().map(Listed::last_seen_ms));
        let mut out = Vec::with_capacity(size + 64);
        if !self.opened {
            out.extend_from_slice(b"{\"envs\":[");
        }
        for (i, seen) in (start..end).zip(&self.seen) {
            if self.opened {
                out.push(b',');
            }
            self.opened = true;
            listing.write_entry(&mut out, i, *seen, &mut self.stamps);
        }
        self.left_entries.start = end;
        self.opened = true;
        if self.left_entries.is_empty() {
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

/// `Listing::piece_of` of an entry without pieces.
const NO_PIECES: u32 = u32::MAX;

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

/// Writes one environment as [`env_of`] would serialize (the same fields,
/// in the same order).
fn write_env(out: &mut impl Sink, l: &Listed, stamps: &mut Stamps) {
    // Never without (see `Listed::new`); were it, counted as written.
    let Some(pieces) = l.pieces() else {
        return;
    };
    write_head(out, l);
    write_body(out, pieces, l.last_seen_ms(), stamps);
}

/// An entry after its head: its tools, `,"last_seen":"…"` when it has
/// one, and the end of its entry.
fn write_body(
    out: &mut impl Sink,
    pieces: &Pieces,
    last_seen_ms: Option<i64>,
    stamps: &mut Stamps,
) {
    let (tools, tail) = pieces;
    out.put(tools.as_bytes());
    if let Some(ms) = last_seen_ms {
        out.put(b",\"last_seen\":");
        stamps.put(out, ms);
    }
    out.put(tail.as_bytes());
}

/// An entry up to its tools: `{"name":…,"type":"executor","is_default":…,"tools":`.
fn write_head(out: &mut impl Sink, l: &Listed) {
    let name = l.name();
    // A name with nothing to escape (every name the store takes: letters,
    // digits, `-`, `_`, `.`) goes as it is: serde's escaping was a third
    // of writing the answer.
    if name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.put(b"{\"name\":\"");
        out.put(name.as_bytes());
        out.put(b"\",\"type\":\"executor\",\"is_default\":");
    } else {
        out.put(b"{\"name\":");
        let _ = serde_json::to_writer(Writer(&mut *out), name);
        out.put(b",\"type\":\"executor\",\"is_default\":");
    }
    out.put(if l.is_default { b"true" } else { b"false" });
    out.put(b",\"tools\":");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshaken link of executor `exe_id` whose executor announced
    /// `info` (its `environmentInfo`).
    fn link_of(exe_id: &str, name: &str, info: serde_json::Value) -> Arc<Link> {
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        let link = Link::new(exe_id.into(), "w1".into(), name.into(), tx);
        let info: execgate_protocol::exec::EnvironmentInfo = serde_json::from_value(info).unwrap();
        link.set_handshake(crate::link::Handshake {
            session_id: "s".into(),
            ext: info.ext(),
            info,
        });
        link
    }

    fn link_with(name: &str, info: serde_json::Value) -> Arc<Link> {
        link_of("exe_1", name, info)
    }

    /// An execgate executor without policy or custom tools.
    fn plain_info() -> serde_json::Value {
        serde_json::json!({"executorVersion": "1.2", "platformOs": "linux"})
    }

    fn listed_link(link: &Arc<Link>, is_default: bool, last_seen_ms: Option<i64>) -> Listed {
        Listed::new(
            Entry::Link(link.clone()),
            is_default,
            LastSeen::At(last_seen_ms),
        )
        .unwrap()
    }

    /// A listing of `entries` (built from nothing in particular).
    fn listing_of_entries(entries: Vec<Listed>) -> Arc<Listing> {
        Arc::new(Listing::new(entries, &Roster::default(), None, 0))
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
            LastSeen::At(Some(1_700_000_000_000)),
        )
        .unwrap();
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
        write_body(
            &mut split,
            described.pieces().unwrap(),
            described.last_seen_ms(),
            &mut Stamps::default(),
        );
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
        let plain = link_with("laptop", plain_info());
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
        // Names on both sides of the fast path: as serde writes them.
        for name in [
            "a-b_c.d",
            "del\u{7f}x",
            "tab\tx",
            "back\\slash",
            "\u{e9}t\u{e9}",
            "nul\0",
        ] {
            let link = link_with(name, serde_json::json!({}));
            let mut got = Vec::new();
            write_env(
                &mut got,
                &listed_link(&link, false, None),
                &mut Stamps::default(),
            );
            let expected = serde_json::to_vec(&env_of(&link, false, None)).unwrap();
            assert_eq!(got, expected, "{name:?}");
        }
        // Links alike share their pieces.
        let twin = link_with("other", plain_info());
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
        let plain = link_with("laptop", plain_info());
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
            let listed: Vec<Listed> = cases
                .iter()
                .map(|(l, d, seen)| listed_link(l, *d, *seen))
                .collect();
            let listing = listing_of_entries(listed);
            let all = 0..listing.entries.len();
            let mut answer = EnvsAnswer::new(listing, all, next);
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

    fn link_for(exe_id: &str, name: &str) -> Arc<Link> {
        link_of(exe_id, name, plain_info())
    }

    /// A page of a listing is the entries after `after` (byte order), at
    /// most `limit`, with `next` only when one more is connected; its
    /// answer is serde's bytes for that page, as long as counted.
    /// An entry is 40 bytes (the module's memory claim), and a link whose
    /// handshake is not in is not listed.
    #[test]
    fn an_entry_is_small_and_only_of_a_handshaken_link() {
        assert!(std::mem::size_of::<Listed>() <= 40);
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        let bare = Link::new("exe_0".into(), "w1".into(), "e0".into(), tx);
        assert!(Listed::new(Entry::Link(bare), false, LastSeen::Live).is_none());
        assert!(Listed::new(Entry::Link(link_for("exe_1", "e1")), false, LastSeen::Live).is_some());
    }

    #[test]
    fn a_page_is_a_slice_of_the_listing() {
        let links: Vec<_> = (0..10)
            .map(|i| link_for(&format!("exe_{i}"), &format!("e{i}")))
            .collect();
        let listing = listing_of_entries(
            links
                .iter()
                .map(|l| listed_link(l, false, Some(1_700_000_000_000)))
                .collect(),
        );
        let page = |after: Option<&str>, limit: Option<usize>| {
            listing.page(&Page {
                limit,
                after: after.map(String::from),
            })
        };
        assert_eq!(page(None, None), (0..10, None));
        assert_eq!(page(None, Some(3)), (0..3, Some("e2".into())));
        assert_eq!(page(Some("e2"), Some(3)), (3..6, Some("e5".into())));
        assert_eq!(page(Some("e6"), Some(3)), (7..10, None));
        assert_eq!(page(Some("e8"), Some(3)), (9..10, None));
        assert_eq!(page(Some("e9"), Some(3)), (10..10, None));
        assert_eq!(page(Some("zz"), None), (10..10, None));
        assert_eq!(page(Some(""), Some(10)), (0..10, None));
        assert_eq!(page(Some("e10"), Some(1)), (2..3, Some("e2".into())));
        for (after, limit) in [
            (None, Some(3)),
            (Some("e2"), Some(3)),
            (Some("e8"), Some(5)),
        ] {
            let (range, next) = page(after, limit);
            let expected = serde_json::to_vec(&execgate_protocol::connectors::EnvsListResponse {
                envs: links[range.clone()]
                    .iter()
                    .map(|l| env_of(l, false, Some(1_700_000_000_000)))
                    .collect(),
                next: next.clone(),
            })
            .unwrap();
            let answer = EnvsAnswer::new(listing.clone(), range, next);
            assert_eq!(answer.len(), expected.len());
            assert_eq!(answer.flatten().collect::<Vec<u8>>(), expected);
        }
    }

    /// A workspace's listing is kept while nothing it was built from moved,
    /// and built afresh once something did: a link registered or removed,
    /// an executor made default or removed from the store.
    /// `last_seen` is the link's as the answer is written.
    #[tokio::test]
    async fn a_kept_listing_follows_every_change() {
        let (_dir, state) = crate::ops::state::test_state(|_| {}).await;
        let caller = Caller {
            workspace: "w1".into(),
            user_id: None,
        };
        let mut ids = Vec::new();
        for i in 0..KEEP_FROM {
            let (id, _) = state
                .store()
                .add_executor("w1", &format!("e{i:03}"), false)
                .await
                .unwrap();
            ids.push(id);
        }
        let connect = |i: usize| {
            let link = link_for(&ids[i], &format!("e{i:03}"));
            state.registry().insert(link.clone());
            link
        };
        // Every other one connected.
        let _links: Vec<_> = (0..KEEP_FROM).step_by(2).map(connect).collect();
        let listed = || async { listing_of(&state, "w1").await.unwrap() };
        let names = |l: &Listing| -> Vec<String> {
            l.entries.iter().map(|e| e.name().to_string()).collect()
        };
        let first = listed().await;
        assert_eq!(first.entries.len(), KEEP_FROM / 2);
        assert!(Arc::ptr_eq(&first, &listed().await), "kept");

        // A stale listing of another workspace, from before the change
        // below: dropped when the next listing is kept.
        let stale = Arc::new(Listing::new(Vec::new(), &Roster::default(), None, 0));
        state
            .listings()
            .kept
            .lock()
            .unwrap()
            .insert("w2".into(), stale);
        // A link registered.
        let one = connect(1);
        let now = listed().await;
        assert!(!Arc::ptr_eq(&first, &now));
        assert_eq!(names(&now)[..3], ["e000", "e001", "e002"]);
        assert!(!state.listings().kept.lock().unwrap().contains_key("w2"));
        assert!(Arc::ptr_eq(&now, &listed().await), "kept again");
        // Its last_seen, read as written: a kept listing writes each
        // link's as it is then, not as it was when the listing was built.
        let e001 = &now.entries[1];
        assert_eq!(e001.last_seen_ms(), Some(one.last_seen_ms()));
        one.set_last_seen_ms(1_700_000_000_000);
        let answer = connected_envs_json(&state, &caller, &Page::default())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&now, &listed().await), "still kept");
        let v: serde_json::Value =
            serde_json::from_slice(&answer.flatten().collect::<Vec<u8>>()).unwrap();
        assert_eq!(v["envs"][1]["name"], "e001");
        assert_eq!(v["envs"][1]["last_seen"], "2023-11-14T22:13:20Z");
        // Closed: listed until removed, as a link in the registry always
        // was; then removed.
        one.close("gone");
        assert!(Arc::ptr_eq(&now, &listed().await));
        state.registry().remove_if_same(&one);
        let removed = listed().await;
        assert!(!Arc::ptr_eq(&now, &removed));
        assert_eq!(names(&removed), names(&first));
        // Made default in the store.
        state.store().set_default_executor(&ids[2]).await.unwrap();
        let default = listed().await;
        assert!(!Arc::ptr_eq(&removed, &default));
        assert!(default.entries[1].is_default && !default.entries[0].is_default);
        let envs = connected_envs(&state, &caller).await.unwrap();
        assert!(envs[1].is_default && envs[1].name == "e002");
        // Removed from the store, its link still up: not listed.
        state.store().remove_executor("w1", "e000").await.unwrap();
        let gone = listed().await;
        assert_eq!(names(&gone)[0], "e002");
        assert_eq!(gone.entries.len(), KEEP_FROM / 2 - 1);
        // The answer of the kept listing.
        let answer = connected_envs_json(&state, &caller, &Page::default())
            .await
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&answer.flatten().collect::<Vec<u8>>()).unwrap();
        assert_eq!(v["envs"].as_array().unwrap().len(), KEEP_FROM / 2 - 1);
    }
}
