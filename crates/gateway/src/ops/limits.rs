//! Per-workspace limits, both off by default:
//!
//! - **Request rate** (`--rate-limit-rps R --rate-limit-burst B`): a token
//!   bucket per workspace, refilled at R per second up to B. Every
//!   authenticated request of the connectors API and of `/mcp` takes one
//!   token (the check runs in the [`crate::auth::Caller`] extractor); with
//!   none left the answer is 429 `rate_limited` with `Retry-After`, the
//!   whole seconds until a token is back. Buckets live in this gateway's
//!   memory: with several replicas, each enforces the rate on its own.
//! - **Live process sessions** (`--max-sessions-per-workspace N`): an
//!   `exec_command` that would make N+1 sessions whose process has not
//!   ended answers 429 `too_many_sessions`. The count is a store query
//!   (sessions not marked ended, see migration 0004), so it holds across
//!   replicas and restarts. A terminate marks its session ended; when the
//!   count reaches N, the executors are asked about the sessions still
//!   counted, and those whose process exited, expired or died with an
//!   executor restart are marked ended too. So the check costs nothing
//!   below the cap, and a process that exits on its own frees its place.
//!   A session of an executor that is offline counts as live (it may still
//!   run). Within one gateway, a per-workspace lock makes check and insert
//!   one step; across k replicas the lock is per replica, so racing starts
//!   can reach N + k − 1 (docs/replicas.md, "Limits across replicas").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use execgate_protocol::connectors::error_code as code;
use tokio::sync::OwnedMutexGuard;

use crate::ops::state::AppState;
use crate::ops::Error;

/// How long the session cap waits for an executor to say whether a
/// process has ended.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How many idle buckets may pile up before full ones are dropped.
const MAX_IDLE_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    pub rate: Option<RateConfig>,
    pub max_sessions_per_workspace: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: requests that may come at once after a quiet spell.
    pub burst: u32,
}

/// A token bucket. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: RateConfig, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, rate: RateConfig, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second,
            ))
        }
    }

    fn refill(&mut self, rate: RateConfig, now: Instant) {
        if now > self.at {
            let elapsed = (now - self.at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
            self.at = now;
        }
    }

    fn is_full(&mut self, rate: RateConfig, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= f64::from(rate.burst)
    }
}

/// `Retry-After` for a wait: whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

pub struct Limits {
    config: LimitsConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    session_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bounds the store's session locks this replica holds at once: each
    /// keeps a connection of the pool (16) while the count and the insert
    /// need others, so starts in many workspaces at once must not take
    /// them all.
    store_locks: Arc<tokio::sync::Semaphore>,
}

/// A session row younger than this (ms) is not taken for ended when its
/// executor does not know the process: its start may still be on its way.
const YOUNG_MS: i64 = 30_000;

/// At most this many workspaces' store locks held by one replica at once.
const STORE_LOCKS: usize = 4;

