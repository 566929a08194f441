//! The MCP server at `/mcp`, spoken as plain JSON-RPC over HTTP (what an
//! MCP client sends on the wire): initialize, tools/list with schemas,
//! tools/call into the same tools as the REST API, and the refusals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

pub(crate) struct Mcp {
    http: reqwest::Client,
    url: String,
    token: String,
    next_id: AtomicU64,
}

impl Mcp {
    pub(crate) fn new(base: &str, token: &str) -> Mcp {
        Mcp {
            http: fresh_client(),
            url: format!("{base}/mcp"),
            token: token.to_string(),
            next_id: AtomicU64::new(1),
        }
    }

    /// POSTs one JSON-RPC message with `Authorization: Bearer token` (none
    /// if `token` is None); returns the status and the JSON body (Null if empty).
    async fn post(&self, token: Option<&str>, message: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(&self.url)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .json(&message);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request reaches the gateway");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, body)
    }

    /// A request with the right token; asserts HTTP 200 and returns the
    /// JSON-RPC response (with `result` or `error`).
    pub(crate) async fn request(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (status, body) = self
            .post(
                Some(&self.token),
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            )
            .await;
        assert_eq!(status, 200, "{method}: {body}");
        assert_eq!(body["id"], id, "{body}");
        body
    }

    /// tools/call; the JSON-RPC response.
    async fn call_raw(&self, tool: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": arguments}))
            .await
    }

    /// tools/call that must succeed at the protocol level: its CallToolResult.
    pub(crate) async fn call(&self, tool: &str, arguments: Value) -> Value {
        let resp = self.call_raw(tool, arguments).await;
        assert!(resp.get("error").is_none(), "{tool}: {resp}");
        resp["result"].clone()
    }

    /// tools/call that must fail with JSON-RPC error `code`: its message.
    pub(crate) async fn call_error(&self, tool: &str, arguments: Value, code: i64) -> String {
        let resp = self.call_raw(tool, arguments.clone()).await;
        assert_eq!(resp["error"]["code"], code, "{tool} {arguments}: {resp}");
        resp["error"]["message"].as_str().unwrap().to_string()
    }
}

/// The executor has the shared custom tools (`tests/fixtures/custom-tools.toml`).
async fn world() -> (World, Mcp) {
    let files = tempfile::tempdir().unwrap();
    let tools = write_tools_file(files.path(), "");
    let w = World::start(&["--tools", tools.to_str().unwrap()]).await;
    // The executor has read the file once it is connected.
    drop(files);
    let mcp = Mcp::new(&w.gateway.url(), &w.api.token);
    (w, mcp)
}

const CORE_TOOLS: &[&str] = &[
    "list_environments",
    "shell",
    "read_file",
    "write_file",
    "apply_patch",
    "exec_command",
    "copy_path",
    "list_dir",
    "write_stdin",
    "read_output",
    "terminate",
];

