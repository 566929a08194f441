//! Idempotency keys: a mutating request sent again with the same
//! `Idempotency-Key` is answered the first answer instead of being done
//! again (the HTTP side, which routes take a key and what their request's
//! fingerprint is, is `http::idempotency`).
//!
//! - A key is 1–[`MAX_KEY_BYTES`] bytes of printable ASCII ([`parse_key`]),
//!   scoped to the caller's workspace, and lives [`KEY_TTL`] from its first
//!   use; then it is forgotten (a claim takes an expired row over, and
//!   [`sweep_periodically`] deletes them).
//! - [`begin`] claims the key in the store (one `INSERT … ON CONFLICT`
//!   statement, so two requests, or two gateways on one database, racing
//!   on a key run it once). The winner gets a [`Claim`] and does the
//!   operation; the others wait for its answer ([`Begin::Done`]), polling
//!   the store, so a duplicate on another replica waits as well.
//! - The same key with another request (another fingerprint) is 422
//!   `idempotency_key_reused`, at once.
//! - A finished claim records its answer ([`Claim::finish`]): an opaque
//!   status number and body, which the HTTP layer replays byte for byte.
//!   An answer over [`MAX_ANSWER_BYTES`] is not kept: the key remembers
//!   only that it ran, and a repeat answers 409
//!   `idempotency_answer_too_large` (it is not done again). An answer that
//!   says "retry" (the HTTP layer decides which) is not kept either: the
//!   claim is released ([`Claim::release`]) and the next request with the
//!   key runs.
//! - **Unknown outcomes.** An answer that says "retry" but comes after
//!   the request may have reached the executor (503 `executor_unavailable`
//!   from a link, or the peer channel to the replica holding it, that went
//!   away with the request sent and unanswered: `ops::Error::outcome_unknown`)
//!   does not release the key: the claim records it as `unknown`
//!   ([`Claim::finish_unknown`]) and a repeat answers 409
//!   `idempotency_key_in_doubt`, as after a crash (below), instead of doing
//!   it a second time. Failures where the request certainly never left
//!   this gateway (no link, a link already closed, draining, limits, the
//!   store, the audit record refused) still release it. A read-only tool
//!   (`policy::READ_ONLY_TOOLS`) releases it either way: doing it again
//!   changes nothing.
//! - **A crash between doing and recording.** A running claim refreshes
//!   its row every [`HEARTBEAT`]. A row still `running` whose heartbeat is
//!   older than [`IN_DOUBT_AFTER`] belongs to a gateway that died (or lost
//!   its store) while it ran: the operation may or may not have happened,
//!   so a repeat answers 409 `idempotency_key_in_doubt` rather than run it
//!   a second time. The caller checks the state (the file, the process
//!   list) and goes on with a new key.
//! - **Cost.** A request with a key writes `execgate.db` twice (the claim
//!   and the answer), and each write makes the next calls' in-memory
//!   lookups (`store::lookups`) read the database again once. Requests
//!   without a key pay nothing.

use std::time::Duration;

use execgate_protocol::connectors::error_code as code;
use sha2::{Digest, Sha256};

use crate::ops::Error;
use crate::secret;
use crate::store::{now_ms, IdempotencyAnswer, IdempotencyRow, Store};

