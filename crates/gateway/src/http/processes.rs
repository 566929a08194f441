//! Every `/api/connectors/processes` route: list, stdin, output,
//! terminate, resize, signal (the SSE stream is [`super::stream`]). Each
//! handler resolves the caller's session and calls [`crate::ops::processes`].

use axum::extract::State;
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use execgate_protocol::connectors::{
    ErrorResponse, OkResponse, OutputResponse, ProcessListResponse, ResizeRequest, SignalRequest,
    StdinRequest,
};
use serde::Deserialize;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::extract::{bearer_token, ApiJson, ApiJsonRaw, ApiPath, ApiQuery};
use crate::http::idempotency;
use crate::http::openapi::{IdempotencyErrors, IdempotencyKey, SessionErrors, SessionPath};
use crate::ops::processes::{self, Output};
use crate::ops::revocation::Watch;
use crate::ops::state::AppState;
use crate::ops::tools::Encoding;
use crate::store::audit_log::Via;
use execgate_protocol::blob::Blob;
use execgate_protocol::exec::{ProcessChunk, Stream};

/// Writes to a process's stdin; `eof` closes it after the data.
#[utoipa::path(post, path = "/api/connectors/processes/{sid}/stdin", tag = "processes",
    params(SessionPath, IdempotencyKey),
    request_body = StdinRequest,
    responses(
        (status = 200, description = "Written", body = OkResponse),
        (status = 409, description = "stdin is closed (`stdin_closed`) or the process exited", body = ErrorResponse),
        SessionErrors,
        IdempotencyErrors,
    ))]
pub(crate) async fn stdin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    uri: Uri,
    headers: HeaderMap,
    ApiJsonRaw(req, raw): ApiJsonRaw<StdinRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let (store, workspace) = (state.store().clone(), caller.workspace.clone());
    let op = async move {
        let r: Result<_, ApiError> = async {
            let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "stdin").await?;
            processes::write_stdin(&mut s, &req.data_b64, req.eof).await?;
            Ok(Json(OkResponse { ok: true }))
        }
        .await;
        r.into_response()
    };
    Ok(idempotency::json_route(&store, &workspace, key, "POST", uri.path(), &raw, op).await)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct OutputQuery {
    /// The last seq already read (0 for the start); pass `next_since` of
    /// the previous answer.
    #[serde(default)]
    since: u64,
    /// Long-poll: wait up to this long (ms) for output past `since`.
    #[serde(default)]
    wait_ms: u64,
    /// How chunks carry their bytes: `base64` (the default: `data_b64`),
    /// `auto` (`text` with `encoding: "utf-8"` when a chunk's bytes are
    /// UTF-8, else `data_b64`) or `utf-8` (`text` always; bytes that are
    /// not UTF-8 escaped losslessly, `encoding: "utf-8-escaped"`). With a
    /// text encoding, consecutive chunks of one stream come joined under
    /// the last one's seq.
    #[serde(default)]
    #[param(inline)]
    encoding: Option<Encoding>,
}

/// Output chunks after seq `since`, with the exit code once the process
/// exited. Lost output is reported in `truncated`/`lost_bytes`.
#[utoipa::path(get, path = "/api/connectors/processes/{sid}/output", tag = "processes",
    params(SessionPath, OutputQuery),
    responses(
        (status = 200, description = "Chunks in seq order", body = OutputResponse),
        SessionErrors,
    ))]
pub(crate) async fn output(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    ApiQuery(q): ApiQuery<OutputQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "output").await?;
    // A long-poll ends early when its token is revoked or its environment
    // removed (see `revocation`).
    if q.wait_ms > 0 {
        let watch = Watch::new(&state, bearer_token(&headers)?, &caller.workspace)
            .with_environment(&s.link.name, &s.row.exe_id);
        s.watch = Some(watch);
    }
    let out = processes::output(&mut s, q.since, q.wait_ms).await?;
    let body = match q.encoding {
        // An OutputResponse, written without serde's detour (see
        // Output::to_json), in pieces as the response is sent.
        None | Some(Encoding::Base64) => out.into_json_body(),
        Some(encoding) => serde_json::to_vec(&out.into_response_as(encoding))
            .map_err(|e| ApiError::from(crate::ops::Error::internal(e.to_string())))?
            .into(),
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}

