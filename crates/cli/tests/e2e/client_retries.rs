//! The Rust client retries reads (the read-only tools, `output`, envs/list)
//! as it retries keyed calls: a read sent while the gateway restarts (the
//! connection refused, then 503 until the executor is back) succeeds once
//! it is up again.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn reads_succeed_across_a_gateway_restart() {
    let mut w = World::start(&[]).await;
    std::fs::write(w.workdir.join("r.txt"), b"read me").unwrap();
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "echo before; sleep 30"]}),
        )
        .await;
    let client = execgate_client::Client::new(w.gateway.url(), w.api.token.clone())
        .unwrap()
        .with_retries(8);

    let addr = w.gateway.addr;
    w.gateway.proc.kill();
    let down = tokio::time::Instant::now();
    let read = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call_tool("laptop", "read_file", json!({"path": "r.txt"}))
                .await
        })
    };
    let output = {
        let (client, sid) = (client.clone(), sid.clone());
        tokio::spawn(async move { client.output(&sid, 0, None).await })
    };
    let envs = {
        let client = client.clone();
        tokio::spawn(async move { client.envs().await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!read.is_finished(), "the read waits for the gateway");
    w.gateway = start_gateway(&w.data_dir, &addr.to_string());

    let r = read.await.unwrap().expect("read_file after the restart");
    assert!(!r.is_error, "{r:?}");
    assert_eq!(b64d(r.first_text()), b"read me", "{r:?}");
    assert!(down.elapsed() >= Duration::from_millis(1500));
    let out = output.await.unwrap().expect("output after the restart");
    let text: String = out
        .chunks
        .iter()
        .map(|c| match (&c.data_b64, &c.text) {
            (Some(b), _) => String::from_utf8_lossy(&b64d(b)).into_owned(),
            (None, t) => t.clone().unwrap_or_default(),
        })
        .collect();
    assert!(text.contains("before"), "{out:?}");
    envs.await.unwrap().expect("envs/list after the restart");
}
