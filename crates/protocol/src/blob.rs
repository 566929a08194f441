//! [`Blob`]: the bytes a message carries (process output, file data, stdin),
//! and how they travel either as base64 text or, between two execgate peers,
//! beside the JSON in a binary frame [ext].
//!
//! The codex protocol puts every byte in JSON as base64. For bulk data that
//! costs more than everything else on the path: base64 on both sides, and
//! serde_json scanning each base64 character for something to escape
//! (BENCHMARKS.md). So when both ends announced `binaryFrames`, a frame with
//! bytes in it is a binary WebSocket frame
//!
//! ```text
//! [u32 big-endian: n][n bytes: the JSON-RPC message][payload]
//! ```
//!
//! in which each blob field holds `{"$bin":[offset,length]}`, a reference
//! into the payload, instead of a base64 string
//! ([`crate::jsonrpc::Envelope`] reads and writes the frame).
//!
//! **How a blob knows which form to take.** The message types are plain
//! serde structs, serialised to and from `serde_json::Value`. A blob cannot
//! reach a frame's payload through serde's API, so the two conversions that
//! involve a payload run inside a scope that lends it one, on the current
//! thread: [`collect`] (serialising: raw blobs are appended to the payload
//! and written as references) and [`resolve`] (deserialising: references
//! are sliced out of the payload, without a copy). The scopes are
//! synchronous closures, so nothing else can run on the thread in between.
//! Outside them a blob is base64 text, exactly as codex expects it.

use std::cell::RefCell;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The key of a payload reference: `{"$bin":[offset,length]}`.
pub const REF_KEY: &str = "$bin";

/// Bytes in a message: base64 text as received from a text frame (kept as
/// is, so a gateway can pass it on without decoding), or raw bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Blob {
    Base64(String),
    Raw(Bytes),
}

impl Blob {
    /// Raw bytes: the form to build a message from.
    pub fn raw(bytes: impl Into<Bytes>) -> Blob {
        Blob::Raw(bytes.into())
    }

    /// The bytes, decoding base64 if that is the form they came in.
    pub fn to_bytes(&self) -> Result<Bytes, base64::DecodeError> {
        match self {
            Blob::Raw(b) => Ok(b.clone()),
            Blob::Base64(s) => BASE64.decode(s.as_bytes()).map(Bytes::from),
        }
    }

    /// The bytes as base64, without a copy when they came that way.
    pub fn into_base64(self) -> String {
        match self {
            Blob::Raw(b) => BASE64.encode(b),
            Blob::Base64(s) => s,
        }
    }

