//! Argument parsing shared by the tools: typed structs from the `arguments`
//! object, with errors that name the field, and the conversions every tool
//! needs (commands, paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::link::Link;
use crate::ops::Error;

/// Parses `arguments` into `T`; a failure is 400 `bad_arguments` naming the
/// field, like `arguments.timeout_ms: invalid type: string "x", expected u64`.
pub fn parse_args<T: DeserializeOwned>(arguments: Map<String, Value>) -> Result<T, Error> {
    serde_path_to_error::deserialize(Value::Object(arguments)).map_err(|e| {
        let msg = describe(e.path(), e.inner());
        Error::bad_arguments(
            if msg.starts_with(|c: char| c.is_ascii_lowercase()) && e.path().to_string() != "." {
                format!("arguments.{msg}")
            } else {
                format!("arguments: {msg}")
            },
        )
    })
}

/// Serde default for boolean arguments that are on unless turned off.
pub fn default_true() -> bool {
    true
}

/// A command: an argv array of strings, or a string meaning `sh -c STRING`.
pub fn command<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if s.trim().is_empty() => {
            Err(D::Error::custom("the command string is empty"))
        }
        Value::String(s) => Ok(vec!["sh".into(), "-c".into(), s]),
        Value::Array(items) if items.is_empty() => Err(D::Error::custom("the argv array is empty")),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!(
                    "argv[{i}] must be a string, not {other}"
                ))),
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "expected an argv array of strings or a command string, not {other}"
        ))),
    }
}

/// Environment variables to set: a name must be non-empty and hold neither
/// `=` nor NUL, and a value no NUL. The OS keeps `NAME=value` strings, so
/// `{"A=B": "1"}` would reach the process as `A=B=1`, that is `A` set to
/// `B=1`: a variable the caller did not ask for.
pub fn env<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let vars = BTreeMap::<String, String>::deserialize(d)?;
    if let Some(problem) = vars
        .iter()
        .find_map(|(name, value)| env_var_problem(name, value))
    {
        return Err(D::Error::custom(problem));
    }
    Ok(vars)
}

/// Why `name=value` cannot be set in a process's environment, if it cannot.
pub fn env_var_problem(name: &str, value: &str) -> Option<String> {
    if name.is_empty() {
        Some("a variable name is empty".into())
    } else if name.contains('=') {
        Some(format!("variable name {name:?} contains '='"))
    } else if name.contains('\0') {
        Some(format!("variable name {name:?} contains a NUL byte"))
    } else if value.contains('\0') {
        Some(format!("the value of {name:?} contains a NUL byte"))
    } else {
        None
    }
}

/// An optional positive timeout in milliseconds, at most a day.
pub fn timeout_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        Some(0) => Err(D::Error::custom("must be at least 1")),
        Some(ms) if ms > 86_400_000 => Err(D::Error::custom("must be at most 86400000 (a day)")),
        v => Ok(v),
    }
}

/// A path argument as the `file://` URI the executor wants. Relative paths
/// resolve against the executor's working directory.
pub fn path_uri(link: &Link, field: &str, path: &str) -> Result<String, Error> {
    let abs = resolve_path(link, field, path)?;
    execgate_protocol::uri::path_to_uri(&abs).ok_or_else(|| {
        Error::bad_arguments(format!("arguments.{field}: {path:?} is not a usable path"))
    })
}

