//! Running hash (SHA-256, or [ext] the BLAKE3 that `fs/writeRange {digest}`
//! asks for) of the staged files that `fs/writeRange` fills, so that
//! `fs/commitFile` can verify a streamed transfer without reading the whole
//! file back.
//!
//! Why: the commit's check ran after the last byte arrived and read the file
//! again, ~1 s per GiB on one core with nothing else to overlap it
//! (BENCHMARKS.md). Hashing each range as it is written moves that work into
//! the transfer, where it overlaps the next chunk's round trip.
//!
//! What is hashed is the bytes each `writeRange` was given and wrote, in
//! offset order. Ranges that arrive ahead of a gap (several writes are in
//! flight, and each runs on its own thread) wait here until the gap fills,
//! up to [`MAX_AHEAD`] bytes per file. Anything this cannot account for
//! makes the running hash unusable and the commit falls back to reading the
//! file, which is always correct:
//! - a write that overlaps bytes already hashed or waiting;
//! - more than [`MAX_AHEAD`] bytes waiting;
//! - a file that changed by other means since the last recorded write
//!   (its inode, size, mtime or ctime differ at commit; see [`Stamp`]);
//! - a running hash that was evicted (at most [`MAX_FILES`] are kept).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use execgate_protocol::exec::digest;

use crate::digest::Hasher;
use crate::staged_sweep::StagedSweep;

/// Bytes that may wait for a gap before them to fill, per file. Two 1 MiB
/// writes are in flight per transfer (`gateway::transfer::IN_FLIGHT`), so
/// one chunk waits at most in practice.
pub(crate) const MAX_AHEAD: usize = 4 << 20;
/// Running hashes kept at once; the oldest is dropped beyond it (a transfer
/// that was abandoned without its staged file being removed).
pub(crate) const MAX_FILES: usize = 32;

/// The running hashes of staged files, by resolved path.
#[derive(Default)]
pub(crate) struct StagedHashes {
    files: Mutex<Files>,
    /// Told where staged files are written, to sweep those left behind.
    sweep: Option<Arc<StagedSweep>>,
}

#[derive(Default)]
struct Files {
    /// Each with its age, to evict the oldest.
    by_path: HashMap<PathBuf, (u64, Arc<Mutex<Running>>)>,
    next_age: u64,
}

/// What a file held after the last write that was recorded: if it differs at
/// commit, something else wrote to it. The ctime cannot be set by a user,
/// and changes with any write or metadata change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: (i64, i64),
    ctime_ns: (i64, i64),
}

impl Stamp {
    fn of(file: &File) -> Option<Stamp> {
        let m = file.metadata().ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: (m.mtime(), m.mtime_nsec()),
            ctime_ns: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A hash over bytes given at offsets, in offset order (also the source's
/// running hash of what it read: [`crate::digest::ReadHashes`]).
pub(crate) struct Running {
    hasher: Hasher,
    /// `[0, hashed)` is in `hasher`.
    hashed: u64,
    /// Written, waiting for the bytes before them.
    ahead: BTreeMap<u64, Bytes>,
    ahead_bytes: usize,
    /// Set when the hash can no longer be trusted; the commit re-reads.
    broken: bool,
    stamp: Option<Stamp>,
}

impl Running {
    pub(crate) fn with(hasher: Hasher) -> Running {
        Running {
            hasher,
            hashed: 0,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            broken: false,
            stamp: None,
        }
    }

    /// A new running hash of `algorithm` (SHA-256 when `None` or unknown).
    fn fresh(algorithm: Option<&str>) -> Running {
        let hasher = algorithm.and_then(Hasher::new);
        Running::with(
            hasher.unwrap_or_else(|| {
                Hasher::new(digest::SHA256).expect("SHA-256 is always supported")
            }),
        )
    }

    pub(crate) fn algorithm(&self) -> &'static str {
        self.hasher.algorithm()
    }

    /// Its digest and size, if every byte given is in it: none waits for a
    /// gap, none overlapped.
    pub(crate) fn complete(&self) -> Option<(&'static str, String, u64)> {
        (!self.broken && self.ahead.is_empty())
            .then(|| (self.hasher.algorithm(), self.hasher.hex(), self.hashed))
    }

    pub(crate) fn add(&mut self, offset: u64, data: Bytes) {
        if self.broken || data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        let overlaps_waiting = self
            .ahead
            .range(..end)
            .next_back()
            .is_some_and(|(&at, d)| at + d.len() as u64 > offset);
        if offset < self.hashed || overlaps_waiting {
            return self.break_off();
        }
        if offset > self.hashed {
            self.ahead_bytes += data.len();
            self.ahead.insert(offset, data);
            if self.ahead_bytes > MAX_AHEAD {
                self.break_off();
            }
            return;
        }
        self.hasher.update(&data);
        self.hashed = end;
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != self.hashed {
                break;
            }
            let data = entry.remove();
            self.ahead_bytes -= data.len();
            self.hasher.update(&data);
            self.hashed += data.len() as u64;
        }
    }

    pub(crate) fn break_off(&mut self) {
        self.broken = true;
        self.ahead.clear();
        self.ahead_bytes = 0;
    }
}

impl StagedHashes {
    /// Also records where staged files are written, for `sweep`.
    pub fn with_sweep(sweep: Arc<StagedSweep>) -> Self {
        StagedHashes {
            files: Mutex::default(),
            sweep: Some(sweep),
        }
    }

