//! Tests that drive the JSON-RPC handler of a connection directly, without a
//! network: lifecycle, processes (pipes and pty), stdin, signals, sessions
//! and fs. Plus one test of the frame loop over an in-memory WebSocket, and
//! ones of `run` against a minimal fake gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use execgate_protocol::exec::method;
use execgate_protocol::jsonrpc::{code, Envelope, Id, Message, RpcError};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::rpc::RpcConnection;
use crate::state::ExecutorState;
use crate::ExecutorConfig;

const WAIT: Duration = Duration::from_secs(20);

/// One connection to an executor state, driven by hand.
struct Client {
    conn: RpcConnection,
    rx: mpsc::Receiver<Envelope>,
    next_id: i64,
    /// Notifications seen while waiting for something else.
    backlog: Vec<Message>,
}

impl Client {
    fn new(state: &Arc<ExecutorState>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Client {
            conn: RpcConnection::new(state.clone(), tx),
            rx,
            next_id: 1,
            backlog: Vec::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.next_id += 1;
        let id = Id::Num(self.next_id);
        let response = self
            .conn
            .handle(Message::request(id.clone(), method, params))
            .await
            .expect("a request gets a response");
        match response {
            Message::Response { id: got, result } => {
                assert_eq!(got, id);
                result
            }
            other => panic!("not a response: {other:?}"),
        }
    }

    async fn ok(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    async fn err(&mut self, method: &str, params: Value) -> RpcError {
        self.call(method, params)
            .await
            .expect_err("the call should fail")
    }

    async fn notify(&mut self, method: &str) {
        assert!(self
            .conn
            .handle(Message::notification(method, json!({})))
            .await
            .is_none());
    }

    /// initialize + initialized; returns the session id.
    async fn init(&mut self, resume: Option<&str>) -> String {
        let mut params = json!({"clientName": "test"});
        if let Some(resume) = resume {
            params["resumeSessionId"] = json!(resume);
        }
        let result = self.ok(method::INITIALIZE, params).await;
        self.notify(method::INITIALIZED).await;
        result["sessionId"].as_str().unwrap().to_owned()
    }

    /// The notifications about `process_id` up to and including its
    /// `process/closed`, as (method, params).
    async fn until_closed(&mut self, process_id: &str) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        let mut backlog = std::mem::take(&mut self.backlog).into_iter();
        loop {
            let message = match backlog.next() {
                Some(message) => message,
                None => {
                    tokio::time::timeout(WAIT, self.rx.recv())
                        .await
                        .expect("timed out waiting for process/closed")
                        .expect("channel open")
                        .message
                }
            };
            let Message::Notification { method, params } = message else {
                panic!("unexpected message {message:?}");
            };
            if params["processId"] != process_id {
                self.backlog.push(Message::Notification { method, params });
                continue;
            }
            let closed = method == method::PROCESS_CLOSED;
            seen.push((method, params));
            if closed {
                self.backlog.extend(backlog);
                return seen;
            }
        }
    }

    async fn start(&mut self, process_id: &str, argv: &[&str], extra: Value) -> Value {
        let mut params =
            json!({"processId": process_id, "argv": argv, "cwd": "", "env": path_env()});
        if let Value::Object(extra) = extra {
            params.as_object_mut().unwrap().extend(extra);
        }
        self.ok(method::PROCESS_START, params).await
    }
}

fn path_env() -> Value {
    json!({"PATH": std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())})
}

fn state_with(
    configure: impl FnOnce(&mut ExecutorConfig),
) -> (Arc<ExecutorState>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ExecutorConfig::new("http://127.0.0.1:1", "exe_test.secret");
    config.workdir = dir.path().to_path_buf();
    config.spill_dir = Some(dir.path().join(".spill"));
    config.state_dir = Some(dir.path().join(".state"));
    configure(&mut config);
    (Arc::new(ExecutorState::new(&config).unwrap()), dir)
}

fn state() -> (Arc<ExecutorState>, tempfile::TempDir) {
    state_with(|_| {})
}

fn decode(b64: &Value) -> Vec<u8> {
    BASE64.decode(b64.as_str().unwrap()).unwrap()
}

/// All output of these notifications, per stream.
fn output_of(notifications: &[(String, Value)]) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (method, params) in notifications {
        if method == method::PROCESS_OUTPUT {
            out.entry(params["stream"].as_str().unwrap().to_owned())
                .or_default()
                .extend(decode(&params["chunk"]));
        }
    }
    out
}

fn exit_code_of(notifications: &[(String, Value)]) -> i64 {
    let exited: Vec<_> = notifications
        .iter()
        .filter(|(m, _)| m == method::PROCESS_EXITED)
        .collect();
    assert_eq!(exited.len(), 1, "{notifications:?}");
    exited[0].1["exitCode"].as_i64().unwrap()
}

/// Live (not zombie) members of a process group, from /proc.
fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, pgrp, …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && !matches!(fields[0], "Z" | "X") {
            members.push(pid);
        }
    }
    members
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The method table routes every request it lists, and a name it does not
/// list (or lists as a notification) is answered as before the table: the
/// handshake first, then the policy (an unknown `fs/*` counts as a write),
/// then -32601 naming it.
#[tokio::test]
async fn every_listed_request_is_routed_and_unknown_methods_answer_as_before() {
    use crate::methods::{Kind, Run, METHODS};
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    let err = client.err("fs/frobnicate", json!({})).await;
    assert_eq!(err.code, code::INVALID_REQUEST, "{err}");
    assert!(err.message.contains("not initialized"), "{err}");
    client.init(None).await;
    for m in METHODS {
        if m.kind != Kind::Request || m.run == Run::Handshake {
            continue;
        }
        // No params: each method refuses them its own way, none as unknown.
        let err = client.err(m.name, json!({})).await;
        assert_ne!(err.code, code::METHOD_NOT_FOUND, "{}: {err}", m.name);
    }
    for name in [
        "no/such/method",
        "fs/frobnicate",
        method::INITIALIZED,
        method::PROCESS_SET_PUSH,
        method::PROCESS_OUTPUT,
    ] {
        let err = client.err(name, json!({})).await;
        assert_eq!(err.code, code::METHOD_NOT_FOUND, "{name}: {err}");
        assert_eq!(err.message, format!("unknown method: {name}"));
    }

    let (state, _dir) = state_with(|c| c.policy.read_only = true);
    let mut client = Client::new(&state);
    client.init(None).await;
    let err = client.err("fs/frobnicate", json!({})).await;
    assert_eq!(err.code, code::POLICY_DENIED, "{err}");
    assert!(err.message.contains("--read-only"), "{err}");
    let err = client.err("no/such/method", json!({})).await;
    assert_eq!(err.code, code::METHOD_NOT_FOUND, "{err}");
}

#[tokio::test]
async fn methods_before_initialize_and_initialized_are_invalid_requests() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    let err = client
        .err(method::FS_READ_FILE, json!({"path": "/etc/hostname"}))
        .await;
    assert_eq!(err.code, code::INVALID_REQUEST);
    let err = client.err("no/such/method", json!({})).await;
    assert_eq!(err.code, code::INVALID_REQUEST);

    let err = client.err(method::INITIALIZE, json!({})).await;
    assert_eq!(err.code, code::INVALID_PARAMS, "clientName is required");

    let result = client
        .ok(method::INITIALIZE, json!({"clientName": "t"}))
        .await;
    assert!(!result["sessionId"].as_str().unwrap().is_empty());
    let info = &result["environmentInfo"];
    assert_eq!(info["executorVersion"], execgate_protocol::VERSION);
    assert_eq!(info["platformOs"], std::env::consts::OS);
    assert!(info["cwd"].as_str().unwrap().starts_with("file:///"));
    assert!(!info["shell"]["path"].as_str().unwrap().is_empty());
    assert_eq!(info["execgate"]["closeStdin"], true);
    assert_eq!(info["execgate"]["retainedBytes"], 1 << 20);

    let err = client
        .err(method::PROCESS_READ, json!({"processId": "p"}))
        .await;
    assert_eq!(
        err.code,
        code::INVALID_REQUEST,
        "initialized not received yet"
    );
    client.notify(method::INITIALIZED).await;

    let err = client
        .err(method::PROCESS_READ, json!({"processId": "p"}))
        .await;
    assert_eq!(err.code, code::INVALID_REQUEST);
    assert!(err.message.contains("unknown process"), "{}", err.message);
    let err = client.err("no/such/method", json!({})).await;
    assert_eq!(err.code, code::METHOD_NOT_FOUND);
    let err = client
        .err(method::INITIALIZE, json!({"clientName": "t"}))
        .await;
    assert_eq!(err.code, code::INVALID_REQUEST, "initialize twice");
}

