//! The output log of one process: every chunk of stdout/stderr/pty output,
//! the exit and close events, and the seq numbers that order all of them.
//!
//! This module owns three things:
//!
//! - **Sequencing.** One counter per process hands out seqs to output chunks,
//!   to `exited` and to `closed`, starting at 1. A seq is assigned under the
//!   log's lock together with the append, so seqs and log order never disagree.
//! - **Retention.** At most `cap` bytes of chunk data are kept in memory. The
//!   oldest whole chunks are evicted first; a single chunk larger than the cap
//!   is kept alone rather than split. An evicted chunk goes to the process's
//!   [spill](crate::spill) on disk when there is one, and is lost only when
//!   the spill lets it go (or cannot take it).
//! - **Exact loss accounting.** A late reader learns exactly how many bytes it
//!   missed (`lostBytes`). Every chunk knows its cumulative byte offset, and an
//!   index remembers `(seq, end offset)` of evicted chunks, so the bytes evicted
//!   between any `afterSeq` and the first retained chunk are a subtraction.
//!
//! [`OutputLog`] is plain data and fully unit-tested; [`SharedLog`] wraps it in
//! a mutex and adds the long-poll wait of `process/read`. A read is planned
//! under the lock ([`ReadPlan`]) and its spilled chunks are loaded from disk
//! after the lock is released, so disk reads never hold up the child's output.
//!
//! Seq order of where output is: lost chunks < spilled chunks < ring chunks.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use execgate_protocol::exec::Stream;
use tokio::sync::watch;

use crate::spill::{DiskChunk, Evicted, Spill};

/// How many evicted chunks the loss index remembers. Each entry costs 16
/// bytes, so a process that produced a million tiny chunks beyond its
/// retention holds at most 16 MB of index.
///
/// When the index is full its oldest entry is dropped and the *horizon*
/// moves forward. A reader whose `afterSeq` is older than the horizon is told
/// the bytes counted from the horizon: a lower bound of what it really lost.
/// Readers that fall that far behind have lost a million chunks anyway.
pub(crate) const MAX_EVICTED_INDEX: usize = 1_000_000;

/// One retained chunk of output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chunk {
    pub seq: u64,
    pub stream: Stream,
    pub data: Bytes,
    /// Cumulative byte offset of this chunk's first byte in the process's
    /// whole output (all streams together).
    start: u64,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// What one `process/read` sees. Built under the lock, encoded outside it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReadSlice {
    pub chunks: Vec<Chunk>,
    /// One past the last seq this read accounts for, codex's convention: the
    /// reader's next `afterSeq` is `next_seq - 1`. If the read returned every
    /// retained chunk newer than `afterSeq`, that includes trailing exit/close
    /// events; if `maxBytes` cut it short, it is the last returned chunk's seq + 1.
    pub next_seq: u64,
    /// Set as soon as the process has exited, whatever the reader has read.
    pub exit_code: Option<i32>,
    /// End of stream, reported only to a reader that is caught up: every chunk
    /// up to the close has been returned by this read or an earlier one. A
    /// client can stop reading when it sees it.
    pub closed: bool,
    /// Bytes of evicted chunks with a seq in `(afterSeq, first returned seq)`.
    pub lost_bytes: u64,
}

/// A chunk a read will return: in memory, or still on disk.
#[derive(Debug, Clone)]
enum Planned {
    Memory(Chunk),
    Disk(DiskChunk),
}

/// A read decided under the log's lock; [`load`](ReadPlan::load) fetches
/// the spilled bytes without it.
#[derive(Debug, Clone)]
pub(crate) struct ReadPlan {
    chunks: Vec<Planned>,
    next_seq: u64,
    exit_code: Option<i32>,
    closed: bool,
    lost_bytes: u64,
}

impl ReadPlan {
    /// Whether loading reads the disk.
    pub fn touches_disk(&self) -> bool {
        self.chunks.iter().any(|c| matches!(c, Planned::Disk(_)))
    }

