//! The verdict cache of the remote verifier (moka).
//!
//! - Bounded (`capacity` entries), so a flood of random tokens cannot grow
//!   memory; moka evicts by its TinyLFU policy.
//! - Accepted tokens live `accepted_ttl`, rejected ones `rejected_ttl`
//!   (shorter: a token just created on the authority should start working
//!   soon), through a per-entry [`Expiry`].
//! - Keyed by the token's SHA-256, so raw tokens are not kept in memory.
//! - Concurrent misses for one key run the upstream call once
//!   (`try_get_with`): the others wait for it and share its outcome.
//! - An error (authority unavailable) is handed to every waiter but never
//!   stored, so the next request asks again; an entry already cached keeps
//!   answering while the authority is down.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::auth::{AuthError, CacheConfig, Verdict};
use crate::metrics::CacheResult;

type Key = [u8; 32];

pub struct VerdictCache {
    inner: moka::future::Cache<Key, Verdict>,
}

struct TtlByVerdict {
    accepted: Duration,
    rejected: Duration,
}

impl Expiry<Key, Verdict> for TtlByVerdict {
    fn expire_after_create(&self, _key: &Key, verdict: &Verdict, _at: Instant) -> Option<Duration> {
        Some(match verdict {
            Some(_) => self.accepted,
            None => self.rejected,
        })
    }
}

impl VerdictCache {
    pub fn new(config: &CacheConfig) -> Self {
        VerdictCache {
            inner: moka::future::Cache::builder()
                .max_capacity(config.capacity)
                .expire_after(TtlByVerdict {
                    accepted: config.accepted_ttl,
                    rejected: config.rejected_ttl,
                })
                .build(),
        }
    }

    /// The cached verdict for `token`, or the one `ask` produces (cached
    /// unless it is an error).
    pub async fn get_or_ask<Fut>(&self, token: &str, ask: Fut) -> Result<Verdict, AuthError>
    where
        Fut: Future<Output = Result<Verdict, AuthError>> + Send,
    {
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let Some(metrics) = crate::metrics::get() else {
            return self.answer(key, ask).await;
        };
        if let Some(verdict) = self.inner.get(&key).await {
            metrics.auth_cache(CacheResult::Hit);
            return Ok(verdict);
        }
        // A miss: this request asks upstream, unless another one already
        // does (then it waits for that answer: coalesced).
        let asked = AtomicBool::new(false);
        let ask = async {
            asked.store(true, Ordering::Relaxed);
            let r = ask.await;
            if r.is_err() {
                metrics.auth_upstream_error();
            }
            r
        };
        let r = self.answer(key, ask).await;
        metrics.auth_cache(if asked.load(Ordering::Relaxed) {
            CacheResult::Miss
        } else {
            CacheResult::Coalesced
        });
        r
    }

    async fn answer<Fut>(&self, key: Key, ask: Fut) -> Result<Verdict, AuthError>
    where
        Fut: Future<Output = Result<Verdict, AuthError>> + Send,
    {
        self.inner
            .try_get_with(key, ask)
            .await
            .map_err(|shared: Arc<AuthError>| match &*shared {
                AuthError::Unavailable(m) => AuthError::Unavailable(m.clone()),
                other => AuthError::Unavailable(other.to_string()),
            })
    }

    /// Number of cached verdicts (after pending maintenance).
    #[cfg(test)]
    pub async fn len(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::TokenGrant;

    fn cache(accepted_ms: u64, rejected_ms: u64) -> VerdictCache {
        VerdictCache::new(&CacheConfig {
            capacity: 100,
            accepted_ttl: Duration::from_millis(accepted_ms),
            rejected_ttl: Duration::from_millis(rejected_ms),
        })
    }

    fn grant() -> Verdict {
        Some(TokenGrant {
            workspace: "w".into(),
            user_id: None,
        })
    }

    /// An upstream that counts its calls and answers `verdict` (or fails).
    async fn ask(calls: &AtomicUsize, verdict: Result<Verdict, ()>) -> Result<Verdict, AuthError> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        verdict.map_err(|()| AuthError::Unavailable("down".into()))
    }

    #[tokio::test]
    async fn hits_and_expiry_per_verdict() {
        let c = cache(400, 100);
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            assert_eq!(
                c.get_or_ask("good", ask(&calls, Ok(grant())))
                    .await
                    .unwrap(),
                grant()
            );
            assert_eq!(
                c.get_or_ask("bad", ask(&calls, Ok(None))).await.unwrap(),
                None
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one miss each, then hits");
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.get_or_ask("good", ask(&calls, Ok(grant())))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "accepted still cached");
        c.get_or_ask("bad", ask(&calls, Ok(None))).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "rejected expired first");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.get_or_ask("good", ask(&calls, Ok(grant())))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "accepted expired");
    }

    #[tokio::test]
    async fn errors_are_shared_but_not_cached() {
        let c = cache(10_000, 10_000);
        let calls = AtomicUsize::new(0);
        let e = c.get_or_ask("t", ask(&calls, Err(()))).await.unwrap_err();
        assert!(matches!(e, AuthError::Unavailable(_)));
        assert_eq!(
            c.get_or_ask("t", ask(&calls, Ok(grant()))).await.unwrap(),
            grant()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Once accepted, an outage does not matter.
        assert_eq!(
            c.get_or_ask("t", ask(&calls, Err(()))).await.unwrap(),
            grant()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_misses_coalesce() {
        let c = Arc::new(cache(10_000, 10_000));
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (c, calls) = (c.clone(), calls.clone());
                tokio::spawn(
                    async move { c.get_or_ask("new", ask(&calls, Ok(grant()))).await.unwrap() },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), grant());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bounded() {
        let c = VerdictCache::new(&CacheConfig {
            capacity: 10,
            ..CacheConfig::default()
        });
        let calls = AtomicUsize::new(0);
        for i in 0..100 {
            c.get_or_ask(&format!("t{i}"), ask(&calls, Ok(None)))
                .await
                .unwrap();
        }
        assert!(c.len().await <= 10);
    }
}
