//! Proxy-token verification against a token authority: gateway B runs in
//! remote mode (`--agentserver-url`) against gateway A, a second real
//! execgate serving `/internal/validate-proxy-token` from its store. A's
//! `/internal/stats` counts the upstream calls B makes.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const SECRET: &str = "s3cret-shared-between-gateways";

async fn authority_calls(http: &reqwest::Client, authority: &str) -> (u64, u64) {
    let v: Value = http
        .get(format!("{authority}/internal/stats"))
        .header("X-Internal-Secret", SECRET)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = &v["validate_proxy_token"];
    (
        s["accepted"].as_u64().unwrap(),
        s["rejected"].as_u64().unwrap(),
    )
}

fn start_authority(data_dir: &Path, listen: &str, secret_file: &Path) -> GatewayProc {
    start_gateway_with(
        data_dir,
        listen,
        &["--internal-secret-file", secret_file.to_str().unwrap()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_mode_caches_coalesces_and_survives_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("authority");
    let b_dir = dir.path().join("gateway");
    let workdir = dir.path().join("work");
    for d in [&a_dir, &b_dir, &workdir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let secret_file = dir.path().join("internal-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();

    // A owns the tokens; B owns the executors, in a workspace of the same name
    // that `executor add` creates.
    admin(&a_dir, &["workspace", "create", "w1"]);
    let good = admin(
        &a_dir,
        &["token", "create", "--workspace", "w1", "--user", "alice"],
    );
    let exe_token = admin(
        &b_dir,
        &["executor", "add", "--workspace", "w1", "--name", "laptop"],
    );

    let mut a = start_authority(&a_dir, "127.0.0.1:0", &secret_file);
    let authority = a.url();
    let b = start_gateway_with(
        &b_dir,
        "127.0.0.1:0",
        &[
            "--agentserver-url",
            &authority,
            "--agentserver-secret-file",
            secret_file.to_str().unwrap(),
            "--auth-cache-rejected-secs",
            "2",
        ],
    );
    let _executor = start_executor(&b.url(), &exe_token, &workdir, &[]);
    let http = fresh_client();

    // /internal/* needs the secret on A and does not exist on B.
    let r = http
        .post(format!("{authority}/internal/validate-proxy-token"))
        .json(&json!({"token": good}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{}/internal/validate-proxy-token", b.url()))
        .header("X-Internal-Secret", SECRET)
        .json(&json!({"token": good}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(authority_calls(&http, &authority).await, (0, 0));

    // A hit after the first miss: one upstream call, however many requests.
    let api = Api::new(&b.url(), &good);
    wait_for_env(&api, "laptop").await;
    for _ in 0..5 {
        api.envs().await;
    }
    let r = api
        .call(
            "laptop",
            "shell",
            json!({"command": ["echo", "via remote auth"]}),
        )
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "via remote auth\n", "{r}");
    assert_eq!(authority_calls(&http, &authority).await, (1, 0));

    // Rejections are cached for --auth-cache-rejected-secs, then asked again.
    let bad = Api::new(&b.url(), "egp_not-a-token");
    for _ in 0..3 {
        let (s, v) = bad.post("/api/connectors/envs/list", json!({})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("invalid_token"))
        );
    }
    assert_eq!(authority_calls(&http, &authority).await, (1, 1));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, _) = bad.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(s, 401);
    assert_eq!(authority_calls(&http, &authority).await, (1, 2));

    // 100 concurrent first requests with one new token: one upstream call.
    let fresh = admin(&a_dir, &["token", "create", "--workspace", "w1"]);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let api = Api::new(&b.url(), &fresh);
            tokio::spawn(async move { api.post("/api/connectors/envs/list", json!({})).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(authority_calls(&http, &authority).await, (2, 2));

    // Revocation on the authority is immediate there (embedded, uncached).
    let later = admin(&a_dir, &["token", "create", "--workspace", "w1"]);
    let ask_a = |token: String| {
        let http = http.clone();
        let authority = authority.clone();
        async move {
            http.post(format!("{authority}/internal/validate-proxy-token"))
                .header("X-Internal-Secret", SECRET)
                .json(&json!({"token": token, "proxy_token": token}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = ask_a(later.clone()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["workspace_id"], "w1");
    let id = admin(&a_dir, &["token", "list", "--workspace", "w1"]);
    let id = id.split_whitespace().next().unwrap().to_string();
    admin(&a_dir, &["token", "revoke", &id]);
    assert_eq!(ask_a(later).await.status(), 401);

    // The authority dies: a cached token keeps working; an unknown one is
    // 503 auth_unavailable with Retry-After, not 401.
    let port = a.addr.port();
    a.proc.kill();
    let newcomer = admin(&a_dir, &["token", "create", "--workspace", "w1"]);
    api.envs().await;
    for _ in 0..2 {
        let r = http
            .post(format!("{}/api/connectors/envs/list", b.url()))
            .bearer_auth(&newcomer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "auth_unavailable", "{v}");
    }

    // It comes back on the same address: B recovers without a restart, and
    // the outage was not cached.
    let a2 = start_authority(&a_dir, &format!("127.0.0.1:{port}"), &secret_file);
    let (s, v) = Api::new(&b.url(), &newcomer)
        .post("/api/connectors/envs/list", json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["envs"][0]["name"], "laptop");
    assert_eq!(authority_calls(&http, &a2.url()).await, (1, 0));
}