/// `/output`'s answer is written in pieces of about this size, each when
/// the response is ready for it.
const JSON_PIECE_BYTES: usize = 1024 * 1024;

/// Kills the process (its whole process group).
#[utoipa::path(post, path = "/api/connectors/processes/{sid}/terminate", tag = "processes",
    params(SessionPath, IdempotencyKey),
    request_body(content = Object, description = "Ignored; send `{}` or nothing.", content_type = "application/json"),
    responses(
        (status = 200, description = "Terminated (or had already exited)", body = OkResponse),
        SessionErrors,
        IdempotencyErrors,
    ))]
pub(crate) async fn terminate(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    uri: Uri,
    headers: HeaderMap,
    ApiJsonRaw(_, raw): ApiJsonRaw<serde::de::IgnoredAny>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let (store, workspace) = (state.store().clone(), caller.workspace.clone());
    let op = async move {
        let r: Result<_, ApiError> = async {
            let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "terminate").await?;
            processes::terminate(&mut s).await?;
            Ok(Json(OkResponse { ok: true }))
        }
        .await;
        r.into_response()
    };
    Ok(idempotency::json_route(&store, &workspace, key, "POST", uri.path(), &raw, op).await)
}

/// `POST /api/connectors/processes/{sid}/resize {cols, rows}`.
#[utoipa::path(post, path = "/api/connectors/processes/{sid}/resize", tag = "processes",
    params(SessionPath),
    request_body = ResizeRequest,
    responses(
        (status = 200, description = "Resized", body = OkResponse),
        (status = 409, description = "The process has no terminal (`not_a_terminal`) or has exited", body = ErrorResponse),
        SessionErrors,
    ))]
pub(crate) async fn resize(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    ApiJson(req): ApiJson<ResizeRequest>,
) -> Result<Json<OkResponse>, ApiError> {
    let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "resize").await?;
    processes::resize(&mut s, req.cols, req.rows).await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `POST /api/connectors/processes/{sid}/signal {signal}`: to the whole
/// process group.
#[utoipa::path(post, path = "/api/connectors/processes/{sid}/signal", tag = "processes",
    params(SessionPath, IdempotencyKey),
    request_body = SignalRequest,
    responses(
        (status = 200, description = "Sent", body = OkResponse),
        (status = 409, description = "The process has exited", body = ErrorResponse),
        SessionErrors,
        IdempotencyErrors,
    ))]
pub(crate) async fn signal(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sid): ApiPath<String>,
    uri: Uri,
    headers: HeaderMap,
    ApiJsonRaw(req, raw): ApiJsonRaw<SignalRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let (store, workspace) = (state.store().clone(), caller.workspace.clone());
    let op = async move {
        let r: Result<_, ApiError> = async {
            let mut s = processes::resolve(&state, &caller, &sid, Via::Rest, "signal").await?;
            processes::signal(&mut s, req.signal).await?;
            Ok(Json(OkResponse { ok: true }))
        }
        .await;
        r.into_response()
    };
    Ok(idempotency::json_route(&store, &workspace, key, "POST", uri.path(), &raw, op).await)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many sessions, newest first.
    #[serde(default = "default_list_limit")]
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: u32,
}

fn default_list_limit() -> u32 {
    100
}

