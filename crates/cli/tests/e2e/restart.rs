//! A gateway crash does not lose processes: the executor reconnects by
//! itself and the gateway resumes its session.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_killed_gateway_comes_back_and_sessions_carry_on() {
    let mut w = World::start(&[]).await;
    let sid = w.api.exec("laptop", json!({"command": ["cat"]})).await;
    assert_eq!(w.api.stdin(&sid, b"before\n", false).await.0, 200);
    w.api.read_until(&sid, 0, |d| d == b"before\n").await;

    // SIGKILL the gateway, then start it again on the same address.
    let addr = w.gateway.addr;
    w.gateway.proc.kill();
    w.gateway = start_gateway(&w.data_dir, &addr.to_string());
    wait_for_env(&w.api, "laptop").await;

    // The same sid reads the process's output, with no seq gap…
    assert_eq!(w.api.stdin(&sid, b"after\n", false).await.0, 200);
    let (data, v) = w.api.read_until(&sid, 0, |d| d == b"before\nafter\n").await;
    assert_eq!(data, b"before\nafter\n");
    assert_eq!(v["session_alive"], true);
    let v = w.api.output(&sid, 0).await;
    let seqs: Vec<u64> = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "{seqs:?}");
    assert_eq!(v["lost_bytes"], 0);
    // …and the process is still the same one: stdin EOF ends it.
    assert_eq!(w.api.stdin(&sid, b"", true).await.0, 200);
    let (_, v) = w.api.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["exit_code"], 0);
}
