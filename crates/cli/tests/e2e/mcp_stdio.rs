//! `execgate mcp`: MCP over stdio relayed to the gateway's `/mcp`, driven
//! over its pipes with raw JSON-RPC lines, as an MCP client that launches a
//! command drives it. Its answers are compared with `/mcp`'s over HTTP.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// A running `execgate mcp` and its pipes.
struct McpStdio {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl McpStdio {
    /// `execgate mcp` with EXECGATE_URL and EXECGATE_TOKEN.
    fn start(url: &str, token: &str) -> McpStdio {
        let mut child = Command::new(bin())
            .arg("mcp")
            .env("EXECGATE_URL", url)
            .env("EXECGATE_TOKEN", token)
            .env_remove("EXECGATE_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        McpStdio {
            proc: Proc(child),
            stdin,
            lines,
        }
    }

    fn send(&mut self, message: Value) {
        let mut line = serde_json::to_vec(&message).unwrap();
        line.push(b'\n');
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(&line).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line of stdout, which must be one JSON-RPC message.
    fn next(&self, within: Duration) -> Value {
        let line = self
            .lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no message from execgate mcp within {within:?}: {e}"));
        let message: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert_eq!(message["jsonrpc"], "2.0", "{message}");
        message
    }

    /// Sends a request and returns the next message, which must answer it.
    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let answer = self.next(Duration::from_secs(60));
        assert_eq!(answer["id"], id, "{answer}");
        answer
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

/// One JSON-RPC request to `/mcp` over HTTP, as an MCP client sends it.
async fn over_http(url: &str, token: &str, id: u64, method: &str, params: Value) -> Value {
    let resp = fresh_client()
        .post(format!("{url}/mcp"))
        .bearer_auth(token)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn initialize_params() -> Value {
    json!({"protocolVersion": "2025-06-18", "capabilities": {},
           "clientInfo": {"name": "e2e", "version": "1"}})
}

/// A shell result without its timing, to compare two runs.
fn without_duration(mut answer: Value) -> Value {
    answer["result"]["structuredContent"]
        .as_object_mut()
        .expect("a shell result")
        .remove("duration_ms");
    answer
}

#[tokio::test]
async fn mcp_over_stdio_answers_what_mcp_over_http_answers() {
    let w = World::start(&[]).await;
    let (url, token) = (w.gateway.url(), w.api.token.clone());
    let mut mcp = McpStdio::start(&url, &token);

    let init = mcp.request(1, "initialize", initialize_params());
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "execgate", "{init}");
    // A notification has no answer: the next line answers the next request.
    mcp.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));

    let tools = mcp.request(2, "tools/list", json!({}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"shell") && names.contains(&"list_environments"),
        "{names:?}"
    );
    assert_eq!(
        tools,
        over_http(&url, &token, 2, "tools/list", json!({})).await
    );

    let call = json!({"name": "shell", "arguments": {"command": ["sh", "-c", "echo hi; exit 3"]}});
    let shell = mcp.request(3, "tools/call", call.clone());
    assert_eq!(
        shell["result"]["structuredContent"]["stdout"], "hi\n",
        "{shell}"
    );
    assert_eq!(shell["result"]["structuredContent"]["exit_code"], 3);
    assert_eq!(
        without_duration(shell),
        without_duration(over_http(&url, &token, 3, "tools/call", call).await)
    );

    // An error: the same JSON-RPC error as over HTTP.
    let bad = json!({"name": "shell", "arguments": {"command": "true", "timeout_ms": "soon"}});
    let error = mcp.request(4, "tools/call", bad.clone());
    assert_eq!(error["error"]["code"], -32602, "{error}");
    assert_eq!(error, over_http(&url, &token, 4, "tools/call", bad).await);

    // A line that is not JSON: the gateway's parse error, id null.
    mcp.stdin.as_mut().unwrap().write_all(b"{oops\n").unwrap();
    let parse = mcp.next(Duration::from_secs(30));
    assert_eq!(parse["error"]["code"], -32700, "{parse}");
    assert_eq!(parse["id"], Value::Null);

    // Large messages both ways: 3 MiB written, then read back.
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let write = mcp.request(
        5,
        "tools/call",
        json!({"name": "write_file", "arguments": {"path": "big.bin", "content_b64": b64e(&data)}}),
    );
    assert_eq!(write["result"]["isError"], false, "{write}");
    let read = mcp.request(
        6,
        "tools/call",
        json!({"name": "read_file", "arguments": {"path": "big.bin"}}),
    );
    assert_eq!(
        b64d(read["result"]["content"][0]["text"].as_str().unwrap()),
        data
    );

