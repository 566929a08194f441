//! Progress of a long call, for whoever asked for it (MCP's
//! `notifications/progress` when a client sends a `progressToken`): `shell`
//! and custom tools report their output as it arrives.
//!
//! The reporter travels in a task-local ([`with_progress`]) rather than
//! through every tool's signature: only the MCP handler sets one, and a
//! call without one (REST) reports nothing and pays one task-local lookup.
//! Updates go through an unbounded channel in order; the MCP handler sends
//! each as a notification, all before the call's answer.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// One update: the output so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressUpdate {
    /// Bytes of output (stdout and stderr) so far; strictly increasing from
    /// one update to the next, as MCP asks of `progress`.
    pub output_bytes: u64,
    /// The last line of output seen (at most [`MESSAGE_CHARS`] characters).
    pub message: String,
}

/// Where updates go.
#[derive(Clone)]
pub struct Progress(pub mpsc::UnboundedSender<ProgressUpdate>);

tokio::task_local! {
    static PROGRESS: Progress;
}

/// Runs `f` with `progress` as the reporter of the calls it makes.
pub async fn with_progress<F: Future>(progress: Progress, f: F) -> F::Output {
    PROGRESS.scope(progress, f).await
}

/// At most one update per this long (the last one is always sent).
const EVERY: Duration = Duration::from_millis(200);
/// The longest message.
pub const MESSAGE_CHARS: usize = 200;

/// Counts a call's output and sends updates, at most one per [`EVERY`];
/// [`Reporter::flush`] sends what is left at the end.
pub(crate) struct Reporter {
    to: Progress,
    total: u64,
    sent: u64,
    last_sent: Option<Instant>,
    last_line: Vec<u8>,
}

impl Reporter {
    /// The reporter of the current call, if its caller asked for progress.
    pub fn current() -> Option<Reporter> {
        PROGRESS.try_with(Progress::clone).ok().map(|to| Reporter {
            to,
            total: 0,
            sent: 0,
            last_sent: None,
            last_line: Vec::new(),
        })
    }

    pub fn output(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.total += data.len() as u64;
        // The last non-empty line of what arrived (or the tail of a line
        // still being written).
        let trimmed = data.trim_ascii_end();
        if !trimmed.is_empty() {
            let start = trimmed
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            self.last_line.clear();
            self.last_line.extend_from_slice(&trimmed[start..]);
        }
        if self.last_sent.is_none_or(|at| at.elapsed() >= EVERY) {
            self.send();
        }
    }

    /// Sends the output not yet reported.
    pub fn flush(&mut self) {
        if self.total > self.sent {
            self.send();
        }
    }

    fn send(&mut self) {
        let line = String::from_utf8_lossy(&self.last_line);
        let message: String = line.chars().take(MESSAGE_CHARS).collect();
        let _ = self.to.0.send(ProgressUpdate {
            output_bytes: self.total,
            message,
        });
        self.sent = self.total;
        self.last_sent = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn updates_increase_are_throttled_and_flushed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        with_progress(Progress(tx), async {
            let mut r = Reporter::current().expect("a reporter in scope");
            r.output(b"one\n");
            r.output(b"two\n");
            r.output(b"");
            r.flush();
            r.flush();
        })
        .await;
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                ProgressUpdate {
                    output_bytes: 4,
                    message: "one".into()
                },
                ProgressUpdate {
                    output_bytes: 8,
                    message: "two".into()
                },
            ]
        );
        assert!(Reporter::current().is_none(), "no reporter out of scope");
    }
}
