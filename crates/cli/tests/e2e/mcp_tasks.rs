//! MCP tasks (the 2026-07-28 `io.modelcontextprotocol/tasks` extension),
//! spoken as raw JSON-RPC over Streamable HTTP: the official Python client
//! (mcp 2.3.0) has no client side for tasks yet. A `shell` call of a client
//! that declares the extension is answered with a task backed by a process
//! session in the store (or with its result when it ends within a second); `tasks/get` polls it to its result (across a
//! gateway restart), `tasks/cancel` kills its process group, and another
//! workspace's token cannot see or cancel it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::harness::*;

const VERSION: &str = "2026-07-28";
const TASKS: &str = "io.modelcontextprotocol/tasks";

/// A 2026-07-28 client: per-request `_meta` (protocol version and
/// capabilities, the tasks extension declared or not) and the standard
/// headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`).
struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    next_id: AtomicU64,
}

impl Client {
    fn new(base: &str, token: &str) -> Client {
        Client {
            http: fresh_client(),
            url: format!("{base}/mcp"),
            token: token.to_string(),
            next_id: AtomicU64::new(1),
        }
    }

    /// One request; the HTTP status and the JSON-RPC response.
    async fn send(&self, method: &str, params: Value, with_tasks: bool) -> (u16, Value) {
        let (id, req) = self.build(method, params, with_tasks);
        let resp = req.send().await.expect("request reaches the gateway");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method}: {status}: not JSON: {text}"));
        assert_eq!(body["id"], id, "{body}");
        (status, body)
    }

    /// A request ready to send, and its id.
    fn build(
        &self,
        method: &str,
        mut params: Value,
        with_tasks: bool,
    ) -> (u64, reqwest::RequestBuilder) {
        let capabilities = if with_tasks {
            json!({"extensions": {TASKS: {}}})
        } else {
            json!({})
        };
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": VERSION,
            "io.modelcontextprotocol/clientCapabilities": capabilities,
            "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
        });
        let name = params
            .get("name")
            .or_else(|| params.get("taskId"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", VERSION)
            .header("Mcp-Method", method)
            .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        if let Some(name) = name {
            req = req.header("Mcp-Name", name);
        }
        (id, req)
    }

    /// A request that must succeed: its `result`.
    async fn ok(&self, method: &str, params: Value) -> Value {
        let (status, body) = self.send(method, params, true).await;
        assert_eq!(status, 200, "{method}: {body}");
        assert!(body.get("error").is_none(), "{method}: {body}");
        body["result"].clone()
    }

    /// A request that must fail with JSON-RPC error `code`: the error.
    async fn error(&self, method: &str, params: Value, code: i64) -> Value {
        let (_, body) = self.send(method, params, true).await;
        assert_eq!(body["error"]["code"], code, "{method}: {body}");
        body["error"].clone()
    }

    /// `shell` with the tasks extension declared: the task it answers.
    async fn shell_task(&self, arguments: Value) -> Value {
        let r = self
            .ok(
                "tools/call",
                json!({"name": "shell", "arguments": arguments}),
            )
            .await;
        assert_eq!(r["resultType"], "task", "{r}");
        assert_eq!(r["status"], "working", "{r}");
        assert!(
            r["taskId"].as_str().is_some_and(|id| id.starts_with("ps_")),
            "{r}"
        );
        r
    }

    async fn get(&self, task_id: &str) -> Value {
        let r = self.ok("tasks/get", json!({"taskId": task_id})).await;
        assert_eq!(r["resultType"], "complete", "{r}");
        assert_eq!(r["taskId"], task_id, "{r}");
        r
    }

    /// Polls `tasks/get` until the task leaves `working`.
    async fn until_done(&self, task_id: &str) -> Value {
        eventually(30, &format!("task {task_id} to end"), || async {
            let r = self.get(task_id).await;
            (r["status"] != "working").then_some(r)
        })
        .await
    }
}