    /// Records that `data` was written at `offset` of `file` (at `path`).
    /// `truncate`: the write truncated the file first, so any earlier
    /// record of it is void. A file first seen at a write past offset 0
    /// gets no running hash; its commit reads it. `algorithm`: the hash a
    /// new record keeps (SHA-256 when `None`; the caller checked the name).
    pub fn wrote(
        &self,
        path: &Path,
        file: &File,
        offset: u64,
        data: Bytes,
        truncate: bool,
        algorithm: Option<&str>,
    ) {
        if let Some(sweep) = &self.sweep {
            sweep.saw(path);
        }
        let fresh = || Running::fresh(algorithm);
        let Some(running) = self.entry(path, truncate || offset == 0, fresh) else {
            return;
        };
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        if truncate {
            *running = fresh();
        }
        running.add(offset, data);
        // After the write, under the lock: the last writer to record sees
        // every write that finished before it.
        running.stamp = Stamp::of(file);
    }

    /// Takes the running hash of `path`: its algorithm, digest (hex) and
    /// size, if it covers exactly what `file` holds now. `None`: read the
    /// file instead.
    pub fn take(&self, path: &Path, file: &File) -> Option<(&'static str, String, u64)> {
        let (_, running) = self.files.lock().unwrap().by_path.remove(path)?;
        let running = running.lock().unwrap_or_else(|e| e.into_inner());
        let now = Stamp::of(file)?;
        let usable = running.stamp == Some(now) && now.size == running.hashed;
        running.complete().filter(|_| usable)
    }

    /// Drops the running hash of `path` (its staged file was removed).
    pub fn forget(&self, path: &Path) {
        self.files.lock().unwrap().by_path.remove(path);
    }

    /// The running hash of `path`, created (fresh) when `create` and there
    /// is none.
    fn entry(
        &self,
        path: &Path,
        create: bool,
        fresh: impl FnOnce() -> Running,
    ) -> Option<Arc<Mutex<Running>>> {
        let mut files = self.files.lock().unwrap();
        if let Some((_, running)) = files.by_path.get(path) {
            return Some(running.clone());
        }
        if !create {
            return None;
        }
        if files.by_path.len() >= MAX_FILES {
            let oldest = files
                .by_path
                .iter()
                .min_by_key(|(_, (age, _))| *age)
                .map(|(p, _)| p.clone());
            if let Some(oldest) = oldest {
                files.by_path.remove(&oldest);
            }
        }
        files.next_age += 1;
        let running = Arc::new(Mutex::new(fresh()));
        let age = files.next_age;
        files
            .by_path
            .insert(path.to_owned(), (age, running.clone()));
        Some(running)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.files.lock().unwrap().by_path.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn sha(data: &[u8]) -> (&'static str, String, u64) {
        use sha2::Digest;
        let hex = crate::digest::hex_lower(&sha2::Sha256::digest(data));
        ("sha256", hex, data.len() as u64)
    }

    /// A staged file written with `writes` (offset, bytes), each recorded
    /// as `fs/writeRange` does.
    fn staged(writes: &[(u64, &[u8])]) -> (tempfile::TempDir, PathBuf, File, StagedHashes) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let hashes = StagedHashes::default();
        hashes.wrote(&path, &file, 0, Bytes::new(), true, None);
        for &(at, data) in writes {
            file.write_all_at(data, at).unwrap();
            hashes.wrote(&path, &file, at, Bytes::copy_from_slice(data), false, None);
        }
        (dir, path, file, hashes)
    }

