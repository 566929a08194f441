//! The JSON-RPC server side of one connection, independent of the transport:
//! the `initialize`/`initialized` lifecycle, and turning each request into
//! its response. Which method does what is the method table's (`methods`),
//! which this connection serves as its [`Connection`].
//!
//! [`RpcConnection::request`] turns a request into its response; the frame
//! loop in [`connection`](crate::connection) and the tests both drive it. The
//! only thing it sends by itself is notifications, through the session it
//! attaches to the connection's outgoing queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use execgate_protocol::exec::{InitializeParams, InitializeResult, MoveParams};
use execgate_protocol::jsonrpc::{Envelope, Id, Message, RpcError};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use crate::methods::{self, Answer, Connection};
use crate::notify::Sink;
use crate::process::StartGate;
use crate::session::{ConnectionId, Session};
use crate::state::ExecutorState;
use crate::wire::parse_params;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct RpcConnection {
    state: Arc<ExecutorState>,
    id: ConnectionId,
    /// The connection's outgoing queue; handed to the session for notifications.
    outgoing: mpsc::Sender<Envelope>,
    /// The gateway said in `initialize` that it reads binary frames.
    binary: AtomicBool,
    lifecycle: Mutex<Lifecycle>,
    /// [ext] What `execgate/move` said, until the frame loop takes it.
    moving: Mutex<Option<MoveParams>>,
    move_asked: Notify,
}

/// Where the connection is in the handshake. Both `initialize` (request) and
/// `initialized` (notification) must have arrived before anything else is
/// served.
#[derive(Default)]
struct Lifecycle {
    session: Option<Arc<Session>>,
    initialized: bool,
}

/// A response, plus for `process/start` the gate that holds the new
/// process's notifications back. Queue the envelope, then drop the reply.
pub(crate) struct Reply {
    pub envelope: Envelope,
    pub gate: Option<StartGate>,
}

impl RpcConnection {
    pub fn new(state: Arc<ExecutorState>, outgoing: mpsc::Sender<Envelope>) -> Self {
        RpcConnection {
            state,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            outgoing,
            binary: AtomicBool::new(false),
            lifecycle: Mutex::new(Lifecycle::default()),
            moving: Mutex::new(None),
            move_asked: Notify::new(),
        }
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one message and returns the response to send, if any. A
    /// convenience for tests: it opens a start gate before returning.
    #[cfg(test)]
    pub async fn handle(&self, message: Message) -> Option<Message> {
        match message {
            Message::Request { id, method, params } => Some(
                self.request(id, &method, params, Bytes::new())
                    .await
                    .envelope
                    .message,
            ),
            Message::Notification { method, params } => {
                self.notification(&method, params);
                None
            }
            Message::Response { .. } => None,
        }
    }

    /// Answers one request. `payload` is what its binary frame carried
    /// beside the JSON (empty for a text frame).
    pub async fn request(&self, id: Id, method: &str, mut params: Value, payload: Bytes) -> Reply {
        let started = crate::metrics::get().map(|m| (m, std::time::Instant::now()));
        // [ext] traceContext: `_meta` is the trace's, not the method's.
        let traceparent = crate::trace::take_meta(&mut params);
        let answer = if crate::trace::on() {
            let span = crate::trace::request_span(method, traceparent.as_deref());
            tracing::Instrument::instrument(methods::request(self, method, params, &payload), span)
                .await
        } else {
            methods::request(self, method, params, &payload).await
        };
        if let Some((m, started)) = started {
            m.request(method, answer.is_ok(), started.elapsed());
        }
        match answer {
            Ok(((result, payload), gate)) => Reply {
                envelope: Envelope {
                    message: Message::response(id, Ok(result)),
                    payload,
                },
                gate,
            },
            Err(error) => {
                tracing::debug!(%id, method, "request failed: {error}");
                Reply {
                    envelope: Envelope::text(Message::response(id, Err(error))),
                    gate: None,
                }
            }
        }
    }

    /// Takes one notification from the gateway.
    pub fn notification(&self, method: &str, params: Value) {
        methods::notification(self, method, params);
    }

    /// Resolves when the gateway has asked this executor to move
    /// (`execgate/move`), with what it said.
    pub async fn move_asked(&self) -> MoveParams {
        loop {
            let asked = self.move_asked.notified();
            if let Some(params) = self
                .moving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                return params;
            }
            asked.await;
        }
    }

    /// The connection is gone: its session detaches (its processes live on).
    pub fn close(&self) {
        let session = self.lifecycle().session.clone();
        if let Some(session) = session {
            self.state.sessions.detach(&session, self.id);
        }
    }
}

impl Connection for RpcConnection {
    fn state(&self) -> &Arc<ExecutorState> {
        &self.state
    }

    fn binary(&self) -> bool {
        self.binary.load(Ordering::Relaxed)
    }

    fn ready_session(&self) -> Result<Arc<Session>, RpcError> {
        let lifecycle = self.lifecycle();
        match &lifecycle.session {
            Some(session) if lifecycle.initialized => Ok(session.clone()),
            _ => Err(RpcError::invalid_request(
                "connection not initialized: send initialize, then the initialized notification",
            )),
        }
    }

    /// Attaches a session (a new one, or the one it resumes); its result is
    /// never encoded for binary frames.
    fn initialize(&self, params: Value) -> Result<Answer, RpcError> {
        let params: InitializeParams = parse_params(params, &Bytes::new())?;
        let binary = params.execgate.is_some_and(|ext| ext.binary_frames);
        self.binary.store(binary, Ordering::Relaxed);
        let mut lifecycle = self.lifecycle();
        if lifecycle.session.is_some() {
            return Err(RpcError::invalid_request(
                "initialize was already received on this connection",
            ));
        }
        let session = self.state.sessions.attach(
            params.resume_session_id.as_deref(),
            self.id,
            Sink {
                tx: self.outgoing.clone(),
                binary,
            },
        );
        tracing::info!(client = %params.client_name, session = %session.id, "initialize");
        lifecycle.session = Some(session.clone());
        let result = serde_json::to_value(InitializeResult {
            session_id: session.id.clone(),
            environment_info: self.state.environment.clone(),
        })
        .map_err(|e| RpcError::internal(format!("encoding the result: {e}")))?;
        Ok(((result, Bytes::new()), None))
    }

    fn initialized(&self, _params: Value) {
        self.lifecycle().initialized = true;
    }

    fn move_requested(&self, params: Value) {
        let params = serde_json::from_value(params).unwrap_or_else(|e| {
            tracing::debug!("execgate/move with params we do not read ({e}); moving anyway");
            MoveParams::default()
        });
        *self.moving.lock().unwrap_or_else(PoisonError::into_inner) = Some(params);
        self.move_asked.notify_one();
    }
}
