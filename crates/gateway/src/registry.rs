//! The live links, by exe_id. In memory and rebuildable: after a gateway
//! restart, executors reconnect and re-register themselves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::link::Link;

#[derive(Default)]
pub struct Registry {
    links: RwLock<HashMap<String, Arc<Link>>>,
}

impl Registry {
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
    }

    /// Removes `link` unless a newer link already replaced it.
    pub fn remove_if_same(&self, link: &Arc<Link>) {
        let mut links = self.links.write().unwrap();
        if links
            .get(&link.exe_id)
            .is_some_and(|cur| Arc::ptr_eq(cur, link))
        {
            links.remove(&link.exe_id);
        }
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
