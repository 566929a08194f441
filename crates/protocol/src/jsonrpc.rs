//! JSON-RPC 2.0 framing as the executor protocol uses it: one message per
//! WebSocket frame, `"jsonrpc":"2.0"` optional on input, ids either strings or
//! integers.
//!
//! Incoming frames are parsed into [`Message`], which tells requests,
//! notifications and responses apart by which fields are present. That is how
//! JSON-RPC defines them; serde's untagged enums would give useless errors.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Standard and protocol-specific JSON-RPC error codes.
pub mod code {
    /// Malformed JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Invalid request: unknown or duplicate process id, or a lifecycle violation.
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error, for example a spawn failure.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The file or directory does not exist.
    pub const NOT_FOUND: i64 = -32004;
    /// [ext] The executor's policy refuses the request: a path outside its
    /// `--root`, a change under `--read-only`, a method no tool of its
    /// `--allow-tools` needs. The message names the path and the root.
    pub const POLICY_DENIED: i64 = -32030;
    /// [ext] `process/start` beyond the executor's `--max-processes`.
    pub const TOO_MANY_PROCESSES: i64 = -32031;
}

/// A request id. Both sides must echo ids exactly as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Num(i64),
    Str(String),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Num(n) => write!(f, "{n}"),
            Id::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_REQUEST, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL_ERROR, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, message)
    }
    pub fn policy_denied(message: impl Into<String>) -> Self {
        Self::new(code::POLICY_DENIED, message)
    }
    pub fn method_not_found(method: &str) -> Self {
        Self::new(code::METHOD_NOT_FOUND, format!("unknown method: {method}"))
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Id,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    Response {
        id: Id,
        result: Result<Value, RpcError>,
    },
}

/// Why a frame could not be decoded. Carries the id when one was readable, so
/// that the receiver can still answer the request with an error.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: Option<Id>,
    pub error: RpcError,
}

impl Message {
    pub fn request(id: Id, method: impl Into<String>, params: Value) -> Self {
        Message::Request {
            id,
            method: method.into(),
            params,
        }
    }

    pub fn notification(method: impl Into<String>, params: Value) -> Self {
        Message::Notification {
            method: method.into(),
            params,
        }
    }

    pub fn response(id: Id, result: Result<Value, RpcError>) -> Self {
        Message::Response { id, result }
    }