    /// The read, with spilled chunks read back from disk (blocking).
    pub fn load(self) -> std::io::Result<ReadSlice> {
        // Spilled chunks come first and are read back together.
        let disk: Vec<DiskChunk> = self
            .chunks
            .iter()
            .filter_map(|c| match c {
                Planned::Disk(d) => Some(d.clone()),
                Planned::Memory(_) => None,
            })
            .collect();
        let mut loaded = DiskChunk::load_all(&disk)?.into_iter();
        let chunks = self
            .chunks
            .into_iter()
            .map(|c| match c {
                Planned::Memory(chunk) => chunk,
                Planned::Disk(d) => Chunk {
                    seq: d.seq,
                    stream: d.stream,
                    data: loaded.next().unwrap_or_default(),
                    start: d.start,
                },
            })
            .collect();
        Ok(ReadSlice {
            chunks,
            next_seq: self.next_seq,
            exit_code: self.exit_code,
            closed: self.closed,
            lost_bytes: self.lost_bytes,
        })
    }
}

impl Drop for OutputLog {
    fn drop(&mut self) {
        crate::metrics::OUTPUT_LOG_BYTES.fetch_sub(self.retained as i64, Relaxed);
    }
}

/// The log itself: plain data, no locking, no clock.
#[derive(Debug)]
pub(crate) struct OutputLog {
    cap: usize,
    /// Where evicted chunks go before they are lost.
    spill: Option<Spill>,
    chunks: VecDeque<Chunk>,
    /// Sum of `chunks[..].data.len()`.
    retained: usize,
    /// `(seq, end offset)` of evicted chunks, oldest first, at most `index_cap`.
    evicted: VecDeque<(u64, u64)>,
    index_cap: usize,
    /// End offset of the newest entry dropped from `evicted` (0 if none was).
    horizon: u64,
    /// End offset of the newest evicted chunk: the bytes evicted in total.
    evicted_end: u64,
    /// Bytes ever appended.
    total: u64,
    /// The last seq handed out, 0 before the first.
    last_seq: u64,
    exit: Option<(u64, i32)>,
    closed_seq: Option<u64>,
    /// Output streams (pipes or pty) that have not reached EOF yet.
    open_streams: u32,
}

impl OutputLog {
    /// A log that keeps `cap` bytes and expects `open_streams` output streams
    /// to reach EOF before the process can be closed.
    pub fn new(cap: usize, open_streams: u32) -> Self {
        Self::with_index_cap(cap, open_streams, MAX_EVICTED_INDEX)
    }

    fn with_index_cap(cap: usize, open_streams: u32, index_cap: usize) -> Self {
        OutputLog {
            cap,
            spill: None,
            chunks: VecDeque::new(),
            retained: 0,
            evicted: VecDeque::new(),
            index_cap: index_cap.max(1),
            horizon: 0,
            evicted_end: 0,
            total: 0,
            last_seq: 0,
            exit: None,
            closed_seq: None,
            open_streams,
        }
    }

    /// Spills evicted chunks to `spill` instead of losing them.
    pub fn with_spill(mut self, spill: Spill) -> Self {
        self.spill = Some(spill);
        self
    }

    /// Appends one chunk, evicting old ones to stay within the cap, and
    /// returns the chunk's seq.
    pub fn push_chunk(&mut self, stream: Stream, data: Bytes) -> u64 {
        let len = data.len();
        while self.retained + len > self.cap {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.retained -= old.data.len();
            crate::metrics::OUTPUT_LOG_BYTES.fetch_sub(old.data.len() as i64, Relaxed);
            match &mut self.spill {
                Some(spill) => {
                    let lost = spill.push(Evicted {
                        seq: old.seq,
                        stream: old.stream,
                        start: old.start,
                        data: old.data,
                    });
                    for (seq, end) in lost {
                        self.record_lost(seq, end);
                    }
                }
                None => self.record_lost(old.seq, old.end()),
            }
        }
        let seq = self.next_seq();
        let start = self.total;
        self.total += len as u64;
        self.retained += len;
        crate::metrics::OUTPUT_LOG_BYTES.fetch_add(len as i64, Relaxed);
        crate::metrics::OUTPUT_BYTES.fetch_add(len as u64, Relaxed);
        self.chunks.push_back(Chunk {
            seq,
            stream,
            data,
            start,
        });
        seq
    }

