//! `Idempotency-Key` on the mutating routes (issue 21, section 3): a
//! repeat answers the first answer without doing it again, a different
//! request with the key is refused, duplicates run once, a lost response
//! does not make a retry run twice, and keys outlive a gateway restart.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// A request with `key`; answers (status, replayed?, body).
async fn send(api: &Api, req: reqwest::RequestBuilder, key: &str) -> (u16, bool, Value) {
    let resp = req
        .bearer_auth(&api.token)
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("request reaches the gateway");
    let status = resp.status().as_u16();
    let replayed = match resp.headers().get("idempotent-replayed") {
        None => false,
        Some(v) => {
            assert_eq!(v, "true");
            true
        }
    };
    let body = resp.json().await.expect("a JSON answer");
    (status, replayed, body)
}

async fn call(api: &Api, key: &str, tool: &str, args: Value) -> (u16, bool, Value) {
    let req = api
        .http
        .post(format!("{}/api/connectors/envs/laptop/tool/call", api.url))
        .json(&json!({"tool": tool, "arguments": args}));
    send(api, req, key).await
}

async fn put(api: &Api, key: &str, path: &str, body: &'static [u8]) -> (u16, bool, Value) {
    let req = api
        .http
        .put(format!(
            "{}/api/connectors/envs/laptop/files?path={path}",
            api.url
        ))
        .body(body);
    send(api, req, key).await
}

/// The workspace's sessions whose argv contains `marker`.
async fn sessions_with(api: &Api, marker: &str) -> Vec<Value> {
    let (s, v) = api.get("/api/connectors/processes?limit=1000").await;
    assert_eq!(s, 200, "{v}");
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["command"].to_string().contains(marker))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_retried_write_is_replayed_and_a_changed_one_refused() {
    let w = World::start(&[]).await;
    let api = &w.api;
    let write = |content: &str| json!({"path": "a.txt", "content": content});

    let (s, replayed, first) = call(api, "k-write", "write_file", write("one")).await;
    assert_eq!((s, replayed), (200, false), "{first}");
    let (s, replayed, again) = call(api, "k-write", "write_file", write("one")).await;
    assert_eq!((s, replayed), (200, true), "{again}");
    assert_eq!(again, first);

    // The same key with a different body: refused, nothing written.
    let (s, _, v) = call(api, "k-write", "write_file", write("two")).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "idempotency_key_reused");
    assert_eq!(std::fs::read(w.workdir.join("a.txt")).unwrap(), b"one");
    // Another route with the key: refused too.
    let (s, _, v) = put(api, "k-write", "a.txt", b"three").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );

    // A streamed upload: replayed with the same body, refused with another.
    let (s, replayed, first) = put(api, "k-put", "b.bin", b"bytes-1").await;
    assert_eq!((s, replayed), (200, false), "{first}");
    std::fs::write(w.workdir.join("b.bin"), b"changed meanwhile").unwrap();
    let (s, replayed, again) = put(api, "k-put", "b.bin", b"bytes-1").await;
    assert_eq!((s, replayed, &again), (200, true, &first));
    assert_eq!(
        std::fs::read(w.workdir.join("b.bin")).unwrap(),
        b"changed meanwhile",
        "a replay does not write again"
    );
    let (s, replayed, v) = put(api, "k-put", "b.bin", b"bytes-2").await;
    assert_eq!((s, replayed), (422, true), "{v}");
    assert_eq!(v["error"]["code"], "idempotency_key_reused");

    // Keys: printable ASCII, at most 255 bytes.
    let (s, _, v) = call(api, &"k".repeat(256), "write_file", write("x")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let (s, _, v) = call(api, &"k".repeat(255), "write_file", write("x")).await;
    assert_eq!(s, 200, "{v}");

    // Keys are the workspace's: another token of it shares them.
    let other = admin(&w.data_dir, &["token", "create", "--workspace", "w1"]);
    let api2 = Api::new(&w.gateway.url(), &other);
    let (s, replayed, _) = call(&api2, "k-write", "write_file", write("one")).await;
    assert_eq!((s, replayed), (200, true));
}