    /// Decodes one frame's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError {
            id: None,
            error: RpcError::new(code::PARSE_ERROR, format!("invalid JSON: {e}")),
        })?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Message, DecodeError> {
        let Value::Object(mut obj) = value else {
            return Err(DecodeError {
                id: None,
                error: RpcError::invalid_request("a JSON-RPC message must be an object"),
            });
        };
        let id = match obj.remove("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value::<Id>(v).map_err(|_| DecodeError {
                id: None,
                error: RpcError::invalid_request("id must be a string or an integer"),
            })?),
        };
        if let Some(method) = obj.remove("method") {
            let Value::String(method) = method else {
                return Err(DecodeError {
                    id,
                    error: RpcError::invalid_request("method must be a string"),
                });
            };
            let params = obj.remove("params").unwrap_or(Value::Null);
            return Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            });
        }
        let Some(id) = id else {
            return Err(DecodeError {
                id: None,
                error: RpcError::invalid_request("message has neither method nor id"),
            });
        };
        if let Some(err) = obj.remove("error") {
            let err: RpcError = serde_json::from_value(err).map_err(|e| DecodeError {
                id: Some(id.clone()),
                error: RpcError::invalid_request(format!("malformed error object: {e}")),
            })?;
            return Ok(Message::Response {
                id,
                result: Err(err),
            });
        }
        let result = obj.remove("result").unwrap_or(Value::Null);
        Ok(Message::Response {
            id,
            result: Ok(result),
        })
    }

    pub fn to_value(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("jsonrpc".into(), Value::from("2.0"));
        match self {
            Message::Request { id, method, params } => {
                obj.insert("id".into(), serde_json::to_value(id).expect("id"));
                obj.insert("method".into(), Value::from(method.as_str()));
                obj.insert("params".into(), params.clone());
            }
            Message::Notification { method, params } => {
                obj.insert("method".into(), Value::from(method.as_str()));
                obj.insert("params".into(), params.clone());
            }
            Message::Response { id, result } => {
                obj.insert("id".into(), serde_json::to_value(id).expect("id"));
                match result {
                    Ok(v) => obj.insert("result".into(), v.clone()),
                    Err(e) => obj.insert("error".into(), serde_json::to_value(e).expect("error")),
                };
            }
        }
        Value::Object(obj)
    }

    /// Encodes the message as the text of one frame.
    ///
    /// Serialises borrowed fields straight into the text: going through
    /// [`Message::to_value`] deep-copied `params`/`result` first, which for
    /// output and file data is megabytes per frame (see BENCHMARKS.md).
    pub fn encode(&self) -> String {
        let wire = match self {
            Message::Request { id, method, params } => Wire {
                id: Some(id),
                method: Some(method),
                params: Some(params),
                ..Wire::default()
            },
            Message::Notification { method, params } => Wire {
                method: Some(method),
                params: Some(params),
                ..Wire::default()
            },
            Message::Response { id, result } => match result {
                Ok(v) => Wire {
                    id: Some(id),
                    result: Some(v),
                    ..Wire::default()
                },
                Err(e) => Wire {
                    id: Some(id),
                    error: Some(e),
                    ..Wire::default()
                },
            },
        };
        // Only strings, numbers and `Value`s: serialising cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// [ext] A message and the payload its blobs point into: what one binary
/// frame carries between two execgate peers that announced `binaryFrames`
/// (see [`crate::blob`] for the layout). With an empty payload it is an
/// ordinary text frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub message: Message,
    pub payload: Bytes,
}

/// A frame ready for the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    Text(String),
    Binary(Vec<u8>),
}

impl Envelope {
    /// A message whose blobs, if any, are base64 text.
    pub fn text(message: Message) -> Envelope {
        Envelope {
            message,
            payload: Bytes::new(),
        }
    }

    /// The frame: text when there is no payload, else binary.
    pub fn encode(&self) -> Encoded {
        if self.payload.is_empty() {
            return Encoded::Text(self.message.encode());
        }
        let header = self.message.encode();
        let mut frame = Vec::with_capacity(4 + header.len() + self.payload.len());
        // A header beyond 4 GiB cannot be framed; no message comes near it.
        frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(&self.payload);
        Encoded::Binary(frame)
    }

    /// Decodes a binary frame. A binary frame that starts with `{` is plain
    /// JSON (a length prefix that large cannot occur), so a peer that sends
    /// its JSON as binary is still understood.
    pub fn decode_binary(frame: Bytes) -> Result<Envelope, DecodeError> {
        if frame.first() == Some(&b'{') {
            return Message::decode(&frame).map(Envelope::text);
        }
        let bad = |why: &str| DecodeError {
            id: None,
            error: RpcError::new(code::PARSE_ERROR, format!("invalid binary frame: {why}")),
        };
        let Some(prefix) = frame.get(..4) else {
            return Err(bad("shorter than its 4-byte length prefix"));
        };
        let n = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let Some(header) = frame.get(4..4 + n) else {
            return Err(bad("the message is longer than the frame"));
        };
        let message = Message::decode(header)?;
        Ok(Envelope {
            message,
            payload: frame.slice(4 + n..),
        })
    }
}

/// A frame as written: borrowed parts, `jsonrpc` first.
#[derive(Serialize)]
struct Wire<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
}

