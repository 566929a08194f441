//! The live links, by exe_id. In memory and rebuildable: after a gateway
//! restart, executors reconnect and re-register themselves.
//!
//! One executor has at most one live link and at most one link in its
//! handshake ([`Registry::begin_handshake`]): a second executor started with
//! the same token is refused (409 `executor_already_connected`) while the
//! first is connected and alive, instead of the two replacing each other's
//! link in a loop. A link counts as alive while it is open and the executor
//! showed a sign of life (any frame, a pong) within the ping timeout; an
//! older one is closed by whoever looks, so a reconnect after a drop the
//! gateway has not noticed waits at most that long.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::link::Link;
use crate::store::now_ms;

#[derive(Default)]
pub struct Registry {
    links: RwLock<HashMap<String, Arc<Link>>>,
    /// Moves after each link registered or removed (see
    /// [`Registry::generation`]).
    generation: AtomicU64,
    /// Executors with a link in its handshake (upgraded, not yet registered).
    handshaking: Arc<Mutex<HashSet<String>>>,
}

/// Why a new link of an executor is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Busy {
    /// A live, answering link of the same executor.
    Connected,
    /// Another link of the same executor is in its handshake.
    Handshaking,
}

/// Held while a link does its handshake; dropping it frees the slot.
pub struct HandshakeSlot {
    handshaking: Arc<Mutex<HashSet<String>>>,
    exe_id: String,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.handshaking.lock().unwrap().remove(&self.exe_id);
    }
}

impl Registry {
    /// The live link of `exe_id` when it is open and was heard from within
    /// `alive_for`; a silent one is closed here (its pings went unanswered:
    /// the executor or the network is gone) and `None` returned.
    pub fn live(&self, exe_id: &str, alive_for: Duration) -> Option<Arc<Link>> {
        let link = self.get(exe_id)?;
        if link.is_closed() {
            return None;
        }
        let silent_ms = now_ms() - link.last_seen_ms();
        if silent_ms > alive_for.as_millis() as i64 {
            link.close(&format!(
                "no frame or pong from the executor for {} ms",
                silent_ms
            ));
            return None;
        }
        Some(link)
    }

    /// `Err` when `exe_id` already has a live link (see [`Registry::live`])
    /// or a link in its handshake.
    pub fn check_free(&self, exe_id: &str, alive_for: Duration) -> Result<(), Busy> {
        if self.live(exe_id, alive_for).is_some() {
            return Err(Busy::Connected);
        }
        if self.handshaking.lock().unwrap().contains(exe_id) {
            return Err(Busy::Handshaking);
        }
        Ok(())
    }

    /// Claims the one handshake slot of `exe_id`, when it has no live link
    /// and no other link in its handshake.
    pub fn begin_handshake(
        &self,
        exe_id: &str,
        alive_for: Duration,
    ) -> Result<HandshakeSlot, Busy> {
        if self.live(exe_id, alive_for).is_some() {
            return Err(Busy::Connected);
        }
        if !self.handshaking.lock().unwrap().insert(exe_id.to_string()) {
            return Err(Busy::Handshaking);
        }
        Ok(HandshakeSlot {
            handshaking: self.handshaking.clone(),
            exe_id: exe_id.to_string(),
        })
    }

    /// Registers `link`, replacing (and closing) any older link of the same
    /// executor: a new connection for the same exe_id wins.
    pub fn insert(&self, link: Arc<Link>) {
        let old = self
            .links
            .write()
            .unwrap()
            .insert(link.exe_id.clone(), link);
        if let Some(old) = old {
            old.close("replaced by a newer connection of the same executor");
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes `link` unless a newer link already replaced it.
    pub fn remove_if_same(&self, link: &Arc<Link>) {
        let mut links = self.links.write().unwrap();
        if links
            .get(&link.exe_id)
            .is_some_and(|cur| Arc::ptr_eq(cur, link))
        {
            links.remove(&link.exe_id);
            drop(links);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Moves after each link registered or removed, never before the
    /// change is seen: a listing built from an older value is never taken
    /// for current (`ops::envs_list`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, exe_id: &str) -> Option<Arc<Link>> {
        self.links.read().unwrap().get(exe_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.links.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live link now (for `revocation::sweep_removed_executors`).
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.links.read().unwrap().values().cloned().collect()
    }

    /// The live links for which `pick` is true; `pick` sees every link
    /// once (and may count what it sees). Cheaper than [`links`] when few
    /// are picked: a link is only read unless picked, where a copy of
    /// every `Arc` is an atomic write to each link, one cache miss after
    /// the other (at 10,000 links, a tenth of an idle replica's CPU each
    /// second in the lease upkeep; BENCHMARKS.md, "Session 13").
    ///
    /// [`links`]: Registry::links
    pub fn links_where(&self, mut pick: impl FnMut(&Link) -> bool) -> Vec<Arc<Link>> {
        self.links
            .read()
            .unwrap()
            .values()
            .filter(|l| pick(l))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn link(id: &str) -> Arc<Link> {
        let (tx, _rx) = mpsc::unbounded_channel();
        Link::new(id.into(), "w".into(), "n".into(), tx)
    }

    #[test]
    fn a_second_link_is_refused_while_the_first_is_alive() {
        let r = Registry::default();
        let alive_for = Duration::from_secs(10);
        let slot = r.begin_handshake("e1", alive_for).unwrap();
        assert_eq!(r.check_free("e1", alive_for), Err(Busy::Handshaking));
        assert!(matches!(
            r.begin_handshake("e1", alive_for),
            Err(Busy::Handshaking)
        ));
        // Another executor is not affected.
        assert!(r.begin_handshake("e2", alive_for).is_ok());
        let a = link("e1");
        r.insert(a.clone());
        drop(slot);
        assert_eq!(r.check_free("e1", alive_for), Err(Busy::Connected));
        assert!(matches!(
            r.begin_handshake("e1", alive_for),
            Err(Busy::Connected)
        ));
        // Closed: free again.
        a.close("gone");
        assert_eq!(r.check_free("e1", alive_for), Ok(()));
        // Silent past the ping timeout: closed by the check, and free.
        let b = link("e1");
        r.insert(b.clone());
        assert_eq!(r.check_free("e1", alive_for), Err(Busy::Connected));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(r.check_free("e1", Duration::from_millis(1)), Ok(()));
        assert!(b.is_closed());
    }

    #[test]
    fn newer_link_replaces_and_closes_older() {
        let r = Registry::default();
        let a = link("e1");
        let b = link("e1");
        r.insert(a.clone());
        r.insert(b.clone());
        assert!(a.is_closed());
        assert!(!b.is_closed());
        // The old link's cleanup must not remove the new one.
        r.remove_if_same(&a);
        assert!(Arc::ptr_eq(&r.get("e1").unwrap(), &b));
        r.remove_if_same(&b);
        assert!(r.get("e1").is_none());
    }
}