/// How long a key is remembered after its first use.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest key taken.
pub const MAX_KEY_BYTES: usize = 255;
/// The largest answer kept for replays (1 MiB).
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// How often a running claim says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A running claim silent this long died with its gateway.
pub const IN_DOUBT_AFTER: Duration = Duration::from_secs(10);
/// How often a duplicate looks whether the first finished.
const POLL: Duration = Duration::from_millis(50);
/// How often expired keys are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// A key as sent, checked: 1–255 bytes of printable ASCII (space to `~`).
pub fn parse_key(raw: &[u8]) -> Result<String, Error> {
    if raw.is_empty() || raw.len() > MAX_KEY_BYTES {
        return Err(Error::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_BYTES} bytes long, not {}",
            raw.len()
        )));
    }
    if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(Error::bad_request(
            "Idempotency-Key must be printable ASCII (a UUID is a good key)",
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// The SHA-256 (hex) of a request's parts, each length-prefixed so that
/// no two different requests concatenate alike.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// A first answer, as the HTTP layer made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, kept as a number.
    pub status: u16,
    pub body: Vec<u8>,
}

/// What a key's first request left.
#[derive(Debug, Clone)]
pub struct Done {
    /// None: it ran, but its answer was too large to keep.
    answer: Option<Answer>,
    /// `PUT /files`: the SHA-256 of the first request's body (None when it
    /// was never read whole: the answer came before the body mattered).
    body_sha256: Option<String>,
}

impl Done {
    /// The answer to replay to a request whose body hashed to `body_sha256`
    /// (for a route whose fingerprint leaves the body out; None otherwise).
    pub fn replay(self, body_sha256: Option<&str>) -> Result<Answer, Error> {
        if let (Some(first), Some(this)) = (self.body_sha256.as_deref(), body_sha256) {
            if first != this {
                return Err(reused());
            }
        }
        self.answer.ok_or_else(|| {
            Error::new(
                code::IDEMPOTENCY_ANSWER_TOO_LARGE,
                format!(
                    "the request with this Idempotency-Key was done, but its answer was over {MAX_ANSWER_BYTES} bytes and was not kept; it is not done again (read the result another way, or use a new key)"
                ),
            )
        })
    }
}

/// The outcome of [`begin`].
pub enum Begin {
    /// This request owns the key: do it, then [`Claim::finish`] (or
    /// [`Claim::release`]).
    Run(Claim),
    /// The key's first request finished; answer its answer.
    Done(Done),
}

fn reused() -> Error {
    Error::new(
        code::IDEMPOTENCY_KEY_REUSED,
        "this Idempotency-Key was used for a different request (another route, path or body) in this workspace; use a new key for a new request",
    )
}

/// The repeat of a request whose first answer said its outcome was
/// unknown (`first`: that answer's body).
fn unknown_outcome(status: Option<i64>, first: Option<&[u8]>) -> Error {
    let said = first
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| "no detail".into());
    Error::new(
        code::IDEMPOTENCY_KEY_IN_DOUBT,
        format!(
            "the first request with this Idempotency-Key ended with its outcome unknown ({} {said}): it may or may not have happened, so it is not done again; check the result and use a new key",
            status.unwrap_or(503)
        ),
    )
}

fn in_doubt() -> Error {
    Error::new(
        code::IDEMPOTENCY_KEY_IN_DOUBT,
        "the first request with this Idempotency-Key was cut off (its gateway stopped) before its answer was recorded: it may or may not have happened, so it is not done again; check the result and use a new key",
    )
}