impl Default for Wire<'_> {
    fn default() -> Self {
        Wire {
            jsonrpc: "2.0",
            id: None,
            method: None,
            params: None,
            result: None,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_each_kind() {
        let r = Message::decode(br#"{"id":1,"method":"process/read","params":{"a":1}}"#).unwrap();
        assert_eq!(
            r,
            Message::request(Id::Num(1), "process/read", json!({"a":1}))
        );
        let n = Message::decode(br#"{"jsonrpc":"2.0","method":"initialized"}"#).unwrap();
        assert_eq!(n, Message::notification("initialized", Value::Null));
        let ok = Message::decode(br#"{"id":"x","result":{"b":2}}"#).unwrap();
        assert_eq!(
            ok,
            Message::response(Id::Str("x".into()), Ok(json!({"b":2})))
        );
        let err = Message::decode(br#"{"id":7,"error":{"code":-32601,"message":"no"}}"#).unwrap();
        assert_eq!(
            err,
            Message::response(Id::Num(7), Err(RpcError::new(-32601, "no")))
        );
    }

    #[test]
    fn decode_errors_keep_the_id_when_possible() {
        let e = Message::decode(b"{not json").unwrap_err();
        assert_eq!(e.error.code, code::PARSE_ERROR);
        let e = Message::decode(br#"{"id":3,"method":5}"#).unwrap_err();
        assert_eq!(e.id, Some(Id::Num(3)));
        assert_eq!(e.error.code, code::INVALID_REQUEST);
        assert!(Message::decode(b"[1]").is_err());
        assert!(Message::decode(br#"{"result":1}"#).is_err());
    }

    #[test]
    fn envelopes_carry_raw_blobs_in_a_binary_frame() {
        use crate::blob::{self, Blob};
        let chunk = Blob::raw(vec![0u8, 1, 2, 255]);
        let envelope = |binary| {
            let (result, payload) = blob::to_value(&chunk, binary).unwrap();
            Envelope {
                message: Message::response(Id::Num(9), Ok(result)),
                payload,
            }
        };
        // Without binary: base64 text in a text frame.
        assert_eq!(
            envelope(false).encode(),
            Encoded::Text(r#"{"jsonrpc":"2.0","id":9,"result":"AAEC/w=="}"#.into())
        );
        // With binary: a reference, and the bytes after the header.
        let env = envelope(true);
        let Encoded::Binary(frame) = env.encode() else {
            panic!("expected a binary frame")
        };
        let header = br#"{"jsonrpc":"2.0","id":9,"result":{"$bin":[0,4]}}"#;
        assert_eq!(&frame[..4], &(header.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..4 + header.len()], header);
        assert_eq!(&frame[4 + header.len()..], &[0u8, 1, 2, 255]);

        let back = Envelope::decode_binary(Bytes::from(frame)).unwrap();
        assert_eq!(back, env);
        let Message::Response { result: Ok(v), .. } = back.message else {
            panic!("expected a result")
        };
        let decoded: Blob = blob::from_value(v, &back.payload).unwrap();
        assert_eq!(decoded, chunk);
    }

    #[test]
    fn malformed_binary_frames_are_decode_errors() {
        assert!(Envelope::decode_binary(Bytes::from_static(b"\0\0")).is_err());
        assert!(Envelope::decode_binary(Bytes::from_static(b"\0\0\0\x09{}")).is_err());
        assert!(Envelope::decode_binary(Bytes::from_static(b"\0\0\0\x02{}")).is_err());
        // Plain JSON sent as a binary frame is still a message.
        let env = Envelope::decode_binary(Bytes::from_static(br#"{"id":1,"result":2}"#)).unwrap();
        assert_eq!(env.message, Message::response(Id::Num(1), Ok(json!(2))));
        assert!(env.payload.is_empty());
    }

    #[test]
    fn round_trips() {
        for m in [
            Message::request(Id::Str("a".into()), "m", json!({})),
            Message::notification("n", json!([1])),
            Message::response(Id::Num(-4), Ok(json!(null))),
            Message::response(Id::Num(4), Err(RpcError::internal("boom"))),
        ] {
            assert_eq!(Message::decode(m.encode().as_bytes()).unwrap(), m);
            // The text is the same JSON as `to_value` describes.
            let text: Value = serde_json::from_str(&m.encode()).unwrap();
            assert_eq!(text, m.to_value());
        }
    }
}
