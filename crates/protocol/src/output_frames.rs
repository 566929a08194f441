//! The binary form of `GET /api/connectors/processes/{sid}/stream`: the
//! answer to `Accept: application/octet-stream` (preferred over
//! `text/event-stream`), `Content-Type: application/octet-stream`.
//!
//! The body is a sequence of frames, each a 13-byte header then a payload:
//!
//! ```text
//! [u8 type][u64 big-endian: seq][u32 big-endian: n][n bytes: payload]
//! ```
//!
//! | type | name | seq | payload |
//! |---|---|---|---|
//! | 0 | keepalive | 0 | empty (every 15 s of silence) |
//! | 1 | stdout | the last seq it carries | raw output bytes |
//! | 2 | stderr | the last seq it carries | raw output bytes |
//! | 3 | pty | the last seq it carries | raw output bytes |
//! | 4 | lost | `to_seq` | JSON `{"from_seq","to_seq","bytes"}` (`bytes` null when unknown) |
//! | 5 | exit | the last seq | JSON `{"exit_code"}` (null when unknown); the stream ends |
//! | 6 | error | the last seq delivered | JSON `{"code","message"}`; the stream ends |
//!
//! The JSON payloads are the `data` of the SSE events of the same names,
//! byte for byte. An output frame may carry several consecutive chunks of
//! one stream (the gateway coalesces them): it carries every output byte
//! with a seq after the previous frame's seq, up to its own. So a client's
//! cursor is the `seq` of the last whole frame it read, and it resumes
//! with `?since=` (or `Last-Event-ID`) set to it, exactly as with SSE; a
//! partly received frame is discarded. A payload is at most
//! [`MAX_PAYLOAD`] bytes. A client skips frames of a type it does not know
//! (future additions); the stream ends after `exit` or `error`, and a
//! stream that ends without either is resumed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;

use crate::exec::Stream;

/// The media type of the binary stream.
pub const CONTENT_TYPE: &str = "application/octet-stream";
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 13;
/// The most payload bytes one frame carries.
pub const MAX_PAYLOAD: usize = 16 << 20;

pub const KEEPALIVE: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const PTY: u8 = 3;
pub const LOST: u8 = 4;
pub const EXIT: u8 = 5;
pub const ERROR: u8 = 6;

/// The frame type of output of `stream`.
pub fn output_type(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => STDOUT,
        Stream::Stderr => STDERR,
        Stream::Pty => PTY,
    }
}

/// Writes a frame header.
pub fn put_header(buf: &mut BytesMut, kind: u8, seq: u64, len: usize) {
    debug_assert!(len <= MAX_PAYLOAD);
    buf.put_u8(kind);
    buf.put_u64(seq);
    buf.put_u32(len as u32);
}

/// Writes a whole frame.
pub fn put_frame(buf: &mut BytesMut, kind: u8, seq: u64, payload: &[u8]) {
    put_header(buf, kind, seq, payload.len());
    buf.put_slice(payload);
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Output {
        stream: Stream,
        /// The last seq this frame carries: the cursor after it.
        seq: u64,
        data: Bytes,
    },
    Lost {
        from_seq: u64,
        to_seq: u64,
        /// `None`: the executor could not say how many.
        bytes: Option<u64>,
    },
    Exit {
        seq: u64,
        exit_code: Option<i32>,
    },
    Error {
        code: String,
        message: String,
    },
    Keepalive,
    /// A type this decoder does not know: skip it.
    Unknown {
        kind: u8,
        seq: u64,
        payload: Bytes,
    },
}

/// Not the framing above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad output frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

#[derive(Deserialize)]
struct LostData {
    from_seq: u64,
    to_seq: u64,
    bytes: Option<u64>,
}

#[derive(Deserialize)]
struct ExitData {
    exit_code: Option<i32>,
}

#[derive(Deserialize)]
struct ErrorData {
    code: String,
    #[serde(default)]
    message: String,
}

/// An incremental decoder: [`FrameDecoder::push`] the body's bytes as they
/// come, then take frames with [`FrameDecoder::next_frame`] until it says
/// `None` (more bytes needed). One copy per byte (into its buffer); an
/// output frame's data is a slice of it.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received that are not yet a whole frame (a stream that ends
    /// with some was cut in the middle of a frame).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = self.buf[0];
        let seq = u64::from_be_bytes(self.buf[1..9].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(self.buf[9..13].try_into().unwrap_or_default()) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError(format!(
                "a payload of {len} bytes (at most {MAX_PAYLOAD})"
            )));
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        decode(kind, seq, payload).map(Some)
    }
}

/// A frame from its header's fields and its payload.
pub fn decode(kind: u8, seq: u64, payload: Bytes) -> Result<Frame, FrameError> {
    fn json<T: for<'a> Deserialize<'a>>(kind: &str, p: &[u8]) -> Result<T, FrameError> {
        serde_json::from_slice(p).map_err(|e| FrameError(format!("{kind} frame: {e}")))
    }
    Ok(match kind {
        STDOUT | STDERR | PTY => Frame::Output {
            stream: match kind {
                STDOUT => Stream::Stdout,
                STDERR => Stream::Stderr,
                _ => Stream::Pty,
            },
            seq,
            data: payload,
        },
        LOST => {
            let d: LostData = json("lost", &payload)?;
            Frame::Lost {
                from_seq: d.from_seq,
                to_seq: d.to_seq,
                bytes: d.bytes,
            }
        }
        EXIT => Frame::Exit {
            seq,
            exit_code: json::<ExitData>("exit", &payload)?.exit_code,
        },
        ERROR => {
            let d: ErrorData = json("error", &payload)?;
            Frame::Error {
                code: d.code,
                message: d.message,
            }
        }
        KEEPALIVE => Frame::Keepalive,
        kind => Frame::Unknown { kind, seq, payload },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_any_split() {
        let mut b = BytesMut::new();
        put_frame(&mut b, STDOUT, 3, b"\x00\xffhi");
        put_frame(
            &mut b,
            LOST,
            9,
            br#"{"from_seq":4,"to_seq":9,"bytes":null}"#,
        );
        put_frame(&mut b, KEEPALIVE, 0, b"");
        put_frame(&mut b, 42, 1, b"future");
        put_frame(&mut b, STDERR, 10, b"err");
        put_frame(&mut b, EXIT, 11, br#"{"exit_code":-1}"#);
        let want = vec![
            Frame::Output {
                stream: Stream::Stdout,
                seq: 3,
                data: Bytes::from_static(b"\x00\xffhi"),
            },
            Frame::Lost {
                from_seq: 4,
                to_seq: 9,
                bytes: None,
            },
            Frame::Keepalive,
            Frame::Unknown {
                kind: 42,
                seq: 1,
                payload: Bytes::from_static(b"future"),
            },
            Frame::Output {
                stream: Stream::Stderr,
                seq: 10,
                data: Bytes::from_static(b"err"),
            },
            Frame::Exit {
                seq: 11,
                exit_code: Some(-1),
            },
        ];
        for step in [1, 2, 5, 13, 14, 1000] {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in b.chunks(step) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, want, "pieces of {step}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let mut d = FrameDecoder::new();
        let mut b = BytesMut::new();
        put_header(&mut b, STDOUT, 1, 0);
        b[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        d.push(&b);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::new();
        let mut b = BytesMut::new();
        put_frame(&mut b, EXIT, 1, b"not json");
        d.push(&b);
        assert!(d.next_frame().is_err());
    }
}