/// Writes `request` on a fresh TCP connection to the gateway and closes it
/// without reading the answer: the response is lost.
async fn send_and_drop(w: &World, key: &str, args: &Value, wait_for: Option<&str>) {
    let body = json!({"tool": "exec_command", "arguments": args}).to_string();
    let request = format!(
        "POST /api/connectors/envs/laptop/tool/call HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\nidempotency-key: {key}\r\ncontent-length: {}\r\n\r\n{body}",
        w.api.token,
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(w.gateway.addr)
        .await
        .unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    if let Some(marker) = wait_for {
        eventually(
            Duration::from_secs(15),
            "the first request started",
            || async { (sessions_with(&w.api, marker).await.len() == 1).then_some(()) },
        )
        .await;
    }
    drop(conn);
}

#[tokio::test]
async fn an_exec_command_retried_after_a_lost_response_starts_one_process() {
    let w = World::start(&[]).await;

    // The connection drops once the process runs; the retry is a replay
    // of the same session.
    let args = json!({"command": ["sh", "-c", "sleep 30 # lost-1"]});
    send_and_drop(&w, "k-lost-1", &args, Some("lost-1")).await;
    let (s, replayed, v) = call(&w.api, "k-lost-1", "exec_command", args).await;
    assert_eq!((s, replayed), (200, true), "{v}");
    let listed = sessions_with(&w.api, "lost-1").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["sid"], v["structuredContent"]["session_id"]);

    // The connection drops right after sending; the retry comes at once,
    // whichever of the two gets there first.
    let args = json!({"command": ["sh", "-c", "sleep 30 # lost-2"]});
    send_and_drop(&w, "k-lost-2", &args, None).await;
    let (s, _, v) = call(&w.api, "k-lost-2", "exec_command", args).await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = sessions_with(&w.api, "lost-2").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["sid"], v["structuredContent"]["session_id"]);
}

#[tokio::test]
async fn concurrent_duplicates_run_once() {
    let w = World::start(&[]).await;
    let args = json!({"command": ["sh", "-c", "echo x >> runs.txt; sleep 1; echo done"]});
    let calls = (0..8).map(|_| call(&w.api, "k-concurrent", "shell", args.clone()));
    let answers = futures_util::future::join_all(calls).await;
    let first = &answers[0].2;
    assert_eq!(first["structuredContent"]["exit_code"], 0, "{first}");
    for (s, _, v) in &answers {
        assert_eq!((*s, v), (200, first));
    }
    let replays = answers.iter().filter(|a| a.1).count();
    assert_eq!(replays, 7, "all but one are replays");
    assert_eq!(std::fs::read(w.workdir.join("runs.txt")).unwrap(), b"x\n");
}

#[tokio::test]
async fn keys_outlive_a_gateway_restart_and_a_cut_off_request_is_in_doubt() {
    let mut w = World::start(&[]).await;
    let args = json!({"command": ["sh", "-c", "echo x >> runs.txt; echo ran"]});
    let (s, replayed, first) = call(&w.api, "k-restart", "shell", args.clone()).await;
    assert_eq!((s, replayed), (200, false), "{first}");

    // A call cut off by the gateway's death: it ran, no answer was kept.
    let cut = json!({"command": ["sh", "-c", "echo y >> cut.txt; sleep 30"]});
    let pending = {
        let (api, cut) = (w.api.clone(), cut.clone());
        tokio::spawn(async move {
            let req = api
                .http
                .post(format!("{}/api/connectors/envs/laptop/tool/call", api.url))
                .bearer_auth(&api.token)
                .header("Idempotency-Key", "k-cut")
                .json(&json!({"tool": "shell", "arguments": cut}));
            req.send().await
        })
    };
    let cut_file = w.workdir.join("cut.txt");
    eventually(Duration::from_secs(15), "the cut-off call ran", || async {
        cut_file.exists().then_some(())
    })
    .await;

    let addr = w.gateway.addr;
    w.gateway.proc.kill();
    assert!(pending.await.unwrap().is_err(), "the call was cut off");
    w.gateway = start_gateway(&w.data_dir, &addr.to_string());
    wait_for_env(&w.api, "laptop").await;

    let (s, replayed, again) = call(&w.api, "k-restart", "shell", args).await;
    assert_eq!((s, replayed, &again), (200, true, &first));
    assert_eq!(std::fs::read(w.workdir.join("runs.txt")).unwrap(), b"x\n");

    let (s, _, v) = call(&w.api, "k-cut", "shell", cut).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "idempotency_key_in_doubt");
    assert_eq!(std::fs::read(&cut_file).unwrap(), b"y\n", "not run again");
}

