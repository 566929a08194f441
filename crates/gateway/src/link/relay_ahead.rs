//! The owner's read-ahead on a peer channel: after relaying a large
//! `process/read` answer to a peer replica, the owner sends the next read
//! (after the answer's last seq, with the same `maxBytes`) to its executor
//! at once, and answers the peer's next read of that process from it.
//!
//! Why: a non-owner reads a process's output (SSE, the binary stream,
//! `/output` catching up) by `process/read`s, one of them ahead of the
//! chunks it is sending (`link::read_ahead`). Through the channel each read
//! crosses two sockets, each store-and-forward of up to 4 MiB, so its round
//! trip was about twice the owner's, and with one read in flight the
//! non-owner waited on it: SSE through a non-owner at 0.62-0.72x of the
//! owner's (BENCHMARKS.md, replicas). With the owner reading ahead, the
//! executor reads part N + 2 while the owner sends part N + 1 and the
//! non-owner encodes part N.
//!
//! Nothing changes on the wire: the peer asks as before, and a read-ahead's
//! answer is what the executor's log held when it was read, a valid answer
//! to "the chunks after seq N" as a fresh read would be, only earlier (its
//! lost-bytes count is the executor's, exact as ever). A peer of an older
//! version is served the same way.
//!
//! Bounded: one read-ahead per process, at most [`MAX_AHEADS`] processes per
//! channel, each answer at most the read's `maxBytes` (the executor caps it
//! at 8 MiB); one not asked for within [`AHEAD_TTL`] is dropped unused. Only
//! an answer of at least half its `maxBytes` (cut at its limit: more
//! probably follows) starts one, so a process that is followed live (small
//! reads) costs the executor no extra read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use execgate_protocol::exec::method;
use serde_json::{json, Value};

use crate::link::{Answer, Link, LinkError};

/// Processes of one channel with a read-ahead at once.
pub const MAX_AHEADS: usize = 4;
/// A read-ahead the peer has not asked for within this long is dropped.
pub const AHEAD_TTL: Duration = Duration::from_secs(10);
/// How long the owner waits for the executor's answer to a read-ahead (it
/// does not wait for output: no `waitMs`).
const AHEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// What identifies a `process/read`, as the peer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadKey {
    process_id: String,
    after_seq: u64,
    max_bytes: Option<u64>,
}

impl ReadKey {
    /// The key of a `process/read`'s params, and its `waitMs` (0 if none).
    fn of(params: &Value) -> Option<(ReadKey, u64)> {
        let key = ReadKey {
            process_id: params.get("processId")?.as_str()?.to_string(),
            after_seq: match params.get("afterSeq") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64()?,
            },
            max_bytes: match params.get("maxBytes") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64()?),
            },
        };
        let wait = params.get("waitMs").and_then(Value::as_u64).unwrap_or(0);
        Some((key, wait))
    }
}