/// Holds the workspace's session lock until the new session's row is in
/// the store: this replica's, and on PostgreSQL the store's, which every
/// replica takes (`Store::lock_workspace_sessions`), so that the cap
/// holds exactly across replicas. Let it go with [`SessionSlot::release`]
/// (dropped, the store's lock goes a moment later, in the background).
pub struct SessionSlot {
    _guard: Option<OwnedMutexGuard<()>>,
    store_lock: Option<crate::store::WorkspaceLock>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl SessionSlot {
    pub async fn release(mut self) {
        if let Some(lock) = self.store_lock.take() {
            lock.release().await;
        }
    }
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            config,
            buckets: Mutex::new(HashMap::new()),
            session_locks: Mutex::new(HashMap::new()),
            store_locks: Arc::new(tokio::sync::Semaphore::new(STORE_LOCKS)),
        }
    }

    /// One request of `workspace`: 429 `rate_limited` when its bucket is
    /// empty.
    pub fn check_rate(&self, workspace: &str) -> Result<(), Error> {
        let Some(rate) = self.config.rate else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= MAX_IDLE_BUCKETS && !buckets.contains_key(workspace) {
            // A full bucket is the same as no bucket.
            buckets.retain(|_, b| !b.is_full(rate, now));
        }
        let bucket = buckets
            .entry(workspace.to_string())
            .or_insert_with(|| Bucket::new(rate, now));
        bucket.take(rate, now).map_err(|wait| {
            if let Some(m) = crate::metrics::get() {
                m.rate_limited(crate::metrics::Limited::Rate);
            }
            Error::new(code::RATE_LIMITED,
                format!(
                    "workspace {workspace:?} is over its request rate ({} per second, bursts of {}); retry after {:.1} s",
                    rate.per_second,
                    rate.burst,
                    wait.as_secs_f64()
                ),
            )
            .with_retry_after(retry_after_secs(wait))
        })
    }

    /// Admits one more live process session in `workspace`, or 429
    /// `too_many_sessions`. Keep the slot until the session's row is
    /// stored.
    pub async fn admit_session(
        &self,
        state: &AppState,
        workspace: &str,
    ) -> Result<SessionSlot, Error> {
        let Some(max) = self.config.max_sessions_per_workspace else {
            return Ok(SessionSlot {
                _guard: None,
                store_lock: None,
                _permit: None,
            });
        };
        let lock = self
            .session_locks
            .lock()
            .unwrap()
            .entry(workspace.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        // Across replicas (PostgreSQL): the store's lock, after this
        // replica's, so that a replica's own starts queue in memory.
        let permit = if state.store().is_postgres() {
            let permit = self.store_locks.clone().acquire_owned().await;
            Some(permit.expect("the semaphore is never closed"))
        } else {
            None
        };
        let store_lock = state.store().lock_workspace_sessions(workspace).await?;
        let live = state.store().live_sessions(workspace).await?;
        let mut count = live.len();
        if count >= max as usize {
            // At the cap: ask the executors which of these have ended.
            let ended: Vec<String> =
                futures_util::future::join_all(live.into_iter().map(|row| async move {
                    let sid = row.sid.clone();
                    let created_at = row.created_at;
                    // An executor slow to answer holds up the workspace's
                    // starts: its sessions count as live after a while.
                    let info = tokio::time::timeout(
                        CHECK_TIMEOUT,
                        crate::ops::processes::describe(state, row),
                    )
                    .await
                    .ok()?;
                    // A row inserted a moment ago whose `process/start` has
                    // not reached the executor yet reads as unknown there
                    // ("expired"): only an old one is gone for good.
                    let young = crate::store::now_ms().saturating_sub(created_at) < YOUNG_MS;
                    let ended = match info.status.as_str() {
                        "exited" => true,
                        "expired" | code::EXECUTOR_RESTARTED => !young,
                        _ => false,
                    };
                    ended.then_some(sid)
                }))
                .await
                .into_iter()
                .flatten()
                .collect();
            state.store().mark_sessions_ended(&ended).await?;
            count -= ended.len();
        }
        if count >= max as usize {
            if let Some(m) = crate::metrics::get() {
                m.rate_limited(crate::metrics::Limited::Sessions);
            }
            return Err(Error::new(code::TOO_MANY_SESSIONS,
                format!(
                    "workspace {workspace:?} has {count} live process sessions, the most allowed (--max-sessions-per-workspace {max}); \
                     terminate one (POST /api/connectors/processes/{{sid}}/terminate; GET /api/connectors/processes lists them) or wait for one to exit"
                ),
            ));
        }
        Ok(SessionSlot {
            _guard: Some(guard),
            store_lock,
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: RateConfig = RateConfig {
        per_second: 2.0,
        burst: 3,
    };

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(RATE, t0);
        for _ in 0..3 {
            assert!(b.take(RATE, t0).is_ok());
        }
        let wait = b.take(RATE, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Half a token after 250 ms: still 250 ms to go.
        let wait = b.take(RATE, t0 + Duration::from_millis(250)).unwrap_err();
        assert!((wait.as_secs_f64() - 0.25).abs() < 1e-9, "{wait:?}");
        assert!(b.take(RATE, t0 + Duration::from_millis(500)).is_ok());
        assert!(b.take(RATE, t0 + Duration::from_millis(500)).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(RATE, later).is_ok());
        }
        assert!(b.take(RATE, later).is_err());
        // Time going backwards takes nothing and gives nothing.
        assert!(b.take(RATE, t0).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn rate_is_per_workspace_and_off_by_default() {
        let off = Limits::new(LimitsConfig::default());
        for _ in 0..1000 {
            off.check_rate("w").unwrap();
        }
        let on = Limits::new(LimitsConfig {
            rate: Some(RateConfig {
                per_second: 0.001,
                burst: 2,
            }),
            max_sessions_per_workspace: None,
        });
        on.check_rate("a").unwrap();
        on.check_rate("a").unwrap();
        let e = crate::http::error::ApiError::from(on.check_rate("a").unwrap_err());
        use axum::http::StatusCode;
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, code::RATE_LIMITED);
        assert!(e.retry_after.unwrap() >= 999, "{:?}", e.retry_after);
        on.check_rate("b").unwrap();
    }
}
