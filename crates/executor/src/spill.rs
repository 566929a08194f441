//! The on-disk tail of a process's output log: where chunks go when they
//! leave the in-memory ring, so that a late reader still gets them.
//!
//! This module owns:
//!
//! - **Bounds.** Each process spills at most `per_process` bytes, and all
//!   processes of the executor together at most the [`SpillBudget`]. When a
//!   bound is reached the *oldest* spilled data goes first, a whole segment
//!   at a time, and becomes lost output (counted exactly by the output log).
//! - **Order.** Spilled chunks are always older than the ring's and newer
//!   than every lost chunk; the output log's exact loss accounting relies on
//!   that. When a chunk cannot be stored (bound too small, disk error), every
//!   older spilled chunk is dropped with it, so the order still holds.
//! - **Files.** A process's spill is a queue of segment files in the spill
//!   directory. Each file is unlinked as soon as it is created: it lives only
//!   as long as its open descriptor, so its space is returned when the
//!   process is forgotten, and even when the executor is killed. Readers hold
//!   the descriptor (an `Arc<File>`), so a segment dropped while a read is
//!   being served stays readable for that read.
//!
//! Writes happen under the output log's lock (they go to the page cache and
//! are cheap); reads happen outside it, see [`DiskChunk::load`].

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use execgate_protocol::exec::Stream;

/// Bytes spilled by all processes of this executor, against a cap.
#[derive(Debug)]
pub(crate) struct SpillBudget {
    cap: u64,
    used: AtomicU64,
}

impl SpillBudget {
    pub fn new(cap: u64) -> Self {
        SpillBudget {
            cap,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes of the budget if they are free.
    fn try_reserve(&self, n: u64) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.cap)
            })
            .is_ok();
        if ok {
            crate::metrics::SPILL_BYTES.fetch_add(n as i64, Ordering::Relaxed);
        }
        ok
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        crate::metrics::SPILL_BYTES.fetch_sub(n as i64, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// Where and how much processes spill; shared by every process.
#[derive(Debug)]
pub(crate) struct SpillConfig {
    pub dir: PathBuf,
    pub per_process: u64,
    pub budget: SpillBudget,
    next_file: AtomicU64,
}

impl SpillConfig {
    /// Creates `dir` (mode 0700: output may be secret) if needed.
    pub fn new(dir: PathBuf, per_process: u64, total: u64) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(SpillConfig {
            dir,
            per_process,
            budget: SpillBudget::new(total),
            next_file: AtomicU64::new(0),
        })
    }

    /// A new, already unlinked, segment file.
    fn new_segment_file(&self) -> io::Result<File> {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}.spill", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }

    /// Segments are a quarter of the per-process bound, so reaching the bound
    /// drops about a quarter of the spilled output at once.
    fn segment_size(&self) -> u64 {
        (self.per_process / 4).max(64 * 1024)
    }
}

/// A spilled chunk: where its bytes are.
#[derive(Debug, Clone)]
pub(crate) struct DiskChunk {
    pub seq: u64,
    pub stream: Stream,
    /// Cumulative offset of its first byte in the process's whole output.
    pub start: u64,
    pub len: u64,
    file: Arc<File>,
    offset: u64,
}

impl DiskChunk {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Reads the bytes back (blocking).
    #[cfg(test)]
    pub fn load(&self) -> io::Result<Bytes> {
        Ok(Self::load_all(std::slice::from_ref(self))?.remove(0))
    }

    /// Reads the bytes of `chunks` back (blocking), in order. Chunks that
    /// lie end to end in one file (the usual case: a segment is written in
    /// seq order) are read with one system call into one buffer, which the
    /// returned `Bytes` share.
    pub fn load_all(chunks: &[DiskChunk]) -> io::Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut rest = chunks;
        while let Some(first) = rest.first() {
            let run = 1 + rest.windows(2).take_while(|w| w[1].follows(&w[0])).count();
            let (run, tail) = rest.split_at(run);
            let len: u64 = run.iter().map(|c| c.len).sum();
            let mut buf = vec![0u8; len as usize];
            first.file.read_exact_at(&mut buf, first.offset)?;
            let buf = Bytes::from(buf);
            let mut at = 0usize;
            for c in run {
                out.push(buf.slice(at..at + c.len as usize));
                at += c.len as usize;
            }
            rest = tail;
        }
        Ok(out)
    }

    /// Whether this chunk starts where `prev` ends, in the same file.
    fn follows(&self, prev: &DiskChunk) -> bool {
        Arc::ptr_eq(&self.file, &prev.file) && prev.offset + prev.len == self.offset
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes written to the file.
    len: u64,
    chunks: VecDeque<DiskChunk>,
}

