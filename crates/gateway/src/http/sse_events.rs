//! Server-Sent Events written straight into the bytes the response sends,
//! for the output stream's SSE sink (`super::stream`'s `sse`).
//!
//! An `output` event's data is `{"stream":…,"data_b64":…}`, and most of
//! its bytes are base64. axum's `Event` takes the data as a string and
//! copies it into its own buffer (scanning it for line breaks), one event
//! per HTTP chunk; at 64 KiB of output per event that was one more pass
//! over every byte and one channel hand-off and socket write per 87 KB
//! (BENCHMARKS.md, "SSE and polling (issue 22)"). Here the base64 is
//! encoded (SIMD) right into the buffer that becomes the HTTP chunk, and
//! the events of one `process/read` share a buffer up to [`BATCH_BYTES`].
//!
//! The text is what axum's `Event::default().event(name).id(id).data(data)`
//! writes, byte for byte (a test checks it): `event: NAME\nid: ID\ndata:
//! DATA\n\n`, with a line break in DATA starting a new `data: ` line.

use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::exec::Stream;

/// A batch of events is handed to the response once it holds this much.
pub(crate) const BATCH_BYTES: usize = 128 * 1024;

/// The keepalive comment (axum's default).
pub(crate) const KEEPALIVE_COMMENT: &[u8] = b":\n\n";

/// Events being written, to go out as one piece of the response body.
#[derive(Default)]
pub(crate) struct Events {
    buf: Vec<u8>,
}

impl Events {
    #[cfg(test)]
    pub fn with_capacity(n: usize) -> Events {
        Events {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Room left in the buffer.
    pub fn spare(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// Makes room for `n` more bytes (exactly `n` in an empty buffer).
    pub fn reserve(&mut self, n: usize) {
        self.buf.reserve(n);
    }

    /// The bytes an `output` event of `data` takes, at most (for sizing a
    /// buffer).
    pub fn output_size(data: &Blob) -> usize {
        let body = match data {
            Blob::Raw(b) => b.len().div_ceil(3) * 4,
            // Escaped by serde: at most 6 bytes per character.
            Blob::Base64(s) => s.len() + 2,
        };
        body + 96
    }

    /// An `output` event: id `seq`, data `{"stream":…,"data_b64":…}`.
    pub fn output(&mut self, seq: u64, stream: Stream, data: &Blob) {
        self.head("output", Some(seq));
        self.buf.extend_from_slice(b"data: {\"stream\":\"");
        self.buf.extend_from_slice(stream.as_str().as_bytes());
        self.buf.extend_from_slice(b"\",\"data_b64\":");
        match data {
            Blob::Raw(bytes) => {
                self.buf.reserve(bytes.len().div_ceil(3) * 4 + 5);
                self.buf.push(b'"');
                base64_simd::STANDARD.encode_append(bytes, &mut self.buf);
                self.buf.push(b'"');
            }
            // An executor's own text (a stock codex): escaped like any
            // string, which leaves no line break in it.
            Blob::Base64(text) => {
                let json = serde_json::to_string(text).unwrap_or_default();
                self.buf.extend_from_slice(json.as_bytes());
            }
        }
        self.buf.extend_from_slice(b"}\n\n");
    }

    /// Any other event: `data` split into `data: ` lines at line breaks,
    /// as axum does (which writes no `data` line for empty data).
    pub fn event(&mut self, name: &str, id: Option<u64>, data: &str) {
        self.head(name, id);
        if data.is_empty() {
            self.buf.push(b'\n');
            return;
        }
        self.buf.extend_from_slice(b"data: ");
        let data = data.as_bytes();
        let mut from = 0;
        let breaks = data
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n' || b == b'\r');
        for (at, _) in breaks {
            self.buf.extend_from_slice(&data[from..=at]);
            self.buf.extend_from_slice(b"data: ");
            from = at + 1;
        }
        self.buf.extend_from_slice(&data[from..]);
        self.buf.extend_from_slice(b"\n\n");
    }

    fn head(&mut self, name: &str, id: Option<u64>) {
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'\n');
        if let Some(id) = id {
            self.buf.extend_from_slice(b"id: ");
            self.buf.extend_from_slice(id.to_string().as_bytes());
            self.buf.push(b'\n');
        }
    }

    /// The events written so far, as one piece of the body.
    pub fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::sse::{Event, Sse};
    use axum::response::IntoResponse;
    use std::convert::Infallible;

    /// The text axum's `Sse` sends for `events`.
    async fn axum_text(events: Vec<Event>) -> String {
        let stream = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
        let body = Sse::new(stream).into_response().into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// axum's data for an output event, as the stream wrote it before.
    fn output_data(stream: Stream, data: &Blob) -> String {
        let mut out = String::from("{");
        crate::http::processes::push_chunk_fields(&mut out, stream, data);
        out.push('}');
        out
    }

    #[tokio::test]
    async fn events_are_axums_text_byte_for_byte() {
        let blobs = [
            (
                7,
                Stream::Stdout,
                Blob::raw(&b"\0line\n\"quoted\"\r\xff"[..]),
            ),
            (8, Stream::Stderr, Blob::raw(&b""[..])),
            (9, Stream::Pty, Blob::raw(vec![0xabu8; 100_000])),
            // A stock codex's own text, even one that is not base64.
            (10, Stream::Stdout, Blob::Base64("AAEC".into())),
            (11, Stream::Stdout, Blob::Base64("a\"b\nc\r".into())),
        ];
        let others = [
            ("lost", Some(12), r#"{"from_seq":12,"to_seq":12,"bytes":5}"#),
            ("exit", Some(u64::MAX), r#"{"exit_code":null}"#),
            (
                "error",
                None,
                "{\"code\":\"x\",\"message\":\"two\nlines\r\nand\rmore\"}",
            ),
            ("error", None, ""),
        ];
        let mut ours = Events::default();
        let mut theirs = Vec::new();
        for (seq, stream, blob) in &blobs {
            let before = ours.len();
            ours.output(*seq, *stream, blob);
            assert!(ours.len() - before <= Events::output_size(blob));
            theirs.push(
                Event::default()
                    .event("output")
                    .id(seq.to_string())
                    .data(output_data(*stream, blob)),
            );
        }
        for (name, id, data) in others {
            ours.event(name, id, data);
            let mut event = Event::default().event(name);
            if let Some(id) = id {
                event = event.id(id.to_string());
            }
            theirs.push(event.data(data));
        }
        let ours = ours.take();
        assert_eq!(
            String::from_utf8(ours.to_vec()).unwrap(),
            axum_text(theirs).await
        );
    }

    #[test]
    fn take_empties_the_buffer() {
        let mut events = Events::with_capacity(10);
        assert!(events.is_empty());
        events.event("exit", Some(1), "{}");
        assert_eq!(&events.take()[..], b"event: exit\nid: 1\ndata: {}\n\n");
        assert!(events.is_empty());
        assert!(events.take().is_empty());
    }

    #[tokio::test]
    async fn the_keepalive_is_axums() {
        let text = axum_text(vec![Event::DEFAULT_KEEP_ALIVE]).await;
        assert_eq!(text.as_bytes(), KEEPALIVE_COMMENT);
    }
}