    #[test]
    fn in_order_writes_give_the_files_hash() {
        let (_d, path, file, hashes) = staged(&[(0, b"hello "), (6, b"world")]);
        assert_eq!(hashes.take(&path, &file), Some(sha(b"hello world")));
        // Taken: a second commit reads the file.
        assert_eq!(hashes.take(&path, &file), None);
    }

    #[test]
    fn a_write_that_arrives_early_waits_for_the_gap() {
        let (_d, path, file, hashes) = staged(&[(6, b"world"), (0, b"hello ")]);
        assert_eq!(hashes.take(&path, &file), Some(sha(b"hello world")));
    }

    #[test]
    fn a_gap_never_filled_is_not_trusted() {
        let (_d, path, file, hashes) = staged(&[(0, b"ab"), (4, b"ef")]);
        assert_eq!(hashes.take(&path, &file), None);
    }

    #[test]
    fn overlapping_writes_are_not_trusted() {
        let (_d, path, file, hashes) = staged(&[(0, b"abcd"), (2, b"XY")]);
        assert_eq!(hashes.take(&path, &file), None);
        let (_d, path, file, hashes) = staged(&[(4, b"efgh"), (6, b"XY"), (0, b"abcd")]);
        assert_eq!(hashes.take(&path, &file), None);
    }

    #[test]
    fn too_much_waiting_is_not_trusted() {
        let big = vec![7u8; MAX_AHEAD / 2 + 1];
        let (_d, path, file, hashes) =
            staged(&[(10, &big), (10 + big.len() as u64, &big), (0, &[0u8; 10])]);
        assert_eq!(hashes.take(&path, &file), None);
    }

    #[test]
    fn a_change_by_other_means_is_noticed() {
        let (_d, path, file, hashes) = staged(&[(0, b"hello")]);
        // Same size, other bytes: only the stamp can tell.
        std::thread::sleep(std::time::Duration::from_millis(10));
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"HELLO")
            .unwrap();
        assert_eq!(hashes.take(&path, &file), None);
    }

    #[test]
    fn a_truncating_write_starts_over() {
        let (_d, path, file, hashes) = staged(&[(0, b"old bytes")]);
        file.set_len(0).unwrap();
        file.write_all_at(b"new", 0).unwrap();
        hashes.wrote(&path, &file, 0, Bytes::from_static(b"new"), true, None);
        assert_eq!(hashes.take(&path, &file), Some(sha(b"new")));
    }

    #[test]
    fn a_file_first_seen_past_its_start_has_no_running_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let hashes = StagedHashes::default();
        file.write_all_at(b"xy", 5).unwrap();
        hashes.wrote(&path, &file, 5, Bytes::from_static(b"xy"), false, None);
        assert_eq!(hashes.len(), 0);
        assert_eq!(hashes.take(&path, &file), None);
    }

    #[test]
    fn the_oldest_running_hash_is_dropped_beyond_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = StagedHashes::default();
        let file = File::create(dir.path().join("any")).unwrap();
        for i in 0..=MAX_FILES {
            hashes.wrote(
                &dir.path().join(format!("f{i}")),
                &file,
                0,
                Bytes::new(),
                true,
                None,
            );
        }
        assert_eq!(hashes.len(), MAX_FILES);
        let f0 = dir.path().join("f0");
        assert!(!hashes.files.lock().unwrap().by_path.contains_key(&f0));
        hashes.forget(&dir.path().join("f1"));
        assert_eq!(hashes.len(), MAX_FILES - 1);
    }
}
