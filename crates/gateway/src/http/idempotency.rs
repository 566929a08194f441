//! `Idempotency-Key` on the mutating connectors routes (`POST …/tool/call`,
//! `POST …/processes/{sid}/stdin`, `…/terminate`, `…/signal`, `PUT
//! …/files`): the HTTP side of [`crate::ops::idempotency`].
//!
//! - A request's fingerprint is the SHA-256 of its method, its path and its
//!   body, as sent. `PUT /files` streams a body of any size, which cannot be
//!   hashed before it is done: its fingerprint is the method and the path
//!   with the query, claimed before the body is read, and the body's
//!   SHA-256 (computed as it streams) is recorded with the answer. A repeat
//!   of an upload reads its own body whole (hashing it, keeping nothing),
//!   then replays the first answer if the two bodies agree, and answers 422
//!   `idempotency_key_reused` if not. An upload whose body broke off (the
//!   client went away mid-upload) wrote nothing and keeps no answer.
//! - With a key, the operation runs in a task of its own: a client that
//!   drops the connection (a lost response) does not cut it short, and its
//!   answer is recorded for the retry.
//! - Not kept (the key is released, and the retry runs): 429 and 503 (the
//!   answers that say "retry": nothing was done) and 500 (a store failure).
//!   Every other answer is kept, errors included.
//! - But a 503 whose request may have been done (the response carries
//!   [`OutcomeUnknown`]: the link or the peer channel went away with the
//!   request sent) keeps the key as `unknown`: a retry answers 409
//!   `idempotency_key_in_doubt` and is not done (`ops::idempotency`,
//!   "Unknown outcomes").
//! - A replay has the first answer's status and body, and the header
//!   `Idempotent-Replayed: true`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use sha2::{Digest, Sha256};

use crate::http::error::{ApiError, OutcomeUnknown};
use crate::http::extract::single_header;
use crate::ops::idempotency::{self, Answer, Begin, Claim};
use crate::store::Store;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header of a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";

/// The request's key, checked; None without one (400 for a bad one, or two).
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match single_header(headers, HEADER)? {
        None => Ok(None),
        Some(v) => Ok(Some(idempotency::parse_key(v.as_bytes())?)),
    }
}

/// Whether an answer with this status is kept for repeats (see the module
/// docs).
fn kept(status: StatusCode) -> bool {
    !matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::INTERNAL_SERVER_ERROR
    )
}

fn replayed(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, answer.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

fn refused(e: impl Into<ApiError>, replay: bool) -> Response {
    let mut resp = e.into().into_response();
    if replay {
        resp.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// Records `resp` as the claim's answer (or releases the claim) and gives
/// it back.
async fn record(claim: Claim, resp: Response, body_sha256: Option<&str>) -> Response {
    let (parts, body) = resp.into_parts();
    let unknown = parts.extensions.get::<OutcomeUnknown>().is_some();
    if !kept(parts.status) && !unknown {
        claim.release().await;
        return Response::from_parts(parts, body);
    }
    // The routes' answers are JSON made in memory: this copies, it does not
    // wait on anything.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            claim.release().await;
            return refused(
                crate::ops::Error::internal(format!("reading the answer: {e}")),
                false,
            );
        }
    };
    let answer = Answer {
        status: parts.status.as_u16(),
        body: bytes.to_vec(),
    };
    if unknown {
        claim.finish_unknown(&answer).await;
    } else {
        claim.finish(&answer, body_sha256).await;
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Runs `op` in its own task, so that a client going away does not stop
/// it (see the module docs).
async fn detached<F>(fut: F) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    tokio::spawn(fut).await.unwrap_or_else(|e| {
        refused(
            crate::ops::Error::internal(format!("the operation failed: {e}")),
            false,
        )
    })
}

/// A JSON route: `op` runs at most once per key (none: it just runs).
pub async fn json_route<F>(
    store: &Store,
    workspace: &str,
    key: Option<String>,
    method: &str,
    path: &str,
    body: &[u8],
    op: F,
) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    let Some(key) = key else {
        return op.await;
    };
    let fp = idempotency::fingerprint(&[method.as_bytes(), path.as_bytes(), body]);
    let (store, workspace) = (store.clone(), workspace.to_string());
    detached(async move {
        match idempotency::begin(&store, &workspace, &key, &fp).await {
            Err(e) => refused(e, false),
            Ok(Begin::Done(done)) => match done.replay(None) {
                Ok(answer) => replayed(answer),
                Err(e) => refused(e, true),
            },
            Ok(Begin::Run(claim)) => record(claim, op.await, None).await,
        }
    })
    .await
}

/// What [`Hashing`] saw of a body.
#[derive(Default)]
struct Hashed {
    hasher: Sha256,
    ended: bool,
    failed: bool,
}

/// A body stream that hashes what passes through it.
pub struct Hashing<S> {
    inner: S,
    seen: Arc<Mutex<Hashed>>,
}

impl<S, E> Stream for Hashing<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(ref item) = item {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            match item {
                Some(Ok(bytes)) => seen.hasher.update(bytes),
                Some(Err(_)) => seen.failed = true,
                None => seen.ended = true,
            }
        }
        item
    }
}

/// `PUT /files`: `op` gets the body (hashed on its way) and runs at most
/// once per key; see the module docs for how the body counts.
pub async fn upload_route<S, E, F, Fut>(
    store: &Store,
    workspace: &str,
    key: Option<String>,
    path_and_query: &str,
    body: S,
    op: F,
) -> Response
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
    E: Send + 'static,
    F: FnOnce(Hashing<S>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let seen = Arc::new(Mutex::new(Hashed::default()));
    let body = Hashing {
        inner: body,
        seen: seen.clone(),
    };
    let Some(key) = key else {
        return op(body).await;
    };
    let fp = idempotency::fingerprint(&[b"PUT", path_and_query.as_bytes()]);
    let (store, workspace) = (store.clone(), workspace.to_string());
    detached(async move {
        match idempotency::begin(&store, &workspace, &key, &fp).await {
            Err(e) => refused(e, false),
            Ok(Begin::Done(done)) => {
                // Read this request's body whole, to compare.
                let mut body = body;
                while let Some(chunk) = body.next().await {
                    if chunk.is_err() {
                        return refused(ApiError::bad_request("the upload was interrupted"), false);
                    }
                }
                let sha = body_sha256(&seen);
                match done.replay(sha.as_deref()) {
                    Ok(answer) => replayed(answer),
                    Err(e) => refused(e, true),
                }
            }
            Ok(Begin::Run(claim)) => {
                let resp = op(body).await;
                if seen.lock().unwrap_or_else(|e| e.into_inner()).failed {
                    // Nothing was written (the upload stages, then renames).
                    claim.release().await;
                    return resp;
                }
                let sha = body_sha256(&seen);
                record(claim, resp, sha.as_deref()).await
            }
        }
    })
    .await
}

/// The body's SHA-256 (hex) if it was read to its end.
fn body_sha256(seen: &Mutex<Hashed>) -> Option<String> {
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.ended
        .then(|| hex::encode(seen.hasher.clone().finalize()))
}
