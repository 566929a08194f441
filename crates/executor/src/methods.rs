//! The method table: every method the executor serves, declared once with
//! what the dispatcher needs to know of it: a request or a notification,
//! where it runs ([`Run`]: the handshake, inline, or on the blocking pool),
//! the policy class it is checked against ([`Access`]), and its handler.
//!
//! The list near the end of this file is the only routing. A macro turns
//! it into the `match` of [`request`] and [`notification`] (no map to
//! build, no allocation per call, no other place that names a method), and
//! for the tests into `METHODS`, the table as data. A request the table
//! does not list goes through the same checks, then is -32601.
//!
//! The connection (`rpc`) owns the handshake and lends itself to the table
//! through [`Connection`]; the `fs/*` handlers are `fs`'s own functions;
//! the `process/*` ones, below, are the wire's side of the process table.
//! Nothing here imports `rpc`.

use std::sync::Arc;

use bytes::Bytes;
use execgate_protocol::exec::{
    method, ProcessIdParams, ProcessResizeParams, ProcessSetPushParams, ProcessSignalParams,
};
use execgate_protocol::jsonrpc::RpcError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::fs;
use crate::policy::{Access, Policy};
use crate::process::{ProcessTable, StartGate};
use crate::session::Session;
use crate::state::ExecutorState;
use crate::wire::{encode, parse_params, Call, WireResult};

/// A method as the table declares it. The table as data is for tests: the
/// dispatch is the `match` generated from the same list.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Method {
    /// Its name on the wire: a constant of `execgate_protocol::exec::method`.
    pub name: &'static str,
    pub kind: Kind,
    pub run: Run,
    /// What `--read-only` and `--allow-tools` check it against; never
    /// checked for the handshake or a notification.
    pub access: Access,
}

/// Whether a method is answered.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Notification,
}

/// Where a method runs, and whether it waits for the handshake.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Run {
    /// The handshake itself (`initialize`, `initialized`): served by the
    /// connection before the handshake is complete.
    Handshake,
    /// Once the handshake is complete, on the connection's task: quick, or
    /// waiting without holding a thread (a long-poll).
    Inline,
    /// Once the handshake is complete, on tokio's blocking pool: file-system
    /// work, where a multi-step operation such as a recursive copy costs one
    /// thread hop instead of one per system call.
    Blocking,
    /// The connection's own business, not a session's, whenever it comes:
    /// `execgate/move`, which the frame loop acts on.
    Transport,
}

/// A request's answer: its result on the wire, plus for `process/start` the
/// gate that holds the new process's notifications back until the answer
/// is queued.
pub(crate) type Answer = (WireResult, Option<StartGate>);

/// What the table needs of the connection a message came on.
pub(crate) trait Connection {
    /// What every connection shares.
    fn state(&self) -> &Arc<ExecutorState>;
    /// Whether results may carry raw bytes in a binary frame.
    fn binary(&self) -> bool;
    /// The session, once both `initialize` and `initialized` have come;
    /// else the error to answer.
    fn ready_session(&self) -> Result<Arc<Session>, RpcError>;
    /// The `initialize` request.
    fn initialize(&self, params: Value) -> Result<Answer, RpcError>;
    /// The `initialized` notification.
    fn initialized(&self, params: Value);
    /// [ext] `execgate/move`: the gateway drains; leave once the requests
    /// in flight are answered (see `connection`).
    fn move_requested(&self, params: Value);
}

/// What an inline method works with.
struct Ready<'a> {
    /// The session's processes.
    processes: &'a ProcessTable,
    policy: &'a Policy,
}

/// The checks before a method runs: the handshake is complete, and the
/// policy allows the method's class.
fn admit(conn: &impl Connection, name: &str, access: Access) -> Result<Arc<Session>, RpcError> {
    let session = conn.ready_session()?;
    conn.state().policy.check(name, access)?;
    Ok(session)
}

/// A request the table does not list: -32601, once it has passed the checks
/// every request goes through.
fn unlisted(conn: &impl Connection, name: &str) -> Result<Answer, RpcError> {
    admit(conn, name, Access::unlisted(name))?;
    Err(RpcError::method_not_found(name))
}

/// Runs an `fs/*` method on tokio's blocking pool.
async fn blocking<P, R>(
    conn: &impl Connection,
    name: &str,
    params: Value,
    payload: &Bytes,
    handler: fn(P, fs::Ctx<'_>) -> Result<R, RpcError>,
) -> Result<Answer, RpcError>
where
    P: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let state = conn.state().clone();
    let payload = payload.clone();
    let binary = conn.binary();
    let result = tokio::task::spawn_blocking(move || {
        let ctx = fs::Ctx {
            rules: &state.policy.paths,
            staged: &state.staged,
            reads: &state.reads,
        };
        let call = Call {
            params,
            payload: &payload,
            binary,
        };
        call.run(|params| handler(params, ctx))
    })
    .await
    .map_err(|e| RpcError::internal(format!("{name} failed: {e}")))??;
    Ok((result, None))
}

