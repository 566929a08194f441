//! The SSE sink of the stream's pump ([`super::Pump`]): the answer
//! `text/event-stream`, each step an event of [`crate::http::sse_events`]
//! (`output` per chunk, `lost`, `exit`, `error`), written straight into
//! the bytes of a body piece. The `output` events of one `process/read` go
//! out in pieces of up to [`BATCH_BYTES`]; a pushed one goes out on its
//! own. A keepalive comment after 15 s without an event, as axum's `Sse`.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::exec::Stream as ExecStream;

use super::Sink;
use crate::http::sse_events::{Events, BATCH_BYTES, KEEPALIVE_COMMENT};

/// The events written since the last piece went out.
#[derive(Default)]
pub(super) struct Sse {
    events: Events,
}

impl Sink for Sse {
    /// Pieces of events, each up to `BATCH_BYTES`.
    const CLIENT_QUEUE: usize = 16;
    const READ_PIECE: usize = BATCH_BYTES;
    /// Each notification's event goes out on its own.
    const PUSH_BATCH: usize = 0;

    fn response(body: Body) -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response()
    }

    fn keepalive() -> Bytes {
        Bytes::from_static(KEEPALIVE_COMMENT)
    }

    fn output_size(data: &Blob) -> usize {
        Events::output_size(data)
    }

    fn start_read(&mut self, _size: usize) {}

    /// Base64 in JSON: a stock codex's own text goes out as it came.
    fn output(&mut self, seq: u64, stream: ExecStream, data: &Blob, rest: usize) -> Option<u64> {
        let size = Events::output_size(data);
        if self.events.spare() < size {
            // A piece's buffer, sized once: this event and the rest of the
            // read, up to a piece.
            self.events.reserve((rest + size).min(BATCH_BYTES + size));
        }
        self.events.output(seq, stream, data);
        Some(data.len())
    }

    fn lost(&mut self, to_seq: u64, data: &str) {
        self.events.event("lost", Some(to_seq), data);
    }

    fn exit(&mut self, last_seq: u64, data: &str) {
        self.events.event("exit", Some(last_seq), data);
    }

    /// No id: the client resumes after the last event it got.
    fn error(&mut self, _delivered: u64, data: &str) {
        self.events.event("error", None, data);
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    fn take(&mut self) -> Bytes {
        self.events.take()
    }
}
