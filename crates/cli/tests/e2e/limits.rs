//! Per-workspace limits against a real gateway: the request rate (429
//! `rate_limited` with Retry-After, then recovery; off by default) and the
//! cap on live process sessions (429 `too_many_sessions` until one is
//! terminated or exits).

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

async fn envs_list(http: &reqwest::Client, url: &str, token: &str) -> (u16, Option<u64>, Value) {
    let resp = http
        .post(format!("{url}/api/connectors/envs/list"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry_after, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_over_its_rate_gets_429_with_retry_after_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    admin(&data_dir, &["workspace", "create", "w1"]);
    admin(&data_dir, &["workspace", "create", "w2"]);
    let t1 = admin(&data_dir, &["token", "create", "--workspace", "w1"]);
    let t2 = admin(&data_dir, &["token", "create", "--workspace", "w2"]);
    let g = start_gateway_with(
        &data_dir,
        "127.0.0.1:0",
        &["--rate-limit-rps", "0.5", "--rate-limit-burst", "3"],
    );
    let url = g.url();
    let http = fresh_client();

    for i in 0..3 {
        let (s, _, v) = envs_list(&http, &url, &t1).await;
        assert_eq!(s, 200, "request {i} of the burst: {v}");
    }
    let (s, retry_after, v) = envs_list(&http, &url, &t1).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(v["error"]["message"].as_str().unwrap().contains("w1"));
    // 0.5 per second: the next token is up to 2 s away.
    let retry_after = retry_after.expect("a Retry-After header");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // /mcp counts too.
    let resp = http
        .post(format!("{url}/mcp"))
        .bearer_auth(&t1)
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    // Another workspace has its own bucket.
    let (s, _, _) = envs_list(&http, &url, &t2).await;
    assert_eq!(s, 200);
    // A bad token is still 401, not 429.
    let (s, _, _) = envs_list(&http, &url, "egp_nope").await;
    assert_eq!(s, 401);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (s, _, v) = envs_list(&http, &url, &t1).await;
    assert_eq!(s, 200, "after Retry-After: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_rate_limit_many_calls_succeed() {
    let w = World::start(&[]).await;
    let http = fresh_client();
    for i in 0..100 {
        let (s, _, v) = envs_list(&http, &w.api.url, &w.api.token).await;
        assert_eq!(s, 200, "request {i}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_are_capped_until_one_is_terminated_or_exits() {
    let w = World::start_with(&["--max-sessions-per-workspace", "2"], &[]).await;
    let api = &w.api;
    let sleep = json!({"command": ["sleep", "60"]});
    let a = api.exec("laptop", sleep.clone()).await;
    let _b = api.exec("laptop", sleep.clone()).await;
    let (s, v) = api.call_raw("laptop", "exec_command", sleep.clone()).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "too_many_sessions");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--max-sessions-per-workspace 2") && message.contains("terminate"),
        "{message}"
    );
    // shell is not a session.
    api.call("laptop", "shell", json!({"command": ["true"]}))
        .await;

    // Terminating one frees its place at once.
    let (s, v) = api
        .post(
            &format!("/api/connectors/processes/{a}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = api.exec("laptop", sleep.clone()).await;
    let (s, _) = api.call_raw("laptop", "exec_command", sleep.clone()).await;
    assert_eq!(s, 429);

    // A process that exits on its own frees its place too: the gateway
    // asks the executor when the cap is reached.
    let (s, v) = api
        .post(
            &format!("/api/connectors/processes/{c}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let quick = api
        .exec("laptop", json!({"command": ["sh", "-c", "exit 0"]}))
        .await;
    api.read_until(&quick, 0, |_| false).await;
    let _d = api.exec("laptop", sleep.clone()).await;
    let (s, _) = api.call_raw("laptop", "exec_command", sleep).await;
    assert_eq!(s, 429);
}