/// A read sent ahead; aborted if dropped unused.
struct Ahead {
    key: ReadKey,
    at: Instant,
    task: tokio::task::JoinHandle<Result<Answer, LinkError>>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A channel's read-ahead, per process id.
#[derive(Default)]
pub struct RelayAheads {
    by_process: Mutex<HashMap<String, Ahead>>,
}

impl RelayAheads {
    /// Relays `method` onto `link` as `Link::relay` does; a `process/read`
    /// is answered from the read-ahead made for it when there is one, and a
    /// large answer starts the next one.
    pub async fn relay(
        &self,
        link: &Arc<Link>,
        method: &str,
        params: Value,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Answer, LinkError> {
        let read = (method == method::PROCESS_READ)
            .then(|| ReadKey::of(&params))
            .flatten();
        let Some((key, wait_ms)) = read else {
            return link.relay(method, params, payload, timeout).await;
        };
        let answer = match self.take(&key) {
            Some(mut ahead) => match (&mut ahead.task).await {
                // A read that would wait for output is not answered by an
                // empty read made earlier.
                Ok(Ok(answer))
                    if answer_bytes(&answer).is_some_and(|(n, _)| n > 0 || wait_ms == 0) =>
                {
                    Ok(answer)
                }
                _ => link.relay(method, params, payload, timeout).await,
            },
            None => link.relay(method, params, payload, timeout).await,
        };
        if let Ok(ok) = &answer {
            if let (Some(max), Some((bytes, Some(last)))) = (key.max_bytes, answer_bytes(ok)) {
                if max > 0 && bytes >= max.div_ceil(2) {
                    self.start(
                        link,
                        ReadKey {
                            process_id: key.process_id,
                            after_seq: last.max(key.after_seq),
                            max_bytes: key.max_bytes,
                        },
                    );
                }
            }
        }
        answer
    }

    /// The process's read-ahead if it is the one `key` asks for and fresh;
    /// any other read of the process drops it.
    fn take(&self, key: &ReadKey) -> Option<Ahead> {
        let ahead = self.by_process.lock().unwrap().remove(&key.process_id)?;
        (ahead.key == *key && ahead.at.elapsed() < AHEAD_TTL).then_some(ahead)
    }

    /// Sends the read of `key` ahead, unless [`MAX_AHEADS`] other
    /// processes have one.
    fn start(&self, link: &Arc<Link>, key: ReadKey) {
        let mut map = self.by_process.lock().unwrap();
        map.retain(|_, ahead| ahead.at.elapsed() < AHEAD_TTL);
        if map.len() >= MAX_AHEADS && !map.contains_key(&key.process_id) {
            return;
        }
        let params = json!({
            "processId": key.process_id,
            "afterSeq": key.after_seq,
            "maxBytes": key.max_bytes,
        });
        let task = {
            let link = link.clone();
            tokio::spawn(async move {
                link.relay(method::PROCESS_READ, params, Bytes::new(), AHEAD_TIMEOUT)
                    .await
            })
        };
        let ahead = Ahead {
            key: key.clone(),
            at: Instant::now(),
            task,
        };
        map.insert(key.process_id, ahead);
    }

    /// Processes with a read-ahead now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_process.lock().unwrap().len()
    }
}

/// Of a successful `process/read` answer: the output bytes it carries (raw
/// in the payload, or base64 in its chunks) and its last chunk's seq.
fn answer_bytes(answer: &Answer) -> Option<(u64, Option<u64>)> {
    let (Ok(result), payload) = answer else {
        return None;
    };
    let chunks = result.get("chunks")?.as_array()?;
    let last = chunks
        .last()
        .and_then(|c| c.get("seq"))
        .and_then(Value::as_u64);
    let bytes = if payload.is_empty() {
        chunks
            .iter()
            .filter_map(|c| c.get("chunk").and_then(Value::as_str))
            .map(|b64| b64.len() as u64 / 4 * 3)
            .sum()
    } else {
        payload.len() as u64
    };
    Some((bytes, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgate_protocol::jsonrpc::{Encoded, Message};
    use tokio::sync::mpsc;

    /// The next request the link sent: its id and params.
    async fn sent(out: &mut mpsc::UnboundedReceiver<Encoded>) -> (i64, Value) {
        let frame = tokio::time::timeout(Duration::from_secs(5), out.recv()).await;
        let Ok(Some(Encoded::Text(text))) = frame else {
            panic!("no text frame sent")
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["method"], "process/read");
        (v["id"].as_i64().unwrap(), v["params"].clone())
    }

    /// The executor's answer to request `id`: `n` bytes of base64 output
    /// in one chunk of seq `seq` (none when `n` is 0).
    fn answer(link: &Link, id: i64, seq: u64, n: usize) {
        use base64::Engine;
        let chunks = if n == 0 {
            json!([])
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(vec![0xffu8; n]);
            json!([{"seq": seq, "stream": "stdout", "chunk": b64}])
        };
        let result = json!({"chunks": chunks, "nextSeq": seq + 1, "closed": false});
        let frame = Message::Response {
            id: execgate_protocol::jsonrpc::Id::Num(id),
            result: Ok(result),
        }
        .encode();
        link.dispatch(frame.as_bytes());
    }

    fn read(after: u64, max: u64) -> Value {
        json!({"processId": "p", "afterSeq": after, "maxBytes": max})
    }

    fn last_seq(a: &Answer) -> u64 {
        answer_bytes(a).unwrap().1.unwrap()
    }

    #[tokio::test]
    async fn a_large_answer_reads_ahead_and_the_next_read_takes_it() {
        let (tx, mut out) = mpsc::unbounded_channel();
        let link = Link::new("exe_1".into(), "w".into(), "laptop".into(), tx);
        let aheads = Arc::new(RelayAheads::default());
        let t = Duration::from_secs(5);
        let relay = |params: Value| {
            let (aheads, link) = (aheads.clone(), link.clone());
            tokio::spawn(async move {
                aheads
                    .relay(&link, "process/read", params, Bytes::new(), t)
                    .await
                    .unwrap()
            })
        };

        // A full answer (12 of 12 bytes): the next read goes out at once.
        let first = relay(read(0, 12));
        let (id, params) = sent(&mut out).await;
        assert_eq!(params["afterSeq"], 0);
        answer(&link, id, 1, 12);
        assert_eq!(last_seq(&first.await.unwrap()), 1);
        let (id, params) = sent(&mut out).await;
        assert_eq!(
            (params["afterSeq"].as_u64(), params["maxBytes"].as_u64()),
            (Some(1), Some(12))
        );
        assert!(params.get("waitMs").is_none(), "a read-ahead never waits");
        answer(&link, id, 2, 6);
        // The peer's read after seq 1 is answered by it, with no new read
        // for seq 1; its answer (6 of 12 bytes) starts the next one.
        assert_eq!(last_seq(&relay(read(1, 12)).await.unwrap()), 2);
        let (id, params) = sent(&mut out).await;
        assert_eq!(params["afterSeq"], 2);
        assert_eq!(aheads.len(), 1);

        // A read from elsewhere drops it and reads afresh.
        let other = relay(read(0, 12));
        let (id0, params) = sent(&mut out).await;
        assert_eq!(params["afterSeq"], 0);
        assert_eq!(aheads.len(), 0);
        answer(&link, id, 3, 12); // the dropped read's late answer: ignored
        answer(&link, id0, 1, 3);
        assert_eq!(last_seq(&other.await.unwrap()), 1);
        // A small answer (3 of 12 bytes) reads nothing ahead.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(out.try_recv().is_err());
        assert_eq!(aheads.len(), 0);
    }

    #[tokio::test]
    async fn a_waiting_read_is_not_answered_by_an_empty_read_ahead() {
        let (tx, mut out) = mpsc::unbounded_channel();
        let link = Link::new("exe_1".into(), "w".into(), "laptop".into(), tx);
        let aheads = Arc::new(RelayAheads::default());
        let t = Duration::from_secs(5);
        let first = {
            let (aheads, link) = (aheads.clone(), link.clone());
            tokio::spawn(async move {
                aheads
                    .relay(&link, "process/read", read(0, 8), Bytes::new(), t)
                    .await
            })
        };
        let (id, _) = sent(&mut out).await;
        answer(&link, id, 1, 8);
        first.await.unwrap().unwrap().0.unwrap();
        let (id, _) = sent(&mut out).await;
        answer(&link, id, 1, 0); // nothing more yet
        let mut waiting = read(1, 8);
        waiting["waitMs"] = json!(1000);
        let next = {
            let (aheads, link) = (aheads.clone(), link.clone());
            tokio::spawn(async move {
                aheads
                    .relay(&link, "process/read", waiting, Bytes::new(), t)
                    .await
            })
        };
        // Sent to the executor, with its wait.
        let (id, params) = sent(&mut out).await;
        assert_eq!(
            (params["afterSeq"].as_u64(), params["waitMs"].as_u64()),
            (Some(1), Some(1000))
        );
        answer(&link, id, 2, 1);
        assert_eq!(last_seq(&next.await.unwrap().unwrap()), 2);
    }

    #[test]
    fn at_most_max_aheads_processes_hold_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, _out) = mpsc::unbounded_channel();
            let link = Link::new("exe_1".into(), "w".into(), "laptop".into(), tx);
            let aheads = RelayAheads::default();
            for i in 0..MAX_AHEADS + 2 {
                aheads.start(
                    &link,
                    ReadKey {
                        process_id: format!("p{i}"),
                        after_seq: 1,
                        max_bytes: Some(8),
                    },
                );
            }
            assert_eq!(aheads.len(), MAX_AHEADS);
        });
    }
}
