//! The store's `last_seen` of the executors this gateway holds: written
//! for all of them at once, every ping interval, in one statement per
//! [`Store::touch_executors`](crate::store::Store::touch_executors) batch.
//!
//! Why not per link (as until session 12): 30,000 idle executors on three
//! replicas were 1,000 single-row UPDATEs a second, each its own
//! transaction on PostgreSQL and its own round trip from the replica
//! (sqlx was 23 % of an idle replica's CPU), and one more timer per link.
//! The times written are the links' own (their last frame or pong), so a
//! batch late by a few seconds writes the same values.

use std::time::Duration;

use crate::link::host::Host;

/// Runs for the gateway's life: every `ping_interval` (the host's config),
/// the `last_seen` of every open link it holds.
pub async fn record(host: Host) {
    let mut tick = tokio::time::interval(host.config().ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: links are recorded when they connect.
    tick.tick().await;
    loop {
        tick.tick().await;
        write(&host).await;
    }
}

/// How long one round of writes may take: a store that does not answer
/// (an outage) must not stack rounds behind it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One round: the open links' times, written.
async fn write(host: &Host) {
    let links = host.registry().links();
    let seen: Vec<(&str, i64)> = links
        .iter()
        .filter(|l| !l.is_closed())
        .map(|l| (l.exe_id.as_str(), l.last_seen_ms()))
        .collect();
    if seen.is_empty() {
        return;
    }
    match tokio::time::timeout(WRITE_TIMEOUT, host.store().touch_executors(&seen)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(executors = seen.len(), "could not record last_seen: {e}"),
        Err(_) => tracing::warn!(
            executors = seen.len(),
            "could not record last_seen: the store did not answer within {WRITE_TIMEOUT:?}"
        ),
    }
}