/// Claims `key` for this request in `workspace`, or waits for the request
/// that holds it and answers what it left (see the module docs).
/// `fingerprint` is the request's ([`fingerprint`]).
pub async fn begin(
    store: &Store,
    workspace: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Begin, Error> {
    let claim_id = secret::random_id("idem_", 12);
    loop {
        let now = now_ms();
        let expires = now.saturating_add(KEY_TTL.as_millis() as i64);
        if store
            .claim_idempotency_key(workspace, key, fingerprint, &claim_id, now, expires)
            .await?
        {
            return Ok(Begin::Run(Claim::start(store, workspace, key, claim_id)));
        }
        // Held by another request (or expired between the two statements,
        // or released: then claim again).
        let Some(row) = store.idempotency_key(workspace, key, now_ms()).await? else {
            continue;
        };
        if row.fingerprint != fingerprint {
            return Err(reused());
        }
        if let Some(done) = finished(row)? {
            return Ok(Begin::Done(done));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A row's outcome: `Some` once it finished; None while it runs; the
/// in-doubt error once its claim went silent.
fn finished(row: IdempotencyRow) -> Result<Option<Done>, Error> {
    match row.state.as_str() {
        "done" => Ok(Some(Done {
            answer: Some(Answer {
                status: row.status.unwrap_or(500) as u16,
                body: row.answer.unwrap_or_default(),
            }),
            body_sha256: row.body_sha256,
        })),
        "unknown" => Err(unknown_outcome(row.status, row.answer.as_deref())),
        "too_large" => Ok(Some(Done {
            answer: None,
            body_sha256: row.body_sha256,
        })),
        _ if now_ms().saturating_sub(row.alive_at) > IN_DOUBT_AFTER.as_millis() as i64 => {
            Err(in_doubt())
        }
        _ => Ok(None),
    }
}

/// A key this request owns while it does the operation. Dropped without
/// [`finish`](Claim::finish) or [`release`](Claim::release) (a panic), it
/// releases the key.
pub struct Claim {
    store: Store,
    workspace: String,
    key: String,
    claim_id: String,
    heartbeat: tokio::task::JoinHandle<()>,
    settled: bool,
}

impl Claim {
    fn start(store: &Store, workspace: &str, key: &str, claim_id: String) -> Claim {
        let heartbeat = {
            let (store, workspace, key, claim_id) = (
                store.clone(),
                workspace.to_string(),
                key.to_string(),
                claim_id.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    if let Err(e) = store
                        .touch_idempotency_key(&workspace, &key, &claim_id, now_ms())
                        .await
                    {
                        tracing::warn!("idempotency key heartbeat: {e}");
                    }
                }
            })
        };
        Claim {
            store: store.clone(),
            workspace: workspace.to_string(),
            key: key.to_string(),
            claim_id,
            heartbeat,
            settled: false,
        }
    }

    /// Records the answer for the repeats (the answer only that it ran when
    /// the body is over [`MAX_ANSWER_BYTES`]). `body_sha256`: see
    /// [`Done`]. A store failure here is logged: the caller has its answer,
    /// and a repeat will find the key in doubt.
    pub async fn finish(mut self, answer: &Answer, body_sha256: Option<&str>) {
        self.settled = true;
        self.heartbeat.abort();
        let too_large = answer.body.len() > MAX_ANSWER_BYTES;
        let record = IdempotencyAnswer {
            state: if too_large { "too_large" } else { "done" },
            status: i64::from(answer.status),
            answer: (!too_large).then_some(answer.body.as_slice()),
            body_sha256,
        };
        self.record(&record, "answer").await;
    }

    /// Records that the request ended with its outcome unknown
    /// (`answer`, a 503, is kept for the message): the key is not released,
    /// and a repeat answers 409 `idempotency_key_in_doubt` (see the module
    /// docs). A store failure here is logged: the claim's heartbeat stops,
    /// so a repeat finds the key in doubt all the same after
    /// [`IN_DOUBT_AFTER`].
    pub async fn finish_unknown(mut self, answer: &Answer) {
        self.settled = true;
        self.heartbeat.abort();
        let body = &answer.body[..answer.body.len().min(MAX_ANSWER_BYTES)];
        let record = IdempotencyAnswer {
            state: "unknown",
            status: i64::from(answer.status),
            answer: Some(body),
            body_sha256: None,
        };
        self.record(&record, "unknown outcome").await;
    }

    /// Writes `record` under this claim; `what` names it in the log when the
    /// claim was lost or the store failed.
    async fn record(&self, record: &IdempotencyAnswer<'_>, what: &str) {
        match self
            .store
            .finish_idempotency_key(&self.workspace, &self.key, &self.claim_id, record, now_ms())
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!("idempotency key lost its claim before its {what}"),
            Err(e) => tracing::error!("recording an idempotency key's {what}: {e}"),
        }
    }

    /// Gives the key up without an answer: the next request with it runs.
    pub async fn release(mut self) {
        self.settled = true;
        self.heartbeat.abort();
        if let Err(e) = self
            .store
            .release_idempotency_key(&self.workspace, &self.key, &self.claim_id)
            .await
        {
            tracing::error!("releasing an idempotency key: {e}");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if !self.settled {
            let (store, workspace, key, claim_id) = (
                self.store.clone(),
                std::mem::take(&mut self.workspace),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.claim_id),
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store
                        .release_idempotency_key(&workspace, &key, &claim_id)
                        .await;
                });
            }
        }
    }
}

