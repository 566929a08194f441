//! The binary form of `GET /api/connectors/processes/{sid}/stream`, for a
//! client whose `Accept` prefers `application/octet-stream` over
//! `text/event-stream` ([`wants_binary`]): length-prefixed frames with the
//! output bytes raw (the framing: `execgate_protocol::output_frames`),
//! instead of base64 in JSON. The executor link already carries the bytes
//! raw, so from the executor to the client nobody encodes or decodes them.
//!
//! The stream's one pump ([`super::Pump`]) writes into [`Frames`], this
//! form's sink, so that both forms deliver exactly the same seqs. Instead
//! of one event per chunk it writes the chunks of one read (or the
//! notifications already queued, up to 1 MiB) into one buffer, consecutive
//! chunks of a stream coalesced into one frame, and that buffer goes out
//! as one body chunk. This file owns that sink and the negotiation.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use execgate_protocol::blob::Blob;
use execgate_protocol::exec::Stream as ExecStream;
use execgate_protocol::output_frames::{self as frames, HEADER_LEN};

use super::Sink;
use crate::http::error::ApiError;

/// Whether the request's `Accept` prefers the binary form: it names
/// `application/octet-stream` with a q-value above that of
/// `text/event-stream` (named, or through `text/*` or `*/*`), or equal to
/// it and listed first. Anything else is SSE, as before. An `Accept` that
/// is not a list of media ranges (not visible ASCII, a range without `/`,
/// a q that is not a qvalue) is 400 `bad_request`.
pub fn wants_binary(headers: &HeaderMap) -> Result<bool, ApiError> {
    // (q in thousandths, position) of each form's most specific range.
    let mut bin: Option<(u16, usize)> = None;
    let mut sse: Option<(u8, u16, usize)> = None;
    let mut pos = 0;
    for value in headers.get_all(header::ACCEPT) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("Accept must be visible ASCII"))?;
        for range in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (media, q) = parse_range(range)?;
            pos += 1;
            let media = media.to_ascii_lowercase();
            // Binary only when named: `*/*`, what most clients send, stays SSE.
            if media == frames::CONTENT_TYPE {
                bin.get_or_insert((q, pos));
            }
            let rank = match media.as_str() {
                "text/event-stream" => 3,
                "text/*" => 2,
                "*/*" => 1,
                _ => 0,
            };
            if rank > 0 && sse.is_none_or(|(r, _, _)| rank > r) {
                sse = Some((rank, q, pos));
            }
        }
    }
    Ok(match (bin, sse) {
        (Some((0, _)), _) => false,
        (Some(_), None) => true,
        (Some((bq, bp)), Some((_, sq, sp))) => bq > sq || (bq == sq && bp < sp),
        (None, _) => false,
    })
}

/// A media range's `type/subtype` and its q-value in thousandths.
fn parse_range(range: &str) -> Result<(&str, u16), ApiError> {
    let bad = || ApiError::bad_request(format!("Accept: '{range}' is not a media range"));
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or_default().trim();
    let (ty, sub) = media.split_once('/').ok_or_else(bad)?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(ty) || !token(sub) {
        return Err(bad());
    }
    let mut q = 1000;
    for p in parts {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("q") {
            q = qvalue(value.trim()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Accept: '{range}' has a q that is not a qvalue (0 to 1, three decimals at most)"
                ))
            })?;
        }
    }
    Ok((media, q))
}

/// RFC 9110's qvalue, in thousandths.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// Frames being written into one buffer; consecutive output of one stream
/// goes into one frame (its header's seq and length patched as it grows).
#[derive(Default)]
pub(super) struct Frames {
    buf: BytesMut,
    /// Where the open output frame's header is, and its type.
    open: Option<(usize, u8)>,
}

impl Frames {
    fn put_output(&mut self, stream: ExecStream, seq: u64, data: &[u8]) {
        let kind = frames::output_type(stream);
        if let Some((at, k)) = self.open {
            let len = self.buf.len() - at - HEADER_LEN;
            if k == kind && len + data.len() <= frames::MAX_PAYLOAD {
                self.buf[at + 1..at + 9].copy_from_slice(&seq.to_be_bytes());
                self.buf[at + 9..at + 13]
                    .copy_from_slice(&((len + data.len()) as u32).to_be_bytes());
                self.buf.extend_from_slice(data);
                return;
            }
        }
        self.open = Some((self.buf.len(), kind));
        self.buf.reserve(HEADER_LEN + data.len());
        frames::put_frame(&mut self.buf, kind, seq, data);
    }

    fn control(&mut self, kind: u8, seq: u64, payload: &[u8]) {
        self.open = None;
        frames::put_frame(&mut self.buf, kind, seq, payload);
    }
}

impl Sink for Frames {
    /// Buffers, each up to one read (4 MiB).
    const CLIENT_QUEUE: usize = 4;
    /// A read's frames go out as one buffer.
    const READ_PIECE: usize = usize::MAX;
    const PUSH_BATCH: usize = 1 << 20;

    fn response(body: Body) -> Response {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(frames::CONTENT_TYPE),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (header::VARY, HeaderValue::from_static("accept")),
            ],
            body,
        )
            .into_response()
    }

    fn keepalive() -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN);
        frames::put_header(&mut b, frames::KEEPALIVE, 0, 0);
        b.freeze()
    }

    fn output_size(data: &Blob) -> usize {
        data.len() as usize
    }

    /// One buffer for the whole read.
    fn start_read(&mut self, size: usize) {
        self.buf.reserve(size + HEADER_LEN * 2);
    }

    /// Raw bytes: from an execgate executor as they came, from a stock
    /// codex decoded from its base64 (`None` when it is not base64).
    fn output(&mut self, seq: u64, stream: ExecStream, data: &Blob, _rest: usize) -> Option<u64> {
        let data = data.to_bytes().ok()?;
        self.put_output(stream, seq, &data);
        Some(data.len() as u64)
    }

    fn lost(&mut self, to_seq: u64, data: &str) {
        self.control(frames::LOST, to_seq, data.as_bytes());
    }

    fn exit(&mut self, last_seq: u64, data: &str) {
        self.control(frames::EXIT, last_seq, data.as_bytes());
    }

    fn error(&mut self, delivered: u64, data: &str) {
        self.control(frames::ERROR, delivered, data.as_bytes());
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    /// The buffer, leaving a new one (as the next read reserves its own).
    fn take(&mut self) -> Bytes {
        self.open = None;
        std::mem::take(&mut self.buf).freeze()
    }
}