/// `GET /api/connectors/processes[?limit=N]`: the workspace's sessions,
/// newest first (at most 1000).
#[utoipa::path(get, path = "/api/connectors/processes", tag = "processes",
    params(ListQuery),
    responses((status = 200, description = "The workspace's sessions, newest first", body = ProcessListResponse)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ProcessListResponse>, ApiError> {
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = state
        .store()
        .list_sessions(&caller.workspace, q.limit)
        .await?;
    // One state read per process, concurrently: the executor answers
    // requests in parallel.
    let processes = futures_util::future::join_all(
        rows.into_iter().map(|row| processes::describe(&state, row)),
    )
    .await;
    Ok(Json(ProcessListResponse { processes }))
}

/// `/output`'s answer as JSON bytes.
pub(crate) trait OutputJson {
    /// The whole answer at once: what the pieces add up to (tested).
    #[cfg(test)]
    fn to_json(&self) -> Vec<u8>;
    /// The JSON of [`OutputJson::to_json`] in pieces of about `piece`
    /// bytes: the chunks' pieces are written only as they are taken.
    fn into_json_pieces(self, piece: usize) -> impl Iterator<Item = Vec<u8>> + Send;
    /// The response body: [`OutputJson::into_json_pieces`] written as the
    /// body is sent, so that the first megabyte of an 8 MiB answer is on
    /// its way to the client (and being read) while the rest is encoded.
    fn into_json_body(self) -> axum::body::Body
    where
        Self: Sized + Send + 'static,
    {
        let pieces = self
            .into_json_pieces(JSON_PIECE_BYTES)
            .map(Ok::<_, std::convert::Infallible>);
        axum::body::Body::from_stream(futures_util::stream::iter(pieces))
    }
}

impl OutputJson for Output {
    fn into_json_pieces(self, piece: usize) -> impl Iterator<Item = Vec<u8>> + Send {
        const EMPTY: &str = r#"{"chunks":[]"#;
        // Only strings, numbers and booleans: serialising cannot fail.
        let head = serde_json::to_string(&self.head).unwrap_or_default();
        let rest = head.strip_prefix(EMPTY).unwrap_or_default().to_string();
        let size = |c: &ProcessChunk| (c.chunk.len() as usize).div_ceil(3) * 4 + 64;
        // What the chunks still to write take, to size each piece's buffer.
        let mut left: usize = self.chunks.iter().map(size).sum();
        let mut chunks = self.chunks.into_iter().peekable();
        let (mut first, mut done) = (true, false);
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let mut out = String::with_capacity(left.min(piece) + rest.len() + 64);
            if first {
                out.push_str(r#"{"chunks":["#);
            }
            while let Some(c) = chunks.next() {
                left -= size(&c);
                if !first {
                    out.push(',');
                }
                first = false;
                out.push('{');
                push_chunk_fields(&mut out, c.stream, &c.chunk);
                out.push_str(r#","seq":"#);
                out.push_str(&c.seq.to_string());
                out.push('}');
                if out.len() >= piece && chunks.peek().is_some() {
                    return Some(out.into_bytes());
                }
            }
            // The last piece: the array's end and the rest of the answer.
            out.push(']');
            out.push_str(&rest);
            done = true;
            Some(out.into_bytes())
        })
    }

    /// The JSON of `Output::into_response_as(Encoding::Base64)`, written by hand for the
    /// chunks ([`push_chunk_fields`]) into one pre-sized buffer, where
    /// serde_json would also grow its buffer by doubling: together most of
    /// the gateway's time for an 8 MiB answer (BENCHMARKS.md).
    #[cfg(test)]
    fn to_json(&self) -> Vec<u8> {
        const EMPTY: &str = r#"{"chunks":[]"#;
        // Only strings, numbers and booleans: serialising cannot fail.
        let head = serde_json::to_string(&self.head).unwrap_or_default();
        let rest = head.strip_prefix(EMPTY).unwrap_or_default();
        let data: usize = self
            .chunks
            .iter()
            .map(|c| (c.chunk.len() as usize).div_ceil(3) * 4 + 64)
            .sum();
        let mut out = String::with_capacity(EMPTY.len() + data + head.len());
        out.push_str(r#"{"chunks":["#);
        for (i, c) in self.chunks.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('{');
            push_chunk_fields(&mut out, c.stream, &c.chunk);
            out.push_str(r#","seq":"#);
            out.push_str(&c.seq.to_string());
            out.push('}');
        }
        out.push(']');
        out.push_str(rest);
        out.into_bytes()
    }
}

/// Appends a chunk's `"stream":…,"data_b64":…` (the fields `/output`'s
/// chunks and the stream's `output` events share), as serde would write
/// them. Base64 made here holds no character JSON must escape, so it goes
/// straight into `out`; serde_json would scan each character for one (a
/// tenth of the gateway's time on the output path; BENCHMARKS.md). It is
/// encoded with SIMD (`base64-simd`, AVX2 where the CPU has it): the
/// scalar encoder was the largest single item of the machine's profile
/// while output streamed (BENCHMARKS.md, session 4).
pub(crate) fn push_chunk_fields(out: &mut String, stream: Stream, data: &Blob) {
    out.push_str(r#""stream":""#);
    out.push_str(stream.as_str());
    out.push_str(r#"","data_b64":"#);
    match data {
        Blob::Raw(bytes) => {
            out.push('"');
            base64_simd::STANDARD.encode_append(bytes, out);
            out.push('"');
        }
        // An executor's own text (a stock codex): escaped like any string.
        Blob::Base64(text) => out.push_str(&serde_json::to_string(text).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use execgate_protocol::connectors::ErrorBody;
    use execgate_protocol::exec::ProcessChunk;

    /// The hand-written JSON is the JSON serde writes for the response,
    /// byte for byte, whichever way the bytes came.
    #[test]
    fn output_json_is_the_responses_json() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let head = OutputResponse {
            chunks: Vec::new(),
            exit_code: Some(3),
            session_alive: false,
            truncated: true,
            lost_bytes: 7,
            lost_bytes_unknown: false,
            next_since: Some(12),
            error: None,
        };
        let chunk = |seq, stream, chunk| ProcessChunk { seq, stream, chunk };
        let cases = [
            vec![],
            vec![chunk(1, Stream::Stdout, Blob::raw(&b"\0\"hi\"\n\xff"[..]))],
            vec![
                chunk(4, Stream::Stderr, Blob::Base64(b64(b"x"))),
                chunk(5, Stream::Pty, Blob::raw(&b""[..])),
                // Not base64 at all (a broken executor): still valid JSON.
                chunk(6, Stream::Stdout, Blob::Base64("\"\\\n".into())),
            ],
        ];
        for chunks in cases {
            for error in [
                None,
                Some(ErrorBody {
                    code: "c".into(),
                    message: "m\"".into(),
                }),
            ] {
                let out = Output {
                    head: OutputResponse {
                        error,
                        ..head.clone()
                    },
                    chunks: chunks.clone(),
                };
                let hand = out.to_json();
                let serde = serde_json::to_vec(&out.into_response_as(Encoding::Base64)).unwrap();
                assert_eq!(
                    String::from_utf8(hand).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
            }
        }
    }

    /// The answer written in pieces is the answer written at once, cut
    /// after a chunk once a piece holds `piece` bytes.
    #[test]
    fn output_json_in_pieces_is_the_same_json() {
        let head = OutputResponse {
            chunks: Vec::new(),
            exit_code: None,
            session_alive: true,
            truncated: false,
            lost_bytes: 0,
            lost_bytes_unknown: false,
            next_since: Some(9),
            error: None,
        };
        let chunk = |seq: u64, n: usize| ProcessChunk {
            seq,
            stream: if seq.is_multiple_of(2) {
                Stream::Stdout
            } else {
                Stream::Stderr
            },
            chunk: Blob::raw(vec![seq as u8; n]),
        };
        let cases = [
            vec![],
            vec![chunk(1, 10)],
            vec![chunk(1, 300), chunk(2, 0), chunk(3, 1000), chunk(4, 5)],
            (1..=40).map(|i| chunk(i, 100 * i as usize)).collect(),
        ];
        for chunks in cases {
            for piece in [1, 100, 1000, 1 << 20] {
                let out = Output {
                    head: head.clone(),
                    chunks: chunks.clone(),
                };
                let whole = out.to_json();
                let pieces: Vec<Vec<u8>> = out.into_json_pieces(piece).collect();
                assert_eq!(pieces.concat(), whole, "piece {piece}");
                let n = pieces.len();
                assert!(pieces[..n - 1].iter().all(|p| p.len() >= piece));
                let most = chunks.len().max(1);
                assert!(n <= most, "{n} pieces for {most} chunks");
                if piece == 1 {
                    assert_eq!(n, most, "one piece per chunk");
                }
            }
        }
    }
}