/// Takes a notification about the session's processes; bad params, or one
/// before the handshake, only make a debug line.
fn notify<P: DeserializeOwned>(
    conn: &impl Connection,
    name: &str,
    params: Value,
    handler: fn(&ProcessTable, P),
) {
    match (parse_params(params, &Bytes::new()), conn.ready_session()) {
        (Ok(params), Ok(session)) => handler(&session.processes, params),
        (Err(e), _) | (_, Err(e)) => tracing::debug!("ignoring {name}: {e}"),
    }
}

/// A notification the table does not list (or lists as a request).
fn ignore(name: &str) {
    tracing::debug!(method = name, "ignoring notification");
}

/// An `fs/*` method on the wire's terms, run on the caller's thread.
#[cfg(test)]
pub(crate) type FsHandler = fn(Call<'_>, fs::Ctx<'_>) -> Result<WireResult, RpcError>;

/// The table's entry for `name`.
#[cfg(test)]
pub(crate) fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// Builds the table from the list below; each line is
/// `Kind NAME Run Access handler;` where the handler's signature depends
/// on where it runs:
/// - a `Handshake` request or notification: a method of [`Connection`];
/// - an `Inline` request: `async fn(Ready, Call) -> Result<Answer, RpcError>`;
/// - an `Inline` notification: `fn(&ProcessTable, P)`, `P` its params;
/// - a `Blocking` request: `fn(P, fs::Ctx) -> Result<R, RpcError>`, `P`
///   its params and `R` its result.
macro_rules! methods {
    ($($kind:ident $name:ident $run:ident $access:ident $handler:path;)*) => {
        /// Every method the executor serves, in the order of the list.
        #[cfg(test)]
        pub(crate) static METHODS: &[Method] = &[$(
            Method {
                name: method::$name,
                kind: Kind::$kind,
                run: Run::$run,
                access: Access::$access,
            },
        )*];

        /// Answers request `name`. `payload` is what its binary frame
        /// carried beside the JSON (empty for a text frame).
        pub(crate) async fn request(
            conn: &impl Connection,
            name: &str,
            params: Value,
            payload: &Bytes,
        ) -> Result<Answer, RpcError> {
            match name {
                $(method::$name => {
                    methods!(@request $kind $run $access $handler, conn, name, params, payload)
                })*
                _ => unlisted(conn, name),
            }
        }

        /// Takes notification `name`.
        pub(crate) fn notification(conn: &impl Connection, name: &str, params: Value) {
            match name {
                $(method::$name => methods!(@notification $kind $run $handler, conn, name, params),)*
                _ => ignore(name),
            }
        }

        /// The `fs/*` method `name`, as the table runs it on the blocking
        /// pool.
        #[cfg(test)]
        pub(crate) fn fs_handler(name: &str) -> Option<FsHandler> {
            match name {
                $(method::$name => methods!(@fs $run $handler),)*
                _ => None,
            }
        }
    };

    (@request Request Handshake $access:ident $handler:path,
        $conn:ident, $name:ident, $params:ident, $payload:ident) => {
        $handler($conn, $params)
    };
    (@request Request Inline $access:ident $handler:path,
        $conn:ident, $name:ident, $params:ident, $payload:ident) => {{
        let session = admit($conn, $name, Access::$access)?;
        let ready = Ready {
            processes: &session.processes,
            policy: &$conn.state().policy,
        };
        let call = Call {
            params: $params,
            payload: $payload,
            binary: $conn.binary(),
        };
        $handler(ready, call).await
    }};
    (@request Request Blocking $access:ident $handler:path,
        $conn:ident, $name:ident, $params:ident, $payload:ident) => {{
        admit($conn, $name, Access::$access)?;
        blocking($conn, $name, $params, $payload, $handler).await
    }};
    (@request Notification $run:ident $access:ident $handler:path,
        $conn:ident, $name:ident, $params:ident, $payload:ident) => {
        unlisted($conn, $name)
    };

    (@notification Notification Handshake $handler:path,
        $conn:ident, $name:ident, $params:ident) => {
        $handler($conn, $params)
    };
    (@notification Notification Transport $handler:path,
        $conn:ident, $name:ident, $params:ident) => {
        $handler($conn, $params)
    };
    (@notification Notification Inline $handler:path,
        $conn:ident, $name:ident, $params:ident) => {
        notify($conn, $name, $params, $handler)
    };
    (@notification Request $run:ident $handler:path,
        $conn:ident, $name:ident, $params:ident) => {
        ignore($name)
    };

    (@fs Blocking $handler:path) => {{
        let handler: FsHandler = |call, ctx| call.run(|params| $handler(params, ctx));
        Some(handler)
    }};
    (@fs $run:ident $handler:path) => {
        None
    };
}

