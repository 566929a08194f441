//! Two workspaces on one gateway: neither can see or touch the other.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_workspace_token_cannot_list_call_or_touch_another_workspace() {
    let w = World::start(&[]).await;
    admin(&w.data_dir, &["workspace", "create", "w2"]);
    let token2 = admin(&w.data_dir, &["token", "create", "--workspace", "w2"]);
    let exe2 = admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w2", "--name", "beta"],
    );
    let work2 = w.dir.path().join("work2");
    std::fs::create_dir_all(&work2).unwrap();
    let _e2 = start_executor(&w.gateway.url(), &exe2, &work2, &[]);
    let api2 = Api::new(&w.gateway.url(), &token2);
    wait_for_env(&api2, "beta").await;

    // Each sees only its own environment.
    let names = |v: serde_json::Value| -> Vec<String> {
        v["envs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(api2.envs().await), ["beta"]);
    assert_eq!(names(w.api.envs().await), ["laptop"]);

    // w2 cannot call w1's environment, nor w1 w2's.
    let (s, v) = api2
        .call_raw("laptop", "shell", json!({"command": ["true"]}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("env_not_found"))
    );
    let (s, v) = w
        .api
        .call_raw("beta", "shell", json!({"command": ["true"]}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("env_not_found"))
    );

    // w2 cannot read, write, signal, resize, stream or terminate w1's
    // session, and cannot even learn that it exists: every route answers
    // exactly as it does for a sid that was never issued.
    let sid = w.api.exec("laptop", json!({"command": ["cat"]})).await;
    let unknown = "ps_000000000000000000000000";
    for op in ["output", "stdin", "terminate", "signal", "resize", "stream"] {
        let answer = |sid: &str| {
            let path = format!("/api/connectors/processes/{sid}/{op}");
            let body = match op {
                "stdin" => json!({"data_b64": b64e(b"x\n")}),
                "signal" => json!({"signal": "terminate"}),
                "resize" => json!({"cols": 80, "rows": 24}),
                _ => json!({}),
            };
            let api2 = &api2;
            async move {
                if matches!(op, "output" | "stream") {
                    api2.get(&path).await
                } else {
                    api2.post(&path, body).await
                }
            }
        };
        let (s, v) = answer(&sid).await;
        assert_eq!(s, 404, "{op}: {v}");
        assert_eq!(v["error"]["code"], "session_not_found", "{op}: {v}");
        let (s_unknown, v_unknown) = answer(unknown).await;
        assert_eq!(s_unknown, 404, "{op}: {v_unknown}");
        // The same message, but for the sid it names.
        assert_eq!(
            v["error"]["message"].as_str().unwrap().replace(&sid, "SID"),
            v_unknown["error"]["message"]
                .as_str()
                .unwrap()
                .replace(unknown, "SID"),
            "{op}"
        );
    }
    // …and the session is untouched: alive, no input from w2.
    assert_eq!(w.api.stdin(&sid, b"mine\n", false).await.0, 200);
    let (data, v) = w.api.read_until(&sid, 0, |d| d.ends_with(b"mine\n")).await;
    assert_eq!(data, b"mine\n");
    assert_eq!(v["session_alive"], true);
}
