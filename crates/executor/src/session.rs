//! Sessions: what lets processes outlive a WebSocket connection.
//!
//! `initialize` attaches its connection to a session. A session owns the
//! processes started through it and sends their notifications to the
//! connection it is attached to. When that connection closes, the session
//! *detaches*: its processes keep running, their output keeps accumulating in
//! their logs, and notifications are simply not sent. A later `initialize`
//! with `resumeSessionId` re-attaches it (taking it over even from a
//! connection that has not noticed it is dead yet). A session left detached
//! for `session_ttl` is destroyed, and its processes' groups are killed.
//!
//! If the resumed id is unknown (for example the executor restarted), a new
//! session with a new id is created; the gateway sees the id change and knows
//! the old processes are gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::notify::{Notifier, Sink};
use crate::process::ProcessTable;
use crate::spill::SpillConfig;

/// Identifies one WebSocket connection, so that a connection that lost its
/// session to a newer one cannot detach it when it closes.
pub(crate) type ConnectionId = u64;

pub(crate) struct Session {
    pub id: String,
    pub processes: ProcessTable,
    notifier: Arc<Notifier>,
    attachment: Mutex<Attachment>,
}

enum Attachment {
    Attached(ConnectionId),
    Detached(Instant),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// All sessions of this executor.
pub(crate) struct SessionRegistry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    retained_bytes: usize,
    spill: Option<Arc<SpillConfig>>,
}

impl SessionRegistry {
    pub fn new(retained_bytes: usize) -> Self {
        SessionRegistry {
            sessions: Mutex::new(HashMap::new()),
            retained_bytes,
            spill: None,
        }
    }

    /// Processes spill output beyond the in-memory ring to disk.
    pub fn with_spill(mut self, spill: Option<Arc<SpillConfig>>) -> Self {
        self.spill = spill;
        self
    }

    /// Attaches connection `conn` to the session named by `resume` if it
    /// still exists, else to a new session. Notifications go to `sink`.
    pub fn attach(&self, resume: Option<&str>, conn: ConnectionId, sink: Sink) -> Arc<Session> {
        let mut sessions = lock(&self.sessions);
        let session = match resume.and_then(|id| sessions.get(id)) {
            Some(existing) => {
                tracing::info!(session = %existing.id, "resuming session");
                existing.clone()
            }
            None => {
                let id = new_session_id();
                if let Some(resume) = resume {
                    tracing::info!(
                        session = %id,
                        "session {resume} is unknown here (executor restarted or session expired): starting a new one"
                    );
                }
                let notifier = Arc::new(Notifier::default());
                let session = Arc::new(Session {
                    id: id.clone(),
                    processes: ProcessTable::new(
                        notifier.clone(),
                        self.retained_bytes,
                        self.spill.clone(),
                    ),
                    notifier,
                    attachment: Mutex::new(Attachment::Detached(Instant::now())),
                });
                sessions.insert(id, session.clone());
                session
            }
        };
        *lock(&session.attachment) = Attachment::Attached(conn);
        session.notifier.set_sink(Some(sink));
        session
    }

    /// Connection `conn` closed. Detaches the session unless another
    /// connection has taken it over meanwhile.
    pub fn detach(&self, session: &Session, conn: ConnectionId) {
        let mut attachment = lock(&session.attachment);
        if matches!(*attachment, Attachment::Attached(owner) if owner == conn) {
            *attachment = Attachment::Detached(Instant::now());
            session.notifier.set_sink(None);
            tracing::info!(session = %session.id, "session detached; its processes keep running");
        }
    }

    /// Destroys sessions detached for at least `ttl`, killing their
    /// processes, and forgets processes finished more than `retention` ago.
    pub fn sweep(&self, now: Instant, ttl: Duration, retention: Duration) {
        let (expired, live): (Vec<_>, Vec<_>) = {
            let mut sessions = lock(&self.sessions);
            let expired_ids: Vec<String> = sessions
                .values()
                .filter(|s| {
                    matches!(*lock(&s.attachment),
                        Attachment::Detached(since) if now.saturating_duration_since(since) >= ttl)
                })
                .map(|s| s.id.clone())
                .collect();
            let expired = expired_ids
                .iter()
                .filter_map(|id| sessions.remove(id))
                .collect();
            (expired, sessions.values().cloned().collect())
        };
        // Slow work (signals, drops) happens outside the registry lock.
        for session in expired {
            tracing::info!(session = %session.id, "session expired: killing its processes");
            session.processes.kill_all();
        }
        for session in live {
            session.processes.remove_finished(now, retention);
        }
    }

    /// Kills every process of every session. Used when the executor stops.
    pub fn shutdown(&self) {
        let sessions: Vec<_> = lock(&self.sessions).drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.notifier.set_sink(None);
            session.processes.kill_all();
        }
    }

    #[cfg(test)]
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.sessions).contains_key(id)
    }

    #[cfg(test)]
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(id).cloned()
    }
}

/// 128 random bits, hex-encoded.
fn new_session_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgate_protocol::jsonrpc::Envelope;
    use tokio::sync::mpsc;

    fn sink() -> (Sink, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(8);
        (Sink { tx, binary: false }, rx)
    }

    #[test]
    fn new_ids_are_distinct_and_resume_returns_the_same_session() {
        let registry = SessionRegistry::new(1024);
        let (tx, _rx) = sink();
        let a = registry.attach(None, 1, tx.clone());
        let b = registry.attach(None, 2, tx.clone());
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        let again = registry.attach(Some(&a.id), 3, tx.clone());
        assert!(Arc::ptr_eq(&a, &again));
        let fresh = registry.attach(Some("no-such-session"), 4, tx);
        assert_ne!(fresh.id, "no-such-session");
    }

    #[test]
    fn a_stale_connection_cannot_detach_a_taken_over_session() {
        let registry = SessionRegistry::new(1024);
        let (tx, _rx) = sink();
        let session = registry.attach(None, 1, tx.clone());
        registry.attach(Some(&session.id), 2, tx);
        registry.detach(&session, 1);
        assert!(session.notifier.is_attached());
        registry.detach(&session, 2);
        assert!(!session.notifier.is_attached());
    }

    #[test]
    fn only_sessions_detached_for_the_ttl_expire() {
        let registry = SessionRegistry::new(1024);
        let (tx, _rx) = sink();
        let attached = registry.attach(None, 1, tx.clone());
        let detached = registry.attach(None, 2, tx);
        registry.detach(&detached, 2);
        let ttl = Duration::from_secs(60);

        registry.sweep(Instant::now(), ttl, ttl);
        assert!(registry.contains(&detached.id), "not detached long enough");
        registry.sweep(Instant::now() + ttl, ttl, ttl);
        assert!(!registry.contains(&detached.id));
        assert!(
            registry.contains(&attached.id),
            "attached sessions never expire"
        );
    }
}
