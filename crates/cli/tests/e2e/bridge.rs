//! Capability tokens and `/bridge/{exe_id}`: a real gateway and executors,
//! a WebSocket client speaking the executor protocol through the gateway,
//! tokens minted by `execgate admin captoken create` (and, for tokens the
//! CLI cannot make, signed here with the gateway's own secret file).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use execgate_gateway::captoken::{self, CapTokenSecret};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::harness::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `execgate admin captoken create --workspace W --ttl S [extra…]`: the
/// token, checked to be alone on the last line of stdout.
pub(crate) fn mint(data_dir: &Path, workspace: &str, ttl: u64, extra: &[&str]) -> String {
    let ttl = ttl.to_string();
    let mut args = vec![
        "captoken",
        "create",
        "--workspace",
        workspace,
        "--ttl",
        &ttl,
    ];
    args.extend_from_slice(extra);
    let token = admin(data_dir, &args);
    assert_eq!(token.split('.').count(), 3, "{token:?}");
    assert!(
        !token.contains(' '),
        "the last line is the token alone: {token:?}"
    );
    token
}

/// The exe_id of environment `name`, from `execgate admin executor list`.
fn exe_id(data_dir: &Path, name: &str) -> String {
    let out = Command::new(bin())
        .args(["admin", "--data-dir"])
        .arg(data_dir)
        .args(["executor", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(2) == Some(&name)).then(|| cols[0].to_string())
        })
        .unwrap_or_else(|| panic!("no executor {name} in:\n{text}"))
}

/// Opens `/bridge/{target}`; an HTTP refusal comes back as (status, body).
async fn connect(
    gateway: &GatewayProc,
    target: &str,
    auth: Option<&str>,
) -> Result<Ws, (u16, Value)> {
    let mut req = format!("ws://{}/bridge/{target}", gateway.addr)
        .into_client_request()
        .unwrap();
    if let Some(auth) = auth {
        req.headers_mut()
            .insert("authorization", HeaderValue::from_str(auth).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            let v = serde_json::from_slice(&body).unwrap_or_else(|_| {
                panic!("{status}: not JSON: {}", String::from_utf8_lossy(&body))
            });
            Err((status, v))
        }
        Err(e) => panic!("bridge connect failed: {e}"),
    }
}

pub(crate) async fn bridge(gateway: &GatewayProc, target: &str, token: &str) -> Client {
    match connect(gateway, target, Some(&format!("Bearer {token}"))).await {
        Ok(ws) => Client {
            ws,
            notes: Vec::new(),
        },
        Err((s, v)) => panic!("bridge refused: {s} {v}"),
    }
}

/// Expects a refusal with `status` and error `code`.
async fn refused(gateway: &GatewayProc, target: &str, token: &str, status: u16, code: &str) {
    match connect(gateway, target, Some(&format!("Bearer {token}"))).await {
        Ok(_) => panic!("token {token:?} on {target} was accepted; expected {status} {code}"),
        Err((s, v)) => {
            assert_eq!(
                (s, v["error"]["code"].as_str().unwrap()),
                (status, code),
                "{token:?}: {v}"
            );
            assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        }
    }
}

/// A bridge client: requests by id, notifications kept aside.
pub(crate) struct Client {
    ws: Ws,
    pub(crate) notes: Vec<Value>,
}