#[tokio::test]
async fn a_shell_task_runs_to_its_result_across_a_restart_and_is_cancelled() {
    let mut w = World::start(&["--retain-bytes", "65536", "--spill-bytes", "0"]).await;
    let base = w.gateway.url();
    let mcp = Client::new(&base, &w.api.token);

    // The server advertises the extension.
    let discover = mcp.ok("server/discover", json!({})).await;
    assert!(
        discover["capabilities"]["extensions"][TASKS].is_object(),
        "{discover}"
    );

    // Without the extension declared, shell answers as ever: the result.
    let (status, plain) = mcp
        .send(
            "tools/call",
            json!({"name": "shell", "arguments": {"command": ["echo", "plain"]}}),
            false,
        )
        .await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["result"]["resultType"], "complete", "{plain}");
    assert_eq!(plain["result"]["structuredContent"]["stdout"], "plain\n");
    // …and tasks/get needs it declared (-32021).
    let (status, refused) = mcp
        .send("tasks/get", json!({"taskId": "ps_x"}), false)
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_i64()),
        (400, Some(-32021)),
        "{refused}"
    );
    // Params that do not fit name the field.
    let bad = mcp.error("tasks/get", json!({"taskId": 5}), -32602).await;
    assert!(
        bad["message"].as_str().unwrap().contains("params.taskId"),
        "{bad}"
    );
    // Other tools answer at once, task or not.
    let listed = mcp
        .ok(
            "tools/call",
            json!({"name": "list_environments", "arguments": {}}),
        )
        .await;
    assert_eq!(listed["resultType"], "complete", "{listed}");

    // A task: sleeps, then prints on both streams and exits 3.
    let task = mcp
        .shell_task(json!({"command": "sleep 2; echo done; echo oops >&2; exit 3"}))
        .await;
    let id = task["taskId"].as_str().unwrap().to_string();
    assert!(task["ttlMs"].as_u64().unwrap() >= 60_000, "{task}");
    assert!(task["pollIntervalMs"].as_u64().is_some(), "{task}");
    assert!(task["createdAt"].as_str().unwrap().ends_with('Z'), "{task}");
    // Working while it sleeps.
    assert_eq!(mcp.get(&id).await["status"], "working");
    let done = mcp.until_done(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["isError"], false, "{done}");
    let out = &result["structuredContent"];
    assert_eq!(
        (
            &out["stdout"],
            &out["stderr"],
            &out["exit_code"],
            &out["timed_out"]
        ),
        (&json!("done\n"), &json!("oops\n"), &json!(3), &json!(false)),
        "{done}"
    );
    assert!(out["duration_ms"].as_u64().unwrap() >= 2000, "{done}");
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .ends_with("[exit_code=3]"),
        "{done}"
    );
    // The result is kept: the same answer again.
    assert_eq!(mcp.get(&id).await["result"], done["result"]);
    // Cancelling a finished task changes nothing.
    assert_eq!(
        mcp.ok("tasks/cancel", json!({"taskId": id})).await,
        json!({"resultType": "complete"})
    );
    assert_eq!(mcp.get(&id).await["status"], "completed");

    // Output past the executor's retention (64 KiB here) and the budget:
    // what the executor no longer has is counted exactly as lost, and what
    // the budget leaves out of the rest as omitted.
    // It ends at once, so it is answered with its result, no task.
    let big = mcp
        .ok(
            "tools/call",
            json!({"name": "shell", "arguments": {"command": "seq 1 20000", "max_output_bytes": 1000}}),
        )
        .await;
    assert_eq!(big["resultType"], "complete", "{big}");
    let out = &big["structuredContent"];
    let total: u64 = (1..=20000u64).map(|n| n.to_string().len() as u64 + 1).sum();
    let stdout = out["stdout"].as_str().unwrap();
    // "[... {omitted} bytes of stdout omitted: {received} bytes in all, …"
    let received: u64 = stdout
        .split(" bytes in all")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no marker: {big}"));
    let lost = out["lost_bytes"].as_u64().unwrap_or(0);
    assert!(lost > 0 && received < total, "{big}");
    assert_eq!(lost + received, total, "{big}");
    assert_eq!(
        out["omitted_bytes"].as_u64(),
        Some(received - 1000),
        "{big}"
    );
    assert!(stdout.ends_with("19999\n20000\n"), "{big}");
    assert!(
        big["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("[{lost} bytes of output were lost")),
        "{big}"
    );

    // A timeout: the deadline kills it, and the result says so.
    let slow = mcp
        .shell_task(json!({"command": ["sleep", "30"], "timeout_ms": 1500}))
        .await;
    let slow = mcp.until_done(slow["taskId"].as_str().unwrap()).await;
    assert_eq!(slow["status"], "completed", "{slow}");
    assert_eq!(slow["result"]["isError"], true, "{slow}");
    assert_eq!(
        slow["result"]["structuredContent"]["timed_out"], true,
        "{slow}"
    );

    // A restart between the task's creation and its result loses nothing.
    let across = mcp
        .shell_task(json!({"command": "sleep 2; echo after the restart"}))
        .await;
    let across = across["taskId"].as_str().unwrap().to_string();
    let addr = w.gateway.addr;
    w.gateway.proc.kill();
    w.gateway = start_gateway(&w.data_dir, &addr.to_string());
    wait_for_env(&w.api, "laptop").await;
    let after = mcp.until_done(&across).await;
    assert_eq!(
        after["result"]["structuredContent"]["stdout"], "after the restart\n",
        "{after}"
    );
    // A result kept before the restart is still there.
    assert_eq!(mcp.get(&id).await["result"], done["result"]);

    // Cancel: the process group is killed.
    let pidfile = w.workdir.join("task.pid");
    let task = mcp
        .shell_task(json!({"command": format!("echo $$ > {}; exec sleep 60", pidfile.display())}))
        .await;
    let victim = task["taskId"].as_str().unwrap().to_string();
    let pid: u32 = eventually(10, "the task's pid file", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    assert!(alive(pid));
    assert_eq!(mcp.get(&victim).await["status"], "working");

    // Another workspace cannot see it, nor cancel it: exactly as unknown.
    admin(&w.data_dir, &["workspace", "create", "w2"]);
    let token2 = admin(&w.data_dir, &["token", "create", "--workspace", "w2"]);
    let other = Client::new(&base, &token2);
    let unknown = "ps_000000000000000000000000";
    for method in ["tasks/get", "tasks/cancel", "tasks/update"] {
        let mut params = json!({"taskId": victim});
        let mut made_up = json!({"taskId": unknown});
        if method == "tasks/update" {
            params["inputResponses"] = json!({});
            made_up["inputResponses"] = json!({});
        }
        let theirs = other.error(method, params, -32602).await;
        let never = other.error(method, made_up, -32602).await;
        assert_eq!(
            theirs["message"].as_str().unwrap().replace(&victim, "ID"),
            never["message"].as_str().unwrap().replace(unknown, "ID"),
            "{method}"
        );
        assert_eq!(
            serde_json::to_string(&theirs["data"])
                .unwrap()
                .replace(&victim, "ID"),
            serde_json::to_string(&never["data"])
                .unwrap()
                .replace(unknown, "ID"),
            "{method}"
        );
    }
    assert!(
        alive(pid),
        "another workspace's tasks/cancel must not reach it"
    );
    assert_eq!(mcp.get(&victim).await["status"], "working");

    assert_eq!(
        mcp.ok("tasks/cancel", json!({"taskId": victim})).await,
        json!({"resultType": "complete"})
    );
    eventually(10, "the cancelled task's process to be gone", || async {
        !alive(pid)
    })
    .await;
    let cancelled = mcp.get(&victim).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled.get("result").is_none(), "{cancelled}");
    // tasks/update has nothing to update, but knows the task.
    assert_eq!(
        mcp.ok(
            "tasks/update",
            json!({"taskId": victim, "inputResponses": {}})
        )
        .await,
        json!({"resultType": "complete"})
    );
}

/// Two replicas on one store (SQLite): a task started through the replica
/// that holds the executor is read, and another one cancelled, through the
/// other, as a client behind a load balancer would.
#[tokio::test]
async fn a_task_is_read_and_cancelled_through_another_replica() {
    through_another_replica(Prepared::new(&execgate(), "w1")).await;
}

/// The same on PostgreSQL (skipped when PostgreSQL cannot start here).
#[tokio::test]
async fn a_task_is_read_and_cancelled_through_another_replica_on_postgres() {
    let Some(cluster) = execgate_testkit::pg::cluster("mcp_tasks") else {
        return;
    };
    let url = cluster.create_database();
    through_another_replica(Prepared::new_on(&execgate(), "w1", Some(&url))).await;
}

async fn through_another_replica(prepared: Prepared) {
    let secret = prepared.dir.path().join("cluster-secret");
    std::fs::write(&secret, "a-shared-cluster-secret-of-32-bytes\n").unwrap();
    let replica = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        let mut args = vec![
            "--advertise-url",
            &url,
            "--cluster-secret-file",
            secret.to_str().unwrap(),
        ];
        if let Some(db) = &prepared.database_url {
            args.extend(["--database-url", db]);
        }
        execgate().serve(&prepared.data_dir, &listen, &args)
    };
    let (a, b) = (replica(), replica());
    let exe_token = prepared.add_executor("x", true);
    let work = prepared.dir.path().join("work-x");
    std::fs::create_dir_all(&work).unwrap();
    let _executor = execgate().executor(&a.url(), &exe_token, &work, &[]);
    wait_for_env(&Api::new(&a.url(), &prepared.token), "x").await;
    let (on_a, on_b) = (
        Client::new(&a.url(), &prepared.token),
        Client::new(&b.url(), &prepared.token),
    );

    let task = on_a
        .shell_task(json!({"command": "sleep 2; echo through b"}))
        .await;
    let id = task["taskId"].as_str().unwrap().to_string();
    let done = on_b.until_done(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["structuredContent"]["stdout"], "through b\n",
        "{done}"
    );
    assert_eq!(on_a.get(&id).await["result"], done["result"]);

    let pidfile = work.join("task.pid");
    let task = on_b
        .shell_task(json!({"command": format!("echo $$ > {}; exec sleep 60", pidfile.display())}))
        .await;
    let victim = task["taskId"].as_str().unwrap().to_string();
    let pid: u32 = eventually(10, "the task's pid file", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    assert!(alive(pid));
    assert_eq!(on_a.get(&victim).await["status"], "working");
    on_b.ok("tasks/cancel", json!({"taskId": victim})).await;
    eventually(10, "the cancelled task's process to be gone", || async {
        !alive(pid)
    })
    .await;
    assert_eq!(on_a.get(&victim).await["status"], "cancelled");
}

/// A task whose executor is away works on (its process may still run), and
/// ends with `shell`'s error once its environment is removed.
#[tokio::test]
async fn a_task_waits_for_its_executor_and_ends_when_it_is_removed() {
    let mut w = World::start(&[]).await;
    let mcp = Client::new(&w.gateway.url(), &w.api.token);
    let task = mcp.shell_task(json!({"command": ["sleep", "60"]})).await;
    let id = task["taskId"].as_str().unwrap().to_string();
    w.executors[0].kill();
    let away = eventually(20, "the executor to be seen gone", || async {
        let r = mcp.get(&id).await;
        let message = r["statusMessage"].as_str().unwrap_or_default().to_string();
        message.contains("not connected").then_some(r)
    })
    .await;
    assert_eq!(away["status"], "working", "{away}");

    admin(
        &w.data_dir,
        &["executor", "remove", "--workspace", "w1", "laptop"],
    );
    let gone = mcp.get(&id).await;
    assert_eq!(gone["status"], "completed", "{gone}");
    assert_eq!(gone["result"]["isError"], true, "{gone}");
    assert_eq!(
        gone["result"]["structuredContent"]["error"]["code"], "session_expired",
        "{gone}"
    );
}

/// A `shell` call with the tasks capability whose client closes the
/// request before the answer (the 2026-07-28 cancellation) leaves no
/// process behind.
#[tokio::test]
async fn a_task_call_closed_before_its_answer_ends_its_process() {
    let w = World::start(&[]).await;
    let mcp = Client::new(&w.gateway.url(), &w.api.token);
    let pidfile = w.workdir.join("task.pid");
    let command = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let (_, req) = mcp.build(
        "tools/call",
        json!({"name": "shell", "arguments": {"command": command}}),
        true,
    );
    // The call waits up to a second for the command before it answers.
    let closed = req
        .timeout(std::time::Duration::from_millis(500))
        .send()
        .await;
    assert!(
        closed.is_err(),
        "answered before the client gave up: {closed:?}"
    );
    let pid: u32 = eventually(10, "the task's pid file", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    eventually(
        10,
        "the process of the abandoned call to be gone",
        || async { !alive(pid) },
    )
    .await;
}
