//! Live processes (issue 5): long-poll latency, signals, the listing and
//! `execgate ps`, lifecycles (expiry, max_runtime_ms, executor restart) and
//! process-group termination. Real gateway, executor and children.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::*;

fn pid_in(workdir: &std::path::Path, file: &str) -> u32 {
    std::fs::read_to_string(workdir.join(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn wait_for_file(path: std::path::PathBuf) {
    eventually(10, &format!("{} to be written", path.display()), || {
        let path = path.clone();
        async move { std::fs::read_to_string(&path).is_ok_and(|s| s.ends_with('\n')) }
    })
    .await;
}

/// The first chunk reaches a waiting long-poll within 50 ms of the child
/// writing it: pushed, not found by a timer. The best of three tries: on a
/// loaded two-core CI machine one try can be descheduled past 50 ms (64 ms
/// once), while a poll that waits on a timer misses all three.
#[tokio::test]
async fn long_poll_delivers_the_first_chunk_within_50_ms() {
    let w = World::start(&[]).await;
    let mut tries = Vec::new();
    for _ in 0..3 {
        let latency_ms = first_chunk_latency_ms(&w).await;
        if (0.0..50.0).contains(&latency_ms) {
            return;
        }
        tries.push(latency_ms);
    }
    panic!("the first chunk took {tries:.1?} ms in three tries");
}

/// One try: a child that prints the wall clock (ns) as it writes, 1 s in;
/// the time from its write to the long-poll's answer.
async fn first_chunk_latency_ms(w: &World) -> f64 {
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "sleep 1; date +%s%N; sleep 5"], "pipe_stdin": false}),
        )
        .await;
    let started = Instant::now();
    let (s, v) = w
        .api
        .get(&format!(
            "/api/connectors/processes/{sid}/output?since=0&wait_ms=10000"
        ))
        .await;
    let arrived = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    assert_eq!(s, 200, "{v}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the poll waited for the output"
    );
    let chunk = &v["chunks"][0];
    let written: i128 = String::from_utf8(b64d(chunk["data_b64"].as_str().unwrap()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (arrived - written) as f64 / 1e6
}

#[tokio::test]
async fn signals_reach_the_process_group_and_bad_names_are_refused() {
    let w = World::start(&[]).await;
    for (signal, code) in [
        ("interrupt", 130),
        ("terminate", 143),
        ("hangup", 129),
        ("kill", 137),
    ] {
        let sid = w
            .api
            .exec(
                "laptop",
                json!({"command": ["sleep", "30"], "pipe_stdin": false}),
            )
            .await;
        let (s, v) = w
            .api
            .post(
                &format!("/api/connectors/processes/{sid}/signal"),
                json!({ "signal": signal }),
            )
            .await;
        assert_eq!((s, &v), (200, &json!({"ok": true})), "{signal}");
        let (_, v) = w.api.read_until(&sid, 0, |_| false).await;
        assert_eq!(v["exit_code"], code, "{signal}: {v}");
    }
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sleep", "30"], "pipe_stdin": false}),
        )
        .await;
    let (s, v) = w
        .api
        .post(
            &format!("/api/connectors/processes/{sid}/signal"),
            json!({"signal": "usr1"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupt"),
        "{v}"
    );
    w.api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
}

#[tokio::test]
async fn the_listing_and_ps_show_the_workspace_processes() {
    let w = World::start(&[]).await;
    let running = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sleep", "30"], "pipe_stdin": false}),
        )
        .await;
    let done = w
        .api
        .exec("laptop", json!({"command": ["sh", "-c", "exit 4"]}))
        .await;
    w.api.read_until(&done, 0, |_| false).await;

    let (s, v) = w.api.get("/api/connectors/processes").await;
    assert_eq!(s, 200, "{v}");
    let list = v["processes"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    let find = |sid: &str| list.iter().find(|p| p["sid"] == sid).unwrap().clone();
    let r = find(&running);
    assert_eq!(r["env"], "laptop");
    assert_eq!(r["command"], json!(["sleep", "30"]));
    assert_eq!(r["session_alive"], true);
    assert_eq!(r["exit_code"], Value::Null);
    assert_eq!(r["status"], "running");
    assert!(r["started_at"].as_str().unwrap().ends_with('Z'));
    let d = find(&done);
    assert_eq!(d["session_alive"], false);
    assert_eq!(d["exit_code"], 4);
    assert_eq!(d["status"], "exited");
    // Newest first.
    assert_eq!(list[0]["sid"], done.as_str());

    let out = std::process::Command::new(bin())
        .arg("ps")
        .env("EXECGATE_URL", &w.api.url)
        .env("EXECGATE_TOKEN", &w.api.token)
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("SID "), "{table}");
    let line = table.lines().find(|l| l.starts_with(&running)).unwrap();
    assert!(
        line.contains("laptop") && line.contains("running") && line.ends_with("sleep 30"),
        "{line}"
    );
    let line = table.lines().find(|l| l.starts_with(&done)).unwrap();
    assert!(line.contains("exited") && line.contains(" 4 "), "{line}");

    // Another workspace sees none of them.
    admin(&w.data_dir, &["workspace", "create", "w2"]);
    let other = Api::new(
        &w.api.url,
        &admin(&w.data_dir, &["token", "create", "--workspace", "w2"]),
    );
    let (_, v) = other.get("/api/connectors/processes").await;
    assert_eq!(v["processes"], json!([]));
}

#[tokio::test]
async fn an_exited_session_expires_after_its_retention_with_410() {
    let w = World::start(&["--exited-retention-secs", "1"]).await;
    let sid = w
        .api
        .exec("laptop", json!({"command": ["echo", "bye"]}))
        .await;
    let (data, v) = w.api.read_until(&sid, 0, |_| false).await;
    assert_eq!(data, b"bye\n");
    assert_eq!(v["exit_code"], 0);
    eventually(10, "the session to expire", || {
        let api = w.api.clone();
        let sid = sid.clone();
        async move {
            let (s, _) = api
                .get(&format!("/api/connectors/processes/{sid}/output?since=0"))
                .await;
            s == 410
        }
    })
    .await;
    let (s, v) = w
        .api
        .get(&format!("/api/connectors/processes/{sid}/output?since=0"))
        .await;
    assert_eq!(s, 410);
    assert_eq!(v["error"]["code"], "session_expired");
    let (_, v) = w.api.get("/api/connectors/processes").await;
    assert_eq!(v["processes"][0]["status"], "expired");
}

#[tokio::test]
async fn max_runtime_kills_a_process_that_runs_too_long() {
    let w = World::start(&[]).await;
    let started = Instant::now();
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "sleep 30 & echo $! > bg.pid; wait"], "max_runtime_ms": 700}),
        )
        .await;
    let (_, v) = w.api.read_until(&sid, 0, |_| false).await;
    let took = started.elapsed();
    assert_eq!(v["exit_code"], 137, "{v}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let bg = pid_in(&w.workdir, "bg.pid");
    eventually(
        5,
        "the background child to die",
        || async move { !alive(bg) },
    )
    .await;

    let (s, v) = w
        .api
        .call_raw(
            "laptop",
            "exec_command",
            json!({"command": ["true"], "max_runtime_ms": 0}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_runtime_ms"));
}

#[tokio::test]
async fn terminate_leaves_no_survivors_in_the_process_group() {
    let w = World::start(&[]).await;
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c",
                "sleep 300 & echo $! > a.pid; (sleep 301; true) & echo $! > b.pid; echo $$ > sh.pid; wait"]}),
        )
        .await;
    wait_for_file(w.workdir.join("sh.pid")).await;
    let pids: Vec<u32> = ["a.pid", "b.pid", "sh.pid"]
        .iter()
        .map(|f| pid_in(&w.workdir, f))
        .collect();
    assert!(pids.iter().all(|&p| alive(p)));
    let (s, _) = w
        .api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    for pid in pids {
        eventually(
            5,
            &format!("pid {pid} to be gone from /proc"),
            || async move { !alive(pid) },
        )
        .await;
    }
    let (_, v) = w.api.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["exit_code"], 137);
}

