//! Waiting for a condition: the one poll loop of the tests, instead of a
//! hand-rolled sleep-and-retry per test.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits between two polls.
pub const POLL: Duration = Duration::from_millis(50);

/// A time limit: whole seconds (`20`) or a [`Duration`].
pub trait Within {
    fn duration(self) -> Duration;
}

impl Within for u64 {
    fn duration(self) -> Duration {
        Duration::from_secs(self)
    }
}

impl Within for Duration {
    fn duration(self) -> Duration {
        self
    }
}

/// What a poll answers: `true`, `Some(value)` or `Ok(value)` when the
/// condition holds; `false`, `None` or `Err(why)` when not yet (the last
/// `why` is in the panic message when time runs out).
pub trait Ready {
    type Value;
    fn ready(self) -> Result<Self::Value, String>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Ready for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

fn timed_out(within: Duration, what: &str, last: &str) -> ! {
    if last.is_empty() {
        panic!("timed out after {within:?} waiting for {what}")
    }
    panic!("timed out after {within:?} waiting for {what}; last: {last}")
}

/// Polls `f` every [`POLL`] until it is ready (see [`Ready`]) and returns
/// its value; panics, naming `what`, if it is not within `within`.
///
/// ```ignore
/// eventually(20, "the executor to connect", || async { connected().await }).await;
/// let rec = eventually(Duration::from_secs(5), "a record", || async { find().await }).await;
/// ```
pub async fn eventually<R, F, Fut>(within: impl Within, what: &str, mut f: F) -> R::Value
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let within = within.duration();
    let deadline = Instant::now() + within;
    loop {
        match f().await.ready() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => timed_out(within, what, &last),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`eventually`] for code without a runtime: sleeps the thread between polls.
pub fn eventually_blocking<R, F>(within: impl Within, what: &str, mut f: F) -> R::Value
where
    R: Ready,
    F: FnMut() -> R,
{
    let within = within.duration();
    let deadline = Instant::now() + within;
    loop {
        match f().ready() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => timed_out(within, what, &last),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_ready() {
        let mut n = 0;
        let v = eventually(5, "three polls", || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 100ms waiting for never; last: still 7")]
    fn panics_with_the_last_answer() {
        eventually_blocking(Duration::from_millis(100), "never", || {
            Err::<(), _>("still 7")
        });
    }

    #[test]
    fn a_true_condition_returns_at_once() {
        let t = Instant::now();
        eventually_blocking(Duration::ZERO, "true", || true);
        assert!(t.elapsed() < POLL);
    }
}