#[tokio::test]
async fn start_streams_output_and_exit_in_seq_order() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    let started = client
        .start(
            "p1",
            &["sh", "-c", "echo hi; echo err >&2; exit 3"],
            json!({}),
        )
        .await;
    assert_eq!(started, json!({"processId": "p1", "sandboxType": "none"}));

    let notes = client.until_closed("p1").await;
    let seqs: Vec<u64> = notes
        .iter()
        .map(|(_, p)| p["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs[0], 1);
    let out = output_of(&notes);
    assert_eq!(out["stdout"], b"hi\n");
    assert_eq!(out["stderr"], b"err\n");
    assert_eq!(exit_code_of(&notes), 3);
    assert_eq!(notes.last().unwrap().0, method::PROCESS_CLOSED);

    // The same story through process/read.
    let read = client
        .ok(
            method::PROCESS_READ,
            json!({"processId": "p1", "afterSeq": 0}),
        )
        .await;
    assert_eq!(read["exited"], true);
    assert_eq!(read["exitCode"], 3);
    assert_eq!(read["closed"], true);
    assert_eq!(read["lostBytes"], 0);
    assert_eq!(read["failure"], Value::Null);
    assert_eq!(read["chunks"].as_array().unwrap().len(), 2);
    let last = *seqs.last().unwrap();
    assert_eq!(read["nextSeq"], last + 1);

    // Nothing is newer than the last seq: the long-poll waits it out, then
    // still reports the process closed.
    let read = client
        .ok(
            method::PROCESS_READ,
            json!({"processId": "p1", "afterSeq": last, "waitMs": 50}),
        )
        .await;
    assert_eq!(read["chunks"], json!([]));
    assert_eq!(read["closed"], true);

    let err = client
        .err(
            method::PROCESS_START,
            json!({"processId": "p1", "argv": ["true"], "cwd": ""}),
        )
        .await;
    assert_eq!(
        err.code,
        code::INVALID_REQUEST,
        "an exited process id stays taken"
    );
}

/// A gateway that said it reads binary frames gets output raw: in the
/// payload beside the JSON, in notifications and in `process/read` alike.
#[tokio::test]
async fn a_gateway_that_reads_binary_frames_gets_output_raw() {
    use bytes::Bytes;
    use execgate_protocol::blob::{self, Blob};
    use execgate_protocol::exec::{OutputNotification, ProcessReadResult};

    let (state, _dir) = state();
    let mut client = Client::new(&state);
    let params = json!({"clientName": "gw", "execgate": {"binaryFrames": true}});
    client.ok(method::INITIALIZE, params).await;
    client.notify(method::INITIALIZED).await;
    client.start("p1", &["printf", "a\\000b"], json!({})).await;

    let mut pushed = Vec::new();
    loop {
        let envelope = tokio::time::timeout(WAIT, client.rx.recv())
            .await
            .expect("notifications")
            .expect("channel open");
        let Message::Notification { method, params } = envelope.message else {
            panic!("not a notification");
        };
        if method == method::PROCESS_OUTPUT {
            assert!(params["chunk"].get("$bin").is_some(), "{params}");
            let n: OutputNotification = blob::from_value(params, &envelope.payload).unwrap();
            assert!(matches!(n.chunk, Blob::Raw(_)));
            pushed.extend_from_slice(&n.chunk.to_bytes().unwrap());
        } else if method == method::PROCESS_CLOSED {
            break;
        }
    }
    assert_eq!(pushed, b"a\0b");

    let params = json!({"processId": "p1", "afterSeq": 0});
    let reply = client
        .conn
        .request(Id::Num(7), method::PROCESS_READ, params, Bytes::new())
        .await;
    let Message::Response {
        result: Ok(result), ..
    } = reply.envelope.message
    else {
        panic!("process/read failed");
    };
    let read: ProcessReadResult = blob::from_value(result, &reply.envelope.payload).unwrap();
    assert_eq!(&reply.envelope.payload[..], b"a\0b");
    assert_eq!(read.chunks[0].chunk, Blob::raw(&b"a\0b"[..]));
}

/// [ext] pushOutput/setPush: output a reader only pulls is not pushed;
/// exit and close still are, and the log has everything.
#[tokio::test]
async fn output_is_pushed_only_while_the_gateway_wants_it() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    client
        .start("quiet", &["printf", "x"], json!({"pushOutput": false}))
        .await;
    let notes = client.until_closed("quiet").await;
    let methods: Vec<&str> = notes.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, [method::PROCESS_EXITED, method::PROCESS_CLOSED]);
    let read = client
        .ok(
            method::PROCESS_READ,
            json!({"processId": "quiet", "afterSeq": 0}),
        )
        .await;
    assert_eq!(decode(&read["chunks"][0]["chunk"]), b"x");

    // Turned on while it runs: what comes after is pushed.
    client
        .start(
            "later",
            &["sh", "-c", "sleep 0.5; printf y"],
            json!({"pushOutput": false}),
        )
        .await;
    assert!(client
        .conn
        .handle(Message::notification(
            method::PROCESS_SET_PUSH,
            json!({"processId": "later", "output": true}),
        ))
        .await
        .is_none());
    let notes = client.until_closed("later").await;
    assert_eq!(output_of(&notes)["stdout"], b"y");
}

#[tokio::test]
async fn long_poll_read_waits_for_output() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    client
        .start("slow", &["sh", "-c", "sleep 0.3; echo late"], json!({}))
        .await;
    let started = std::time::Instant::now();
    let read = client
        .ok(
            method::PROCESS_READ,
            json!({"processId": "slow", "afterSeq": 0, "waitMs": 10000}),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(started.elapsed() >= Duration::from_millis(200));
    let chunks = read["chunks"].as_array().unwrap();
    assert_eq!(decode(&chunks[0]["chunk"]), b"late\n");
}

#[tokio::test]
async fn start_validates_its_params() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    let err = client
        .err(
            method::PROCESS_START,
            json!({"processId": "a", "argv": [], "cwd": ""}),
        )
        .await;
    assert_eq!(err.code, code::INVALID_PARAMS);
    let err = client
        .err(
            method::PROCESS_START,
            json!({"processId": "a", "argv": ["true"], "cwd": "file:///no/such/dir"}),
        )
        .await;
    assert_eq!(err.code, code::INVALID_PARAMS);
    assert!(
        err.message.contains("cwd does not exist: /no/such/dir"),
        "{}",
        err.message
    );
    let err = client
        .err(
            method::PROCESS_START,
            json!({"processId": "a", "argv": ["/no/such/program"], "cwd": ""}),
        )
        .await;
    assert_eq!(err.code, code::INTERNAL_ERROR);
    assert!(err.message.contains("No such file"), "{}", err.message);
    let err = client
        .err(
            method::PROCESS_START,
            json!({"processId": "a", "argv": "true"}),
        )
        .await;
    assert_eq!(err.code, code::INVALID_PARAMS);
    // The failed starts did not take the id.
    client.start("a", &["true"], json!({})).await;
}