/// Deletes expired keys every few minutes, for the life of the gateway.
pub async fn sweep_periodically(store: Store) {
    loop {
        match store.sweep_idempotency_keys(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "expired idempotency keys deleted"),
            Err(e) => tracing::warn!("sweeping idempotency keys: {e}"),
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{on_both, Fx};

    #[test]
    fn keys_are_printable_ascii_up_to_255_bytes() {
        assert_eq!(parse_key(b"a-b_c 1~").unwrap(), "a-b_c 1~");
        assert!(parse_key(&[b'k'; 255]).is_ok());
        for bad in [
            &b""[..],
            &[b'k'; 256],
            b"tab\there",
            "é".as_bytes(),
            b"\x7f",
        ] {
            assert_eq!(parse_key(bad).unwrap_err().code, code::BAD_REQUEST);
        }
    }

    #[test]
    fn fingerprints_are_unambiguous() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"a", b"b"]), fingerprint(&[b"a", b"b"]));
    }

    // The claim's SQL is the part that differs between engines: every
    // store-touching test runs on SQLite and on PostgreSQL.
    on_both!(
        a_key_runs_once_and_replays_its_answer,
        a_released_key_runs_again_and_a_large_answer_is_not_kept,
        body_hashes_must_agree,
        a_silent_claim_is_in_doubt_and_an_expired_key_is_forgotten,
        an_unknown_outcome_keeps_the_key_in_doubt,
    );

    fn answer(body: &[u8]) -> Answer {
        Answer {
            status: 200,
            body: body.to_vec(),
        }
    }

    async fn a_key_runs_once_and_replays_its_answer(fx: Fx) {
        let store = fx.open().await;
        let Begin::Run(claim) = begin(&store, "w", "k", "fp").await.unwrap() else {
            panic!("the first request runs");
        };
        // A duplicate waits for the first, then gets its answer.
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { begin(&store, "w", "k", "fp").await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "a duplicate waits for the first");
        claim.finish(&answer(b"first"), None).await;
        let Begin::Done(done) = waiter.await.unwrap().unwrap() else {
            panic!("the duplicate does not run");
        };
        assert_eq!(done.replay(None).unwrap(), answer(b"first"));
        // Another request with the key: refused.
        let e = begin(&store, "w", "k", "other").await.err().unwrap();
        assert_eq!(e.code, code::IDEMPOTENCY_KEY_REUSED);
        // Another workspace: its own key.
        assert!(matches!(
            begin(&store, "w2", "k", "other").await.unwrap(),
            Begin::Run(_)
        ));
    }

    async fn a_released_key_runs_again_and_a_large_answer_is_not_kept(fx: Fx) {
        let store = fx.open().await;
        let Begin::Run(claim) = begin(&store, "w", "k", "fp").await.unwrap() else {
            panic!()
        };
        claim.release().await;
        let Begin::Run(claim) = begin(&store, "w", "k", "fp").await.unwrap() else {
            panic!("a released key runs again");
        };
        claim
            .finish(&answer(&vec![b'x'; MAX_ANSWER_BYTES + 1]), None)
            .await;
        let Begin::Done(done) = begin(&store, "w", "k", "fp").await.unwrap() else {
            panic!()
        };
        assert_eq!(
            done.replay(None).unwrap_err().code,
            code::IDEMPOTENCY_ANSWER_TOO_LARGE
        );
    }

    async fn body_hashes_must_agree(fx: Fx) {
        let store = fx.open().await;
        let Begin::Run(claim) = begin(&store, "w", "k", "put").await.unwrap() else {
            panic!()
        };
        claim.finish(&answer(b"ok"), Some("aaa")).await;
        let done = |s: &Store| {
            let s = s.clone();
            async move {
                match begin(&s, "w", "k", "put").await.unwrap() {
                    Begin::Done(d) => d,
                    Begin::Run(_) => panic!(),
                }
            }
        };
        assert_eq!(
            done(&store).await.replay(Some("aaa")).unwrap(),
            answer(b"ok")
        );
        assert_eq!(
            done(&store).await.replay(Some("bbb")).unwrap_err().code,
            code::IDEMPOTENCY_KEY_REUSED
        );
    }

    async fn a_silent_claim_is_in_doubt_and_an_expired_key_is_forgotten(fx: Fx) {
        let store = fx.open().await;
        let now = now_ms();
        // A claim whose gateway died 11 s ago.
        let stale = now - IN_DOUBT_AFTER.as_millis() as i64 - 1000;
        assert!(store
            .claim_idempotency_key("w", "k", "fp", "dead", stale, now + 60_000)
            .await
            .unwrap());
        let e = begin(&store, "w", "k", "fp").await.err().unwrap();
        assert_eq!(e.code, code::IDEMPOTENCY_KEY_IN_DOUBT);
        // An expired one is as good as absent, and the sweep deletes it.
        assert!(store
            .claim_idempotency_key("w", "old", "fp", "gone", now - 10, now - 5)
            .await
            .unwrap());
        assert!(matches!(
            begin(&store, "w", "old", "other").await.unwrap(),
            Begin::Run(_)
        ));
        assert!(store
            .claim_idempotency_key("w", "older", "fp", "gone", now - 10, now - 5)
            .await
            .unwrap());
        assert_eq!(store.sweep_idempotency_keys(now).await.unwrap(), 1);
    }

    async fn an_unknown_outcome_keeps_the_key_in_doubt(fx: Fx) {
        let store = fx.open().await;
        let Begin::Run(claim) = begin(&store, "w", "k", "fp").await.unwrap() else {
            panic!()
        };
        // A duplicate waiting for the first gets the verdict too.
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { begin(&store, "w", "k", "fp").await })
        };
        let first = Answer {
            status: 503,
            body: br#"{"error":{"code":"executor_unavailable","message":"gone mid-call"}}"#
                .to_vec(),
        };
        claim.finish_unknown(&first).await;
        for e in [
            waiter.await.unwrap().err().unwrap(),
            begin(&store, "w", "k", "fp").await.err().unwrap(),
        ] {
            assert_eq!(e.code, code::IDEMPOTENCY_KEY_IN_DOUBT);
            assert!(e.message.contains("503 gone mid-call"), "{}", e.message);
        }
        // Another request with the key is still refused as one.
        let e = begin(&store, "w", "k", "other").await.err().unwrap();
        assert_eq!(e.code, code::IDEMPOTENCY_KEY_REUSED);
    }
}
