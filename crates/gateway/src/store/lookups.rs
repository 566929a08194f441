//! The reads every connectors call makes — proxy token → grant, and
//! (workspace, environment name) → executor row — kept in memory until the
//! database changes.
//!
//! **Why.** sqlx runs each SQLite query on its connection's worker thread,
//! so one query is two cross-thread hand-offs (each ~100 µs on this kind of
//! VM) on the hot path of every call, and a call made two of them.
//!
//! **Why it is exact.** Every commit, by this gateway or by another process
//! on the same data dir (`execgate admin token revoke`), writes the WAL file
//! (or, at a checkpoint, the database file), which changes that file's size
//! or modification time. An entry is used only while the files'
//! [`Generation`] is the one it was read under, and the generation is taken
//! *before* the query: a commit that races with the query leaves the entry
//! stale, never wrongly fresh. So a revocation still takes effect on the
//! next request. The one blind spot: file times tick at the kernel's clock
//! granularity (a few ms), and two commits within one tick that leave the
//! WAL the same size look alike; entries therefore also expire after
//! [`MAX_AGE`], which bounds that case.
//!
//! The gateway's own writes (a session row, an executor's last-seen time)
//! change the generation too, and simply empty the cache's usefulness for
//! the next read: correctness never depends on who wrote. The audit log,
//! written after every call, is in another file (`audit.db`) for this
//! reason: in `execgate.db` it emptied the cache for every next call.

//! **On PostgreSQL** there are no files to watch. The generation is
//! instead an epoch that this process bumps after each of its own writes
//! that change these lookups, and that the listener of other replicas'
//! hints (`store::invalidate`) bumps for each hint it receives (and on each
//! reconnect, when hints may have been missed), together with the current
//! [`MAX_AGE`] period: an entry is used only within the period it was read
//! in, so a missed hint is bounded by [`MAX_AGE`] as well. A hint drops
//! every entry (revocations are rare; a finer scheme would have to key
//! versions per entry to stay race-free, as the generation taken before
//! the query is).

//!
//! **When the store cannot be reached** (PostgreSQL stopped, the network
//! gone), a proxy token accepted, or an executor row read, within the last
//! [`OUTAGE_GRACE`] keeps being answered from a second cache of the last
//! good answers, so calls on links this gateway holds go on; anything else
//! is `StoreError::Unavailable` (503 `store_unavailable`). Any hint but
//! "anything" (a reconnect) empties that cache, so a revocation heard
//! before the outage is never undone by it. While the store is known down,
//! one caller at a time probes it (with a short timeout) and the others
//! answer at once without waiting for a connection; the first read that
//! succeeds ends the outage.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::{ExecutorRow, TokenGrant};

/// Upper bound on an entry's life whatever the files say (see the module
/// docs).
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Entries per cache; a flood of random tokens cannot grow it further.
const CAPACITY: u64 = 10_000;
/// How long a last good answer serves while the store cannot be reached.
pub const OUTAGE_GRACE: Duration = Duration::from_secs(60);
/// After a failed read, how long before the next caller probes the store.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long a probe of a store known down may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long any hot-path read may wait for the store before it counts as
/// down (and the last good answers serve).
pub const READ_TIMEOUT: Duration = PROBE_TIMEOUT;

/// The state of the database files: size and modification time of the
/// database and of its WAL (SQLite); the epoch and the [`MAX_AGE`] period
/// (PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Generation([(u64, u128); 2]);

enum Source {
    /// SQLite: `execgate.db` and its WAL.
    Files { db: PathBuf, wal: PathBuf },
    /// PostgreSQL: bumped by writes and hints.
    Epoch { epoch: AtomicU64, start: Instant },
}

pub(crate) struct Lookups {
    source: Source,
    /// Hints of changes (see `Store::changes`).
    changes: tokio::sync::broadcast::Sender<String>,
    /// The task listening for other replicas' hints (PostgreSQL).
    listener: Mutex<Option<tokio::task::AbortHandle>>,
    /// Keyed by the token's SHA-256 (hex): no raw token is kept.
    tokens: moka::sync::Cache<String, (Generation, Option<TokenGrant>)>,
    executors: moka::sync::Cache<(String, String), (Generation, Option<ExecutorRow>)>,
    /// The last good answers, for an outage of the store (module docs).
    last_tokens: moka::sync::Cache<String, TokenGrant>,
    last_executors: moka::sync::Cache<(String, String), ExecutorRow>,
    /// 0 while the store answers; else until when (Unix ms) callers do not
    /// try it (one caller, the prober, moves it on and tries).
    down_until: AtomicI64,
}