#[tokio::test]
async fn cwd_env_and_arg0() {
    let (state, dir) = state();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut client = Client::new(&state);
    client.init(None).await;
    client
        .start(
            "env",
            &["sh", "-c", "pwd; echo \"$FOO|${HOME-unset}\""],
            json!({"cwd": "sub", "env": {"FOO": "bar", "PATH": "/usr/bin:/bin"}}),
        )
        .await;
    let out = output_of(&client.until_closed("env").await);
    let real = std::fs::canonicalize(dir.path().join("sub")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out["stdout"]),
        format!("{}\nbar|unset\n", real.display())
    );

    // With a policy, the executor's environment is inherited.
    client
        .start(
            "policy",
            &["sh", "-c", "echo \"$ADDED|${PATH:+has-path}\""],
            json!({"env": {}, "envPolicy": {"inherit": "all", "ignoreDefaultExcludes": false,
                   "exclude": [], "set": {"ADDED": "yes"}, "includeOnly": []}}),
        )
        .await;
    let out = output_of(&client.until_closed("policy").await);
    assert_eq!(out["stdout"], b"yes|has-path\n");

    client
        .start(
            "arg0",
            &["sh", "-c", "echo $0"],
            json!({"arg0": "custom-name"}),
        )
        .await;
    let out = output_of(&client.until_closed("arg0").await);
    assert_eq!(
        out["stdout"], b"custom-name\n",
        "sh -c takes $0 from argv[0]"
    );
}

/// Signals the executor ignores (as when a non-interactive shell started it
/// in the background) are not ignored by the processes it starts, through
/// pipes or a pty.
#[tokio::test]
async fn children_start_with_default_signal_dispositions() {
    // SAFETY: setting a disposition is process-wide but harmless here:
    // ignoring SIGINT/SIGQUIT/SIGHUP is exactly the situation under test,
    // and no other test relies on them.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    let session_id = client.init(None).await;
    for (id, tty) in [("pipes", false), ("pty", true)] {
        client
            .start(id, &["sleep", "30"], json!({ "tty": tty }))
            .await;
        let session = state.sessions.get(&session_id).unwrap();
        let pid = session.processes.pgid_of(id).unwrap();
        let mut ignored = String::new();
        eventually("the sleeper has exec'd", || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let exec_done = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.to_string_lossy().contains("sleep"));
            ignored = status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .unwrap_or_default()
                .trim()
                .to_string();
            exec_done
        })
        .await;
        // Bit n-1 is signal n. The standard signals (1-31) must all be at
        // their default; above them glibc reserves some for itself.
        let ignored = u64::from_str_radix(&ignored, 16).unwrap();
        assert_eq!(
            ignored & 0x7fff_ffff,
            0,
            "{id}: ignored in the child: {ignored:#x}"
        );
        client
            .ok(method::PROCESS_TERMINATE, json!({ "processId": id }))
            .await;
    }
}

#[tokio::test]
async fn terminate_kills_the_whole_group_and_reports_137() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    let session_id = client.init(None).await;
    client
        .start("bg", &["sh", "-c", "sleep 300 & sleep 300"], json!({}))
        .await;
    let session = state.sessions.get(&session_id).unwrap();
    let pgid = session.processes.pgid_of("bg").unwrap();
    eventually("the shell and its background child run", || {
        live_group_members(pgid).len() >= 2
    })
    .await;

    let result = client
        .ok(method::PROCESS_TERMINATE, json!({"processId": "bg"}))
        .await;
    assert_eq!(result, json!({"running": true}));
    let notes = client.until_closed("bg").await;
    assert_eq!(exit_code_of(&notes), 137);
    eventually("every member of the group is gone", || {
        live_group_members(pgid).is_empty()
    })
    .await;

    let result = client
        .ok(method::PROCESS_TERMINATE, json!({"processId": "bg"}))
        .await;
    assert_eq!(result, json!({"running": false}));
    let err = client
        .err(method::PROCESS_TERMINATE, json!({"processId": "nope"}))
        .await;
    assert_eq!(err.code, code::INVALID_REQUEST);
}

#[tokio::test]
async fn signals_by_name() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    client.start("s", &["sleep", "300"], json!({})).await;
    let err = client
        .err(
            method::PROCESS_SIGNAL,
            json!({"processId": "s", "signal": "bogus"}),
        )
        .await;
    assert_eq!(err.code, code::INVALID_PARAMS);
    let err = client
        .err(
            method::PROCESS_SIGNAL,
            json!({"processId": "x", "signal": "kill"}),
        )
        .await;
    assert_eq!(err.code, code::INVALID_REQUEST);
    let result = client
        .ok(
            method::PROCESS_SIGNAL,
            json!({"processId": "s", "signal": "terminate"}),
        )
        .await;
    assert_eq!(result, json!({}));
    let notes = client.until_closed("s").await;
    assert_eq!(exit_code_of(&notes), 128 + libc::SIGTERM as i64);
}

/// A finished process gives back its stdin pipe, pty master and writer at
/// once, not after the retention (30 min): one descriptor per finished
/// process was held, and `ulimit -n` ran out (e2e `leaks` counts them).
#[tokio::test]
async fn finished_processes_let_go_of_their_pipes_and_terminal() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    let session_id = client.init(None).await;
    client
        .start("piped", &["true"], json!({"pipeStdin": true}))
        .await;
    client.start("tty", &["true"], json!({"tty": true})).await;
    // Exited, with a background child still holding the output: stdin goes
    // at the exit, the rest when the output closes.
    client
        .start(
            "bg",
            &["sh", "-c", "sleep 1 & exit 0"],
            json!({"pipeStdin": true}),
        )
        .await;
    for id in ["piped", "tty", "bg"] {
        client.until_closed(id).await;
    }
    let session = state.sessions.get(&session_id).unwrap();
    eventually("every handle to be dropped", || {
        ["piped", "tty", "bg"]
            .iter()
            .all(|id| !session.processes.holds_io(id))
    })
    .await;
    // Still readable, and a resize of a finished terminal does nothing.
    let read = client
        .ok(method::PROCESS_READ, json!({"processId": "tty"}))
        .await;
    assert_eq!(read["closed"], true);
    client
        .ok(
            method::PROCESS_RESIZE,
            json!({"processId": "tty", "cols": 100, "rows": 30}),
        )
        .await;
    let write = json!({"processId": "piped", "chunk": "eA==", "writeId": "w"});
    let result = client.ok(method::PROCESS_WRITE, write).await;
    assert_eq!(result, json!({"status": "stdinClosed"}));
}

#[tokio::test]
async fn stdin_write_and_close_with_cat() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    client
        .start("cat", &["cat"], json!({"pipeStdin": true}))
        .await;
    let write = |data: &[u8], id: &str| json!({"processId": "cat", "chunk": BASE64.encode(data), "writeId": id});
    let result = client
        .ok(method::PROCESS_WRITE, write(b"hello\n", "w1"))
        .await;
    assert_eq!(result, json!({"status": "accepted"}));
    client
        .ok(method::PROCESS_WRITE, write(b"again\n", "w2"))
        .await;
    let err = client
        .err(
            method::PROCESS_WRITE,
            json!({"processId": "cat", "chunk": "not base64!", "writeId": "w3"}),
        )
        .await;
    assert_eq!(err.code, code::INVALID_PARAMS);

    let result = client
        .ok(method::PROCESS_CLOSE_STDIN, json!({"processId": "cat"}))
        .await;
    assert_eq!(result, json!({}));
    let notes = client.until_closed("cat").await;
    assert_eq!(output_of(&notes)["stdout"], b"hello\nagain\n");
    assert_eq!(exit_code_of(&notes), 0);

    let result = client.ok(method::PROCESS_WRITE, write(b"late", "w4")).await;
    assert_eq!(result, json!({"status": "stdinClosed"}));
    let result = client
        .ok(
            method::PROCESS_WRITE,
            json!({"processId": "ghost", "chunk": "", "writeId": "w5"}),
        )
        .await;
    assert_eq!(result, json!({"status": "unknownProcess"}));

    // Without pipeStdin, stdin is /dev/null and writes are refused.
    client.start("nostdin", &["sleep", "300"], json!({})).await;
    let result = client
        .ok(
            method::PROCESS_WRITE,
            json!({"processId": "nostdin", "chunk": "eA==", "writeId": "w6"}),
        )
        .await;
    assert_eq!(result, json!({"status": "stdinClosed"}));
    client
        .ok(method::PROCESS_TERMINATE, json!({"processId": "nostdin"}))
        .await;
}

