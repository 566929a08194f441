//! Revocation reaches what is already open: an SSE stream and a long-poll
//! end when their proxy token is revoked, and removing an executor closes
//! its live link (and what runs over it: bridge sessions, streams).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{admin, bin, Api, GatewayProc, World};
use crate::sse::SseReader;

/// A second proxy token of `w1`: `(id, token)`.
fn second_token(data_dir: &Path) -> (String, String) {
    let out = Command::new(bin())
        .args(["admin", "--data-dir"])
        .arg(data_dir)
        .args(["token", "create", "--workspace", "w1"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let id = text.split_whitespace().nth(3).unwrap().to_string();
    assert!(id.starts_with("tok_"), "{text}");
    (id, text.lines().last().unwrap().to_string())
}

/// A process that prints a line every 200 ms for a minute.
async fn ticking(api: &Api) -> String {
    api.exec(
        "laptop",
        json!({"command": ["sh", "-c", "i=0; while [ $i -lt 300 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done"]}),
    )
    .await
}

/// Reads the stream until it ends; returns the `error` event it ended with.
/// Panics if output keeps coming for `within` (the old behaviour).
async fn stream_error(stream: &mut SseReader, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let mut error = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "the stream still delivers output {within:?} after the revocation"
        );
        match stream.next_within(Duration::from_secs(20)).await {
            Some(e) if e.event == "error" => error = Some(e.data),
            Some(e) => assert!(error.is_none(), "an event after the error: {e:?}"),
            None => return error.expect("the stream ended with an error event"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_its_token_is_revoked() {
    let w = World::start(&[]).await;
    let (id, token) = second_token(&w.data_dir);
    let api = Api::new(&w.api.url, &token);
    let sid = ticking(&api).await;
    let mut stream = SseReader::open(&api, &sid, None, None).await;
    let first = stream.next().await.unwrap();
    assert_eq!(first.event, "output", "{first:?}");

    admin(&w.data_dir, &["token", "revoke", &id]);
    let revoked_at = Instant::now();
    // Rechecked every 2 s; a loaded machine gets generous room.
    let error = stream_error(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(error["code"], "invalid_token", "{error}");
    assert!(error["message"].as_str().unwrap().contains("revoked"));
    eprintln!(
        "stream ended {:?} after the revocation",
        revoked_at.elapsed()
    );
    // The other token's view of the process is untouched.
    assert_eq!(w.api.output(&sid, 0).await["session_alive"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_ends_when_its_token_is_revoked() {
    let w = World::start(&[]).await;
    let (id, token) = second_token(&w.data_dir);
    let api = Api::new(&w.api.url, &token);
    let sid = api
        .exec("laptop", json!({"command": ["sleep", "60"]}))
        .await;
    let poll = {
        let api = api.clone();
        let sid = sid.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = api
                .get(&format!(
                    "/api/connectors/processes/{sid}/output?since=0&wait_ms=30000"
                ))
                .await;
            (r, started.elapsed())
        })
    };
    // Let the poll reach its wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin(&w.data_dir, &["token", "revoke", &id]);
    let ((status, v), took) = poll.await.unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
    // Not the 30 s it asked to wait.
    assert!(took < Duration::from_secs(12), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_long_poll_ends_when_its_token_is_revoked() {
    let w = World::start(&[]).await;
    let (id, token) = second_token(&w.data_dir);
    let api = Api::new(&w.api.url, &token);
    let sid = api
        .exec("laptop", json!({"command": ["sleep", "60"]}))
        .await;
    let poll = {
        let api = api.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = api
                .http
                .post(format!("{}/mcp", api.url))
                .bearer_auth(&api.token)
                .header("accept", "application/json, text/event-stream")
                .header("MCP-Protocol-Version", "2025-06-18")
                .json(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                        "name": "read_output",
                        "arguments": {"session_id": sid, "after_seq": 0, "wait_ms": 30000},
                    }}),
                )
                .send()
                .await
                .unwrap();
            let v: Value = resp.json().await.unwrap();
            (v, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin(&w.data_dir, &["token", "revoke", &id]);
    let (v, took) = poll.await.unwrap();
    let result = &v["result"];
    assert_eq!(result["isError"], true, "{v}");
    assert_eq!(
        result["structuredContent"]["error"]["code"], "invalid_token",
        "{v}"
    );
    assert!(took < Duration::from_secs(12), "{took:?}");
}

/// Opens a bridge session on `target` with a fresh capability token.
async fn bridge_session(
    g: &GatewayProc,
    data_dir: &Path,
    target: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let token = admin(
        data_dir,
        &["captoken", "create", "--workspace", "w1", "--ttl", "600"],
    );
    let mut req = format!("ws://{}/bridge/{target}", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the bridge session opens");
    ws
}

/// Waits for the bridge session's close frame: (code, reason).
async fn bridge_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("the bridge session is still open after {within:?}"));
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => return (0, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error instead of a close frame: {e}"),
        }
    }
}

/// Checks what follows a removal: the bridge session closed (1013, saying
/// why), the stream ended with `env_not_found`, the environment is gone.
async fn after_removal(
    w: &World,
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    stream: &mut SseReader,
    link_within: Duration,
) {
    let removed_at = Instant::now();
    let (code, reason) = bridge_closed(ws, link_within).await;
    eprintln!("link closed {:?} after the removal", removed_at.elapsed());
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("removed"), "{reason}");
    let error = stream_error(stream, Duration::from_secs(10)).await;
    assert_eq!(error["code"], "env_not_found", "{error}");
    let envs = w.api.envs().await;
    assert_eq!(envs["envs"].as_array().unwrap().len(), 0, "{envs}");
    let started = Instant::now();
    let (s, v) = w
        .api
        .call_raw("laptop", "shell", json!({"command": ["true"]}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("env_not_found")),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_executor_with_the_cli_closes_its_live_link() {
    let w = World::start(&[]).await;
    let sid = ticking(&w.api).await;
    let mut stream = SseReader::open(&w.api, &sid, None, None).await;
    assert_eq!(stream.next().await.unwrap().event, "output");
    let mut ws = bridge_session(&w.gateway, &w.data_dir, "laptop").await;

    // Another process, on the store directly: the gateway notices within
    // its sweep (1 s) and closes the link.
    admin(
        &w.data_dir,
        &["executor", "remove", "--workspace", "w1", "laptop"],
    );
    after_removal(&w, &mut ws, &mut stream, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_executor_through_the_admin_api_closes_its_live_link_at_once() {
    let w = World::start(&[]).await;
    let sid = ticking(&w.api).await;
    let mut stream = SseReader::open(&w.api, &sid, None, None).await;
    assert_eq!(stream.next().await.unwrap().event, "output");
    let mut ws = bridge_session(&w.gateway, &w.data_dir, "laptop").await;

    let admin_api = w.admin_api();
    let resp = admin_api
        .http
        .delete(format!(
            "{}/api/admin/executors/laptop?workspace=w1",
            admin_api.url
        ))
        .bearer_auth(&admin_api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    after_removal(&w, &mut ws, &mut stream, Duration::from_secs(2)).await;
}