#[tokio::test]
async fn mcp_initialize_list_tools_and_call_them_like_rest() {
    let (w, mcp) = world().await;

    let init = mcp
        .request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "e2e", "version": "1"}}),
        )
        .await;
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "execgate");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    let (status, _) = mcp
        .post(
            Some(&mcp.token),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    assert_eq!(status, 202);

    // tools/list: every core tool and the custom one, with schemas.
    let list = mcp.request("tools/list", json!({})).await;
    let tools = list["result"]["tools"].as_array().unwrap().clone();
    let tool = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tool {name} in {list}"))
            .clone()
    };
    for name in CORE_TOOLS {
        let t = tool(name);
        assert!(!t["description"].as_str().unwrap().is_empty(), "{t}");
        let schema = &t["inputSchema"];
        assert_eq!(schema["type"], "object", "{t}");
        assert_eq!(
            schema["properties"]["environment_id"]["type"], "string",
            "{t}"
        );
    }
    let shell = tool("shell");
    assert_eq!(shell["inputSchema"]["required"], json!(["command"]));
    assert!(shell["inputSchema"]["properties"]["timeout_ms"]["type"] == "integer");
    assert_eq!(
        tool("write_stdin")["inputSchema"]["required"],
        json!(["session_id"])
    );
    let echo = tool("echo_arg");
    assert_eq!(echo["inputSchema"]["required"], json!(["text"]));
    assert_eq!(echo["inputSchema"]["properties"]["text"]["type"], "string");
    assert_eq!(
        echo["inputSchema"]["properties"]["environment_id"]["enum"],
        json!(["laptop"])
    );

    // shell: the same CallToolResult as REST (but for the duration).
    let args = json!({"command": ["sh", "-c", "echo hi; echo oops >&2; exit 3"]});
    let mut via_mcp = mcp.call("shell", args.clone()).await;
    let mut via_rest = w.api.call("laptop", "shell", args).await;
    for r in [&mut via_mcp, &mut via_rest] {
        r["structuredContent"]["duration_ms"] = json!(0);
    }
    assert_eq!(via_mcp, via_rest);
    assert_eq!(via_mcp["structuredContent"]["stdout"], "hi\n");
    assert_eq!(via_mcp["structuredContent"]["exit_code"], 3);
    assert_eq!(via_mcp["isError"], false);
    // environment_id, given explicitly.
    let r = mcp
        .call(
            "shell",
            json!({"command": "pwd", "environment_id": "laptop"}),
        )
        .await;
    assert_eq!(
        r["structuredContent"]["stdout"].as_str().unwrap().trim(),
        w.workdir.canonicalize().unwrap().to_str().unwrap()
    );

    // Files and the custom tool.
    let r = mcp
        .call(
            "write_file",
            json!({"path": "m/hello.txt", "content_b64": b64e(b"hello mcp")}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    // A UTF-8 file comes back as text, in the text item and in `content`.
    let r = mcp.call("read_file", json!({"path": "m/hello.txt"})).await;
    assert_eq!(r["structuredContent"]["encoding"], "utf-8", "{r}");
    assert_eq!(r["structuredContent"]["content"], "hello mcp", "{r}");
    assert_eq!(r["content"][0]["text"], "hello mcp", "{r}");
    // Text in, with `content`; then bytes that are not UTF-8, as base64.
    let text = "# Títle\n\\ back\\slash €\n";
    let r = mcp
        .call("write_file", json!({"path": "m/t.md", "content": text}))
        .await;
    assert_eq!(r["structuredContent"]["bytes"], text.len(), "{r}");
    assert_eq!(
        std::fs::read(w.workdir.join("m/t.md")).unwrap(),
        text.as_bytes()
    );
    let r = mcp.call("read_file", json!({"path": "m/t.md"})).await;
    assert_eq!(r["structuredContent"]["content"], text, "{r}");
    let binary = b"\x89PNG\r\n\x1a\n\xff\x00";
    mcp.call(
        "write_file",
        json!({"path": "m/b.bin", "content_b64": b64e(binary)}),
    )
    .await;
    let r = mcp.call("read_file", json!({"path": "m/b.bin"})).await;
    assert_eq!(r["structuredContent"]["encoding"], "base64", "{r}");
    assert!(r["structuredContent"].get("content").is_none(), "{r}");
    assert_eq!(b64d(r["content"][0]["text"].as_str().unwrap()), binary);
    // Asked for text anyway: escaped losslessly, and marked so.
    let r = mcp
        .call("read_file", json!({"path": "m/b.bin", "encoding": "utf-8"}))
        .await;
    assert_eq!(r["structuredContent"]["encoding"], "utf-8-escaped", "{r}");
    assert_eq!(
        r["structuredContent"]["content"], "\\x89PNG\r\n\u{1a}\n\\xff\u{0}",
        "{r}"
    );
    let r = mcp
        .call("echo_arg", json!({"text": "$(touch pwned); hi"}))
        .await;
    assert_eq!(
        r["structuredContent"]["stdout"], "$(touch pwned); hi",
        "{r}"
    );
    assert!(!w.workdir.join("pwned").exists());

    let r = mcp.call("list_environments", json!({})).await;
    assert_eq!(r["structuredContent"]["envs"][0]["name"], "laptop", "{r}");
    assert_eq!(r["structuredContent"]["envs"][0]["is_default"], true);

    // A process: exec_command, write_stdin, read_output, EOF, exit.
    let r = mcp
        .call(
            "exec_command",
            json!({"command": ["sh", "-c", "cat; exit 7"]}),
        )
        .await;
    let sid = r["structuredContent"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = mcp
        .call(
            "write_stdin",
            json!({"session_id": sid, "chars": "hello\n"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["ok"], true, "{r}");
    let (out, _) = read_all(&mcp, &sid, |d| d.ends_with(b"hello\n")).await;
    assert_eq!(out, b"hello\n");
    mcp.call(
        "write_stdin",
        json!({"session_id": sid, "data_b64": b64e(b"bye\n"), "eof": true}),
    )
    .await;
    let (out, last) = read_all(&mcp, &sid, |_| false).await;
    assert_eq!(out, b"hello\nbye\n");
    assert_eq!(last["exit_code"], 7, "{last}");
    assert_eq!(last["session_alive"], false);

    // Bytes that are not UTF-8 go in as escaped text and come back so,
    // marked, losslessly; base64 on request.
    let r = mcp.call("exec_command", json!({"command": ["cat"]})).await;
    let sid = r["structuredContent"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = mcp
        .call(
            "write_stdin",
            json!({"session_id": sid, "chars": "a\\xff\\\\b\n", "encoding": "utf-8-escaped", "eof": true}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let (out, _) = read_all(&mcp, &sid, |_| false).await;
    assert_eq!(out, b"a\xff\\b\n");
    let r = mcp
        .call("read_output", json!({"session_id": sid, "after_seq": 0}))
        .await;
    let c = &r["structuredContent"]["chunks"][0];
    assert_eq!(
        (c["text"].as_str(), c["encoding"].as_str()),
        (Some("a\\xff\\\\b\n"), Some("utf-8-escaped")),
        "{r}"
    );
    let r = mcp
        .call(
            "read_output",
            json!({"session_id": sid, "after_seq": 0, "encoding": "base64"}),
        )
        .await;
    let c = &r["structuredContent"]["chunks"][0];
    assert_eq!(b64d(c["data_b64"].as_str().unwrap()), b"a\xff\\b\n", "{r}");
    let m = mcp
        .call_error(
            "write_stdin",
            json!({"session_id": sid, "chars": "\\q", "encoding": "utf-8-escaped"}),
            -32602,
        )
        .await;
    assert!(m.contains("arguments.chars"), "{m}");

    // terminate.
    let r = mcp
        .call("exec_command", json!({"command": ["sleep", "300"]}))
        .await;
    let sid = r["structuredContent"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = mcp.call("terminate", json!({"session_id": sid})).await;
    assert_eq!(r["structuredContent"]["ok"], true, "{r}");
    let (_, last) = read_all(&mcp, &sid, |_| false).await;
    assert_eq!(last["session_alive"], false, "{last}");
}

/// The bytes of a `utf-8-escaped` text: `\\` a backslash, `\xNN` a byte.
fn unescape(text: &str) -> Vec<u8> {
    let (mut out, b) = (Vec::new(), text.as_bytes());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'\\')) => (out.push(b'\\'), i += 2),
            (b'\\', Some(b'x')) => {
                let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                (out.push(u8::from_str_radix(hex, 16).unwrap()), i += 4)
            }
            (c, _) => (out.push(c), i += 1),
        };
    }
    out
}

/// read_output from the start until `done(all output)` or the end; returns
/// the output and the last answer.
async fn read_all(mcp: &Mcp, sid: &str, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut data = Vec::new();
    let mut after = 0u64;
    loop {
        let r = mcp
            .call(
                "read_output",
                json!({"session_id": sid, "after_seq": after, "wait_ms": 2000}),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
        let out = r["structuredContent"].clone();
        for c in out["chunks"].as_array().unwrap() {
            // Text by default: escaped when it was not UTF-8.
            let text = c["text"].as_str().unwrap();
            match c["encoding"].as_str().unwrap() {
                "utf-8" => data.extend(text.as_bytes()),
                "utf-8-escaped" => data.extend(unescape(text)),
                other => panic!("encoding {other}"),
            }
            after = c["seq"].as_u64().unwrap();
        }
        after = after.max(out["next_since"].as_u64().unwrap_or(0));
        if done(&data) || out["session_alive"] == false {
            return (data, out);
        }
        assert!(Instant::now() < deadline, "timed out; got {data:?}");
    }
}

#[tokio::test]
async fn mcp_refusals_name_the_problem() {
    let (mut w, mcp) = world().await;
    let rpc = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});

    // No token, a bad token: 401 with the error envelope, before MCP.
    let (status, body) = mcp.post(None, rpc.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "missing_bearer");
    let (status, body) = mcp.post(Some("egp_not_a_token"), rpc.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token");

    // Unknown tool: -32601.
    let m = mcp.call_error("no_such_tool", json!({}), -32601).await;
    assert!(m.contains("no_such_tool"), "{m}");
    // A known method with params that do not fit: -32602, not -32601.
    let r = mcp
        .request("tools/call", json!({"name": 5, "arguments": {}}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("name"),
        "{r}"
    );
    let r = mcp.request("initialize", json!({"capabilities": 5})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // A method nobody knows stays -32601.
    let r = mcp.request("no/such/method", json!({})).await;
    assert_eq!(r["error"]["code"], -32601, "{r}");
    // Environment variable names that cannot be set: -32602.
    let m = mcp
        .call_error(
            "exec_command",
            json!({"command": "true", "env": {"A=B": "1"}}),
            -32602,
        )
        .await;
    assert!(m.contains("arguments.env"), "{m}");

    // Invalid params: -32602, naming the field.
    let m = mcp
        .call_error(
            "shell",
            json!({"command": "true", "timeout_ms": "soon"}),
            -32602,
        )
        .await;
    assert!(m.contains("arguments.timeout_ms"), "{m}");
    let m = mcp.call_error("shell", json!({}), -32602).await;
    assert!(m.contains("command"), "{m}");
    let m = mcp
        .call_error("shell", json!({"command": "true", "cwdd": "/"}), -32602)
        .await;
    assert!(m.contains("cwdd"), "{m}");
    let m = mcp.call_error("echo_arg", json!({"text": 5}), -32602).await;
    assert!(m.contains("arguments.text"), "{m}");
    let m = mcp
        .call_error(
            "write_file",
            json!({"path": "x", "content_b64": "!!"}),
            -32602,
        )
        .await;
    assert!(m.contains("content_b64"), "{m}");
    // write_file: exactly one of content and content_b64.
    for args in [
        json!({"path": "x", "content": "a", "content_b64": "YQ=="}),
        json!({"path": "x"}),
    ] {
        let m = mcp.call_error("write_file", args, -32602).await;
        assert!(m.contains("content") && m.contains("content_b64"), "{m}");
    }
    let m = mcp
        .call_error(
            "write_stdin",
            json!({"session_id": "ps_nope", "chars": "x"}),
            -32602,
        )
        .await;
    assert!(m.contains("session_id"), "{m}");
    // An environment that does not exist: -32602 naming it.
    let m = mcp
        .call_error(
            "shell",
            json!({"command": "true", "environment_id": "nowhere"}),
            -32602,
        )
        .await;
    assert!(m.contains("environment_id") && m.contains("nowhere"), "{m}");

    // Only the caller's workspace: another workspace's token sees neither
    // the environment nor the process.
    let r = mcp
        .call("exec_command", json!({"command": ["sleep", "300"]}))
        .await;
    let sid = r["structuredContent"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    admin(&w.data_dir, &["workspace", "create", "w2"]);
    let other = Mcp::new(
        &w.gateway.url(),
        &admin(&w.data_dir, &["token", "create", "--workspace", "w2"]),
    );
    for (tool, args) in [
        ("terminate", json!({"session_id": sid})),
        ("write_stdin", json!({"session_id": sid, "chars": "x"})),
        ("read_output", json!({"session_id": sid})),
    ] {
        let m = other.call_error(tool, args, -32602).await;
        assert!(m.contains("no process session"), "{tool}: {m}");
    }
    let m = other
        .call_error(
            "shell",
            json!({"command": "true", "environment_id": "laptop"}),
            -32602,
        )
        .await;
    assert!(m.contains("laptop"), "{m}");
    let r = other.call("list_environments", json!({})).await;
    assert_eq!(r["structuredContent"]["envs"], json!([]), "{r}");
    mcp.call("terminate", json!({"session_id": sid})).await;

    // The executor goes offline: a tool result with isError that says so.
    w.executors[0].kill();
    eventually(20, "the executor to disconnect", || async {
        w.api.envs().await["envs"].as_array().unwrap().is_empty()
    })
    .await;
    let r = mcp.call("shell", json!({"command": "true"})).await;
    assert_eq!(r["isError"], true, "{r}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("laptop") && text.contains("not connected"),
        "{text}"
    );
    assert_eq!(
        r["structuredContent"]["error"]["code"],
        "executor_unavailable"
    );
}

/// Bodies that are not JSON, or not JSON-RPC: the JSON-RPC error codes
/// (-32700 Parse error, -32600 Invalid Request) in a 400, as the MCP
/// Streamable HTTP transport asks; a Content-Type other than JSON stays 415.
#[tokio::test]
async fn mcp_bodies_that_are_not_json_rpc_get_json_rpc_errors() {
    let w = World::start(&[]).await;
    let mcp = Mcp::new(&w.gateway.url(), &w.api.token);
    let raw = |content_type: &'static str, body: &'static str| {
        let req = mcp
            .http
            .post(&mcp.url)
            .bearer_auth(&mcp.token)
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", content_type)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("a JSON body");
            (status, body)
        }
    };
    for (body, code, id) in [
        ("this is not json", -32700, Value::Null),
        ("{\"jsonrpc\": \"2.0\", \"id\": 1, ", -32700, Value::Null),
        ("", -32700, Value::Null),
        ("[]", -32600, Value::Null),
        ("5", -32600, Value::Null),
        (
            "{\"jsonrpc\": \"1.0\", \"id\": 7, \"method\": \"ping\"}",
            -32600,
            json!(7),
        ),
        ("{\"id\": \"x\", \"method\": 5}", -32600, json!("x")),
    ] {
        let (status, v) = raw("application/json", body).await;
        assert_eq!(status, 400, "{body:?}: {v}");
        assert_eq!(v["jsonrpc"], "2.0", "{body:?}: {v}");
        assert_eq!(v["id"], id, "{body:?}: {v}");
        assert_eq!(v["error"]["code"], code, "{body:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 10, "{v}");
    }
    // A Content-Type that is not JSON: 415 with the error envelope.
    let (status, v) = raw("text/plain", "{}").await;
    assert_eq!(status, 415, "{v}");
    assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
    // A good request still works after all that.
    let (status, v) = raw(
        "application/json",
        "{\"jsonrpc\": \"2.0\", \"id\": 9, \"method\": \"ping\"}",
    )
    .await;
    assert_eq!((status, &v["id"]), (200, &json!(9)), "{v}");
}
