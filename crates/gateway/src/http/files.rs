//! `GET` and `PUT /api/connectors/envs/{name}/files?path=P`: a file's raw
//! bytes streamed to and from API callers, of any size, with constant
//! gateway memory.
//!
//! - `GET` answers with `Content-Length` and honours a single `Range`
//!   (`bytes=a-b`, `bytes=a-`, `bytes=-n`) with 206; an unsatisfiable range
//!   is 416 (see [`parse_range`] for the edge cases). Chunks are read ahead of the client by one, through a channel.
//! - `PUT` streams the request body into a staged file beside the target,
//!   then `fs/commitFile` verifies its SHA-256 and renames it into place:
//!   the target is replaced atomically and keeps its mode. `create_parents`
//!   (default true) creates missing directories. The body-size limit of the
//!   JSON routes does not apply. A `Content-Range` (a partial PUT) is
//!   refused with 400.
//!
//! What they do is [`crate::ops::files`] (through `ops::transfer`); this
//! module is their HTTP: the query, `Range` and its 206/416, the headers,
//! and the bodies as byte streams.
//!
//! Both are audited (`files.get`, `files.put`): a download's arguments are
//! `{"path": …}`, an upload's are its body, hashed while it streams; the
//! record is written when the last byte has gone out (or come in).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use execgate_protocol::connectors::{ErrorResponse, UploadResponse};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::idempotency;
use crate::http::openapi::{FileBytes, IdempotencyErrors, IdempotencyKey};
use crate::ops::audit::RecordExt as _;
use crate::ops::files::{self, Download, ReadAhead};
use crate::ops::state::AppState;
use crate::ops::tools::default_true;
use crate::store::audit_log::{AuditEntry, AuditRecord, Kind, Via};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// The file on the environment: absolute, or relative to the executor's
    /// working directory.
    path: String,
    /// `PUT` only: create missing parent directories.
    #[serde(default = "default_true")]
    #[param(default = true)]
    create_parents: bool,
}

/// A file's bytes. Honours one `Range` (206); an unsatisfiable range is 416.
#[utoipa::path(get, path = "/api/connectors/envs/{name}/files", tag = "files",
    params(
        ("name" = String, Path, description = "The environment's name"),
        FileQuery,
        ("Range" = Option<String>, Header, description = "`bytes=a-b`, `bytes=a-` or `bytes=-n`"),
    ),
    responses(
        (status = 200, description = "The whole file", body = FileBytes, content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", body = FileBytes, content_type = "application/octet-stream"),
        (status = 404, description = "No such environment (`env_not_found`) or file (`file_not_found`)", body = ErrorResponse),
        (status = 416, description = "The range starts past the end of the file", body = ErrorResponse),
    ))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rec = AuditRecord::for_caller(&caller, Via::Rest, Kind::File, "files.get")
        .with_environment(&name)
        .with_args_json(&serde_json::json!({ "path": q.path }));
    let mut audit = state.audit().begin(rec).await?;
    match serve_download(&state, &caller, &name, &q, &headers, &mut audit).await {
        Ok(Served::Body { resp, task }) => {
            tokio::spawn(task.run(audit));
            Ok(resp)
        }
        Ok(Served::Refused(resp, code)) => {
            audit.fail(code);
            Ok(resp)
        }
        Err(e) => {
            audit.fail(e.code);
            Err(e)
        }
    }
}

enum Served {
    /// The headers; `task` streams the body.
    Body { resp: Response, task: ReadAhead },
    /// An answer without a body (416), and its error code.
    Refused(Response, &'static str),
}

async fn serve_download(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &FileQuery,
    headers: &HeaderMap,
    audit: &mut AuditEntry,
) -> Result<Served, ApiError> {
    let Download { link, path, size } =
        files::open_download(state, caller, name, &q.path, audit).await?;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => match parse_range(r, size) {
            RangeSpec::Whole => None,
            RangeSpec::Part(start, end) => Some((start, end)),
            RangeSpec::Unsatisfiable => {
                let code = "range_not_satisfiable";
                let mut resp = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    code,
                    format!("the range {r:?} is outside the file's {size} bytes"),
                )
                .into_response();
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                );
                return Ok(Served::Refused(resp, code));
            }
        },
    };
    let (start, end) = range.unwrap_or((0, size));

    // Read ahead of the client by one chunk.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let task = ReadAhead {
        link,
        path,
        offset: start,
        end,
        tx,
    };
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)).expect("ascii"),
        );
    }
    Ok(Served::Body { resp, task })
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    Whole,
    /// `[start, end)`.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range, as RFC 9110 (§14.1.2, §14.2) defines it:
