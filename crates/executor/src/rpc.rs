//! The JSON-RPC server side of one connection, independent of the transport:
//! the `initialize`/`initialized` lifecycle and the routing of each method to
//! the module that implements it.
//!
//! [`RpcConnection::request`] turns a request into its response; the frame
//! loop in [`connection`](crate::connection) and the tests both drive it. The
//! only thing it sends by itself is notifications, through the session it
//! attaches to the connection's outgoing queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use execgate_protocol::exec::{
    method, InitializeParams, InitializeResult, ProcessIdParams, ProcessResizeParams,
    ProcessSignalParams,
};
use execgate_protocol::jsonrpc::{Id, Message, RpcError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::fs;
use crate::process::StartGate;
use crate::session::{ConnectionId, Session};
use crate::state::ExecutorState;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct RpcConnection {
    state: Arc<ExecutorState>,
    id: ConnectionId,
    /// The connection's outgoing queue; handed to the session for notifications.
    outgoing: mpsc::Sender<Message>,
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
/// process's notifications back. Queue the message, then drop the reply.
pub(crate) struct Reply {
    pub message: Message,
    pub gate: Option<StartGate>,
}

impl RpcConnection {
    pub fn new(state: Arc<ExecutorState>, outgoing: mpsc::Sender<Message>) -> Self {
        RpcConnection {
            state,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            outgoing,
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
            Message::Request { id, method, params } => {
                Some(self.request(id, &method, params).await.message)
            }
            Message::Notification { method, params } => {
                self.notification(&method, params);
                None
            }
            Message::Response { .. } => None,
        }
    }

    /// Answers one request.
    pub async fn request(&self, id: Id, method: &str, params: Value) -> Reply {
        match self.dispatch(method, params).await {
            Ok((result, gate)) => Reply {
                message: Message::response(id, Ok(result)),
                gate,
            },
            Err(error) => {
                tracing::debug!(%id, method, "request failed: {error}");
                Reply {
                    message: Message::response(id, Err(error)),
                    gate: None,
                }
            }
        }
    }

    /// Takes one notification from the gateway.
    pub fn notification(&self, method: &str, _params: Value) {
        if method == method::INITIALIZED {
            self.lifecycle().initialized = true;
        } else {
            tracing::debug!(method, "ignoring notification");
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
    ) -> Result<(Value, Option<StartGate>), RpcError> {
        if method == method::INITIALIZE {
            return Ok((self.initialize(params)?, None));
        }
        let session = self.ready_session()?;
        self.state.policy.check_method(method)?;
        let processes = &session.processes;
        let result = match method {
            method::PROCESS_START => {
                let (result, gate) = processes.start(parse_params(params)?, &self.state.policy)?;
                return Ok((to_value(result)?, Some(gate)));
            }
            method::PROCESS_READ => to_value(processes.read(parse_params(params)?).await?),
            method::PROCESS_WRITE => to_value(processes.write(parse_params(params)?).await?),
            method::PROCESS_SIGNAL => {
                to_value(processes.signal(&parse_params::<ProcessSignalParams>(params)?)?)
            }
            method::PROCESS_TERMINATE => {
                let params: ProcessIdParams = parse_params(params)?;
                to_value(processes.terminate(&params.process_id)?)
            }
            method::PROCESS_CLOSE_STDIN => {
                let params: ProcessIdParams = parse_params(params)?;
                to_value(processes.close_stdin(&params.process_id).await?)
            }
            method::PROCESS_RESIZE => {
                to_value(processes.resize(&parse_params::<ProcessResizeParams>(params)?)?)
            }
            other if fs::is_fs_method(other) => {
                let method = other.to_owned();
                let policy = self.state.policy.clone();
                tokio::task::spawn_blocking(move || fs::call(&method, params, &policy.paths))
                    .await
                    .map_err(|e| RpcError::internal(format!("{other} failed: {e}")))?
            }
            other => Err(RpcError::method_not_found(other)),
        }?;
        Ok((result, None))
    }

    fn initialize(&self, params: Value) -> Result<Value, RpcError> {
        let params: InitializeParams = parse_params(params)?;
        let mut lifecycle = self.lifecycle();
        if lifecycle.session.is_some() {
            return Err(RpcError::invalid_request(
                "initialize was already received on this connection",
            ));
        }
        let session = self.state.sessions.attach(
            params.resume_session_id.as_deref(),
            self.id,
            self.outgoing.clone(),
        );
        tracing::info!(client = %params.client_name, session = %session.id, "initialize");
        lifecycle.session = Some(session.clone());
        to_value(InitializeResult {
            session_id: session.id.clone(),
            environment_info: self.state.environment.clone(),
        })
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

/// Decodes a method's params; a serde error becomes -32602 with its message.
/// Absent params read as `{}`, so that methods whose params are all optional
/// accept them being left out.
pub(crate) fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let params = if params.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        params
    };
    serde_json::from_value(params)
        .map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))
}

fn to_value(result: impl Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(result)
        .map_err(|e| RpcError::internal(format!("encoding the result: {e}")))
}
