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

use execgate_protocol::blob;
use execgate_protocol::jsonrpc::{Envelope, Message};
use serde::Serialize;
use tokio::sync::mpsc;

/// A connection's outgoing queue, and whether its peer reads binary frames
/// (it said so in `initialize`), so that output can go raw.
#[derive(Clone)]
pub(crate) struct Sink {
    pub tx: mpsc::Sender<Envelope>,
    pub binary: bool,
}

#[derive(Default)]
pub(crate) struct Notifier {
    sink: Mutex<Option<Sink>>,
    dropped: AtomicU64,
}

impl Notifier {
    /// Points the notifications at a connection's queue, or at nothing.
    pub fn set_sink(&self, sink: Option<Sink>) {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = sink;
    }

    /// Whether a connection would receive a notification now.
    #[cfg(test)]
    pub fn is_attached(&self) -> bool {
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|sink| !sink.tx.is_closed())
    }

    /// Queues the notification if there is room; never blocks. Encodes it
    /// only then: output nobody will receive costs nothing.
    pub fn send(&self, method: &str, params: &impl Serialize) {
        let guard = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sink) = guard.as_ref() else {
            return;
        };
        if sink.tx.capacity() == 0 {
            return self.count_drop();
        }
        let (params, payload) = match blob::to_value(params, sink.binary) {
            Ok(encoded) => encoded,
            Err(err) => return tracing::warn!("cannot encode {method}: {err}"),
        };
        let envelope = Envelope {
            message: Message::notification(method, params),
            payload,
        };
        match sink.tx.try_send(envelope) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.count_drop(),
            // The connection is gone; its session detaches shortly.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn count_drop(&self) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Log the first drop and then every 1024th, not each one.
        if dropped == 1 || dropped & 0x3ff == 0 {
            tracing::debug!(
                dropped,
                "outgoing queue full: dropping notifications (the gateway catches up with process/read)"
            );
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
        notifier.send("a", &Value::Null); // detached: ignored

        let (tx, mut rx) = mpsc::channel(1);
        notifier.set_sink(Some(Sink { tx, binary: false }));
        assert!(notifier.is_attached());
        notifier.send("b", &Value::Null);
        notifier.send("c", &Value::Null); // full: dropped
        assert_eq!(
            rx.try_recv().unwrap().message,
            Message::notification("b", Value::Null)
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(notifier.dropped.load(Ordering::Relaxed), 1);

        notifier.set_sink(None);
        notifier.send("d", &Value::Null);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn raw_bytes_go_in_the_payload_only_to_a_binary_sink() {
        use execgate_protocol::blob::Blob;
        let notifier = Notifier::default();
        #[derive(Serialize)]
        struct Params {
            chunk: Blob,
        }
        let params = Params {
            chunk: Blob::raw(&b"hi"[..]),
        };
        for (binary, chunk, payload) in [
            (false, serde_json::json!("aGk="), &b""[..]),
            (true, serde_json::json!({"$bin": [0, 2]}), &b"hi"[..]),
        ] {
            let (tx, mut rx) = mpsc::channel(1);
            notifier.set_sink(Some(Sink { tx, binary }));
            notifier.send("n", &params);
            let envelope = rx.try_recv().unwrap();
            let Message::Notification { params, .. } = envelope.message else {
                panic!("not a notification");
            };
            assert_eq!(params["chunk"], chunk);
            assert_eq!(&envelope.payload[..], payload);
        }
    }
}
