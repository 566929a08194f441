//! How many output bytes each seq of a process carried, as the gateway saw
//! them go by: the basis of exact `lost_bytes` for executors that do not
//! count them (a stock codex).
//!
//! codex keeps the last 1 MiB of a process's output and evicts the oldest
//! chunks without a word: a late `process/read` just starts at a later seq.
//! It does push every chunk as a `process/output` notification (none is
//! dropped), and the link sees each one. So per executor and process the
//! gateway keeps the cumulative byte count at each seq, 8 bytes a seq, and a
//! gap `(after_seq, first returned seq)` costs exactly the bytes recorded
//! for those seqs (exit and close events count 0).
//!
//! What the ledger did not see, it does not guess: seqs before the first one
//! it saw (the gateway restarted, or the ledger was trimmed) and seqs missed
//! while the executor was disconnected make a gap over them *unknown*
//! ([`SeqLedger::lost_between`] answers `None`), which `/output` reports as
//! `truncated:true, lost_bytes_unknown:true`.
//!
//! The ledger lives in the gateway's state (`LinkHost::ledger`), one per executor, so it
//! outlives the links of one gateway run; it is memory only. An executor
//! chooses what it sends, so its ledger is bounded: process ids of at most
//! [`MAX_ID_LEN`] bytes, [`MAX_PROCESSES`] processes, and [`MAX_TOTAL_SEQS`]
//! seqs over all of them (the least recently active process goes first):
//! at most ~13 MiB per executor. It is emptied when the executor comes back
//! with another session (its processes are gone, so their seqs can no
//! longer matter), and an executor that counts lost bytes itself (ours,
//! [ext] `lostBytes`) records nothing in it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per process, at most this many seqs are remembered; older ones are
/// forgotten (a gap over them becomes unknown). 2 MiB of memory.
const MAX_SEQS: usize = 1 << 18;
/// At most this many processes per executor are tracked; the least recently
/// active is forgotten first.
pub const MAX_PROCESSES: usize = 4096;
/// At most this many seqs over all the processes of one executor: 8 MiB.
pub const MAX_TOTAL_SEQS: usize = 1 << 20;
/// Longer process ids are not recorded (the link refuses them anyway).
pub const MAX_ID_LEN: usize = crate::link::MAX_ID_LEN;
/// How long a closed process is remembered. codex 0.169.0 keeps an exited
/// process readable ~80 s; after that `process/read` fails anyway.
const KEEP_CLOSED: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct SeqLedger {
    procs: Mutex<Procs>,
}

#[derive(Default)]
struct Procs {
    by_id: HashMap<String, Process>,
    /// Sum of `ends.len()` over `by_id`.
    seqs: usize,
}

struct Process {
    /// The first seq recorded; every seq from here to `base + ends.len() - 1`
    /// was seen.
    base: u64,
    /// `ends[i]`: output bytes of seqs `base..=base + i`, cumulative.
    ends: Vec<u64>,
    closed_at: Option<Instant>,
    touched: Instant,
}

impl Process {
    fn next_seq(&self) -> u64 {
        self.base + self.ends.len() as u64
    }

    /// Output bytes of seqs `base..=seq`; 0 for `seq == base - 1`.
    fn cumulative(&self, seq: u64) -> u64 {
        if seq < self.base {
            0
        } else {
            self.ends[(seq - self.base) as usize]
        }
    }
}

impl SeqLedger {
    /// Records one event of `process_id`: `bytes` of output at `seq`, or 0
    /// for an exit or close event (`closed` for the latter).
    pub fn record(&self, process_id: &str, seq: u64, bytes: u64, closed: bool) {
        if process_id.len() > MAX_ID_LEN {
            return;
        }
        let now = Instant::now();
        let mut guard = self.procs.lock().unwrap();
        let procs = &mut *guard;
        if !procs.by_id.contains_key(process_id) {
            Self::make_room(procs, now);
        }
        if procs.seqs >= MAX_TOTAL_SEQS {
            Self::evict_oldest(procs, Some(process_id));
        }
        let p = procs
            .by_id
            .entry(process_id.to_string())
            .or_insert_with(|| Process {
                base: seq,
                ends: Vec::new(),
                closed_at: None,
                touched: now,
            });
        p.touched = now;
        let next = p.next_seq();
        if seq < next {
            return; // already recorded
        }
        if seq > next {
            // Events were missed (the executor was disconnected): what came
            // before them can no longer be accounted for.
            p.base = seq;
            procs.seqs -= p.ends.len();
            p.ends.clear();
        }
        let last = p.ends.last().copied().unwrap_or(0);
        p.ends.push(last + bytes);
        procs.seqs += 1;
        if p.ends.len() > MAX_SEQS {
            let drop = MAX_SEQS / 2;
            let dropped = p.ends[drop - 1];
            p.ends.drain(..drop);
            for e in &mut p.ends {
                *e -= dropped;
            }
            p.base += drop as u64;
            procs.seqs -= drop;
            p.ends.shrink_to(MAX_SEQS);
        }
        if closed {
            p.closed_at = Some(now);
        }
    }

