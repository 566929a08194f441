//! The envelope for requests hyper refuses before axum sees them.
//!
//! When hyper cannot parse a request head (headers over
//! [`super::MAX_HEADER_SIZE`] or over [`super::MAX_HEADERS`] of them: 431;
//! a bad byte in a header name or value, a malformed request line: 400; a
//! URI over 64 KiB: 414, which the 64 KiB head bound makes a 431 first),
//! it answers on its own (`proto/h1/role.rs`,
//! `Server::on_error`, written by `Conn::on_parse_error`) and closes the
//! connection: a head with `content-length: 0`, no body. hyper 1.x has no
//! option to shape that answer, so the connection's socket wrapper
//! ([`super::Admitted`]) recognises it in the bytes hyper writes and writes
//! [`raw_http1_response`] (the same status, with the envelope) in its place.
//!
//! What is recognised is exactly hyper's shape, so that nothing else is ever
//! altered: a write that is one whole response head and nothing more,
//! status 400, 414 or 431, whose only headers are `content-length: 0`,
//! `date` and `connection`. The gateway's own 4xx answers always carry a
//! JSON body and a `content-type` (the router's last layer,
//! `error::envelope_bare_errors`, gives every error answer one), so they
//! never match; after a `101 Switching Protocols` the socket carries
//! WebSocket frames and is no longer looked at. On the normal path the cost
//! is comparing the first bytes of each write; nothing is copied.

use axum::http::StatusCode;

use crate::http::error::raw_http1_response;

/// The longest head hyper writes for a parse error (status line,
/// `content-length`, `date`, maybe `connection`), with room to spare.
const MAX_AUTO_HEAD: usize = 256;

/// If `buf` is hyper's own answer to a request it could not parse, the
/// answer with the envelope to write instead.
pub(super) fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    // The cheap test every write meets: a 4xx status line.
    if buf.len() > MAX_AUTO_HEAD
        || !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.0 4"))
    {
        return None;
    }
    let status = auto_error_status(buf)?;
    Some(raw_http1_response(status, message(status)))
}

/// Whether `buf` is, exactly, a head hyper writes for a parse error; its
/// status if so.
fn auto_error_status(buf: &[u8]) -> Option<StatusCode> {
    let text = std::str::from_utf8(buf).ok()?;
    // One head, nothing after it.
    let head = text.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code = status_line.get(9..12)?;
    let status = match code {
        "400" => StatusCode::BAD_REQUEST,
        "414" => StatusCode::URI_TOO_LONG,
        "431" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let mut zero_length = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => zero_length = true,
            "date" | "connection" => {}
            _ => return None,
        }
    }
    zero_length.then_some(status)
}

/// What the envelope says for each status hyper answers on its own.
fn message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request's header section is too large: at most 64 KiB and 100 header fields"
        }
        StatusCode::URI_TOO_LONG => "the request's URI is too long",
        _ => "the request is not valid HTTP/1.1: a malformed request line, or a header name or value with a byte HTTP does not allow",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Sat, 05 Dec 2026 09:19:11 GMT\r\n";

    fn body(answer: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn hypers_own_answers_to_unparsable_requests_are_replaced() {
        for (written, status, code) in [
            (
                format!("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n{DATE}\r\n"),
                "431",
                "headers_too_large",
            ),
            (
                format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n"),
                "400",
                "bad_request",
            ),
            (
                format!("HTTP/1.0 414 URI Too Long\r\ncontent-length: 0\r\n{DATE}\r\n"),
                "414",
                "uri_too_long",
            ),
            // Without the date header (`auto_date_header(false)`).
            ("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_string(), "400", "bad_request"),
        ] {
            let answer = replacement(written.as_bytes()).unwrap_or_else(|| panic!("{written:?}"));
            assert!(answer.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
            assert_eq!(body(&answer)["error"]["code"], code, "{written:?}");
        }
    }

    #[test]
    fn nothing_else_is_touched() {
        for written in [
            // The gateway's own 4xx: a content-type and a body.
            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n{DATE}\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 44\r\n{DATE}\r\n"),
            // A head with its body in the same write.
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\n{{}}"),
            // Two heads.
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            // Other statuses, successes, an upgrade.
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n{DATE}\r\n"),
            format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{DATE}\r\n"),
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n".to_string(),
            // No content-length, or not 0; half a head.
            format!("HTTP/1.1 431 Request Header Fields Too Large\r\n{DATE}\r\n"),
            format!("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 5\r\n{DATE}\r\n"),
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n".to_string(),
            // Body bytes, a WebSocket frame, nothing.
            "{\"error\":{}}".to_string(),
            "\u{1}\u{2}".to_string(),
            String::new(),
        ] {
            assert_eq!(replacement(written.as_bytes()), None, "{written:?}");
        }
    }
}
