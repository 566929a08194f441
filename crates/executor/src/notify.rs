//! Where a session's push notifications (`process/output`, `process/exited`,
//! `process/closed`) go: the outgoing queue of the connection the session is
//! attached to, or nowhere while it is detached.
//!
//! Notifications are an optimisation, never the source of truth: everything
//! they carry is also in the output log for `process/read`. So sending never
//! waits. If the connection's queue is full the notification is dropped, which
//! keeps a slow gateway from stalling the readers of child output and keeps
//! memory bounded; the gateway catches up with `process/read`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use execgate_protocol::jsonrpc::Message;
use tokio::sync::mpsc;

#[derive(Default)]
pub(crate) struct Notifier {
    sink: Mutex<Option<mpsc::Sender<Message>>>,
    dropped: AtomicU64,
}

impl Notifier {
    /// Points the notifications at a connection's queue, or at nothing.
    pub fn set_sink(&self, sink: Option<mpsc::Sender<Message>>) {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = sink;
    }

    /// Whether a connection would receive a notification now. Lets callers
    /// skip encoding output nobody will see.
    pub fn is_attached(&self) -> bool {
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|sink| !sink.is_closed())
    }

    /// Queues `message` if there is room; never blocks.
    pub fn send(&self, message: Message) {
        let guard = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sink) = guard.as_ref() else {
            return;
        };
        match sink.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Log the first drop and then every 1024th, not each one.
                if dropped == 1 || dropped & 0x3ff == 0 {
                    tracing::debug!(
                        dropped,
                        "outgoing queue full: dropping notifications (the gateway catches up with process/read)"
                    );
                }
            }
            // The connection is gone; its session detaches shortly.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn drops_when_full_or_detached_and_never_blocks() {
        let notifier = Notifier::default();
        assert!(!notifier.is_attached());
        notifier.send(Message::notification("a", Value::Null)); // detached: ignored

        let (tx, mut rx) = mpsc::channel(1);
        notifier.set_sink(Some(tx));
        assert!(notifier.is_attached());
        notifier.send(Message::notification("b", Value::Null));
        notifier.send(Message::notification("c", Value::Null)); // full: dropped
        assert_eq!(
            rx.try_recv().unwrap(),
            Message::notification("b", Value::Null)
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(notifier.dropped.load(Ordering::Relaxed), 1);

        notifier.set_sink(None);
        notifier.send(Message::notification("d", Value::Null));
        assert!(rx.try_recv().is_err());
    }
}