    /// Counts a chunk as lost for good. Chunks are lost in seq order.
    fn record_lost(&mut self, seq: u64, end: u64) {
        self.evicted_end = end;
        if self.evicted.len() >= self.index_cap {
            if let Some((_, end)) = self.evicted.pop_front() {
                self.horizon = end;
            }
        }
        self.evicted.push_back((seq, end));
    }

    /// Records the exit code and returns the event's seq, or `None` if the
    /// exit was already recorded.
    pub fn record_exit(&mut self, code: i32) -> Option<u64> {
        if self.exit.is_some() {
            return None;
        }
        let seq = self.next_seq();
        self.exit = Some((seq, code));
        Some(seq)
    }

    /// One output stream reached EOF.
    pub fn finish_stream(&mut self) {
        self.open_streams = self.open_streams.saturating_sub(1);
    }

    /// Emits the close event once the process has exited and every stream
    /// reached EOF; returns its seq the one time that happens.
    pub fn close_if_done(&mut self) -> Option<u64> {
        if self.closed_seq.is_some() || self.exit.is_none() || self.open_streams > 0 {
            return None;
        }
        let seq = self.next_seq();
        self.closed_seq = Some(seq);
        Some(seq)
    }

    fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The last seq handed out (chunk or event); 0 if none yet.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.exit.map(|(_, code)| code)
    }

    pub fn is_closed(&self) -> bool {
        self.closed_seq.is_some()
    }

    /// Bytes of evicted chunks whose seq is greater than `after_seq`; those
    /// all precede the first retained chunk.
    pub fn lost_bytes(&self, after_seq: u64) -> u64 {
        // Bytes evicted up to and including `after_seq`.
        let through = match self.evicted.partition_point(|&(seq, _)| seq <= after_seq) {
            // A reader that has read nothing lost every evicted byte: exact
            // even after the index dropped entries, and the common late read.
            _ if after_seq == 0 => 0,
            // `after_seq` is older than everything in the index: count from
            // the horizon (exact unless entries were dropped from the index).
            0 => self.horizon,
            i => self.evicted[i - 1].1,
        };
        self.evicted_end.saturating_sub(through)
    }

    /// The retained chunks (spilled, then in memory) with a seq greater than
    /// `after_seq`, in order, stopping before `max_bytes` would be exceeded.
    /// At least one chunk is returned when there is one, and a chunk is never
    /// split.
    pub fn plan(&self, after_seq: u64, max_bytes: usize) -> ReadPlan {
        let first = self.chunks.partition_point(|c| c.seq <= after_seq);
        let spilled = self
            .spill
            .iter()
            .flat_map(|s| s.after(after_seq))
            .map(|d| Planned::Disk(d.clone()));
        let in_memory = self
            .chunks
            .range(first..)
            .map(|c| Planned::Memory(c.clone()));
        let mut chunks = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = false;
        for chunk in spilled.chain(in_memory) {
            let len = match &chunk {
                Planned::Memory(c) => c.data.len(),
                Planned::Disk(d) => d.len as usize,
            };
            if !chunks.is_empty() && bytes.saturating_add(len) > max_bytes {
                truncated = true;
                break;
            }
            bytes += len;
            chunks.push(chunk);
        }
        let last_returned = chunks.last().map(|c| match c {
            Planned::Memory(c) => c.seq,
            Planned::Disk(d) => d.seq,
        });
        let next_seq = match last_returned {
            Some(last) if truncated => last + 1,
            // Caught up: everything up to the last event is accounted for.
            _ => self.last_seq.max(after_seq) + 1,
        };
        ReadPlan {
            chunks,
            next_seq,
            exit_code: self.exit_code(),
            // `closed` is the last seq ever handed out, so a reader that got
            // every retained chunk has seen everything before it.
            closed: self.closed_seq.is_some() && !truncated,
            lost_bytes: self.lost_bytes(after_seq),
        }
    }

    /// [`plan`](Self::plan) and load at once.
    #[cfg(test)]
    pub fn read(&self, after_seq: u64, max_bytes: usize) -> ReadSlice {
        self.plan(after_seq, max_bytes)
            .load()
            .expect("spilled chunks read back")
    }
}