methods! {
    // kind      name                 run        access  handler
    Request      INITIALIZE           Handshake  Other   Connection::initialize;
    Notification INITIALIZED          Handshake  Other   Connection::initialized;
    Request      PROCESS_START        Inline     Start   process_start;
    Request      PROCESS_READ         Inline     Other   process_read;
    Request      PROCESS_WRITE        Inline     Other   process_write;
    Request      PROCESS_SIGNAL       Inline     Other   process_signal;
    Request      PROCESS_TERMINATE    Inline     Other   process_terminate;
    Request      PROCESS_CLOSE_STDIN  Inline     Other   process_close_stdin;
    Request      PROCESS_RESIZE       Inline     Other   process_resize;
    Notification PROCESS_SET_PUSH     Inline     Other   process_set_push;
    Notification EXECGATE_MOVE        Transport  Other   Connection::move_requested;
    Request      FS_READ_FILE         Blocking   Read    fs::read_file;
    Request      FS_READ_RANGE        Blocking   Read    fs::read_range;
    Request      FS_READ_DIGEST       Blocking   Read    fs::read_digest;
    Request      FS_GET_METADATA      Blocking   Read    fs::get_metadata;
    Request      FS_READ_DIRECTORY    Blocking   Read    fs::read_directory;
    Request      FS_WRITE_FILE        Blocking   Write   fs::write_file;
    Request      FS_WRITE_RANGE       Blocking   Write   fs::write_range;
    Request      FS_COMMIT_FILE       Blocking   Write   fs::commit_file;
    Request      FS_CREATE_DIRECTORY  Blocking   Write   fs::create_directory;
    Request      FS_REMOVE            Blocking   Write   fs::remove;
    Request      FS_COPY              Blocking   Write   fs::copy;
    Request      FS_RENAME            Blocking   Write   fs::rename;
    Request      FS_SYMLINK           Blocking   Write   fs::symlink;
}

// The `process/*` methods on the wire's terms. Each request is `async` for
// the table's sake; only read, write and closeStdin wait for anything.

async fn process_start(cx: Ready<'_>, call: Call<'_>) -> Result<Answer, RpcError> {
    let params = parse_params(call.params, call.payload)?;
    let (result, gate) = cx.processes.start(params, cx.policy)?;
    Ok((encode(&result, call.binary)?, Some(gate)))
}

async fn process_read(cx: Ready<'_>, call: Call<'_>) -> Result<Answer, RpcError> {
    let params = parse_params(call.params, call.payload)?;
    answer(&cx.processes.read(params).await?, call.binary)
}

async fn process_write(cx: Ready<'_>, call: Call<'_>) -> Result<Answer, RpcError> {
    let params = parse_params(call.params, call.payload)?;
    answer(&cx.processes.write(params).await?, call.binary)
}

async fn process_signal(cx: Ready<'_>, call: Call<'_>) -> Result<Answer, RpcError> {
    let params: ProcessSignalParams = parse_params(call.params, call.payload)?;
    answer(&cx.processes.signal(&params)?, call.binary)
}

async fn process_terminate(cx: Ready<'_>, call: Call<'_>) -> Result<Answer, RpcError> {
    let params: ProcessIdParams = parse_params(call.params, call.payload)?;
    answer(&cx.processes.terminate(&params.process_id)?, call.binary)
}

async fn process_close_stdin(cx: Ready<'_>, call: Call<'_>) -> Result<Answer, RpcError> {
    let params: ProcessIdParams = parse_params(call.params, call.payload)?;
    let result = cx.processes.close_stdin(&params.process_id).await?;
    answer(&result, call.binary)
}

async fn process_resize(cx: Ready<'_>, call: Call<'_>) -> Result<Answer, RpcError> {
    let params: ProcessResizeParams = parse_params(call.params, call.payload)?;
    answer(&cx.processes.resize(&params)?, call.binary)
}

fn process_set_push(processes: &ProcessTable, params: ProcessSetPushParams) {
    processes.set_push(&params);
}