#[tokio::test]
async fn tty_processes_merge_output_into_the_pty_stream_and_resize() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    client
        .start(
            "tty",
            &[
                "sh",
                "-c",
                "test -t 0 && test -t 1 && echo is-a-tty; echo err >&2; stty size",
            ],
            json!({"tty": true, "cols": 100, "rows": 30}),
        )
        .await;
    let notes = client.until_closed("tty").await;
    let out = output_of(&notes);
    assert_eq!(out.keys().collect::<Vec<_>>(), vec!["pty"]);
    assert_eq!(
        String::from_utf8_lossy(&out["pty"]),
        "is-a-tty\r\nerr\r\n30 100\r\n"
    );
    assert_eq!(exit_code_of(&notes), 0);

    client
        .start("cat-tty", &["cat"], json!({"tty": true}))
        .await;
    let result = client
        .ok(
            method::PROCESS_RESIZE,
            json!({"processId": "cat-tty", "cols": 120, "rows": 40}),
        )
        .await;
    assert_eq!(result, json!({}));
    client
        .ok(
            method::PROCESS_WRITE,
            json!({"processId": "cat-tty", "chunk": BASE64.encode("typed\n"), "writeId": "1"}),
        )
        .await;
    client
        .ok(method::PROCESS_CLOSE_STDIN, json!({"processId": "cat-tty"}))
        .await;
    let notes = client.until_closed("cat-tty").await;
    // The terminal echoes the input, then cat prints it back.
    let text = String::from_utf8_lossy(&output_of(&notes)["pty"]).into_owned();
    assert_eq!(text.matches("typed\r\n").count(), 2, "{text:?}");
    assert_eq!(exit_code_of(&notes), 0);

    let err = client
        .err(
            method::PROCESS_RESIZE,
            json!({"processId": "cat-tty", "cols": 0, "rows": 1}),
        )
        .await;
    assert_eq!(err.code, code::INVALID_PARAMS);
}

#[tokio::test]
async fn spilled_output_is_read_back_whole_through_read() {
    let (state, _dir) = state_with(|c| c.retained_bytes = 14);
    let mut client = Client::new(&state);
    client.init(None).await;
    client
        .start(
            "spilled",
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4; do echo line$i; sleep 0.05; done",
            ],
            json!({}),
        )
        .await;
    client.until_closed("spilled").await;
    let read = client
        .ok(method::PROCESS_READ, json!({"processId": "spilled"}))
        .await;
    let data: Vec<u8> = read["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| decode(&c["chunk"]))
        .collect();
    assert_eq!(data, b"line1\nline2\nline3\nline4\n");
    assert_eq!(read["lostBytes"], 0);
}

#[tokio::test]
async fn retention_and_lost_bytes_through_read() {
    let (state, _dir) = state_with(|c| {
        c.retained_bytes = 14;
        c.spill_bytes = 0;
    });
    let mut client = Client::new(&state);
    client.init(None).await;
    // Four separate writes, so (almost certainly) four chunks of 6 bytes.
    client
        .start(
            "many",
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4; do echo line$i; sleep 0.05; done",
            ],
            json!({}),
        )
        .await;
    let notes = client.until_closed("many").await;
    let total: usize = output_of(&notes)["stdout"].len();
    assert_eq!(total, 24);
    let read = client
        .ok(method::PROCESS_READ, json!({"processId": "many"}))
        .await;
    let chunks = read["chunks"].as_array().unwrap().clone();
    let kept: usize = chunks.iter().map(|c| decode(&c["chunk"]).len()).sum();
    assert!(kept <= 14 || chunks.len() == 1);
    assert!(kept < total, "something was evicted");
    assert_eq!(read["lostBytes"].as_u64().unwrap() as usize + kept, total);
    assert_eq!(read["closed"], true);

    let read = client
        .ok(
            method::PROCESS_READ,
            json!({"processId": "many", "maxBytes": 1}),
        )
        .await;
    assert_eq!(read["chunks"].as_array().unwrap().len(), 1);
    if chunks.len() > 1 {
        assert_eq!(read["closed"], false, "not caught up yet");
        let next = read["nextSeq"].as_u64().unwrap();
        let rest = client
            .ok(
                method::PROCESS_READ,
                json!({"processId": "many", "afterSeq": next - 1}),
            )
            .await;
        assert_eq!(rest["lostBytes"], 0);
        assert_eq!(rest["closed"], true);
    }
}

#[tokio::test]
async fn sessions_survive_a_disconnect_and_are_resumed() {
    let (state, _dir) = state();
    let mut first = Client::new(&state);
    let session_id = first.init(None).await;
    first
        .start("cat", &["cat"], json!({"pipeStdin": true}))
        .await;
    first.conn.close();

    let mut second = Client::new(&state);
    assert_eq!(second.init(Some(&session_id)).await, session_id);
    second
        .ok(
            method::PROCESS_WRITE,
            json!({"processId": "cat", "chunk": BASE64.encode("x\n"), "writeId": "1"}),
        )
        .await;
    second
        .ok(method::PROCESS_CLOSE_STDIN, json!({"processId": "cat"}))
        .await;
    let notes = second.until_closed("cat").await;
    assert_eq!(output_of(&notes)["stdout"], b"x\n");

    // A session this executor does not have yields a new one.
    let mut third = Client::new(&state);
    let other = third.init(Some("0123456789abcdef")).await;
    assert_ne!(other, session_id);
    assert_ne!(other, "0123456789abcdef");
    let err = third
        .err(method::PROCESS_READ, json!({"processId": "cat"}))
        .await;
    assert_eq!(
        err.code,
        code::INVALID_REQUEST,
        "processes belong to their session"
    );
}

#[tokio::test]
async fn an_expired_session_kills_its_processes() {
    let (state, _dir) = state_with(|c| c.session_ttl = Duration::from_millis(1));
    let mut client = Client::new(&state);
    let session_id = client.init(None).await;
    client.start("sleeper", &["sleep", "300"], json!({})).await;
    let pgid = state
        .sessions
        .get(&session_id)
        .unwrap()
        .processes
        .pgid_of("sleeper")
        .unwrap();
    eventually("the sleeper runs", || !live_group_members(pgid).is_empty()).await;

    state.sweep();
    assert!(
        state.sessions.contains(&session_id),
        "attached sessions never expire"
    );
    client.conn.close();
    tokio::time::sleep(Duration::from_millis(5)).await;
    state.sweep();
    assert!(!state.sessions.contains(&session_id));
    eventually("the sleeper is killed", || {
        live_group_members(pgid).is_empty()
    })
    .await;
}

#[tokio::test]
async fn finished_processes_are_forgotten_after_the_retention() {
    let (state, _dir) = state_with(|c| c.exited_retention = Duration::from_millis(1));
    let mut client = Client::new(&state);
    let session_id = client.init(None).await;
    client.start("quick", &["true"], json!({})).await;
    client.until_closed("quick").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    state.sweep();
    let session = state.sessions.get(&session_id).unwrap();
    assert!(!session.processes.contains("quick"));
    // The id is free again.
    client.start("quick", &["true"], json!({})).await;
}

#[tokio::test]
async fn shutdown_kills_every_child() {
    let (state, _dir) = state();
    let mut client = Client::new(&state);
    let session_id = client.init(None).await;
    client
        .start("a", &["sh", "-c", "sleep 300 & sleep 300"], json!({}))
        .await;
    let pgid = state
        .sessions
        .get(&session_id)
        .unwrap()
        .processes
        .pgid_of("a")
        .unwrap();
    eventually("the group runs", || live_group_members(pgid).len() >= 2).await;
    drop(crate::state::ShutdownGuard(state.clone()));
    eventually("the group is gone", || live_group_members(pgid).is_empty()).await;
}

