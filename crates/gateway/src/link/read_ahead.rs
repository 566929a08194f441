//! `process/read`s sent before anyone asks for them, so that the executor
//! reads and sends the next part of a process's output while the gateway
//! and the client are still busy with the current part.
//!
//! Two readers use them: the SSE pump (`stream`) keeps one [`ReadAhead`]
//! in flight after the read whose chunks it is sending, and `/output`
//! polling (`processes::output`) leaves one per session in
//! [`PollAheads`] after an answer that was cut at its size limit, for the
//! client's next poll, which will most likely ask for what follows.
//!
//! A read-ahead's answer is what the executor's log held when it was read:
//! a valid answer to "the chunks after seq N", as a fresh read would be,
//! only earlier. Its lost-bytes count is the executor's, exact as ever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use execgate_protocol::exec::{method, ProcessReadParams, ProcessReadResult};

use crate::link::RPC_TIMEOUT;
use crate::link::{Link, LinkError};

/// One `process/read` on its own task.
pub struct ReadAhead {
    /// The read's `afterSeq`.
    pub after_seq: u64,
    /// The executor's, for the error if the task itself fails.
    name: String,
    task: tokio::task::JoinHandle<Result<ProcessReadResult, LinkError>>,
}

impl ReadAhead {
    /// Sends it on its own task, so that it proceeds while the caller does
    /// other work. Dropped unawaited, its answer is discarded when it comes.
    pub fn send(link: Arc<Link>, params: ProcessReadParams) -> ReadAhead {
        let after_seq = params.after_seq.unwrap_or(0);
        let name = link.name.clone();
        let task = tokio::spawn(async move {
            link.request::<_, ProcessReadResult>(method::PROCESS_READ, &params, RPC_TIMEOUT)
                .await
        });
        ReadAhead {
            after_seq,
            name,
            task,
        }
    }

    pub async fn result(self) -> Result<ProcessReadResult, LinkError> {
        self.task.await.unwrap_or_else(|e| {
            Err(LinkError::BadResponse {
                name: self.name,
                method: method::PROCESS_READ.into(),
                detail: format!("the read task failed: {e}"),
            })
        })
    }

    /// Gives up on it: its answer (up to `MAX_OUTPUT_BYTES`) is not kept.
    fn cancel(self) {
        self.task.abort();
    }
}

/// At most this many sessions have a poll read-ahead at once, which bounds
/// the memory they hold (each answer is at most 8 MiB): a few clients
/// catching up on a large backlog get them, and a crowd of pollers cannot
/// make the gateway hold many answers nobody may come back for.
pub const MAX_POLL_AHEADS: usize = 4;
/// A read-ahead that its session's client has not come back for within
/// this long is dropped.
pub const POLL_AHEAD_TTL: Duration = Duration::from_secs(30);

/// Per process session (sid), the read-ahead for the client's next poll.
#[derive(Default)]
pub struct PollAheads {
    by_sid: Mutex<HashMap<String, (Instant, ReadAhead)>>,
}

impl PollAheads {
    /// Starts a read for `sid`'s next poll, unless [`MAX_POLL_AHEADS`]
    /// other sessions have one. Replaces the session's previous one.
    pub fn start(&self, sid: &str, link: Arc<Link>, params: ProcessReadParams) {
        let mut map = self.by_sid.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let expired: Vec<String> = map
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > POLL_AHEAD_TTL)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in expired {
            if let Some((_, ahead)) = map.remove(&sid) {
                ahead.cancel();
            }
        }
        if map.len() >= MAX_POLL_AHEADS && !map.contains_key(sid) {
            return;
        }
        let ahead = ReadAhead::send(link, params);
        if let Some((_, old)) = map.insert(sid.to_string(), (now, ahead)) {
            old.cancel();
        }
    }

    /// The session's read-ahead, if it reads after `after_seq`. One that
    /// reads from elsewhere (the client went back, or another client polls
    /// the same session) is dropped.
    pub fn take(&self, sid: &str, after_seq: u64) -> Option<ReadAhead> {
        let (_, ahead) = self
            .by_sid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(sid)?;
        if ahead.after_seq == after_seq {
            Some(ahead)
        } else {
            ahead.cancel();
            None
        }
    }

    /// Sessions with a read-ahead now.
    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.by_sid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgate_protocol::jsonrpc::Encoded;
    use tokio::sync::mpsc;

    fn params(since: u64) -> ProcessReadParams {
        ProcessReadParams {
            process_id: "p".into(),
            after_seq: Some(since),
            max_bytes: Some(1),
            wait_ms: None,
        }
    }

    /// The `afterSeq` of the next `process/read` the link sent.
    async fn sent(out: &mut mpsc::UnboundedReceiver<Encoded>) -> u64 {
        let Some(Encoded::Text(text)) = out.recv().await else {
            panic!("no text frame sent")
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["method"], "process/read");
        v["params"]["afterSeq"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn a_read_ahead_is_taken_only_by_the_poll_it_reads_for() {
        let (tx, mut out) = mpsc::unbounded_channel();
        let link = Link::new("exe_1".into(), "w".into(), "laptop".into(), tx);
        let aheads = PollAheads::default();
        aheads.start("ps_a", link.clone(), params(5));
        assert_eq!(sent(&mut out).await, 5);
        // A poll from elsewhere drops it.
        assert!(aheads.take("ps_a", 4).is_none());
        assert_eq!(aheads.sessions(), 0);
        assert!(aheads.take("ps_a", 5).is_none(), "dropped, not kept");

        aheads.start("ps_a", link.clone(), params(7));
        assert_eq!(sent(&mut out).await, 7);
        let ahead = aheads.take("ps_a", 7).expect("the poll it reads for");
        assert_eq!(ahead.after_seq, 7);
        assert!(aheads.take("ps_a", 7).is_none(), "taken once");
    }

    #[tokio::test]
    async fn at_most_max_poll_aheads_sessions_hold_one() {
        let (tx, mut out) = mpsc::unbounded_channel();
        let link = Link::new("exe_1".into(), "w".into(), "laptop".into(), tx);
        let aheads = PollAheads::default();
        for i in 0..MAX_POLL_AHEADS + 2 {
            aheads.start(&format!("ps_{i}"), link.clone(), params(i as u64));
        }
        assert_eq!(aheads.sessions(), MAX_POLL_AHEADS);
        for i in 0..MAX_POLL_AHEADS {
            assert_eq!(sent(&mut out).await, i as u64);
        }
        assert!(out.try_recv().is_err(), "no read for the sessions refused");
        // A session that has one may replace it.
        aheads.start("ps_0", link.clone(), params(100));
        assert_eq!(sent(&mut out).await, 100);
        assert!(aheads.take("ps_0", 100).is_some());
        assert!(aheads
            .take(&format!("ps_{}", MAX_POLL_AHEADS), MAX_POLL_AHEADS as u64)
            .is_none());
    }
}