impl Client {
    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame (pings skipped).
    pub(crate) async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("a frame within 20 s")
                .expect("the socket is open")
                .expect("a frame");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Sends a request and returns its response, keeping notifications.
    async fn call(&mut self, id: Value, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}))
            .await;
        loop {
            let v = self.next().await;
            if v.get("method").is_some() {
                self.notes.push(v);
            } else {
                assert_eq!(v["id"], id, "answers come back with the client's id: {v}");
                return v;
            }
        }
    }

    pub(crate) async fn ok(&mut self, id: Value, method: &str, params: Value) -> Value {
        let v = self.call(id, method, params).await;
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    async fn err(&mut self, id: Value, method: &str, params: Value) -> Value {
        let v = self.call(id, method, params).await;
        assert!(v.get("result").is_none(), "{method} should fail: {v}");
        v["error"].clone()
    }

    /// Reads `pid`'s output from seq 0 until it is closed.
    pub(crate) async fn read_all(&mut self, pid: &str, id: Value) -> (Vec<u8>, Value) {
        let mut after = 0;
        let mut data = Vec::new();
        loop {
            let r = self
                .ok(
                    id.clone(),
                    "process/read",
                    json!({"processId": pid, "afterSeq": after, "waitMs": 2000}),
                )
                .await;
            for c in r["chunks"].as_array().unwrap() {
                data.extend(b64d(c["chunk"].as_str().unwrap()));
                after = c["seq"].as_u64().unwrap();
            }
            if r["closed"] == true {
                return (data, r);
            }
            if let Some(next) = r["nextSeq"].as_u64() {
                after = after.max(next.saturating_sub(1));
            }
        }
    }

    /// Waits for the close frame: (code, reason).
    async fn closed(&mut self, within: Duration) -> (u16, String) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.ws.next())
                .await
                .expect("the bridge to close in time");
            match m {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) | None => return (0, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error instead of a close frame: {e}"),
            }
        }
    }
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn secret_of(data_dir: &Path) -> CapTokenSecret {
    captoken::keyfile::read(&data_dir.join(captoken::keyfile::FILE_NAME)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_wrong_executors_are_refused_in_order() {
    let mut w = World::start(&[]).await;
    let laptop = exe_id(&w.data_dir, "laptop");
    // An executor of another workspace (never connected), and a second
    // executor of w1 that goes offline.
    admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w2", "--name", "other"],
    );
    let other = exe_id(&w.data_dir, "other");
    let box2_token = admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w1", "--name", "box2"],
    );
    let box2_dir = w.dir.path().join("box2");
    std::fs::create_dir_all(&box2_dir).unwrap();
    w.executors.push(start_executor(
        &w.gateway.url(),
        &box2_token,
        &box2_dir,
        &[],
    ));
    wait_for_env(&w.api, "box2").await;
    let box2 = exe_id(&w.data_dir, "box2");

    let good = mint(&w.data_dir, "w1", 60, &[]);
    let secret = secret_of(&w.data_dir);
    let claims = captoken::verify(&secret, &good, captoken::now_s()).unwrap();
    let payload = serde_json::to_vec(&claims).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (head_payload, sig) = good.rsplit_once('.').unwrap();
    let mut flipped = sig.to_string();
    flipped.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
    let other_secret = CapTokenSecret::new(vec![b'z'; 32]).unwrap();

    let g = &w.gateway;
    // The table: each bad token is a 401 with its code, before anything else.
    refused(g, &laptop, "", 401, "missing_bearer").await;
    for (token, what) in [
        ("a.b".to_string(), "two parts"),
        ("a.b.c.d".to_string(), "four parts"),
        ("!!!.b.c".to_string(), "not base64"),
        (format!("{head_payload}.%%%"), "signature not base64"),
        (format!("{head_payload}.{flipped}"), "bad signature"),
        (captoken::mint(&other_secret, &claims), "another secret"),
        (
            captoken::sign_parts(&secret, br#"{"alg":"none","typ":"CXG"}"#, &payload),
            "wrong alg, validly signed",
        ),
        (
            captoken::sign_parts(&secret, br#"{"alg":"HS256","typ":"JWT"}"#, &payload),
            "wrong typ, validly signed",
        ),
        (
            format!(
                "{}.{}.{sig}",
                b64(br#"{"alg":"HS256","typ":"CXG"}"#),
                b64(b"{}")
            ),
            "payload swapped under the old signature",
        ),
    ] {
        println!("case: {what}");
        refused(g, &laptop, &token, 401, "invalid_captoken").await;
    }
    // Without a bearer at all.
    match connect(g, &laptop, None).await {
        Err((401, v)) => assert_eq!(v["error"]["code"], "missing_bearer"),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // Expired, with a short TTL.
    let short = mint(&w.data_dir, "w1", 1, &[]);
    // Revoked, through the CLI.
    let revoked = mint(&w.data_dir, "w1", 60, &["--turn-id", "turn-revoked-1"]);
    let out = admin(&w.data_dir, &["captoken", "revoke-turn", "turn-revoked-1"]);
    assert!(out.contains("turn-revoked-1"), "{out}");
    refused(g, &laptop, &revoked, 401, "turn_revoked").await;
    // Another workspace's executor (and one that does not exist): 403.
    refused(g, &other, &good, 403, "forbidden").await;
    refused(g, "exe_0000000000000000", &good, 403, "forbidden").await;
    // The order: token before revocation before workspace before liveness.
    refused(g, &other, &revoked, 401, "turn_revoked").await;

    // Live, then offline: the bridge's socket closes with the reason, and
    // the next connect is a 503.
    let mut b = bridge(g, &box2, &good).await;
    b.ok(json!(1), "initialize", json!({})).await;
    w.executors[1].kill();
    let (code, reason) = b.closed(Duration::from_secs(15)).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(
        reason.contains("box2") && reason.contains("disconnected"),
        "{reason}"
    );
    eventually(15, "box2 to be offline", || async {
        matches!(
            connect(g, &box2, Some(&format!("Bearer {good}"))).await,
            Err((503, _))
        )
    })
    .await;
    refused(g, &box2, &good, 503, "executor_unavailable").await;
    refused(g, "box2", &good, 503, "executor_unavailable").await;

    let wait = Duration::from_millis(2100);
    tokio::time::sleep(wait).await;
    refused(g, &laptop, &short, 401, "captoken_expired").await;
    refused(g, &other, &short, 401, "captoken_expired").await;

    // A plain GET with a good token is told to upgrade.
    let resp = fresh_client()
        .get(format!("{}/bridge/{laptop}", g.url()))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_runs_processes_beside_rest_calls_and_sees_only_its_own() {
    let w = World::start(&[]).await;
    let laptop = exe_id(&w.data_dir, "laptop");
    let token = mint(&w.data_dir, "w1", 60, &[]);
    let cwd = file_uri(&w.workdir);

    // A REST process the bridge must not reach.
    let sid = w
        .api
        .exec("laptop", json!({"command": ["sleep", "30"]}))
        .await;

    // A REST shell call running on the same executor the whole time.
    let api = w.api.clone();
    let rest = tokio::spawn(async move {
        api.call(
            "laptop",
            "shell",
            json!({"command": ["sh", "-c", "sleep 2; echo rest-done"]}),
        )
        .await
    });

    // By exe_id; also by the environment's name.
    let mut b = bridge(&w.gateway, &laptop, &token).await;
    let init = b
        .ok(json!(0), "initialize", json!({"clientName": "test"}))
        .await;
    assert!(
        init["sessionId"].as_str().unwrap().starts_with("br-"),
        "{init}"
    );
    assert!(
        init["environmentInfo"]["cwd"]
            .as_str()
            .unwrap()
            .starts_with("file://"),
        "{init}"
    );
    b.send(json!({"jsonrpc":"2.0","method":"initialized","params":{}}))
        .await;

    let started = b
        .ok(
            json!(1),
            "process/start",
            json!({"processId": "p1", "argv": ["sh", "-c", "echo hello-bridge; sleep 0.2; echo two"],
                   "cwd": cwd, "env": {"PATH": std::env::var("PATH").unwrap()}, "tty": false}),
        )
        .await;
    assert_eq!(started["processId"], "p1", "{started}");
    let (out, last) = b.read_all("p1", json!("a")).await;
    assert_eq!(String::from_utf8_lossy(&out), "hello-bridge\ntwo\n");
    assert_eq!(last["exitCode"], 0, "{last}");
    assert!(
        !rest.is_finished(),
        "the bridge's process ran while the REST call was still running"
    );

    // Notifications: the bridge's own process only, under its own id.
    while !b.notes.iter().any(|n| n["method"] == "process/closed") {
        let n = b.next().await;
        b.notes.push(n);
    }
    for n in &b.notes {
        assert_eq!(n["params"]["processId"], "p1", "{n}");
    }
    assert!(b.notes.iter().any(|n| n["method"] == "process/output"));

    // The REST API's process is invisible: refused, and left running.
    for m in ["process/read", "process/terminate", "process/write"] {
        let e = b
            .err(
                json!("x"),
                m,
                json!({"processId": sid, "chunk": "", "writeId": "w"}),
            )
            .await;
        assert_eq!(e["code"], -32600, "{m}: {e}");
    }
    let o = w.api.output(&sid, 0).await;
    assert_eq!(o["session_alive"], true, "{o}");

    // fs/* goes through; other methods do not.
    std::fs::write(w.workdir.join("f.txt"), b"via the bridge").unwrap();
    let r = b
        .ok(
            json!(2),
            "fs/readFile",
            json!({"path": file_uri(&w.workdir.join("f.txt"))}),
        )
        .await;
    assert_eq!(b64d(r["dataBase64"].as_str().unwrap()), b"via the bridge");
    let e = b.err(json!(3), "shutdown", json!({})).await;
    assert_eq!(e["code"], -32601, "{e}");
    // An executor error comes back with the client's id and its process id.
    let e = b
        .err(
            json!(4),
            "process/start",
            json!({"processId": "p1", "argv": ["true"], "cwd": cwd, "env": {}, "tty": false}),
        )
        .await;
    assert!(!e["message"].as_str().unwrap().contains("br-"), "{e}");

    let shell = rest.await.unwrap();
    assert_eq!(shell["isError"], false, "{shell}");
    assert_eq!(
        shell["structuredContent"]["stdout"], "rest-done\n",
        "{shell}"
    );

    // A second bridge, by name, cannot see the first one's process.
    let mut b2 = bridge(&w.gateway, "laptop", &token).await;
    let e = b2
        .err(json!(1), "process/read", json!({"processId": "p1"}))
        .await;
    assert_eq!(e["code"], -32600, "{e}");

    // A process still running when its bridge goes away is terminated.
    b.ok(
        json!(5),
        "process/start",
        json!({"processId": "p2", "argv": ["sh", "-c", "echo $$; exec sleep 30"],
               "cwd": cwd, "env": {}, "tty": false}),
    )
    .await;
    let mut after = 0;
    let pid: u32 = loop {
        let r = b
            .ok(
                json!(6),
                "process/read",
                json!({"processId": "p2", "afterSeq": after, "waitMs": 2000}),
            )
            .await;
        let mut text = Vec::new();
        for c in r["chunks"].as_array().unwrap() {
            text.extend(b64d(c["chunk"].as_str().unwrap()));
            after = c["seq"].as_u64().unwrap();
        }
        if let Ok(pid) = String::from_utf8_lossy(&text).trim().parse() {
            break pid;
        }
    };
    assert!(alive(pid));
    b.ws.close(None).await.unwrap();
    drop(b);
    eventually(15, "the bridge's process to be terminated", || async move {
        !alive(pid)
    })
    .await;
    // The REST process is untouched.
    assert_eq!(w.api.output(&sid, 0).await["session_alive"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_expiry_unless_renewed_and_at_revocation() {
    // Another process's revocation is seen within the recheck interval:
    // 500 ms here (5 s by default), so that the test need not wait 5 s.
    let w = World::start_with(&["--bridge-recheck-ms", "500"], &[]).await;
    let cwd = file_uri(&w.workdir);
    // Minted first: a CLI run takes a while on a busy machine, and the
    // short tokens below must not expire before the renewal.
    let fresh = mint(&w.data_dir, "w1", 60, &["--turn-id", "turn-a"]);
    let wrong_turn = mint(&w.data_dir, "w1", 60, &["--turn-id", "turn-c"]);
    let lapsing_token = mint(&w.data_dir, "w1", 3, &["--turn-id", "turn-b"]);
    let renewed_token = mint(&w.data_dir, "w1", 3, &["--turn-id", "turn-a"]);
    let t0 = Instant::now();
    let mut a = bridge(&w.gateway, "laptop", &renewed_token).await;
    let r = a
        .ok(json!(1), "bridge/renewToken", json!({"token": fresh}))
        .await;
    assert!(r["exp"].as_i64().unwrap() >= captoken::now_s() + 50, "{r}");
    let mut b = bridge(&w.gateway, "laptop", &lapsing_token).await;

    // A renewal must be valid and for the same turn.
    let e = a
        .err(json!(2), "bridge/renewToken", json!({"token": wrong_turn}))
        .await;
    assert_eq!(e["code"], -32602, "{e}");
    let e = a
        .err(json!(3), "bridge/renewToken", json!({"token": "a.b.c"}))
        .await;
    assert_eq!(e["code"], -32602, "{e}");

    // The unrenewed session closes when its token expires.
    let (code, reason) = b.closed(Duration::from_secs(10)).await;
    assert_eq!(code, 4401, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );

    // The renewed one outlives its first token.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(t0.elapsed())).await;
    let r = a
        .ok(
            json!(4),
            "process/start",
            json!({"processId": "late", "argv": ["true"], "cwd": cwd, "env": {}, "tty": false}),
        )
        .await;
    assert_eq!(r["processId"], "late");

    // Revoking the turn (from another process: the CLI) closes it within
    // the recheck interval (500 ms here), and the token is refused from
    // then on.
    admin(&w.data_dir, &["captoken", "revoke-turn", "turn-a"]);
    let (code, reason) = a.closed(Duration::from_secs(12)).await;
    assert_eq!(code, 4403, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    refused(&w.gateway, "laptop", &fresh, 401, "turn_revoked").await;
}

/// Regression (#15, part 2): a bridge request had no gateway-side deadline,
/// so with its executor stopped (SIGSTOP; a ping timeout far away) it was
/// answered only when the executor resumed. Now each waits at most its
/// deadline, `--bridge-request-timeout-secs` (a `process/read` its `waitMs`
/// on top), and is then answered -32603 with `data.code` `gateway_timeout`;
/// the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_executor_does_not_hold_a_bridge_request_past_its_deadline() {
    let w = World::start_with(
        &[
            "--executor-ping-timeout-secs",
            "600",
            "--bridge-request-timeout-secs",
            "2",
        ],
        &[],
    )
    .await;
    let token = mint(&w.data_dir, "w1", 120, &[]);
    let cwd = file_uri(&w.workdir);
    let mut b = bridge(&w.gateway, "laptop", &token).await;
    b.ok(
        json!(1),
        "process/start",
        json!({"processId": "p", "argv": ["sh", "-c", "echo up; exec sleep 60"],
               "cwd": cwd, "env": {}, "tty": false}),
    )
    .await;

    let stopped = crate::hostile_executor::Stopped::stop(w.executors[0].0.id());
    // The default deadline (2 s here).
    let t = Instant::now();
    let e = b
        .err(
            json!(2),
            "fs/readFile",
            json!({"path": file_uri(&w.workdir.join("f.txt"))}),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(e["code"], -32603, "{e}");
    assert_eq!(e["data"]["code"], "gateway_timeout", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("fs/readFile"),
        "{e}"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A long-poll waits its wait first: 1.5 s + 2 s.
    let t = Instant::now();
    let e = b
        .err(
            json!(3),
            "process/read",
            json!({"processId": "p", "afterSeq": 0, "waitMs": 1500}),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(e["data"]["code"], "gateway_timeout", "{e}");
    assert!(took >= Duration::from_millis(3500), "{took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");

    // Resumed, the executor's late answers are dropped, and the session
    // works on.
    drop(stopped);
    let r = b
        .ok(
            json!(4),
            "process/read",
            json!({"processId": "p", "afterSeq": 0, "waitMs": 2000}),
        )
        .await;
    assert!(!r["chunks"].as_array().unwrap().is_empty(), "{r}");
    let log = std::fs::read_to_string(w.data_dir.join("gateway.log")).unwrap();
    assert!(!log.contains("protocol error"), "{log}");
}

#[test]
fn captoken_create_prints_the_token_last_and_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["workspace", "create", "w1"]);
    let out = Command::new(bin())
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["captoken", "create", "--workspace", "w1", "--ttl", "60"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    // Verifies with the data dir's secret, generated 0600 on first use.
    let secret = secret_of(dir.path());
    let claims = captoken::verify(&secret, token, captoken::now_s()).unwrap();
    assert_eq!(claims.workspace_id, "w1");
    assert_eq!(claims.exp - claims.iat, 60);
    assert!(claims.turn_id.starts_with("turn_"));
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join(captoken::keyfile::FILE_NAME)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    for (args, want) in [
        (&["--workspace", "w1", "--ttl", "0"][..], "86400"),
        (&["--workspace", "w1", "--ttl", "86401"][..], "86400"),
        (&["--workspace", "nope"][..], "does not exist"),
        (
            &["--workspace", "w1", "--turn-id", "has space"][..],
            "turn_id",
        ),
    ] {
        let out = Command::new(bin())
            .args(["admin", "--data-dir"])
            .arg(dir.path())
            .args(["captoken", "create"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // An explicit secret file is used instead (and must be long enough).
    let f = dir.path().join("s");
    std::fs::write(&f, "k".repeat(40)).unwrap();
    let t = admin(
        dir.path(),
        &[
            "captoken",
            "create",
            "--workspace",
            "w1",
            "--cap-token-secret-file",
            f.to_str().unwrap(),
        ],
    );
    let explicit = CapTokenSecret::new("k".repeat(40)).unwrap();
    assert!(captoken::verify(&explicit, &t, captoken::now_s()).is_ok());
    assert!(captoken::verify(&secret, &t, captoken::now_s()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_uses_the_secret_file_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let f = dir.path().join("cap-secret");
    std::fs::write(&f, format!("{}\n", "q".repeat(48))).unwrap();
    let f = f.to_str().unwrap();
    admin(&data, &["workspace", "create", "w1"]);
    let token = admin(&data, &["token", "create", "--workspace", "w1"]);
    let exe = admin(
        &data,
        &["executor", "add", "--workspace", "w1", "--name", "laptop"],
    );
    let gw = start_gateway_with(&data, "127.0.0.1:0", &["--cap-token-secret-file", f]);
    let _exe = start_executor(&gw.url(), &exe, &work, &[]);
    wait_for_env(&Api::new(&gw.url(), &token), "laptop").await;
    // No secret generated into the data dir; the data dir's would not do.
    assert!(!data.join(captoken::keyfile::FILE_NAME).exists());
    let with_file = admin(
        &data,
        &[
            "captoken",
            "create",
            "--workspace",
            "w1",
            "--cap-token-secret-file",
            f,
        ],
    );
    let mut b = bridge(&gw, "laptop", &with_file).await;
    b.ok(json!(1), "initialize", json!({})).await;
    let with_dir = mint(&data, "w1", 60, &[]);
    refused(&gw, "laptop", &with_dir, 401, "invalid_captoken").await;
}

/// The admin API mints and revokes (behind the admin token), and a bridge
/// session leaves one audit record when it ends.
#[tokio::test]
async fn admin_api_mints_and_revokes_and_sessions_are_audited() {
    let w = World::start(&[]).await;
    let admin_api = w.admin_api();

    // Not without the admin token: a proxy token is not one.
    let (s, v) = w
        .api
        .post("/api/admin/captokens", json!({"workspace": "w1"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );

    let (s, v) = admin_api
        .post(
            "/api/admin/captokens",
            json!({"workspace": "w1", "ttl_s": 60, "turn_id": "turn-http"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let (s, v) = admin_api
        .post(
            "/api/admin/captokens",
            json!({"workspace": "w1", "ttl_s": 0}),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    let mut b = bridge(&w.gateway, "laptop", &token).await;
    let pid = b
        .ok(
            json!(1),
            "process/start",
            json!({"processId": "p", "argv": ["true"], "cwd": file_uri(&w.workdir), "env": {}, "tty": false}),
        )
        .await;
    assert_eq!(pid["processId"], "p");

    // Revoked through this gateway's admin API: the session closes at once.
    let (s, v) = admin_api
        .post("/api/admin/revoke-turn", json!({"turn_id": "turn-http"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (code, reason) = b.closed(Duration::from_secs(5)).await;
    assert_eq!(code, 4403, "{reason}");
    refused(&w.gateway, "laptop", &token, 401, "turn_revoked").await;

    // One audit record for the session, with its turn and its end.
    crate::audit::records_until(&admin_api, "the bridge session's audit record", |r| {
        r.iter().any(|rec| {
            rec["kind"] == "bridge"
                && rec["via"] == "bridge"
                && rec["session_id"] == "turn-http"
                && rec["error_code"] == "turn_revoked"
                && rec["bytes_in"].as_i64().unwrap_or(0) > 0
        })
    })
    .await;
}

/// With `--audit fail-closed`, a bridge session whose audit record cannot be
/// written is refused before the upgrade (503), like any other call; a
/// `skip_audit` token needs no record and is let through.
#[tokio::test]
async fn fail_closed_audit_refuses_a_bridge_session_it_cannot_record() {
    let w = World::start_with(&["--audit", "fail-closed"], &[]).await;
    let token = mint(&w.data_dir, "w1", 60, &[]);
    let skipping = mint(&w.data_dir, "w1", 60, &["--skip-audit"]);
    crate::audit::block_audit(&w.data_dir, true).await;
    refused(&w.gateway, "laptop", &token, 503, "audit_unavailable").await;
    let mut b = bridge(&w.gateway, "laptop", &skipping).await;
    b.ok(json!(1), "initialize", json!({"clientName": "t"}))
        .await;
    crate::audit::block_audit(&w.data_dir, false).await;
    bridge(&w.gateway, "laptop", &token).await;
}