/// A chunk that leaves the ring.
pub(crate) struct Evicted {
    pub seq: u64,
    pub stream: Stream,
    pub start: u64,
    pub data: Bytes,
}

/// One process's spilled output.
#[derive(Debug)]
pub(crate) struct Spill {
    config: Arc<SpillConfig>,
    segments: VecDeque<Segment>,
    /// Bytes in all segments, all reserved from the budget.
    bytes: u64,
}

impl Spill {
    pub fn new(config: Arc<SpillConfig>) -> Self {
        Spill {
            config,
            segments: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Stores a chunk evicted from the ring. Returns `(seq, end offset)` of
    /// every chunk that is lost for good because of it, oldest first: whole
    /// segments dropped to make room, and the chunk itself if it could not be
    /// stored (then nothing older stays either).
    pub fn push(&mut self, chunk: Evicted) -> Vec<(u64, u64)> {
        let len = chunk.data.len() as u64;
        let mut lost = Vec::new();
        if len > self.config.per_process {
            self.drop_all(&mut lost);
            lost.push((chunk.seq, chunk.start + len));
            return lost;
        }
        while self.bytes + len > self.config.per_process {
            self.drop_oldest(&mut lost);
        }
        while !self.config.budget.try_reserve(len) {
            if self.segments.is_empty() {
                // The executor-wide budget is spent by other processes.
                lost.push((chunk.seq, chunk.start + len));
                return lost;
            }
            self.drop_oldest(&mut lost);
        }
        if let Err(err) = self.write(&chunk) {
            tracing::warn!(
                "cannot spill output to {}: {err}",
                self.config.dir.display()
            );
            self.config.budget.release(len);
            self.drop_all(&mut lost);
            lost.push((chunk.seq, chunk.start + len));
            return lost;
        }
        self.bytes += len;
        lost
    }

    fn write(&mut self, chunk: &Evicted) -> io::Result<()> {
        let need_new = self
            .segments
            .back()
            .is_none_or(|s| s.len >= self.config.segment_size());
        if need_new {
            let file = self.config.new_segment_file()?;
            self.segments.push_back(Segment {
                file: Arc::new(file),
                len: 0,
                chunks: VecDeque::new(),
            });
        }
        let segment = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        segment.file.write_all_at(&chunk.data, segment.len)?;
        segment.chunks.push_back(DiskChunk {
            seq: chunk.seq,
            stream: chunk.stream,
            start: chunk.start,
            len: chunk.data.len() as u64,
            file: segment.file.clone(),
            offset: segment.len,
        });
        segment.len += chunk.data.len() as u64;
        Ok(())
    }

    fn drop_oldest(&mut self, lost: &mut Vec<(u64, u64)>) {
        let Some(segment) = self.segments.pop_front() else {
            return;
        };
        let bytes: u64 = segment.chunks.iter().map(|c| c.len).sum();
        self.bytes -= bytes;
        self.config.budget.release(bytes);
        lost.extend(segment.chunks.iter().map(|c| (c.seq, c.end())));
    }

    fn drop_all(&mut self, lost: &mut Vec<(u64, u64)>) {
        while !self.segments.is_empty() {
            self.drop_oldest(lost);
        }
    }

    /// Spilled chunks with a seq greater than `after_seq`, oldest first.
    pub fn after(&self, after_seq: u64) -> impl Iterator<Item = &DiskChunk> {
        self.segments
            .iter()
            .flat_map(|s| s.chunks.iter())
            .skip_while(move |c| c.seq <= after_seq)
    }

    /// Bytes currently spilled.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.config.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, per_process: u64, total: u64) -> Arc<SpillConfig> {
        Arc::new(SpillConfig::new(dir.join("spill"), per_process, total).unwrap())
    }

    fn evicted(seq: u64, start: u64, n: usize) -> Evicted {
        Evicted {
            seq,
            stream: Stream::Stdout,
            start,
            data: Bytes::from(vec![seq as u8; n]),
        }
    }

    #[test]
    fn chunks_across_segments_read_back_together_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 64 KiB (the floor), so 40 chunks of 5000 bytes span
        // several files: runs break at each file boundary.
        let cfg = config(dir.path(), 256 * 1024, 1 << 30);
        let mut spill = Spill::new(cfg);
        let mut start = 0;
        for seq in 1..=40 {
            assert!(spill.push(evicted(seq, start, 5000)).is_empty());
            start += 5000;
        }
        let chunks: Vec<DiskChunk> = spill.after(0).cloned().collect();
        assert!(
            chunks.windows(2).any(|w| !w[1].follows(&w[0])),
            "more than one file"
        );
        let loaded = DiskChunk::load_all(&chunks).unwrap();
        assert_eq!(loaded.len(), chunks.len());
        for (c, data) in chunks.iter().zip(&loaded) {
            assert_eq!(data[..], vec![c.seq as u8; 5000][..], "seq {}", c.seq);
        }
    }