/// A result without a start gate.
fn answer(result: &impl Serialize, binary: bool) -> Result<Answer, RpcError> {
    Ok((encode(result, binary)?, None))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// What the executor sends and never receives.
    const SENT: [&str; 3] = [
        method::PROCESS_OUTPUT,
        method::PROCESS_EXITED,
        method::PROCESS_CLOSED,
    ];

    /// The values of the protocol crate's `method` constants, read from its
    /// source: a method added there and neither served here nor listed in
    /// [`SENT`] fails the test below.
    fn protocol_methods() -> Vec<String> {
        let source = include_str!("../../protocol/src/exec.rs");
        let start = source.find("pub mod method {").expect("the method module");
        let module = &source[start..];
        let module = &module[..module.find("\n}").expect("its end")];
        let consts: Vec<&str> = module
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("pub const "))
            .collect();
        let values: Vec<String> = consts
            .iter()
            .filter_map(|line| {
                let (_, value) = line.split_once(": &str = \"")?;
                Some(value.strip_suffix("\";")?.to_owned())
            })
            .collect();
        assert_eq!(
            values.len(),
            consts.len(),
            "every constant read: {consts:?}"
        );
        values
    }

    #[test]
    fn every_protocol_method_the_executor_receives_is_in_the_table_once() {
        let protocol = protocol_methods();
        assert!(protocol.len() >= 25, "{protocol:?}");
        for name in &protocol {
            let entries = METHODS.iter().filter(|m| m.name == name).count();
            let expected = usize::from(!SENT.contains(&name.as_str()));
            assert_eq!(entries, expected, "{name}: {entries} entries");
        }
        let mut seen = BTreeSet::new();
        for m in METHODS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(protocol.iter().any(|p| p == m.name), "{}", m.name);
        }
        assert_eq!(METHODS.len() + SENT.len(), protocol.len());
    }

    /// Every request the table serves has a metric label of its own
    /// (`execgate_protocol::exec::REQUEST_METHODS`), and nothing else does.
    #[test]
    fn every_request_has_a_metric_label() {
        let requests: BTreeSet<&str> = METHODS
            .iter()
            .filter(|m| m.kind == Kind::Request)
            .map(|m| m.name)
            .collect();
        let labelled: BTreeSet<&str> = execgate_protocol::exec::REQUEST_METHODS
            .iter()
            .copied()
            .collect();
        assert_eq!(requests, labelled);
    }

    #[test]
    fn the_flags_are_consistent() {
        for m in METHODS {
            // File-system work, and only it, leaves the connection's task;
            // each such method reads or changes files, so that the policy
            // sees it (`--read-only` must not miss a write).
            let fs = m.name.starts_with("fs/");
            assert_eq!(m.run == Run::Blocking, fs, "{m:?}");
            if fs {
                assert!(matches!(m.access, Access::Read | Access::Write), "{m:?}");
                assert_eq!(m.kind, Kind::Request, "{m:?}");
            }
            // The policy checks requests after the handshake only.
            if m.run == Run::Handshake || m.kind == Kind::Notification {
                assert_eq!(m.access, Access::Other, "{m:?}");
            }
            assert_eq!(
                fs_handler(m.name).is_some(),
                m.run == Run::Blocking,
                "{m:?}"
            );
        }
        let handshake: Vec<_> = METHODS
            .iter()
            .filter(|m| m.run == Run::Handshake)
            .map(|m| (m.name, m.kind))
            .collect();
        assert_eq!(
            handshake,
            [
                (method::INITIALIZE, Kind::Request),
                (method::INITIALIZED, Kind::Notification)
            ]
        );
        assert!(find("fs/frobnicate").is_none());
        assert!(fs_handler("fs/frobnicate").is_none());
    }

    /// What `--read-only` lets through, pinned here on purpose: a method
    /// that changes files, or starts a process, must not be listed as
    /// anything else.
    #[test]
    fn only_these_methods_read_or_start() {
        let of = |access| {
            let names = METHODS.iter().filter(|m| m.access == access);
            names.map(|m| m.name).collect::<BTreeSet<_>>()
        };
        let reads = [
            method::FS_READ_FILE,
            method::FS_READ_RANGE,
            method::FS_READ_DIGEST,
            method::FS_GET_METADATA,
            method::FS_READ_DIRECTORY,
        ];
        assert_eq!(of(Access::Read), BTreeSet::from(reads));
        assert_eq!(of(Access::Start), BTreeSet::from([method::PROCESS_START]));
        for m in METHODS.iter().filter(|m| m.access == Access::Other) {
            assert!(!m.name.starts_with("fs/"), "{m:?}");
        }
    }
}