/// A path argument made absolute against the executor's working directory.
pub fn resolve_path(link: &Link, field: &str, path: &str) -> Result<PathBuf, Error> {
    if path.is_empty() {
        return Err(Error::bad_arguments(format!(
            "arguments.{field}: must not be empty"
        )));
    }
    if path.contains('\0') {
        return Err(Error::bad_arguments(format!(
            "arguments.{field}: must not contain a NUL byte"
        )));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match link.cwd() {
        Some(cwd) => Ok(cwd.join(p)),
        None => Err(Error::bad_arguments(format!(
            "arguments.{field}: {path:?} is relative and the executor reported no working directory; use an absolute path"
        ))),
    }
}

/// The executor's working directory as a URI (the default `cwd`).
pub fn cwd_uri(link: &Link, cwd: Option<&str>) -> Result<String, Error> {
    match cwd {
        Some(c) => path_uri(link, "cwd", c),
        None => Ok(link
            .handshake()
            .map(|h| h.info.cwd.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "file:///".into())),
    }
}

/// How bytes travel in a tool's JSON: `encoding` on `read_file`,
/// `write_file` and `/output`. REST defaults to `base64` (its answers
/// before the argument existed); MCP, whose reader is a model, to `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub enum Encoding {
    /// Text when the bytes are valid UTF-8, else base64.
    #[serde(rename = "auto")]
    Auto,
    /// Text always: bytes that are not UTF-8 are escaped losslessly
    /// ([`escape_lossless`]) and the answer says `utf-8-escaped`.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Standard base64.
    #[serde(rename = "base64")]
    Base64,
}

/// The JSON Schema of an `encoding` argument.
pub fn encoding_property(description: &str) -> Value {
    serde_json::json!({
        "type": "string",
        "enum": ["auto", "utf-8", "base64"],
        "description": description,
    })
}

/// Bytes in one of the encodings, and the name that says which it is:
/// `"utf-8"` (the text is the bytes), `"utf-8-escaped"` (see
/// [`escape_lossless`]) or `"base64"`.
pub fn encode_bytes(data: &[u8], encoding: Encoding) -> (String, &'static str) {
    use base64::Engine;
    match (encoding, std::str::from_utf8(data)) {
        (Encoding::Auto | Encoding::Utf8, Ok(text)) => (text.to_string(), UTF8),
        (Encoding::Utf8, Err(_)) => (escape_lossless(data), UTF8_ESCAPED),
        (Encoding::Auto, Err(_)) | (Encoding::Base64, _) => (
            base64::engine::general_purpose::STANDARD.encode(data),
            BASE64,
        ),
    }
}

pub const UTF8: &str = "utf-8";
pub const UTF8_ESCAPED: &str = "utf-8-escaped";
pub const BASE64: &str = "base64";

/// Bytes that are not all UTF-8 as text, losslessly: each byte of an
/// invalid sequence becomes `\xNN` (two lowercase hex digits), each
/// backslash `\\`, and everything else is itself. [`unescape_lossless`]
/// gives the bytes back. Only used when the bytes are not valid UTF-8, and
/// then marked `utf-8-escaped`, so valid text is never altered.
pub fn escape_lossless(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(data.len() + 16);
    for chunk in data.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The inverse of [`escape_lossless`]: `\\` is a backslash, `\xNN` the
/// byte NN; any other backslash is an error (the text was not escaped).
pub fn unescape_lossless(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let byte = bytes
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        format!("\\x at character {i} is not followed by two hex digits")
                    })?;
                out.push(byte);
                i += 4;
            }
            _ => {
                return Err(format!(
                    "a backslash at character {i} is neither \\\\ nor \\xNN"
                ))
            }
        }
    }
    Ok(out)
}

/// How long `data` can be without ending inside a UTF-8 sequence that
/// continues past it: `data.len()`, or up to 3 bytes less when its end
/// cuts a character that the bytes after it would complete.
pub fn utf8_cut(data: &[u8]) -> usize {
    match std::str::from_utf8(data) {
        Err(e) if e.error_len().is_none() && data.len() - e.valid_up_to() <= 3 => e.valid_up_to(),
        _ => data.len(),
    }
}