/// What a lookup should do about the store now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Read it as usual.
    Read,
    /// It is known down: read with [`PROBE_TIMEOUT`].
    Probe,
    /// It is known down and another caller probes it: do not read.
    Skip,
}

impl Lookups {
    /// Keyed on the files of SQLite database `db`.
    pub fn files(db: &Path) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Self::with(Source::Files {
            db: db.to_owned(),
            wal: PathBuf::from(wal),
        })
    }

    /// Keyed on an epoch that writes and hints bump (PostgreSQL).
    pub fn notified() -> Self {
        Self::with(Source::Epoch {
            epoch: AtomicU64::new(0),
            start: Instant::now(),
        })
    }

    fn with(source: Source) -> Self {
        Lookups {
            source,
            changes: tokio::sync::broadcast::channel(256).0,
            listener: Mutex::new(None),
            tokens: cache(),
            executors: cache(),
            last_tokens: last_good(),
            last_executors: last_good(),
            down_until: AtomicI64::new(0),
        }
    }

    /// Whether to read the store now (see [`Attempt`]).
    pub fn attempt(&self, now_ms: i64) -> Attempt {
        let until = self.down_until.load(Ordering::Acquire);
        if until == 0 {
            return Attempt::Read;
        }
        if now_ms < until {
            return Attempt::Skip;
        }
        let next = now_ms + PROBE_TIMEOUT.as_millis() as i64;
        match self
            .down_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Attempt::Probe,
            Err(_) => Attempt::Skip,
        }
    }

    /// A read of the store succeeded: it is up.
    pub fn store_up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Release);
            tracing::info!("the store answers again");
        }
    }

    /// A read of the store failed for want of the store.
    pub fn store_down(&self, now_ms: i64) {
        let was = self.down_until.swap(
            now_ms + RETRY_AFTER_FAILURE.as_millis() as i64,
            Ordering::AcqRel,
        );
        if was == 0 {
            tracing::warn!(
                "the store cannot be reached: answering from what was verified in the last {}s",
                OUTAGE_GRACE.as_secs()
            );
        }
    }

    pub fn last_token(&self, hash: &str) -> Option<TokenGrant> {
        self.last_tokens.get(hash)
    }

    pub fn last_executor(&self, workspace: &str, name: &str) -> Option<ExecutorRow> {
        self.last_executors
            .get(&(workspace.to_string(), name.to_string()))
    }

    /// Something changed (`hint`, `*` for anything): entries read before
    /// are stale (PostgreSQL; on SQLite the files already say so), and
    /// subscribers hear it.
    pub fn invalidate(&self, hint: &str) {
        if let Source::Epoch { epoch, .. } = &self.source {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        if hint != super::invalidate::ANYTHING {
            self.last_tokens.invalidate_all();
            self.last_executors.invalidate_all();
        }
        let _ = self.changes.send(hint.to_string());
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    pub fn set_listener(&self, task: tokio::task::AbortHandle) {
        *self.listener.lock().unwrap() = Some(task);
    }

    /// Stops listening for hints (tests of the fallback).
    pub fn stop_listener(&self) {
        if let Some(task) = self.listener.lock().unwrap().take() {
            task.abort();
        }
    }

    /// The generation now: two `stat`s (SQLite) or two loads (PostgreSQL),
    /// no thread hand-off.
    pub fn generation(&self) -> Generation {
        let (db, wal) = match &self.source {
            Source::Files { db, wal } => (db, wal),
            Source::Epoch { epoch, start } => {
                let period = start.elapsed().as_millis() / MAX_AGE.as_millis();
                return Generation([(epoch.load(Ordering::Acquire), period), (0, 0)]);
            }
        };
        let stat = |p: &Path| {
            std::fs::metadata(p).map_or((0, 0), |m| {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (m.len(), mtime)
            })
        };
        Generation([stat(db), stat(wal)])
    }

    pub fn token(&self, hash: &str, now: Generation) -> Option<Option<TokenGrant>> {
        fresh(self.tokens.get(hash), now)
    }

    pub fn put_token(&self, hash: String, read_at: Generation, grant: Option<TokenGrant>) {
        match &grant {
            Some(g) => self.last_tokens.insert(hash.clone(), g.clone()),
            None => self.last_tokens.invalidate(&hash),
        }
        self.tokens.insert(hash, (read_at, grant));
    }

    pub fn executor(
        &self,
        workspace: &str,
        name: &str,
        now: Generation,
    ) -> Option<Option<ExecutorRow>> {
        fresh(
            self.executors
                .get(&(workspace.to_string(), name.to_string())),
            now,
        )
    }

    pub fn put_executor(
        &self,
        workspace: &str,
        name: &str,
        read_at: Generation,
        row: Option<ExecutorRow>,
    ) {
        let key = (workspace.to_string(), name.to_string());
        match &row {
            Some(r) => self.last_executors.insert(key.clone(), r.clone()),
            None => self.last_executors.invalidate(&key),
        }
        self.executors.insert(key, (read_at, row));
    }
}

impl Drop for Lookups {
    fn drop(&mut self) {
        self.stop_listener();
    }
}

fn cache<K, V>() -> moka::sync::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(MAX_AGE)
        .build()
}