#[tokio::test]
async fn a_restarted_executor_marks_its_old_sessions_executor_restarted() {
    let mut w = World::start(&[]).await;
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "echo $$ > victim.pid; exec sleep 300"], "pipe_stdin": false}),
        )
        .await;
    wait_for_file(w.workdir.join("victim.pid")).await;
    let victim = pid_in(&w.workdir, "victim.pid");

    // A crash (SIGKILL) of the executor, and a new executor process.
    w.executors[0].kill();
    // The crash orphaned the child; this test's own cleanup.
    kill9(victim);
    let url = w.gateway.url();
    w.executors
        .push(start_executor(&url, &w.exe_token, &w.workdir, &[]));
    eventually(30, "the new executor to connect", || {
        let api = w.api.clone();
        let sid = sid.clone();
        async move {
            let (s, v) = api
                .get(&format!("/api/connectors/processes/{sid}/output?since=0"))
                .await;
            s == 200 && v["error"]["code"] == "executor_restarted"
        }
    })
    .await;
    let (s, v) = w
        .api
        .get(&format!(
            "/api/connectors/processes/{sid}/output?since=0&wait_ms=5000"
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["session_alive"], false, "{v}");
    assert_eq!(v["exit_code"], Value::Null);
    assert_eq!(v["chunks"], json!([]));
    assert_eq!(v["truncated"], false);
    assert_eq!(v["lost_bytes"], 0);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("restarted"));
    // Writes are refused, saying why.
    let (s, v) = w.api.stdin(&sid, b"x", false).await;
    assert_eq!(s, 410, "{v}");
    assert_eq!(v["error"]["code"], "executor_restarted");
    let (_, v) = w.api.get("/api/connectors/processes").await;
    assert_eq!(v["processes"][0]["status"], "executor_restarted");
    // The new executor works.
    let sid = w
        .api
        .exec("laptop", json!({"command": ["echo", "fresh"]}))
        .await;
    let (data, _) = w.api.read_until(&sid, 0, |_| false).await;
    assert_eq!(data, b"fresh\n");
}

fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
}

#[tokio::test]
async fn exec_t_without_a_terminal_says_what_to_do() {
    let w = World::start(&[]).await;
    let out = std::process::Command::new(bin())
        .args(["exec", "-t", "laptop", "--", "bash"])
        .env("EXECGATE_URL", &w.api.url)
        .env("EXECGATE_TOKEN", &w.api.token)
        .stdin(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("drop -t"),
        "{err}"
    );
    // Nothing was started.
    let (_, v) = w.api.get("/api/connectors/processes").await;
    assert_eq!(v["processes"], json!([]));
}