/// `field.sub: problem`, or just the problem at the root.
pub fn describe(path: &serde_path_to_error::Path, err: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the field path says more.
    let msg = err.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_string())
        .unwrap_or(msg);
    let path = path.to_string();
    if path == "." || path.is_empty() {
        msg
    } else {
        format!("{path}: {msg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct A {
        #[serde(deserialize_with = "command")]
        command: Vec<String>,
        #[serde(default, deserialize_with = "timeout_ms")]
        timeout_ms: Option<u64>,
        #[serde(default, deserialize_with = "env")]
        env: BTreeMap<String, String>,
    }

    fn parse(v: Value) -> Result<A, Error> {
        parse_args(v.as_object().unwrap().clone())
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse(json!({"command":["ls","-l"]})).unwrap().command,
            ["ls", "-l"]
        );
        assert_eq!(
            parse(json!({"command":"echo hi"})).unwrap().command,
            ["sh", "-c", "echo hi"]
        );
        for (bad, needle) in [
            (
                json!({"command":[]}),
                "arguments.command: the argv array is empty",
            ),
            (
                json!({"command":""}),
                "arguments.command: the command string is empty",
            ),
            (
                json!({"command":["a",1]}),
                "arguments.command: argv[1] must be a string",
            ),
            (
                json!({"command":5}),
                "arguments.command: expected an argv array",
            ),
            (json!({}), "missing field `command`"),
            (
                json!({"command":"x","timeout_ms":"5"}),
                "arguments.timeout_ms: invalid type",
            ),
            (
                json!({"command":"x","timeout_ms":0}),
                "arguments.timeout_ms: must be at least 1",
            ),
            (
                json!({"command":"x","timeout":5}),
                "unknown field `timeout`",
            ),
            (
                json!({"command":"x","env":{"A=B":"1"}}),
                "arguments.env: variable name \"A=B\" contains '='",
            ),
            (
                json!({"command":"x","env":{"":"1"}}),
                "arguments.env: a variable name is empty",
            ),
            (
                json!({"command":"x","env":{"A\u{0}B":"1"}}),
                "arguments.env: variable name \"A\\0B\" contains a NUL byte",
            ),
            (
                json!({"command":"x","env":{"A":"x\u{0}"}}),
                "arguments.env: the value of \"A\" contains a NUL byte",
            ),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert_eq!(e.code, "bad_arguments");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(
            encode_bytes("é\\".as_bytes(), Encoding::Auto),
            ("é\\".into(), UTF8)
        );
        assert_eq!(
            encode_bytes(b"\xff", Encoding::Auto),
            ("/w==".into(), BASE64)
        );
        assert_eq!(
            encode_bytes(b"ok", Encoding::Base64),
            ("b2s=".into(), BASE64)
        );
        // Valid text is never escaped, even with backslashes in it.
        assert_eq!(
            encode_bytes(b"a\\xff", Encoding::Utf8),
            ("a\\xff".into(), UTF8)
        );
        let tricky: &[u8] = b"a\\xff\xff\\\xe2\x82 \xe2\x82\xac\x00z\xc3";
        let (text, enc) = encode_bytes(tricky, Encoding::Utf8);
        assert_eq!(enc, UTF8_ESCAPED);
        assert_eq!(text, "a\\\\xff\\xff\\\\\\xe2\\x82 \u{20ac}\u{0}z\\xc3");
        assert_eq!(unescape_lossless(&text).unwrap(), tricky);
        assert!(unescape_lossless("a\\n").is_err());
        assert!(unescape_lossless("a\\x4").is_err());
        assert_eq!(unescape_lossless("\\x41\\\\").unwrap(), b"A\\");
        assert!(text.is_ascii() || std::str::from_utf8(text.as_bytes()).is_ok());
    }

    #[test]
    fn utf8_cuts_only_a_character_left_incomplete() {
        let euro = "€".as_bytes();
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(utf8_cut(&[b'a', euro[0]]), 1);
        // Invalid in the middle is not a cut: left for the encoder.
        assert_eq!(utf8_cut(&[0xff, b'a']), 2);
        assert_eq!(utf8_cut(euro), 3);
    }
}