    /// Output bytes with a seq in `(after_seq, first_seq)`, or `None` when
    /// the ledger did not see all of those seqs.
    pub fn lost_between(&self, process_id: &str, after_seq: u64, first_seq: u64) -> Option<u64> {
        if first_seq <= after_seq + 1 {
            return Some(0);
        }
        let procs = self.procs.lock().unwrap();
        let p = procs.by_id.get(process_id)?;
        let known = after_seq + 1 >= p.base && first_seq <= p.next_seq();
        known.then(|| p.cumulative(first_seq - 1) - p.cumulative(after_seq))
    }

    /// Forgets everything: the executor's processes are gone (it came back
    /// with another session).
    pub fn clear(&self) {
        *self.procs.lock().unwrap() = Procs::default();
    }

    /// Seqs and process ids held, for tests and their bounds.
    pub fn size(&self) -> (usize, usize) {
        let procs = self.procs.lock().unwrap();
        (procs.by_id.len(), procs.seqs)
    }

    fn make_room(procs: &mut Procs, now: Instant) {
        let before = procs.by_id.len();
        procs
            .by_id
            .retain(|_, p| p.closed_at.is_none_or(|t| now - t < KEEP_CLOSED));
        if procs.by_id.len() != before {
            procs.seqs = procs.by_id.values().map(|p| p.ends.len()).sum();
        }
        while procs.by_id.len() >= MAX_PROCESSES {
            if !Self::evict_oldest(procs, None) {
                break;
            }
        }
    }

    /// Forgets the least recently active process other than `keep`.
    fn evict_oldest(procs: &mut Procs, keep: Option<&str>) -> bool {
        let oldest = procs
            .by_id
            .iter()
            .filter(|(k, _)| Some(k.as_str()) != keep)
            .min_by_key(|(_, p)| p.touched)
            .map(|(k, _)| k.clone());
        match oldest.and_then(|k| procs.by_id.remove(&k)) {
            Some(p) => {
                procs.seqs -= p.ends.len();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_costs_exactly_the_bytes_of_its_output_seqs() {
        let l = SeqLedger::default();
        // output 1 (10 B), exited 2, output 3 (5 B), output 4 (7 B), closed 5
        l.record("p", 1, 10, false);
        l.record("p", 2, 0, false);
        l.record("p", 3, 5, false);
        l.record("p", 4, 7, false);
        l.record("p", 5, 0, true);
        assert_eq!(l.lost_between("p", 0, 1), Some(0));
        assert_eq!(l.lost_between("p", 0, 3), Some(10));
        assert_eq!(l.lost_between("p", 0, 4), Some(15));
        assert_eq!(l.lost_between("p", 1, 4), Some(5));
        assert_eq!(l.lost_between("p", 2, 4), Some(5));
        assert_eq!(l.lost_between("p", 3, 4), Some(0));
        // Beyond what was seen: unknown.
        assert_eq!(l.lost_between("p", 0, 7), None);
        assert_eq!(l.lost_between("q", 0, 3), None);
    }

    #[test]
    fn what_came_before_the_ledger_or_a_missed_event_is_unknown() {
        let l = SeqLedger::default();
        // First seen at seq 40 (the gateway restarted while it ran).
        l.record("p", 40, 8, false);
        l.record("p", 41, 8, false);
        assert_eq!(l.lost_between("p", 0, 41), None);
        assert_eq!(l.lost_between("p", 39, 41), Some(8));
        // Seqs 42..=49 missed during a disconnect.
        l.record("p", 50, 3, false);
        l.record("p", 51, 3, false);
        assert_eq!(l.lost_between("p", 39, 51), None);
        assert_eq!(l.lost_between("p", 49, 51), Some(3));
        // A repeated event does not count twice.
        l.record("p", 51, 3, false);
        assert_eq!(l.lost_between("p", 49, 52), Some(6));
    }

    /// Regression: the ledger was keyed by whatever process id an executor
    /// sent, without a bound (1,500 ids of 1 MiB took 1.5 GB).
    #[test]
    fn what_one_executor_can_make_the_ledger_hold_is_bounded() {
        let l = SeqLedger::default();
        let long = "p".repeat(MAX_ID_LEN + 1);
        l.record(&long, 1, 10, false);
        assert_eq!(l.size(), (0, 0));
        for i in 0..(MAX_PROCESSES + 100) {
            l.record(&format!("p{i}"), 1, 1, false);
        }
        assert_eq!(l.size().0, MAX_PROCESSES);
        // Many seqs over a few processes: the total stays bounded, the
        // active process keeps its own.
        for p in 0..8 {
            for seq in 1..=(MAX_TOTAL_SEQS as u64 / 4) {
                l.record(&format!("big{p}"), seq, 1, false);
            }
        }
        let (procs, seqs) = l.size();
        assert!(seqs <= MAX_TOTAL_SEQS, "{seqs}");
        assert!(procs <= MAX_PROCESSES);
        let last = MAX_TOTAL_SEQS as u64 / 4;
        assert_eq!(l.lost_between("big7", last - 11, last), Some(10));
        l.clear();
        assert_eq!(l.size(), (0, 0));
    }

    #[test]
    fn a_long_process_forgets_its_oldest_seqs() {
        let l = SeqLedger::default();
        for seq in 1..=(MAX_SEQS as u64 + 1) {
            l.record("p", seq, 2, false);
        }
        assert_eq!(l.lost_between("p", 0, 3), None);
        let last = MAX_SEQS as u64 + 1;
        assert_eq!(l.lost_between("p", last - 11, last), Some(20));
    }
}