fn last_good<K, V>() -> moka::sync::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(OUTAGE_GRACE)
        .build()
}

/// The cached value, if it was read under the current generation.
fn fresh<T>(entry: Option<(Generation, T)>, now: Generation) -> Option<T> {
    match entry {
        Some((read_at, value)) if read_at == now => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_fresh_only_under_its_generation() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, b"a").unwrap();
        let l = Lookups::files(&db);
        let g1 = l.generation();
        let grant = TokenGrant {
            workspace: "w".into(),
            user_id: None,
        };
        l.put_token("h".into(), g1, Some(grant.clone()));
        assert_eq!(l.token("h", g1), Some(Some(grant)));
        // A write to the WAL (another process's commit) changes it.
        std::fs::write(dir.path().join("x.db-wal"), b"frame").unwrap();
        let g2 = l.generation();
        assert_ne!(g1, g2);
        assert_eq!(l.token("h", g2), None);
        // Rejections are cached too (None inside).
        l.put_token("bad".into(), g2, None);
        assert_eq!(l.token("bad", g2), Some(None));
    }

    #[test]
    fn entries_expire_after_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lookups::files(&dir.path().join("x.db"));
        let g = l.generation();
        l.put_token("h".into(), g, None);
        std::thread::sleep(MAX_AGE + Duration::from_millis(100));
        assert_eq!(l.token("h", g), None);
    }
}

#[cfg(test)]
mod outage_tests {
    use super::*;

    #[test]
    fn last_good_answers_survive_a_reconnect_not_a_hint_or_a_rejection() {
        let l = Lookups::notified();
        let grant = TokenGrant {
            workspace: "w".into(),
            user_id: None,
        };
        l.put_token("h".into(), l.generation(), Some(grant.clone()));
        l.invalidate(crate::store::invalidate::ANYTHING);
        assert_eq!(l.last_token("h"), Some(grant.clone()));
        l.invalidate("token:tok_1");
        assert_eq!(l.last_token("h"), None);
        l.put_token("h".into(), l.generation(), Some(grant));
        l.put_token("h".into(), l.generation(), None);
        assert_eq!(l.last_token("h"), None);
    }

    #[test]
    fn one_caller_probes_a_store_known_down_and_a_success_ends_it() {
        let l = Lookups::notified();
        assert_eq!(l.attempt(1_000), Attempt::Read);
        l.store_down(1_000);
        assert_eq!(l.attempt(1_500), Attempt::Skip);
        let after = 1_000 + RETRY_AFTER_FAILURE.as_millis() as i64;
        assert_eq!(l.attempt(after), Attempt::Probe);
        assert_eq!(l.attempt(after), Attempt::Skip, "one prober at a time");
        l.store_up();
        assert_eq!(l.attempt(after + 1), Attempt::Read);
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    #[test]
    fn an_epoch_entry_goes_stale_at_a_hint_and_at_the_next_period() {
        let l = Lookups::notified();
        let mut changes = l.subscribe();
        let g1 = l.generation();
        l.put_token("h".into(), g1, None);
        assert_eq!(l.token("h", l.generation()), Some(None));
        l.invalidate("token:tok_1");
        assert_eq!(changes.try_recv().unwrap(), "token:tok_1");
        assert_ne!(l.generation(), g1);
        assert_eq!(l.token("h", l.generation()), None);
        let g2 = l.generation();
        std::thread::sleep(MAX_AGE + Duration::from_millis(50));
        assert_ne!(l.generation(), g2, "a new period is a new generation");
    }
}