/// - `bytes=a-b`: a last position at or past the end is clamped to the
///   last byte (whatever its size: a position is any run of digits, so one
///   past `u64::MAX` is simply "beyond the end");
/// - `bytes=a-`: from `a` to the end; `bytes=-n`: the last `n` bytes (the
///   whole file when `n` is larger);
/// - a first position at or past the end, or `bytes=-0`: unsatisfiable
///   (416 with `Content-Range: bytes */size`), as is any range of an empty
///   file;
/// - an invalid header (`b < a`, signs, other units, nonsense) is ignored
///   and the file served whole, as the RFC asks;
/// - several ranges: served whole (200), which the RFC allows; multipart
///   answers are not worth their cost to the API's clients.
fn parse_range(header: &str, size: u64) -> RangeSpec {
    let header = header.trim();
    let Some(spec) = header
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &header[6..])
    else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match position(b) {
            Some(0) => return RangeSpec::Unsatisfiable,
            Some(n) => Some((size.saturating_sub(n), size)),
            None => None,
        },
        (false, true) => position(a).map(|s| (s, size)),
        (false, false) => match (position(a), position(b)) {
            (Some(s), Some(e)) if e >= s => Some((s, e.saturating_add(1).min(size))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeSpec::Whole,
        Some((s, _)) if s >= size => RangeSpec::Unsatisfiable,
        Some((s, e)) => RangeSpec::Part(s, e),
    }
}

/// A byte position: one or more ASCII digits (no sign, unlike
/// `u64::from_str`), saturating at `u64::MAX`, which is past any file's end.
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Replaces (or creates) a file with the request body, atomically: staged,
/// verified by SHA-256, renamed. A replaced file keeps its mode.
#[utoipa::path(put, path = "/api/connectors/envs/{name}/files", tag = "files",
    params(("name" = String, Path, description = "The environment's name"), FileQuery, IdempotencyKey),
    request_body(content = FileBytes, content_type = "application/octet-stream", description = "The file's new bytes, any size"),
    responses(
        (status = 200, description = "Written", body = UploadResponse),
        (status = 400, description = "A `Content-Range` header (partial PUT is not supported: `bad_request`)", body = ErrorResponse),
        (status = 404, description = "No such environment (`env_not_found`), or a missing parent with `create_parents=false`", body = ErrorResponse),
        IdempotencyErrors,
    ))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A partial PUT is not supported; RFC 9110 §14.5 asks a server that
    // does not support it to refuse it rather than replace the whole file
    // with the part.
    let partial = headers.get(header::CONTENT_RANGE).is_some();
    let key = idempotency::key_of(&headers)?;
    let (store, workspace) = (state.store().clone(), caller.workspace.clone());
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let op = move |body| async move {
        let r: Result<_, ApiError> = async {
            let rec = AuditRecord::for_caller(&caller, Via::Rest, Kind::File, "files.put")
                .with_environment(&name);
            let mut audit = state.audit().begin(rec).await?;
            let r = if partial {
                Err(ApiError::bad_request(
                    "Content-Range on PUT is not supported: a PUT replaces the whole file; send the whole file without Content-Range",
                ))
            } else {
                files::upload(
                    &state,
                    &caller,
                    &name,
                    &q.path,
                    q.create_parents,
                    body,
                    &mut audit,
                )
                .await
                .map(Json)
                .map_err(ApiError::from)
            };
            audit.finish(&r);
            r
        }
        .await;
        r.into_response()
    };
    Ok(idempotency::upload_route(
        &store,
        &workspace,
        key,
        path_and_query,
        body.into_data_stream(),
        op,
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeSpec::*};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0, 100));
        assert_eq!(parse_range("bytes=50-5000", 100), Part(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=x-y", 100), Whole);
    }

    #[test]
    fn huge_positions_are_clamped_not_wrapped() {
        // The last position one short of overflowing `e + 1` once answered
        // an empty 206 (and panicked in a debug build).
        assert_eq!(parse_range("bytes=0-18446744073709551615", 10), Part(0, 10));
        assert_eq!(parse_range("bytes=3-18446744073709551614", 10), Part(3, 10));
        // Past u64: still "beyond the end".
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999999", 10),
            Part(0, 10)
        );
        assert_eq!(
            parse_range("bytes=99999999999999999999999999-", 10),
            Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999999", 10),
            Part(0, 10)
        );
        assert_eq!(
            parse_range("bytes=18446744073709551615-", 10),
            Unsatisfiable
        );
    }

    #[test]
    fn edge_cases_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=-5", 10), Part(5, 10));
        assert_eq!(parse_range("bytes=5-", 10), Part(5, 10));
        assert_eq!(parse_range("bytes=9-9", 10), Part(9, 10));
        assert_eq!(parse_range("bytes=10-10", 10), Unsatisfiable);
        assert_eq!(parse_range("Bytes=0-0", 10), Part(0, 1));
        // An empty file has no satisfiable range.
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        // Invalid: ignored, the file is served whole.
        assert_eq!(parse_range("bytes=+1-5", 10), Whole);
        assert_eq!(parse_range("bytes=1-+5", 10), Whole);
        assert_eq!(parse_range("bytes=-", 10), Whole);
        assert_eq!(parse_range("bytes=", 10), Whole);
        assert_eq!(parse_range("bytes=1", 10), Whole);
        assert_eq!(parse_range("bytes=1-2-3", 10), Whole);
        assert_eq!(parse_range("bytés=1-2", 10), Whole);
        assert_eq!(parse_range("", 10), Whole);
    }
}