#[tokio::test]
async fn fs_round_trip_through_rpc() {
    let (state, dir) = state();
    let mut client = Client::new(&state);
    client.init(None).await;
    let data = BASE64.encode(b"round trip");
    client
        .ok(
            method::FS_WRITE_FILE,
            json!({"path": "a/b.txt", "dataBase64": data, "createParents": true}),
        )
        .await;
    let uri = execgate_protocol::uri::path_to_uri(&dir.path().join("a/b.txt")).unwrap();
    let read = client.ok(method::FS_READ_FILE, json!({"path": uri})).await;
    assert_eq!(read["dataBase64"], data);
    let meta = client
        .ok(method::FS_GET_METADATA, json!({"path": "a/b.txt"}))
        .await;
    assert_eq!(meta["size"], 10);
    client
        .ok(
            method::FS_COPY,
            json!({"sourcePath": "a", "destinationPath": "c", "recursive": true}),
        )
        .await;
    let list = client
        .ok(method::FS_READ_DIRECTORY, json!({"path": "c"}))
        .await;
    assert_eq!(list["entries"][0]["fileName"], "b.txt");
    client.ok(method::FS_REMOVE, json!({"path": "a"})).await;
    let err = client
        .err(method::FS_READ_FILE, json!({"path": "a/b.txt"}))
        .await;
    assert_eq!(err.code, code::NOT_FOUND);
    let err = client.err(method::FS_READ_FILE, json!({"path": 5})).await;
    assert_eq!(err.code, code::INVALID_PARAMS);
}

/// The frame loop over an in-memory WebSocket: requests, notifications,
/// pings, and a session that detaches when the socket closes.
#[tokio::test]
async fn frame_loop_over_an_in_memory_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message as Frame;
    use tokio_tungstenite::WebSocketStream;

    let (state, _dir) = state();
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
    let mut gateway = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
    let serving = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            crate::connection::serve(server, state, &mut tasks, Duration::from_secs(30)).await
        })
    };

    async fn next_json(gateway: &mut WebSocketStream<tokio::io::DuplexStream>) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, gateway.next()).await.ok()?? {
                Ok(Frame::Text(text)) => return serde_json::from_str(&text).ok(),
                Ok(Frame::Pong(payload)) => {
                    return Some(json!({"pong": String::from_utf8_lossy(&payload)}))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    gateway
        .send(Frame::text(
            r#"{"id":1,"method":"initialize","params":{"clientName":"gw"}}"#,
        ))
        .await
        .unwrap();
    let init = next_json(&mut gateway).await.unwrap();
    assert_eq!(init["id"], 1);
    let session_id = init["result"]["sessionId"].as_str().unwrap().to_owned();
    // Binary frames carry JSON too.
    gateway
        .send(Frame::binary(br#"{"method":"initialized"}"#.to_vec()))
        .await
        .unwrap();
    gateway
        .send(Frame::Ping("are-you-there".into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut gateway).await.unwrap(),
        json!({"pong": "are-you-there"})
    );

    gateway
        .send(Frame::text(
            json!({"id": "s", "method": "process/start", "params":
                {"processId": "p", "argv": ["echo", "framed"], "cwd": "", "env": path_env()}})
            .to_string(),
        ))
        .await
        .unwrap();
    // The start response comes before any notification of the process.
    let first = next_json(&mut gateway).await.unwrap();
    assert_eq!(first["id"], "s", "{first}");
    let mut methods = Vec::new();
    while !methods.contains(&"process/closed".to_owned()) {
        let note = next_json(&mut gateway).await.unwrap();
        methods.push(note["method"].as_str().unwrap().to_owned());
    }
    assert!(methods.contains(&"process/output".to_owned()));

    gateway.send(Frame::text("{not json")).await.unwrap();
    gateway
        .send(Frame::text(r#"{"id":9,"method":7}"#))
        .await
        .unwrap();
    let bad = next_json(&mut gateway).await.unwrap();
    assert_eq!(bad["id"], 9);
    assert_eq!(bad["error"]["code"], code::INVALID_REQUEST);

    gateway.close(None).await.unwrap();
    let ended = tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    assert!(
        matches!(ended, crate::connection::Ended::ClosedByGateway),
        "{ended}"
    );
    // The session is detached but kept.
    assert!(state.sessions.contains(&session_id));
}

/// `execgate/move`: the loop waits for the requests in flight (not the
/// long-polls), flushes their answers, sends a Close frame and ends Moved.
#[tokio::test]
async fn a_move_waits_for_requests_in_flight_then_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message as Frame;
    use tokio_tungstenite::WebSocketStream;

    let (state, _dir) = state();
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
    let mut gateway = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
    let serving = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            crate::connection::serve(server, state, &mut tasks, Duration::from_secs(30)).await
        })
    };
    let send = |v: Value| Frame::text(v.to_string());
    gateway
        .send(send(
            json!({"id": 1, "method": "initialize", "params": {"clientName": "gw"}}),
        ))
        .await
        .unwrap();
    gateway
        .send(send(json!({"method": "initialized"})))
        .await
        .unwrap();
    gateway
        .send(send(json!({"id": 2, "method": "process/start", "params":
            {"processId": "p", "argv": ["sleep", "30"], "cwd": "", "env": path_env()}})))
        .await
        .unwrap();
    // A child that reads its stdin only after a while, and a write to it
    // larger than a pipe holds: in flight until the child reads (waited
    // for). And a long-poll (not waited for).
    gateway
        .send(send(json!({"id": 3, "method": "process/start", "params":
            {"processId": "r", "argv": ["sh", "-c", "sleep 1; cat >/dev/null"], "cwd": "",
             "env": path_env(), "pipeStdin": true}})))
        .await
        .unwrap();
    gateway
        .send(send(
            json!({"id": "poll", "method": "process/read", "params":
            {"processId": "p", "afterSeq": 0, "waitMs": 20000}}),
        ))
        .await
        .unwrap();
    let big = BASE64.encode(vec![b'x'; 1 << 20]);
    gateway
        .send(send(
            json!({"id": "slow", "method": "process/write", "params":
            {"processId": "r", "chunk": big, "writeId": "w1"}}),
        ))
        .await
        .unwrap();
    gateway
        .send(send(
            json!({"method": "execgate/move", "params": {"reason": "test"}}),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!serving.is_finished(), "the write is in flight");
    let mut ids = Vec::new();
    let closed = loop {
        match tokio::time::timeout(WAIT, gateway.next()).await.unwrap() {
            Some(Ok(Frame::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                if let Some(id) = v.get("id") {
                    ids.push(id.clone());
                }
            }
            Some(Ok(Frame::Close(_))) => break true,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break false,
        }
    };
    assert!(closed, "a Close frame ends the link");
    // Reading on sends our Close: the executor waits for it.
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, gateway.next()).await.unwrap() {}
    assert!(ids.contains(&json!("slow")), "{ids:?}");
    assert!(!ids.contains(&json!("poll")), "{ids:?}");
    let ended = tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    match ended {
        crate::connection::Ended::Moved(p) => assert_eq!(p.reason.as_deref(), Some("test")),
        other => panic!("{other}"),
    }
}

/// A move ends with the closing handshake, not a reset: a frame the
/// gateway sends after the executor's Close (here a ping, as a gateway's
/// liveness sends them) is read and dropped until the gateway's Close.
/// Dropping the socket with bytes unread, or closing it before they came,
/// reset the connection, and the gateway lost the last answers it had not
/// read yet (CI of stop 28). The gateway here is a raw socket, so that the
/// test sees the reset that a WebSocket library would turn into an error
/// or hide.
#[tokio::test]
async fn a_move_ends_with_the_closing_handshake_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    /// A masked client frame (mask 0: the payload as it is).
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(payload);
        f
    }
    /// The opcodes of the whole (unmasked, server) frames in `buf`.
    fn opcodes(buf: &[u8]) -> Vec<u8> {
        let (mut ops, mut at) = (Vec::new(), 0);
        while buf.len() >= at + 2 {
            let (mut head, mut len) = (2, (buf[at + 1] & 0x7f) as usize);
            if len == 126 && buf.len() >= at + 4 {
                len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
                head = 4;
            } else if len >= 126 {
                break;
            }
            if buf.len() < at + head + len {
                break;
            }
            ops.push(buf[at] & 0x0f);
            at += head + len;
        }
        ops
    }

    let (state, _dir) = state();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dialled = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
    let (dialled, accepted) = tokio::join!(dialled, listener.accept());
    let server = WebSocketStream::from_raw_socket(dialled.unwrap(), Role::Server, None).await;
    let mut gateway = accepted.unwrap().0;
    let serving = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            crate::connection::serve(server, state, &mut tasks, Duration::from_secs(30)).await
        })
    };
    let text = |v: Value| frame(0x1, v.to_string().as_bytes());
    let mut hello = text(json!({"id": 1, "method": "initialize", "params": {"clientName": "gw"}}));
    hello.extend(text(json!({"method": "initialized"})));
    hello.extend(text(
        json!({"method": "execgate/move", "params": {"reason": "test"}}),
    ));
    gateway.write_all(&hello).await.unwrap();
    // Read up to the executor's Close.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !opcodes(&got).contains(&0x8) {
        let n = tokio::time::timeout(WAIT, gateway.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the executor closed before its Close frame");
        got.extend_from_slice(&buf[..n]);
    }
    // A ping that crossed the Close, then ours.
    gateway.write_all(&frame(0x9, b"")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let closed = gateway.write_all(&frame(0x8, b"")).await;
    let mut end = Vec::new();
    let read = tokio::time::timeout(WAIT, gateway.read_to_end(&mut end))
        .await
        .unwrap();
    assert!(
        closed.is_ok() && read.is_ok(),
        "the connection ends without a reset: our Close {closed:?}, the end {read:?}"
    );
    let ended = tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    assert!(
        matches!(ended, crate::connection::Ended::Moved(_)),
        "{ended}"
    );
}