    /// The number of bytes, without decoding (for well-formed base64).
    pub fn len(&self) -> u64 {
        match self {
            Blob::Raw(b) => b.len() as u64,
            Blob::Base64(s) => base64_decoded_len(s),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Blob {
    fn default() -> Self {
        Blob::Raw(Bytes::new())
    }
}

impl fmt::Debug for Blob {
    // Output and file data can be megabytes: show the size, not the bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blob::Raw(b) => write!(f, "Blob::Raw({} bytes)", b.len()),
            Blob::Base64(s) => write!(f, "Blob::Base64({} chars)", s.len()),
        }
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob::Raw(Bytes::from(v))
    }
}

/// Copies the bytes.
impl From<&[u8]> for Blob {
    fn from(v: &[u8]) -> Self {
        Blob::Raw(Bytes::copy_from_slice(v))
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob::Raw(b)
    }
}

/// The length of the bytes that well-formed base64 text decodes to.
pub fn base64_decoded_len(s: &str) -> u64 {
    let pad = s.bytes().rev().take_while(|&b| b == b'=').count() as u64;
    (s.len() as u64 / 4 * 3).saturating_sub(pad)
}

thread_local! {
    /// While [`collect`] runs: the payload being built.
    static OUT: RefCell<Option<Vec<Bytes>>> = const { RefCell::new(None) };
    /// While [`resolve`] runs: the payload references point into.
    static IN: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// `serde_json::to_value`, with the raw blobs in `value` moved to a payload
/// when `binary` (the peer reads binary frames), and base64 text otherwise.
/// The payload is empty when there was no raw blob: the message then needs
/// no binary frame.
pub fn to_value<T: Serialize + ?Sized>(
    value: &T,
    binary: bool,
) -> Result<(Value, Bytes), serde_json::Error> {
    if !binary {
        return Ok((serde_json::to_value(value)?, Bytes::new()));
    }
    let (v, pieces) = collect(|| serde_json::to_value(value));
    let payload = match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.into_iter().next().unwrap_or_default(),
        _ => Bytes::from(pieces.concat()),
    };
    Ok((v?, payload))
}

/// `serde_json::from_value`, with blob references resolving against
/// `payload` (empty for a text frame).
pub fn from_value<T: DeserializeOwned>(
    value: Value,
    payload: &Bytes,
) -> Result<T, serde_json::Error> {
    resolve(payload, || serde_json::from_value(value))
}

/// Runs `f` (a serialisation) with raw blobs going to a payload instead of
/// into the JSON as base64; returns `f`'s result and the payload's pieces,
/// in offset order.
fn collect<R>(f: impl FnOnce() -> R) -> (R, Vec<Bytes>) {
    let saved = OUT.with(|o| o.replace(Some(Vec::new())));
    let r = f();
    let pieces = OUT.with(|o| o.replace(saved)).unwrap_or_default();
    (r, pieces)
}

/// Runs `f` (a deserialisation) with payload references resolving against
/// `payload`.
fn resolve<R>(payload: &Bytes, f: impl FnOnce() -> R) -> R {
    let saved = IN.with(|i| i.replace(Some(payload.clone())));
    let r = f();
    IN.with(|i| *i.borrow_mut() = saved);
    r
}

/// Replaces every payload reference in `value` by the base64 text of the
/// bytes it points at: for relaying a binary frame's message to a peer that
/// speaks only text (a bridge client). A reference outside the payload
/// becomes an empty string.
pub fn inline(value: &mut Value, payload: &Bytes) {
    match value {
        Value::Object(map) => {
            if let Some((off, len)) = as_ref(map) {
                let bytes = payload.get(off..off.saturating_add(len)).unwrap_or(&[]);
                *value = Value::String(BASE64.encode(bytes));
                return;
            }
            map.values_mut().for_each(|v| inline(v, payload));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline(v, payload)),
        _ => {}
    }
}

/// `(offset, length)` if `map` is exactly a payload reference.
fn as_ref(map: &serde_json::Map<String, Value>) -> Option<(usize, usize)> {
    if map.len() != 1 {
        return None;
    }
    let pair = map.get(REF_KEY)?.as_array()?;
    match pair.as_slice() {
        [off, len] => Some((
            usize::try_from(off.as_u64()?).ok()?,
            usize::try_from(len.as_u64()?).ok()?,
        )),
        _ => None,
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = match self {
            Blob::Base64(s) => return serializer.serialize_str(s),
            Blob::Raw(bytes) => bytes,
        };
        let offset = OUT.with(|o| {
            o.borrow_mut().as_mut().map(|pieces| {
                let offset: usize = pieces.iter().map(Bytes::len).sum();
                pieces.push(bytes.clone());
                offset
            })
        });
        match offset {
            Some(offset) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(REF_KEY, &[offset, bytes.len()])?;
                map.end()
            }
            None => serializer.serialize_str(&BASE64.encode(bytes)),
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        deserializer.deserialize_any(BlobVisitor)
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "base64 text or a {{\"{REF_KEY}\":[offset,length]}} reference"
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
        Ok(Blob::Base64(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Blob, E> {
        Ok(Blob::Base64(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Blob, A::Error> {
        let mut reference: Option<(usize, usize)> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != REF_KEY || reference.is_some() {
                return Err(de::Error::custom(format!(
                    "unexpected key {key:?} in a payload reference"
                )));
            }
            reference = Some(map.next_value()?);
        }
        let (off, len) = reference.ok_or_else(|| de::Error::missing_field(REF_KEY))?;
        IN.with(|i| match i.borrow().as_ref() {
            None => Err(de::Error::custom(
                "a payload reference outside a binary frame",
            )),
            Some(payload) => match off.checked_add(len) {
                Some(end) if end <= payload.len() => Ok(Blob::Raw(payload.slice(off..end))),
                _ => Err(de::Error::custom(format!(
                    "payload reference [{off},{len}] is outside the frame's {} payload bytes",
                    payload.len()
                ))),
            },
        })
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Blob {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        String::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Blob {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Two {
        a: Blob,
        b: Vec<Blob>,
    }

    fn two() -> Two {
        Two {
            a: Blob::raw(&b"hello"[..]),
            b: vec![Blob::raw(&b""[..]), Blob::raw(&b"world!"[..])],
        }
    }

    #[test]
    fn without_binary_blobs_are_base64_text() {
        let (v, payload) = to_value(&two(), false).unwrap();
        assert!(payload.is_empty());
        assert_eq!(v, json!({"a": "aGVsbG8=", "b": ["", "d29ybGQh"]}));
        let back: Two = serde_json::from_value(v).unwrap();
        assert_eq!(back.a, Blob::Base64("aGVsbG8=".into()));
        assert_eq!(back.a.to_bytes().unwrap(), &b"hello"[..]);
        assert_eq!(back.b[1].len(), 6);
    }

    #[test]
    fn collected_blobs_become_references_that_resolve_to_the_same_bytes() {
        let (v, payload) = to_value(&two(), true).unwrap();
        assert_eq!(
            v,
            json!({"a": {"$bin": [0, 5]}, "b": [{"$bin": [5, 0]}, {"$bin": [5, 6]}]})
        );
        assert_eq!(&payload[..], b"helloworld!");
        let back: Two = from_value(v.clone(), &payload).unwrap();
        assert_eq!(back, two());

        let mut text = v;
        inline(&mut text, &payload);
        assert_eq!(text, serde_json::to_value(two()).unwrap());
    }

    #[test]
    fn a_base64_blob_stays_text_inside_a_scope() {
        let (v, payload) = to_value(&Blob::Base64("eA==".into()), true).unwrap();
        assert_eq!(v, json!("eA=="));
        assert!(payload.is_empty());
    }

    #[test]
    fn bad_references_are_errors_not_panics() {
        let payload = Bytes::from_static(b"abc");
        for bad in [
            json!({"$bin": [2, 2]}),
            json!({"$bin": [usize::MAX, 2]}),
            json!({"$bin": [0]}),
            json!({"$bin": [0, 1], "x": 1}),
            json!({}),
            json!(5),
        ] {
            let r: Result<Blob, _> = from_value(bad.clone(), &payload);
            assert!(r.is_err(), "{bad} should not decode");
        }
        // And without a payload at all.
        let r: Result<Blob, _> = serde_json::from_value(json!({"$bin": [0, 0]}));
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("outside a binary frame"));
    }

    #[test]
    fn decoded_len_counts_padding() {
        for n in 0..8 {
            let data = vec![7u8; n];
            assert_eq!(base64_decoded_len(&BASE64.encode(&data)), n as u64);
        }
    }
}
