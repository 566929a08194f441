//! A small public window on the output log, for the Criterion benchmark in
//! `benches/output_log.rs` only. Not a stable API (hidden from the docs).
//!
//! The log itself stays `pub(crate)`: its types carry spill and lock
//! details that no other crate should build on. Benchmarks are separate
//! crates, so they need a public path; this wrapper exposes exactly the two
//! hot operations, through the same shared (locked) log the executor uses:
//! append, for every chunk of child output, and read, for every
//! `process/read`.

use std::time::Duration;

use bytes::Bytes;
use execgate_protocol::exec::Stream;
use futures_util::FutureExt;

use crate::output::{OutputLog as Log, ReadSlice, SharedLog};

/// The in-memory output log of one process (no spill), behind its lock.
pub struct OutputLog(SharedLog);

impl OutputLog {
    /// A log that retains `cap` bytes of output in memory.
    pub fn new(cap: usize) -> Self {
        OutputLog(SharedLog::new(Log::new(cap, 1)))
    }

    /// Appends a stdout chunk and returns its seq.
    pub fn push_stdout(&self, data: Bytes) -> u64 {
        self.0.update(|log| log.push_chunk(Stream::Stdout, data))
    }

    /// `process/read` without waiting, after `after_seq`, up to
    /// `max_bytes`; returns (chunks, bytes).
    pub fn read(&self, after_seq: u64, max_bytes: usize) -> (usize, usize) {
        let slice = self
            .0
            .read(after_seq, max_bytes, Duration::ZERO)
            .now_or_never()
            .expect("a read that does not wait completes at once")
            .into_slice();
        let bytes = slice.chunks.iter().map(|c| c.data.len()).sum();
        (slice.chunks.len(), bytes)
    }
}

/// A read answers a slice, or an I/O result of one where it can load
/// spilled output from disk (this log never spills).
trait IntoSlice {
    fn into_slice(self) -> ReadSlice;
}

impl IntoSlice for ReadSlice {
    fn into_slice(self) -> ReadSlice {
        self
    }
}

impl IntoSlice for std::io::Result<ReadSlice> {
    fn into_slice(self) -> ReadSlice {
        self.expect("an in-memory read does not fail")
    }
}