#[tokio::test]
async fn the_frame_loop_drops_a_silent_connection() {
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    let (state, _dir) = state();
    let (ours, _theirs) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
    let mut tasks = tokio::task::JoinSet::new();
    let ended = tokio::time::timeout(
        WAIT,
        crate::connection::serve(server, state, &mut tasks, Duration::from_millis(100)),
    )
    .await
    .unwrap();
    assert!(
        matches!(ended, crate::connection::Ended::Idle(_)),
        "{ended}"
    );
}

/// A fake gateway: answers the register POST with `register_answer` and, if
/// it hands out a WebSocket URL, accepts one WebSocket connection on it.
mod fake_gateway {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one HTTP request with the given status and body; returns the
    /// request's head and body as text.
    pub async fn answer_once(listener: &TcpListener, status: &str, body: &str) -> String {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if request.len() >= head_end + 4 + length || n == 0 {
                    break;
                }
            }
        }
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.shutdown().await.ok();
        String::from_utf8_lossy(&request).into_owned()
    }
}

#[tokio::test]
async fn run_gives_up_when_the_gateway_refuses_the_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = tokio::spawn(async move {
        fake_gateway::answer_once(
            &listener,
            "401 Unauthorized",
            r#"{"error":{"code":"invalid_token","message":"unknown executor token"}}"#,
        )
        .await
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = ExecutorConfig::new(format!("http://{addr}"), "exe_abc.s3cret");
    config.workdir = dir.path().to_path_buf();
    config.name = Some("laptop".into());
    config.is_default = true;
    let result = tokio::time::timeout(WAIT, crate::run(config))
        .await
        .unwrap();
    match result {
        Err(crate::ExecutorError::Rejected { status, message }) => {
            assert_eq!(status, 401);
            assert!(message.contains("unknown executor token"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let request = gateway.await.unwrap();
    assert!(
        request.starts_with("POST /cloud/environment/exe_abc/direct/register HTTP/1.1"),
        "{request}"
    );
    assert!(request
        .to_ascii_lowercase()
        .contains("authorization: bearer exe_abc.s3cret"));
    let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body,
        json!({"transport": "direct_jsonrpc_v1", "name": "laptop", "is_default": true})
    );
}

#[tokio::test]
#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn run_registers_dials_and_serves() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let ws_addr = ws.local_addr().unwrap();
    tokio::spawn(async move {
        let body = json!({"environment_id": "exe_1", "url": format!("http://{ws_addr}/link"),
                          "transport": "direct_jsonrpc_v1", "registration_id": "r1"});
        fake_gateway::answer_once(&http, "200 OK", &body.to_string()).await;
    });

    let dir = tempfile::tempdir().unwrap();
    let mut config = ExecutorConfig::new(format!("ws://{http_addr}"), "exe_1.key");
    config.workdir = dir.path().to_path_buf();
    let executor = tokio::spawn(crate::run(config));

    let (socket, _) = tokio::time::timeout(WAIT, ws.accept())
        .await
        .unwrap()
        .unwrap();
    socket.set_nodelay(true).unwrap();
    let mut auth = None;
    let mut link = tokio_tungstenite::accept_hdr_async(socket, |req: &Request, resp: Response| {
        auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok(resp)
    })
    .await
    .unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer exe_1.key"));

    link.send(Frame::text(
        r#"{"id":1,"method":"initialize","params":{"clientName":"gw"}}"#,
    ))
    .await
    .unwrap();
    let reply = loop {
        if let Frame::Text(text) = link.next().await.unwrap().unwrap() {
            break serde_json::from_str::<Value>(&text).unwrap();
        }
    };
    assert_eq!(reply["id"], 1);
    let cwd = reply["result"]["environmentInfo"]["cwd"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        cwd,
        execgate_protocol::uri::path_to_uri(&std::path::absolute(dir.path()).unwrap()).unwrap()
    );

    // Dropping `run` stops the executor.
    executor.abort();
    assert!(executor.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn initialize_announces_the_policy_and_requests_obey_it() {
    let (state, dir) = state_with(|c| {
        c.policy.root = Some(c.workdir.clone());
        c.policy.max_processes = Some(1);
    });
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let mut client = Client::new(&state);
    let info = client
        .ok(method::INITIALIZE, json!({"clientName": "test"}))
        .await;
    client.notify(method::INITIALIZED).await;
    assert_eq!(
        info["environmentInfo"]["execgate"]["policy"],
        json!({"root": root.display().to_string(), "readOnly": false, "maxProcesses": 1})
    );

    // A cwd outside the root is refused before anything starts.
    let err = client
        .err(
            method::PROCESS_START,
            json!({"processId": "out", "argv": ["true"], "cwd": "..", "env": path_env()}),
        )
        .await;
    assert_eq!(err.code, code::POLICY_DENIED, "{err}");
    assert!(err.message.contains(&root.display().to_string()), "{err}");

    // One process at a time; the place frees when it exits.
    client
        .start("a", &["cat"], json!({"pipeStdin": true}))
        .await;
    let err = client
        .err(
            method::PROCESS_START,
            json!({"processId": "b", "argv": ["true"], "cwd": "", "env": path_env()}),
        )
        .await;
    assert_eq!(err.code, code::TOO_MANY_PROCESSES, "{err}");
    assert!(err.message.contains("at most 1"), "{err}");
    client
        .ok(method::PROCESS_CLOSE_STDIN, json!({"processId": "a"}))
        .await;
    client.until_closed("a").await;
    client.start("b", &["true"], json!({})).await;
    client.until_closed("b").await;
}

#[tokio::test]
async fn read_only_serves_reads_and_refuses_the_rest() {
    let (state, dir) = state_with(|c| c.policy.read_only = true);
    std::fs::write(dir.path().join("f"), "data").unwrap();
    let mut client = Client::new(&state);
    client.init(None).await;
    let read = client.ok(method::FS_READ_FILE, json!({"path": "f"})).await;
    assert_eq!(decode(&read["dataBase64"]), b"data");
    for (m, params) in [
        (
            method::FS_WRITE_FILE,
            json!({"path": "f", "dataBase64": BASE64.encode("x")}),
        ),
        (method::FS_REMOVE, json!({"path": "f"})),
        (
            method::PROCESS_START,
            json!({"processId": "p", "argv": ["touch", "g"], "cwd": "", "env": path_env()}),
        ),
    ] {
        let err = client.err(m, params).await;
        assert_eq!(err.code, code::POLICY_DENIED, "{m}: {err}");
        assert!(err.message.contains("--read-only"), "{m}: {err}");
    }
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
    assert!(!dir.path().join("g").exists());
}

/// The `--root` race (issue 16): a local process that can write inside the
/// root swaps a directory of the root (`d`) with a symlink to a directory
/// outside it (`l`, to `outside/`) in a loop, with `renameat2(RENAME_EXCHANGE)`,
/// while the gateway's requests go through `d`. Every file method, the
/// staged-file methods a copy uses and a process's cwd must stay inside:
/// each escape is counted, and there must be none.
mod root_race {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// How long each operation runs against the swapper: enough for
    /// thousands of file calls here, cheap in CI.
    const BUDGET: Duration = Duration::from_millis(1500);
    /// At most this many calls per operation (processes are slower).
    const MAX_CALLS: usize = 5000;

    struct Race {
        _dir: tempfile::TempDir,
        state: Arc<ExecutorState>,
        root: PathBuf,
        outside: PathBuf,
        stop: Arc<AtomicBool>,
        swapper: Option<std::thread::JoinHandle<u64>>,
    }

    /// `root/d` (a directory) and `root/l` (a link to `outside/`), both
    /// holding `f` with different contents; `root/t` a file and `root/tl` a
    /// link to `outside/victim`, for swapping a last component.
    fn race() -> Race {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("d/f"), "inside").unwrap();
        std::fs::write(outside.join("f"), "OUTSIDE!").unwrap();
        std::fs::write(root.join("inside"), "inside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
        std::fs::write(root.join("t"), "inside").unwrap();
        std::fs::write(outside.join("victim"), "victim").unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), root.join("tl")).unwrap();
        let mut config = ExecutorConfig::new("http://127.0.0.1:1", "exe_test.secret");
        config.workdir = root.clone();
        config.spill_dir = Some(base.join(".spill"));
        config.policy.root = Some(root.clone());
        let state = Arc::new(ExecutorState::new(&config).unwrap());
        Race {
            _dir: dir,
            state,
            root,
            outside,
            stop: Arc::new(AtomicBool::new(false)),
            swapper: None,
        }
    }

    fn cstr(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    impl Race {
        /// Starts swapping `a` and `b` (names in the root) until `stop`.
        fn swap(&mut self, a: &str, b: &str) {
            let (a, b) = (cstr(&self.root.join(a)), cstr(&self.root.join(b)));
            let stop = self.stop.clone();
            stop.store(false, Ordering::SeqCst);
            self.swapper = Some(std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: two valid C strings; a plain syscall.
                    let r = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            a.as_ptr(),
                            libc::AT_FDCWD,
                            b.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
                    swaps += 1;
                }
                swaps
            }));
        }

        /// Stops the swapper; returns how many swaps it made.
        fn stop(&mut self) -> u64 {
            self.stop.store(true, Ordering::SeqCst);
            self.swapper.take().map_or(0, |h| h.join().unwrap())
        }

        /// Where the real directory is now (`d` or `l`, whichever the
        /// swapper left it at).
        fn real_dir(&self) -> PathBuf {
            for name in ["d", "l"] {
                let p = self.root.join(name);
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    return p;
                }
            }
            unreachable!()
        }

        fn outside_names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.outside)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    /// Runs `op` (given the call's number) against the swapper until the
    /// budget is spent. `op` tells whether the call was served, and whether
    /// it escaped. Returns (calls, escapes). Some calls must be served: a
    /// test where every call fails would prove nothing.
    async fn hammer<F>(race: &mut Race, what: &str, max: usize, mut op: F) -> (usize, usize)
    where
        F: AsyncFnMut(&mut Client, usize) -> (bool, bool),
    {
        let mut client = Client::new(&race.state);
        client.init(None).await;
        race.swap("d", "l");
        let started = Instant::now();
        let (mut calls, mut served, mut escapes) = (0, 0, 0);
        // Past the budget while nothing was served yet: on a loaded machine
        // the swapper may sit a long time with `d` swapped out.
        while (calls < max && started.elapsed() < BUDGET)
            || (served == 0 && started.elapsed() < WAIT)
        {
            let (ok, escaped) = op(&mut client, calls).await;
            served += usize::from(ok);
            escapes += usize::from(escaped);
            calls += 1;
        }
        let swaps = race.stop();
        eprintln!("{what}: {escapes} escapes in {calls} calls, {served} served ({swaps} swaps)");
        assert!(served > 0, "{what}: no call was served");
        (calls, escapes)
    }

    fn b64(data: &[u8]) -> String {
        BASE64.encode(data)
    }

    /// A read (whole or a range) never returns the file outside.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_stay_inside() {
        let mut r = race();
        let (_, whole) = hammer(&mut r, "readFile", MAX_CALLS, async |c, _| {
            let read = c.call(method::FS_READ_FILE, json!({"path": "d/f"})).await;
            let escaped = read
                .as_ref()
                .is_ok_and(|v| decode(&v["dataBase64"]) == b"OUTSIDE!");
            (read.is_ok(), escaped)
        })
        .await;
        let (_, range) = hammer(&mut r, "readRange", MAX_CALLS, async |c, _| {
            let params = json!({"path": "d/f", "offset": 0, "length": 0});
            let read = c.call(method::FS_READ_RANGE, params).await;
            let escaped = read
                .as_ref()
                .is_ok_and(|v| decode(&v["dataBase64"]) == b"OUTSIDE!" || v["size"] == 8);
            (read.is_ok(), escaped)
        })
        .await;
        let (_, meta) = hammer(&mut r, "getMetadata", MAX_CALLS, async |c, _| {
            let meta = c
                .call(method::FS_GET_METADATA, json!({"path": "d/f"}))
                .await;
            (meta.is_ok(), meta.as_ref().is_ok_and(|v| v["size"] == 8))
        })
        .await;
        let (_, list) = hammer(&mut r, "readDirectory", MAX_CALLS, async |c, _| {
            let list = c
                .call(method::FS_READ_DIRECTORY, json!({"path": "d"}))
                .await;
            let escaped = list
                .as_ref()
                .is_ok_and(|v| v.to_string().contains("victim"));
            (list.is_ok(), escaped)
        })
        .await;
        assert_eq!((whole, range, meta, list), (0, 0, 0, 0));
    }

    /// Writes, temporaries, new directories, links and staged files are
    /// never created outside, and nothing outside is overwritten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_and_creates_stay_inside() {
        let mut r = race();
        let data = b64(b"pwned");
        let outside = r.outside.clone();
        let out = |name: String| outside.join(name).exists();
        let (_, write) = hammer(&mut r, "writeFile", MAX_CALLS, async |c, i| {
            let params = json!({"path": format!("d/w{i}"), "dataBase64": data});
            let ok = c.call(method::FS_WRITE_FILE, params).await.is_ok();
            (ok, out(format!("w{i}")))
        })
        .await;
        let (_, mkdir) = hammer(&mut r, "createDirectory", MAX_CALLS, async |c, i| {
            let params = json!({"path": format!("d/m{i}/deeper")});
            let ok = c.call(method::FS_CREATE_DIRECTORY, params).await.is_ok();
            (ok, out(format!("m{i}")))
        })
        .await;
        let (_, link) = hammer(&mut r, "symlink", MAX_CALLS, async |c, i| {
            let params = json!({"path": format!("d/s{i}"), "target": "x"});
            let ok = c.call(method::FS_SYMLINK, params).await.is_ok();
            (
                ok,
                std::fs::symlink_metadata(outside.join(format!("s{i}"))).is_ok(),
            )
        })
        .await;
        // A copy_path's steps: staged part file, then commit.
        let (_, staged) = hammer(&mut r, "writeRange+commitFile", MAX_CALLS, async |c, i| {
            let part = format!("d/.p{i}.execgate-part");
            let params = json!({"path": part, "offset": 0, "dataBase64": data, "truncate": true});
            let mut ok = false;
            if c.call(method::FS_WRITE_RANGE, params).await.is_ok() {
                let params = json!({"path": part, "destinationPath": format!("d/c{i}")});
                ok = c.call(method::FS_COMMIT_FILE, params).await.is_ok();
            }
            (
                ok,
                out(format!(".p{i}.execgate-part")) || out(format!("c{i}")),
            )
        })
        .await;
        let (_, copy) = hammer(&mut r, "copy", MAX_CALLS, async |c, i| {
            let params = json!({"sourcePath": "inside", "destinationPath": format!("d/k{i}"), "recursive": false});
            let ok = c.call(method::FS_COPY, params).await.is_ok();
            (ok, out(format!("k{i}")))
        })
        .await;
        std::fs::create_dir_all(r.root.join("tree/sub")).unwrap();
        std::fs::write(r.root.join("tree/sub/x"), "inside").unwrap();
        std::os::unix::fs::symlink("sub/x", r.root.join("tree/link")).unwrap();
        let (_, tree) = hammer(&mut r, "copy (a tree)", MAX_CALLS, async |c, i| {
            let params = json!({"sourcePath": "tree", "destinationPath": format!("d/tree{i}"), "recursive": true});
            let ok = c.call(method::FS_COPY, params).await.is_ok();
            (ok, out(format!("tree{i}")))
        })
        .await;
        let names = r.outside_names();
        eprintln!(
            "created outside: {} (of which temporaries: {})",
            names.len() - 2,
            names.iter().filter(|n| n.ends_with(".tmp")).count()
        );
        assert_eq!((write, mkdir, link, staged, copy, tree), (0, 0, 0, 0, 0, 0));
        assert_eq!(names, ["f", "victim"], "nothing was created outside");
        assert_eq!(std::fs::read(r.outside.join("f")).unwrap(), b"OUTSIDE!");
    }

    /// Swapping the last component (a file for a link to a file outside)
    /// during `write_file`: the file outside is never overwritten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_does_not_follow_a_last_component_swapped_for_a_link() {
        let mut r = race();
        let mut client = Client::new(&r.state);
        client.init(None).await;
        let victim = r.outside.join("victim");
        r.swap("t", "tl");
        let started = Instant::now();
        let (mut calls, mut escapes) = (0, 0);
        while calls < MAX_CALLS && started.elapsed() < BUDGET {
            let params = json!({"path": "t", "dataBase64": b64(b"pwned")});
            let _ = client.call(method::FS_WRITE_FILE, params).await;
            if std::fs::read(&victim).unwrap() != b"victim" {
                escapes += 1;
                std::fs::write(&victim, "victim").unwrap();
            }
            calls += 1;
        }
        let swaps = r.stop();
        eprintln!("writeFile (last component): {escapes} escapes in {calls} calls ({swaps} swaps)");
        assert_eq!(escapes, 0);
        assert!(std::fs::symlink_metadata(&victim).unwrap().is_file());
    }

    /// Renames, removes and copies neither take a file from outside nor
    /// put one there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renames_removes_and_copies_stay_inside() {
        let mut r = race();
        let n = 3000;
        for i in 0..n {
            std::fs::write(r.outside.join(format!("o{i}")), "OUTSIDE!").unwrap();
            std::fs::write(r.root.join(format!("d/o{i}")), "inside").unwrap();
            std::fs::write(r.root.join(format!("i{i}")), "inside").unwrap();
        }
        let outside = r.outside.clone();
        let gone = |i: usize| !outside.join(format!("o{i}")).exists();
        let (_, rename_in) = hammer(&mut r, "rename (from d)", n, async |c, i| {
            let params =
                json!({"sourcePath": format!("d/o{i}"), "destinationPath": format!("got{i}")});
            let ok = c.call(method::FS_RENAME, params).await.is_ok();
            (ok, gone(i))
        })
        .await;
        let (_, rename_out) = hammer(&mut r, "rename (into d)", n, async |c, i| {
            let params =
                json!({"sourcePath": format!("i{i}"), "destinationPath": format!("d/r{i}")});
            let ok = c.call(method::FS_RENAME, params).await.is_ok();
            (ok, outside.join(format!("r{i}")).exists())
        })
        .await;
        for i in 0..n {
            let real = r.real_dir();
            std::fs::write(real.join(format!("o{i}")), "inside").unwrap();
            std::fs::write(outside.join(format!("o{i}")), "OUTSIDE!").unwrap();
        }
        let (_, remove) = hammer(&mut r, "remove", n, async |c, i| {
            let params = json!({"path": format!("d/o{i}"), "force": false});
            let ok = c.call(method::FS_REMOVE, params).await.is_ok();
            (ok, gone(i))
        })
        .await;
        let trees = 1000;
        for i in 0..trees {
            let real = r.real_dir();
            std::fs::create_dir_all(real.join(format!("t{i}/sub"))).unwrap();
            std::fs::create_dir_all(outside.join(format!("t{i}/sub"))).unwrap();
        }
        let (_, remove_tree) = hammer(&mut r, "remove (a tree)", trees, async |c, i| {
            let params = json!({"path": format!("d/t{i}"), "force": false});
            let ok = c.call(method::FS_REMOVE, params).await.is_ok();
            (ok, !outside.join(format!("t{i}/sub")).exists())
        })
        .await;
        let root = r.root.clone();
        let (_, copy_from) = hammer(&mut r, "copy (from d)", MAX_CALLS, async |c, i| {
            let params = json!({"sourcePath": "d/f", "destinationPath": format!("k{i}"), "recursive": false});
            let ok = c.call(method::FS_COPY, params).await.is_ok();
            let copied = std::fs::read(root.join(format!("k{i}")));
            (ok, copied.is_ok_and(|d| d == b"OUTSIDE!"))
        })
        .await;
        let created: Vec<_> = r
            .outside_names()
            .into_iter()
            .filter(|n| !n.starts_with(['o', 't']) && n != "f" && n != "victim")
            .collect();
        eprintln!("created outside: {}", created.len());
        assert_eq!(
            (rename_in, rename_out, remove, remove_tree, copy_from),
            (0, 0, 0, 0, 0)
        );
        assert!(created.is_empty(), "created outside: {created:?}");
    }

    /// Under a root, a process starts in the directory opened for its cwd
    /// (the child changes into its /proc/self/fd link), with pipes and
    /// under a pty alike, and sees the directory's real path.
    #[tokio::test]
    async fn a_process_under_a_root_starts_in_its_cwd() {
        let r = race();
        let mut client = Client::new(&r.state);
        client.init(None).await;
        for (id, tty) in [("pipes", false), ("pty", true)] {
            let params = json!({"processId": id, "argv": ["sh", "-c", "pwd -P; cat f"],
                "cwd": "d", "env": path_env(), "tty": tty});
            client.ok(method::PROCESS_START, params).await;
            let out = output_of(&client.until_closed(id).await);
            let out = String::from_utf8_lossy(&out[if tty { "pty" } else { "stdout" }]);
            let out = out.replace('\r', "");
            assert_eq!(
                out,
                format!("{}\ninside", r.root.join("d").display()),
                "{id}"
            );
        }
    }

    /// A process started with its cwd in `d` runs inside the root.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_cwd_stays_inside() {
        let mut r = race();
        let (_, escapes) = hammer(&mut r, "process/start cwd", 400, async |c, i| {
            let id = format!("p{i}");
            let params =
                json!({"processId": id, "argv": ["cat", "f"], "cwd": "d", "env": path_env()});
            if c.call(method::PROCESS_START, params).await.is_err() {
                return (false, false);
            }
            let out = output_of(&c.until_closed(&id).await);
            (true, out.get("stdout").is_some_and(|o| o == b"OUTSIDE!"))
        })
        .await;
        assert_eq!(escapes, 0);
    }
}
