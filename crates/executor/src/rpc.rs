//! The JSON-RPC server side of one connection, independent of the transport:
//! the `initialize`/`initialized` lifecycle and the routing of each method to
//! the module that implements it.
//!
//! [`RpcConnection::request`] turns a request into its response; the frame
//! loop in [`connection`](crate::connection) and the tests both drive it. The
//! only thing it sends by itself is notifications, through the session it
//! attaches to the connection's outgoing queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use execgate_protocol::blob;
use execgate_protocol::exec::{
    method, InitializeParams, InitializeResult, ProcessIdParams, ProcessResizeParams,
    ProcessSetPushParams, ProcessSignalParams,
};
use execgate_protocol::jsonrpc::{Envelope, Id, Message, RpcError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::fs;
use crate::notify::Sink;
use crate::process::StartGate;
use crate::session::{ConnectionId, Session};
use crate::state::ExecutorState;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct RpcConnection {
    state: Arc<ExecutorState>,
    id: ConnectionId,
    /// The connection's outgoing queue; handed to the session for notifications.
    outgoing: mpsc::Sender<Envelope>,
    /// The gateway said in `initialize` that it reads binary frames.
    binary: AtomicBool,
    lifecycle: Mutex<Lifecycle>,
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

/// A result as it goes on the wire: JSON, and the payload its raw blobs
/// moved to (empty unless the gateway reads binary frames).
pub(crate) type WireResult = (Value, Bytes);

impl RpcConnection {
    pub fn new(state: Arc<ExecutorState>, outgoing: mpsc::Sender<Envelope>) -> Self {
        RpcConnection {
            state,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            outgoing,
            binary: AtomicBool::new(false),
            lifecycle: Mutex::new(Lifecycle::default()),
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
    pub async fn request(&self, id: Id, method: &str, params: Value, payload: Bytes) -> Reply {
        match self.dispatch(method, params, &payload).await {
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

    /// Whether results may carry raw bytes in a binary frame.
    fn binary(&self) -> bool {
        self.binary.load(Ordering::Relaxed)
    }

    /// Takes one notification from the gateway.
    pub fn notification(&self, method: &str, params: Value) {
        match method {
            method::INITIALIZED => self.lifecycle().initialized = true,
            method::PROCESS_SET_PUSH => {
                let set: Result<ProcessSetPushParams, _> = parse_params(params, &Bytes::new());
                match (set, self.ready_session()) {
                    (Ok(set), Ok(session)) => session.processes.set_push(&set),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::debug!("ignoring process/setPush: {e}")
                    }
                }
            }
            _ => tracing::debug!(method, "ignoring notification"),
        }
    }

    /// The connection is gone: its session detaches (its processes live on).
    pub fn close(&self) {
        let session = self.lifecycle().session.clone();
        if let Some(session) = session {
            self.state.sessions.detach(&session, self.id);
        }
    }

    async fn dispatch(
        &self,
        method: &str,
        params: Value,
        payload: &Bytes,
    ) -> Result<(WireResult, Option<StartGate>), RpcError> {
        if method == method::INITIALIZE {
            return Ok(((self.initialize(params)?, Bytes::new()), None));
        }
        let session = self.ready_session()?;
        self.state.policy.check_method(method)?;
        let processes = &session.processes;
        let binary = self.binary();
        let result = match method {
            method::PROCESS_START => {
                let (result, gate) =
                    processes.start(parse_params(params, payload)?, &self.state.policy)?;
                return Ok((encode(&result, binary)?, Some(gate)));
            }
            method::PROCESS_READ => encode(
                &processes.read(parse_params(params, payload)?).await?,
                binary,
            ),
            method::PROCESS_WRITE => encode(
                &processes.write(parse_params(params, payload)?).await?,
                binary,
            ),
            method::PROCESS_SIGNAL => {
                let params: ProcessSignalParams = parse_params(params, payload)?;
                encode(&processes.signal(&params)?, binary)
            }
            method::PROCESS_TERMINATE => {
                let params: ProcessIdParams = parse_params(params, payload)?;
                encode(&processes.terminate(&params.process_id)?, binary)
            }
            method::PROCESS_CLOSE_STDIN => {
                let params: ProcessIdParams = parse_params(params, payload)?;
                encode(&processes.close_stdin(&params.process_id).await?, binary)
            }
            method::PROCESS_RESIZE => {
                let params: ProcessResizeParams = parse_params(params, payload)?;
                encode(&processes.resize(&params)?, binary)
            }
            other if fs::is_fs_method(other) => {
                let method = other.to_owned();
                let state = self.state.clone();
                let payload = payload.clone();
                tokio::task::spawn_blocking(move || {
                    let ctx = fs::Ctx {
                        rules: &state.policy.paths,
                        staged: &state.staged,
                    };
                    fs::call(&method, params, &payload, binary, ctx)
                })
                .await
                .map_err(|e| RpcError::internal(format!("{other} failed: {e}")))?
            }
            other => Err(RpcError::method_not_found(other)),
        }?;
        Ok((result, None))
    }

    fn initialize(&self, params: Value) -> Result<Value, RpcError> {
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
        serde_json::to_value(InitializeResult {
            session_id: session.id.clone(),
            environment_info: self.state.environment.clone(),
        })
        .map_err(|e| RpcError::internal(format!("encoding the result: {e}")))
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
}

/// Decodes a method's params, resolving blob references against the
/// frame's `payload`; a serde error becomes -32602 with its message.
/// Absent params read as `{}`, so that methods whose params are all optional
/// accept them being left out.
pub(crate) fn parse_params<T: DeserializeOwned>(
    params: Value,
    payload: &Bytes,
) -> Result<T, RpcError> {
    let params = if params.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        params
    };
    blob::from_value(params, payload)
        .map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))
}

/// Encodes a result; with `binary`, its raw bytes go in the payload.
pub(crate) fn encode(result: &impl Serialize, binary: bool) -> Result<WireResult, RpcError> {
    blob::to_value(result, binary)
        .map_err(|e| RpcError::internal(format!("encoding the result: {e}")))
}