    // End of stdin: exit 0.
    mcp.close_stdin();
    let status = mcp
        .proc
        .exits_within(10, "execgate mcp to exit at EOF")
        .await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn mcp_over_stdio_runs_calls_concurrently_and_drops_cancelled_ones() {
    let w = World::start(&[]).await;
    let mut mcp = McpStdio::start(&w.gateway.url(), &w.api.token);
    mcp.request(1, "initialize", initialize_params());

    // A call that runs for two minutes does not hold up the next one.
    mcp.send(
        json!({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
                    "params": {"name": "shell", "arguments": {"command": "echo $$ > slow.pid; exec sleep 120"}}}),
    );
    let fast = mcp.request(
        2,
        "tools/call",
        json!({"name": "shell", "arguments": {"command": "echo fast"}}),
    );
    assert_eq!(
        fast["result"]["structuredContent"]["stdout"], "fast\n",
        "{fast}"
    );

    // Cancelled: never answered, and no longer waited for at EOF.
    mcp.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": "slow", "reason": "test"}}),
    );
    let ping = mcp.request(3, "ping", json!({}));
    assert!(ping["result"].is_object(), "{ping}");

    // A request still in flight at EOF is answered before the exit.
    mcp.send(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                    "params": {"name": "shell", "arguments": {"command": "sleep 1; echo late"}}}));
    mcp.close_stdin();
    let late = mcp.next(Duration::from_secs(30));
    assert_eq!(late["id"], 4, "{late}");
    assert_eq!(late["result"]["structuredContent"]["stdout"], "late\n");
    let status = mcp
        .proc
        .exits_within(
            10,
            "execgate mcp to exit at EOF, the cancelled call dropped",
        )
        .await;
    assert_eq!(status.code(), Some(0));
    assert!(
        mcp.lines.try_recv().is_err(),
        "the cancelled call was answered"
    );

    // Whether cancelling a call stops its process is the gateway's matter,
    // not the relay's: the sleep is killed here so that it outlives nothing.
    // (No pid file: the call was cancelled before its process started.)
    let pid = std::fs::read_to_string(w.workdir.join("slow.pid")).unwrap_or_default();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        if alive(pid as u32) {
            // SAFETY: kill(2) of the pid the test's own command wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[tokio::test]
async fn mcp_over_stdio_answers_errors_when_the_gateway_cannot() {
    // Nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut mcp = McpStdio::start(&format!("http://127.0.0.1:{port}"), "egp_whatever");
    let down = mcp.request(1, "initialize", initialize_params());
    assert_eq!(down["error"]["code"], -32000, "{down}");
    let message = down["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "cannot reach the gateway at http://127.0.0.1:{port}/mcp"
        )),
        "{message}"
    );
    // Still serving: the next request is answered too.
    let again = mcp.request(2, "tools/list", json!({}));
    assert_eq!(again["error"]["code"], -32000, "{again}");
    mcp.close_stdin();
    let status = mcp
        .proc
        .exits_within(10, "execgate mcp to exit at EOF")
        .await;
    assert_eq!(status.code(), Some(0));

    // A bad token: the gateway's 401, said clearly.
    let w = World::start(&[]).await;
    let mut mcp = McpStdio::start(&w.gateway.url(), "egp_wrong");
    let refused = mcp.request(1, "initialize", initialize_params());
    assert_eq!(refused["error"]["code"], -32001, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("HTTP 401 invalid_token") && message.contains("EXECGATE_TOKEN"),
        "{message}"
    );
    assert_eq!(refused["error"]["data"]["http_status"], 401);
    assert_eq!(refused["error"]["data"]["error"]["code"], "invalid_token");
}

/// The tasks extension through the relay (protocol 2026-07-28: `execgate
/// mcp` sets `Mcp-Name` from `taskId`): a `shell` task polled to its result.
#[tokio::test]
async fn mcp_over_stdio_relays_tasks() {
    let w = World::start(&[]).await;
    let mut stdio = McpStdio::start(&w.gateway.url(), &w.api.token);
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":
            {"extensions": {"io.modelcontextprotocol/tasks": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
    });
    let task = stdio.request(
        1,
        "tools/call",
        json!({"name": "shell", "arguments": {"command": "sleep 2; echo relayed"}, "_meta": meta}),
    );
    assert_eq!(task["result"]["resultType"], "task", "{task}");
    let id = task["result"]["taskId"].as_str().unwrap().to_string();
    let mut next_id = 2;
    let done = eventually(30, "the task to end", || {
        next_id += 1;
        let answer = stdio.request(next_id, "tasks/get", json!({"taskId": id, "_meta": meta}));
        async move { (answer["result"]["status"] != "working").then_some(answer) }
    })
    .await;
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["result"]["structuredContent"]["stdout"], "relayed\n",
        "{done}"
    );
    let ack = stdio.request(100, "tasks/cancel", json!({"taskId": id, "_meta": meta}));
    assert_eq!(ack["result"], json!({"resultType": "complete"}), "{ack}");
}