/// An [`OutputLog`] shared between the tasks that feed it and the requests
/// that read it, with a wake-up for long-polls.
pub(crate) struct SharedLog {
    log: Mutex<OutputLog>,
    /// The log's `(last_seq, closed)`, published after every change.
    /// Long-polls wait on it; a watch (unlike a bare `Notify`) cannot lose a
    /// wake-up that happens between checking the log and starting to wait.
    /// `closed` ends a wait too: a reader already past the last seq of a
    /// closed log would otherwise wait out its whole `wait_ms` for nothing.
    last_seq: watch::Sender<(u64, bool)>,
}

impl SharedLog {
    pub fn new(log: OutputLog) -> Self {
        let last = (log.last_seq(), log.is_closed());
        SharedLog {
            log: Mutex::new(log),
            last_seq: watch::Sender::new(last),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutputLog> {
        // A panic while holding the lock cannot leave the log half-updated in
        // a way that matters more than losing the process, so keep going.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the log under its lock, then wakes readers if anything was
    /// appended. Callers send their notifications from inside `f`, so that
    /// notifications leave in seq order.
    pub fn update<R>(&self, f: impl FnOnce(&mut OutputLog) -> R) -> R {
        let mut log = self.lock();
        let result = f(&mut log);
        let last = (log.last_seq(), log.is_closed());
        self.last_seq.send_if_modified(|published| {
            let changed = *published != last;
            *published = last;
            changed
        });
        result
    }

    /// Runs `f` on the log under its lock.
    pub fn inspect<R>(&self, f: impl FnOnce(&OutputLog) -> R) -> R {
        f(&self.lock())
    }

    /// `process/read`: waits up to `wait` for anything newer than `after_seq`
    /// (a chunk, the exit or the close) unless the log is closed, then reads. Spilled chunks are read
    /// from disk on a blocking thread, outside the lock.
    pub async fn read(
        &self,
        after_seq: u64,
        max_bytes: usize,
        wait: Duration,
    ) -> std::io::Result<ReadSlice> {
        if !wait.is_zero() {
            let mut published = self.last_seq.subscribe();
            // `wait_for` looks at the current value first, so something that
            // arrived before we subscribed ends the wait at once. It can only
            // fail if the sender is gone, and `self` owns it.
            let _ = tokio::time::timeout(
                wait,
                published.wait_for(|&(last, closed)| last > after_seq || closed),
            )
            .await;
        }
        let plan = self.inspect(|log| log.plan(after_seq, max_bytes));
        if plan.touches_disk() {
            tokio::task::spawn_blocking(move || plan.load())
                .await
                .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())))
        } else {
            plan.load()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    /// A log holding chunks of the given sizes, all on stdout.
    fn log_with(cap: usize, sizes: &[usize]) -> OutputLog {
        let mut log = OutputLog::new(cap, 2);
        for &n in sizes {
            log.push_chunk(Stream::Stdout, bytes(n));
        }
        log
    }

    fn seqs(slice: &ReadSlice) -> Vec<u64> {
        slice.chunks.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn seqs_start_at_one_and_cover_chunks_and_events() {
        let mut log = OutputLog::new(100, 2);
        assert_eq!(log.last_seq(), 0);
        assert_eq!(log.push_chunk(Stream::Stdout, bytes(1)), 1);
        assert_eq!(log.push_chunk(Stream::Stderr, bytes(1)), 2);
        assert_eq!(log.record_exit(3), Some(3));
        assert_eq!(log.record_exit(4), None, "exit is recorded once");
        assert_eq!(log.exit_code(), Some(3));
        assert_eq!(log.close_if_done(), None, "streams still open");
        log.finish_stream();
        assert_eq!(log.close_if_done(), None, "one stream still open");
        log.finish_stream();
        assert_eq!(log.close_if_done(), Some(4));
        assert_eq!(log.close_if_done(), None, "close is emitted once");
        assert!(log.is_closed());
        assert_eq!(log.last_seq(), 4);
    }

    #[test]
    fn close_waits_for_the_exit_even_after_eof() {
        let mut log = OutputLog::new(100, 1);
        log.finish_stream();
        assert_eq!(log.close_if_done(), None);
        assert_eq!(log.record_exit(0), Some(1));
        assert_eq!(log.close_if_done(), Some(2));
    }

    #[test]
    fn evicts_whole_oldest_chunks_to_stay_within_the_cap() {
        let log = log_with(10, &[4, 4, 4]);
        // 12 bytes > 10: chunk 1 goes, 8 bytes remain.
        let slice = log.read(0, usize::MAX);
        assert_eq!(seqs(&slice), vec![2, 3]);
        assert_eq!(slice.lost_bytes, 4);
        assert_eq!(log.retained, 8);
    }

    #[test]
    fn a_chunk_larger_than_the_cap_is_kept_alone() {
        let log = log_with(10, &[3, 25]);
        let slice = log.read(0, usize::MAX);
        assert_eq!(seqs(&slice), vec![2]);
        assert_eq!(slice.chunks[0].data.len(), 25);
        assert_eq!(slice.lost_bytes, 3);
        // And the next chunk evicts it in turn.
        let mut log = log;
        log.push_chunk(Stream::Stdout, bytes(1));
        assert_eq!(seqs(&log.read(0, usize::MAX)), vec![3]);
        assert_eq!(log.lost_bytes(0), 28);
    }

    #[test]
    fn zero_cap_keeps_only_the_newest_chunk() {
        let log = log_with(0, &[1, 2, 3]);
        assert_eq!(seqs(&log.read(0, usize::MAX)), vec![3]);
        assert_eq!(log.lost_bytes(0), 3);
    }

    #[test]
    fn lost_bytes_are_exact_before_inside_and_after_the_evicted_range() {
        // Sizes 1, 2, 4, 8, 16 with cap 24: pushing 16 evicts 1, 2 and 4
        // (seqs 1..=3, 7 bytes); 8 + 16 = 24 remain.
        let log = log_with(24, &[1, 2, 4, 8, 16]);
        assert_eq!(seqs(&log.read(0, usize::MAX)), vec![4, 5]);
        assert_eq!(log.lost_bytes(0), 7, "before the evicted range: all of it");
        assert_eq!(log.lost_bytes(1), 6, "inside: chunks 2 and 3");
        assert_eq!(log.lost_bytes(2), 4, "inside: chunk 3");
        assert_eq!(log.lost_bytes(3), 0, "at the end of the evicted range");
        assert_eq!(log.lost_bytes(4), 0, "inside the retained range");
        assert_eq!(log.lost_bytes(99), 0, "after everything");
        assert_eq!(log.read(1, usize::MAX).lost_bytes, 6);
    }

    #[test]
    fn lost_bytes_skip_event_seqs() {
        let mut log = OutputLog::new(4, 1);
        log.push_chunk(Stream::Stdout, bytes(3)); // seq 1
        log.record_exit(0); // seq 2
        log.push_chunk(Stream::Stdout, bytes(3)); // seq 3, evicts 1
        log.push_chunk(Stream::Stdout, bytes(3)); // seq 4, evicts 3
        assert_eq!(log.lost_bytes(0), 6);
        assert_eq!(log.lost_bytes(1), 3);
        assert_eq!(log.lost_bytes(2), 3, "the exit event holds no bytes");
        assert_eq!(log.lost_bytes(3), 0);
    }

    #[test]
    fn a_full_index_moves_the_horizon_and_gives_a_lower_bound() {
        // Cap 1 with 1-byte chunks: every push evicts the previous chunk.
        let mut log = OutputLog::with_index_cap(1, 1, 3);
        for _ in 0..6 {
            log.push_chunk(Stream::Stdout, bytes(1));
        }
        // Evicted seqs 1..=5; the index holds 3, 4, 5; the horizon is the end
        // of seq 2, offset 2.
        assert_eq!(log.evicted.len(), 3);
        assert_eq!(log.lost_bytes(5), 0);
        assert_eq!(log.lost_bytes(3), 2, "exact inside the index");
        assert_eq!(log.lost_bytes(2), 3, "exact at the horizon");
        assert_eq!(
            log.lost_bytes(1),
            3,
            "older than the horizon: a lower bound (really 4)"
        );
        assert_eq!(log.lost_bytes(0), 5, "a reader at 0 is always exact");
    }

    fn spilling_log(cap: usize, spill_bytes: u64) -> (tempfile::TempDir, OutputLog) {
        let dir = tempfile::tempdir().unwrap();
        let config = std::sync::Arc::new(
            crate::spill::SpillConfig::new(dir.path().join("s"), spill_bytes, 1 << 30).unwrap(),
        );
        let log = OutputLog::new(cap, 1).with_spill(Spill::new(config));
        (dir, log)
    }

    #[test]
    fn evicted_chunks_are_read_back_from_the_spill_in_order() {
        let (_dir, mut log) = spilling_log(10, 1 << 20);
        for i in 0..20u8 {
            log.push_chunk(Stream::Stdout, Bytes::from(vec![i; 4]));
        }
        let slice = log.read(0, usize::MAX);
        assert_eq!(seqs(&slice), (1..=20).collect::<Vec<_>>());
        assert_eq!(slice.lost_bytes, 0);
        for (i, c) in slice.chunks.iter().enumerate() {
            assert_eq!(c.data, vec![i as u8; 4]);
        }
        // Reads from inside the spilled range and across into memory.
        assert_eq!(
            seqs(&log.read(15, usize::MAX)),
            (16..=20).collect::<Vec<_>>()
        );
        let cut = log.read(3, 9);
        assert_eq!(seqs(&cut), vec![4, 5]);
        assert_eq!(cut.next_seq, 6);
    }

    #[test]
    fn loss_beyond_the_spill_is_exact() {
        // 64 KiB segments, a 256 KiB spill bound, 16 KiB in memory; 1 KiB chunks.
        let (_dir, mut log) = spilling_log(16 * 1024, 256 * 1024);
        let total = 1000u64;
        for _ in 0..total {
            log.push_chunk(Stream::Stdout, bytes(1024));
        }
        let slice = log.read(0, usize::MAX);
        let kept: u64 = slice.chunks.iter().map(|c| c.data.len() as u64).sum();
        assert!(slice.lost_bytes > 0);
        assert_eq!(kept + slice.lost_bytes, total * 1024);
        let first = slice.chunks[0].seq;
        assert_eq!(
            slice.lost_bytes,
            (first - 1) * 1024,
            "lost exactly the chunks before the first kept"
        );
        assert!(
            seqs(&slice).windows(2).all(|w| w[1] == w[0] + 1),
            "no hole after the loss"
        );
        // A reader inside the lost range loses only what lies after it.
        assert_eq!(log.read(10, usize::MAX).lost_bytes, (first - 11) * 1024);
    }

    #[test]
    fn read_returns_chunks_after_the_given_seq() {
        let log = log_with(100, &[1, 1, 1]);
        assert_eq!(seqs(&log.read(0, usize::MAX)), vec![1, 2, 3]);
        assert_eq!(seqs(&log.read(2, usize::MAX)), vec![3]);
        let empty = log.read(3, usize::MAX);
        assert!(empty.chunks.is_empty());
        assert_eq!(empty.next_seq, 4);
        assert_eq!(empty.lost_bytes, 0);
    }

    #[test]
    fn max_bytes_stops_before_exceeding_but_returns_at_least_one_chunk() {
        let log = log_with(100, &[4, 4, 4]);
        let slice = log.read(0, 9);
        assert_eq!(seqs(&slice), vec![1, 2]);
        assert_eq!(slice.next_seq, 3, "truncated: resume after chunk 2");
        assert_eq!(seqs(&log.read(0, 8)), vec![1, 2]);
        let one = log.read(0, 1);
        assert_eq!(seqs(&one), vec![1], "a chunk is never split");
        assert_eq!(seqs(&log.read(0, 0)), vec![1]);
        assert_eq!(log.read(0, 12).next_seq, 4);
    }

    #[test]
    fn closed_is_only_reported_to_a_caught_up_reader() {
        let mut log = OutputLog::new(100, 1);
        log.push_chunk(Stream::Stdout, bytes(4)); // 1
        log.push_chunk(Stream::Stdout, bytes(4)); // 2
        log.finish_stream();
        log.record_exit(3); // 3
        log.close_if_done(); // 4

        let partial = log.read(0, 4);
        assert_eq!(seqs(&partial), vec![1]);
        assert_eq!(
            partial.exit_code,
            Some(3),
            "exit is state, reported at once"
        );
        assert!(!partial.closed, "chunk 2 is still unread");
        assert_eq!(partial.next_seq, 2);

        let rest = log.read(1, 4);
        assert_eq!(seqs(&rest), vec![2]);
        assert!(rest.closed);
        assert_eq!(rest.next_seq, 5, "covers the exit and close events");

        let after = log.read(4, 4);
        assert!(after.chunks.is_empty() && after.closed);
        assert_eq!(after.next_seq, 5);
    }

    #[test]
    fn next_seq_never_goes_backwards_for_a_reader_ahead_of_the_log() {
        let log = log_with(100, &[1]);
        assert_eq!(log.read(10, usize::MAX).next_seq, 11);
    }

    #[tokio::test]
    async fn read_without_wait_returns_at_once() {
        let shared = SharedLog::new(OutputLog::new(100, 1));
        let started = Instant::now();
        let slice = shared.read(0, usize::MAX, Duration::ZERO).await.unwrap();
        assert!(slice.chunks.is_empty());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn long_poll_past_the_end_of_a_closed_log_returns_at_once() {
        let shared = SharedLog::new(OutputLog::new(100, 1));
        shared.update(|log| {
            log.push_chunk(Stream::Stdout, bytes(1));
            log.record_exit(0);
            log.finish_stream();
            log.close_if_done();
        });
        assert!(shared.inspect(OutputLog::is_closed));
        let started = Instant::now();
        // Far past the last seq: nothing can come, so no waiting.
        let slice = shared
            .read(1_000, usize::MAX, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(slice.chunks.is_empty() && slice.closed);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn long_poll_wakes_up_when_the_log_closes() {
        let shared = Arc::new(SharedLog::new(OutputLog::new(100, 1)));
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared
                    .read(1_000, usize::MAX, Duration::from_secs(30))
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished());
        shared.update(|log| {
            log.record_exit(0);
            log.finish_stream();
            log.close_if_done();
        });
        let slice = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the close ends the wait")
            .unwrap();
        assert!(slice.closed);
    }

    #[tokio::test]
    async fn long_poll_wakes_up_on_new_output() {
        let shared = Arc::new(SharedLog::new(OutputLog::new(100, 1)));
        shared.update(|log| log.push_chunk(Stream::Stdout, bytes(1)));
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared
                    .read(1, usize::MAX, Duration::from_secs(30))
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "nothing newer than seq 1 yet");
        let started = Instant::now();
        shared.update(|log| log.push_chunk(Stream::Stderr, Bytes::from_static(b"hi")));
        let slice = reader.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(seqs(&slice), vec![2]);
        assert_eq!(slice.chunks[0].stream, Stream::Stderr);
    }

    #[tokio::test]
    async fn long_poll_wakes_up_on_exit_and_close_events() {
        let shared = Arc::new(SharedLog::new(OutputLog::new(100, 0)));
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared
                    .read(0, usize::MAX, Duration::from_secs(30))
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        shared.update(|log| {
            log.record_exit(0);
            log.close_if_done();
        });
        let slice = reader.await.unwrap();
        assert_eq!(slice.exit_code, Some(0));
        assert!(slice.closed);
        assert_eq!(slice.next_seq, 3);
    }

    #[tokio::test]
    async fn long_poll_sees_what_arrived_before_it_started_waiting() {
        let shared = SharedLog::new(OutputLog::new(100, 1));
        shared.update(|log| log.push_chunk(Stream::Stdout, bytes(1)));
        let started = Instant::now();
        let slice = shared
            .read(0, usize::MAX, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(seqs(&slice), vec![1]);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn long_poll_gives_up_after_the_wait() {
        let shared = SharedLog::new(OutputLog::new(100, 1));
        let started = Instant::now();
        let slice = shared
            .read(0, usize::MAX, Duration::from_millis(60))
            .await
            .unwrap();
        assert!(slice.chunks.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert_eq!(slice.next_seq, 1);
    }
}
