//! A small Server-Sent Events reader for the stream tests: just enough of
//! the format (`event:`, `id:`, `data:`, comments) that axum writes.

use std::time::Duration;

use crate::harness::{stream_request, Api};

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<u64>,
    pub data: serde_json::Value,
}

pub struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Keepalive comments seen.
    pub comments: usize,
}

impl SseReader {
    /// Opens `/processes/{sid}/stream`, with `Last-Event-ID` and/or `?since=`.
    pub async fn open(
        api: &Api,
        sid: &str,
        last_event_id: Option<u64>,
        since: Option<u64>,
    ) -> SseReader {
        let query = since.map(|n| format!("?since={n}")).unwrap_or_default();
        let mut req = stream_request(api, sid, &query);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("the stream opens");
        assert_eq!(resp.status(), 200, "stream status");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader {
            resp,
            buf: Vec::new(),
            comments: 0,
        }
    }

    /// The next event; `None` when the server ended the stream. Panics if
    /// nothing comes for `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<SseEvent> {
        loop {
            if let Some(pos) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                if let Some(e) = self.parse(&block) {
                    return Some(e);
                }
                continue;
            }
            let chunk = tokio::time::timeout(timeout, self.resp.chunk())
                .await
                .expect("an SSE event within the timeout")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => return None,
            }
        }
    }

    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(Duration::from_secs(20)).await
    }

    fn parse(&mut self, block: &[u8]) -> Option<SseEvent> {
        let text = String::from_utf8(block.to_vec()).expect("SSE is UTF-8");
        let mut event = String::from("message");
        let mut id = None;
        let mut data = String::new();
        let mut any = false;
        for line in text.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "event" => event = value.to_string(),
                "id" => id = Some(value.parse().expect("numeric event id")),
                "data" => data.push_str(value),
                _ => {}
            }
        }
        any.then(|| SseEvent {
            event,
            id,
            data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