    #[test]
    fn chunks_read_back_byte_exact_and_files_are_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 1 << 30);
        let mut spill = Spill::new(cfg.clone());
        let mut start = 0;
        for seq in 1..=5 {
            assert!(spill.push(evicted(seq, start, 1000)).is_empty());
            start += 1000;
        }
        let got: Vec<_> = spill.after(2).map(|c| (c.seq, c.load().unwrap())).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, 3);
        assert_eq!(got[0].1, vec![3u8; 1000]);
        assert_eq!(got[2].1, vec![5u8; 1000]);
        assert_eq!(cfg.budget.used(), 5000);
        // Nothing is visible in the directory, even while the spill lives.
        assert_eq!(
            std::fs::read_dir(dir.path().join("spill")).unwrap().count(),
            0
        );
        drop(spill);
        assert_eq!(cfg.budget.used(), 0, "dropping a spill returns its budget");
    }

    #[test]
    fn the_per_process_bound_drops_whole_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        // 256 KiB bound: segments of 64 KiB, i.e. 4 chunks of 16 KiB.
        let cfg = config(dir.path(), 256 * 1024, 1 << 30);
        let mut spill = Spill::new(cfg);
        let n = 16 * 1024;
        let mut lost = Vec::new();
        for seq in 1..=17u64 {
            lost.extend(spill.push(evicted(seq, (seq - 1) * n as u64, n)));
        }
        // 17 chunks of 16 KiB do not fit in 256 KiB: the first segment
        // (chunks 1..=4) went when chunk 17 came.
        let seqs: Vec<u64> = lost.iter().map(|l| l.0).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(
            lost.last().unwrap().1,
            4 * n as u64,
            "end offset of chunk 4"
        );
        assert_eq!(spill.after(0).next().unwrap().seq, 5);
        assert!(spill.bytes() <= 256 * 1024);
    }

    #[test]
    fn a_spent_budget_loses_the_oldest_first_and_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 3000);
        let mut a = Spill::new(cfg.clone());
        let mut b = Spill::new(cfg.clone());
        assert!(a.push(evicted(1, 0, 2000)).is_empty());
        // Only 1000 bytes left and b has nothing to give up: b's chunk is lost.
        assert_eq!(b.push(evicted(1, 0, 1500)), vec![(1, 1500)]);
        assert!(b.push(evicted(2, 1500, 1000)).is_empty());
        // a must now drop its own oldest segment to make room.
        assert_eq!(a.push(evicted(2, 2000, 1500)), vec![(1, 2000)]);
        assert_eq!(cfg.budget.used(), 2500);
    }

    #[test]
    fn a_chunk_larger_than_the_bound_is_lost_with_everything_older() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 100 * 1024, 1 << 30);
        let mut spill = Spill::new(cfg);
        assert!(spill.push(evicted(1, 0, 10)).is_empty());
        assert_eq!(
            spill.push(evicted(2, 10, 200 * 1024)),
            vec![(1, 10), (2, 10 + 200 * 1024)]
        );
        assert_eq!(spill.after(0).count(), 0);
    }
}