/// A `shell` whose client goes away is killed with its process group (its
/// future is dropped), unless it came with an idempotency key: then it runs
/// to its end, so that its answer is there for the retry.
#[tokio::test]
async fn a_shell_whose_client_goes_away_is_killed_unless_it_has_a_key() {
    let w = World::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    for keyed in [false, true] {
        let pid_file = dir.path().join(format!("pid-{keyed}"));
        let after = dir.path().join(format!("after-{keyed}"));
        let command = format!(
            "sleep {} & echo $! > {}; wait; touch {}",
            if keyed { 1 } else { 30 },
            pid_file.display(),
            after.display()
        );
        let body = json!({"tool": "shell", "arguments": {"command": command}}).to_string();
        let key = if keyed {
            "idempotency-key: k-dropped\r\n"
        } else {
            ""
        };
        let request = format!(
            "POST /api/connectors/envs/laptop/tool/call HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n{key}content-length: {}\r\n\r\n{body}",
            w.api.token,
            body.len()
        );
        let mut conn = tokio::net::TcpStream::connect(w.gateway.addr)
            .await
            .unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let pid: i32 = eventually(Duration::from_secs(15), "the shell started", || async {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .await;
        drop(conn);
        if keyed {
            eventually(
                Duration::from_secs(15),
                "the keyed shell ran to its end",
                || async { after.exists().then_some(()) },
            )
            .await;
            let (s, replayed, v) =
                call(&w.api, "k-dropped", "shell", json!({"command": command})).await;
            assert_eq!((s, replayed), (200, true), "{v}");
            assert_eq!(v["structuredContent"]["exit_code"], 0, "{v}");
        } else {
            eventually(
                Duration::from_secs(10),
                "the dropped shell's group was killed",
                || async { (!alive(pid as u32)).then_some(()) },
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!after.exists(), "the shell itself was killed too");
        }
    }
}

/// A keyed call whose executor goes away mid-call ends 503 with its outcome
/// unknown: the key is not released, and a retry with it answers 409
/// `idempotency_key_in_doubt` instead of running the command a second time
/// (it used to run again once the executor was back). A keyed call that
/// never reached an executor (none connected) still releases its key.
#[tokio::test]
async fn a_call_whose_outcome_is_unknown_keeps_its_key_in_doubt() {
    let mut w = World::start(&[]).await;
    let runs = w.workdir.join("runs.txt");
    let args = json!({"command": ["sh", "-c", "echo x >> runs.txt; sleep 20"]});
    let pending = {
        let (api, args) = (w.api.clone(), args.clone());
        tokio::spawn(async move { call(&api, "k-unknown", "shell", args).await })
    };
    eventually(Duration::from_secs(15), "the command ran", || async {
        runs.exists().then_some(())
    })
    .await;
    w.executors[0].kill();
    let (s, _, v) = pending.await.unwrap();
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "executor_unavailable");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("unknown"),
        "{v}"
    );

    // No executor connected: the request cannot reach one, and its key is
    // released.
    let write = json!({"path": "w.txt", "content": "written"});
    let (s, _, v) = call(&w.api, "k-never-sent", "write_file", write.clone()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("executor_unavailable")),
        "{v}"
    );

    w.executors.push(start_executor(
        &w.gateway.url(),
        &w.exe_token,
        &w.workdir,
        &[],
    ));
    wait_for_env(&w.api, "laptop").await;

    let (s, replayed, v) = call(&w.api, "k-unknown", "shell", args).await;
    assert_eq!((s, replayed), (409, false), "{v}");
    assert_eq!(v["error"]["code"], "idempotency_key_in_doubt");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("outcome unknown"),
        "{v}"
    );
    assert_eq!(std::fs::read(&runs).unwrap(), b"x\n", "not run again");

    let (s, replayed, v) = call(&w.api, "k-never-sent", "write_file", write).await;
    assert_eq!((s, replayed), (200, false), "{v}");
    assert_eq!(std::fs::read(w.workdir.join("w.txt")).unwrap(), b"written");
}
