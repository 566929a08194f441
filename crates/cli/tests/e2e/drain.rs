//! Draining and failover: two `execgate serve` processes on one SQLite data
//! dir (WAL lets two processes share it), an executor given both with
//! `--gateway A --gateway B`. SIGTERM on A drains it: new requests get 503
//! `draining`, `/readyz` says so, a call in flight finishes, the executor
//! is told to move and lands on B with its processes, and A exits 0.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

fn sigterm(pid: u32) {
    // SAFETY: kill(2) with a pid we started and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
}

/// `GET url` without credentials: (status, Retry-After, JSON body).
async fn get_plain(url: &str) -> (u16, Option<String>, Value) {
    let r = fresh_client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Gateways A and B on one data dir, workspace `w1` with executor `laptop`
/// (not started).
struct Pair {
    prepared: Prepared,
    a: GatewayProc,
    b: GatewayProc,
    exe_token: String,
}

impl Pair {
    fn start(a_args: &[&str]) -> Pair {
        let prepared = Prepared::new(&execgate(), "w1");
        let exe_token = prepared.add_executor("laptop", true);
        let a = prepared.eg.serve(&prepared.data_dir, "127.0.0.1:0", a_args);
        let b = prepared.eg.serve(&prepared.data_dir, "127.0.0.1:0", &[]);
        Pair {
            prepared,
            a,
            b,
            exe_token,
        }
    }

    fn api(&self, g: &GatewayProc) -> Api {
        Api::new(&g.url(), &self.prepared.token)
    }

    fn work(&self) -> std::path::PathBuf {
        let work = self.prepared.dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        work
    }

    /// Starts executor `laptop` on gateway `g` (`extra`: more flags, e.g.
    /// another `--gateway`) and waits until `g` lists it.
    async fn linked_executor(&self, g: &GatewayProc, extra: &[&str]) -> Proc {
        let proc = self
            .prepared
            .eg
            .executor(&g.url(), &self.exe_token, &self.work(), extra);
        wait_for_env(&self.api(g), "laptop").await;
        proc
    }

    fn executor_log(&self) -> String {
        log_of(&self.prepared.dir.path().join("executor.log"))
    }
}

/// A `shell` call of `command` on `laptop`, running in its own task.
fn shell_in_flight(api: Api, command: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    tokio::spawn(async move {
        api.call_raw("laptop", "shell", json!({ "command": command }))
            .await
    })
}

/// Whether `name` is listed (connected) by envs/list on this gateway.
async fn listed(api: &Api, name: &str) -> bool {
    let (status, v) = api.post("/api/connectors/envs/list", json!({})).await;
    status == 200
        && v["envs"]
            .as_array()
            .is_some_and(|envs| envs.iter().any(|e| e["name"] == name))
}

#[tokio::test]
async fn sigterm_drains_a_and_the_executor_moves_to_b_with_its_processes() {
    let mut pair = Pair::start(&["--drain-timeout", "20s"]);
    let (api_a, api_b) = (pair.api(&pair.a), pair.api(&pair.b));
    let _executor = pair
        .linked_executor(&pair.a, &["--gateway", &pair.b.url()])
        .await;
    assert!(!listed(&api_b, "laptop").await, "the link is A's");
    let (status, _, v) = get_plain(&format!("{}/readyz", pair.a.url())).await;
    assert_eq!((status, &v), (200, &json!({"status": "ready"})));

    // A process started through A, with some output before the move.
    let sid = api_a.exec("laptop", json!({"command": ["cat"]})).await;
    assert_eq!(api_a.stdin(&sid, b"before\n", false).await.0, 200);
    api_a.read_until(&sid, 0, |d| d == b"before\n").await;

    // A long shell call in flight on A when it gets SIGTERM.
    let slow = shell_in_flight(
        pair.api(&pair.a),
        json!(["sh", "-c", "sleep 3; echo slow-done"]),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let a_url = format!("http://{}", pair.a.addr);
    let termed = Instant::now();
    sigterm(pair.a.proc.id());

    // While it drains: not ready, and new requests are refused with 503
    // draining and Retry-After.
    let (status, retry, v) = eventually(5, "A's /readyz to say draining", || async {
        let r = get_plain(&format!("{a_url}/readyz")).await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!(v["error"]["code"], "draining", "{v}");
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    let (status, v) = api_a.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("draining")),
        "{v}"
    );
    let (status, retry, _) = get_plain(&format!("{a_url}/api/connectors/processes")).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    // Liveness is unchanged.
    let r = fresh_client()
        .get(format!("{a_url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The call in flight completes: the drain waited for it.
    let (status, r) = slow.await.unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["structuredContent"]["stdout"], "slow-done\n", "{r}");
    assert_eq!(r["structuredContent"]["exit_code"], 0, "{r}");

    // The executor moves to B within a few seconds, told to (not lost).
    eventually(10, "the executor to move to B", || listed(&api_b, "laptop")).await;
    assert!(
        termed.elapsed() < Duration::from_secs(10),
        "moved after {:?}",
        termed.elapsed()
    );
    assert!(
        pair.executor_log()
            .contains("the gateway asked this executor to move"),
        "{}",
        pair.executor_log()
    );

    // A exits 0 within its drain timeout.
    let status = pair
        .a
        .proc
        .exits_within(20, "A to exit after its drain")
        .await;
    assert!(status.success(), "A exited with {status:?}");
    assert!(termed.elapsed() < Duration::from_secs(20));

    // The process started through A goes on through B, with all its output.
    assert_eq!(api_b.stdin(&sid, b"after\n", false).await.0, 200);
    let (data, v) = api_b.read_until(&sid, 0, |d| d == b"before\nafter\n").await;
    assert_eq!(data, b"before\nafter\n");
    assert_eq!(v["session_alive"], true);
    assert_eq!(v["lost_bytes"], 0);
    let v = api_b.output(&sid, 0).await;
    let seqs: Vec<u64> = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "{seqs:?}");
    assert_eq!(api_b.stdin(&sid, b"", true).await.0, 200);
    let (_, v) = api_b.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["exit_code"], 0);
}

#[tokio::test]
async fn an_sse_stream_ends_with_draining_and_resumes_on_b() {
    let mut pair = Pair::start(&["--drain-timeout", "20s"]);
    let (api_a, api_b) = (pair.api(&pair.a), pair.api(&pair.b));
    let _executor = pair
        .linked_executor(&pair.a, &["--gateway", &pair.b.url()])
        .await;
    let sid = api_a.exec("laptop", json!({"command": ["cat"]})).await;
    assert_eq!(api_a.stdin(&sid, b"one\n", false).await.0, 200);

    let url = format!("{}/api/connectors/processes/{sid}/stream", pair.a.url());
    let mut resp = fresh_client()
        .get(&url)
        .bearer_auth(&pair.prepared.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut text = String::new();
    while !text.contains("event: output") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("output within 10 s")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The id of the last output event: where a resume starts.
    let last_id = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("an event id")
        .trim()
        .to_string();
    sigterm(pair.a.proc.id());
    // The stream ends with an error event `draining` (the drain does not
    // wait for it until its deadline).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = resp.chunk().await.unwrap_or(None) {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end: {text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("draining"), "{text}");
    let status = pair.a.proc.exits_within(10, "A to exit").await;
    assert!(status.success(), "{status:?}");

    // The client resumes on B after the last event it got.
    eventually(10, "the executor to move to B", || listed(&api_b, "laptop")).await;
    assert_eq!(api_b.stdin(&sid, b"two\n", false).await.0, 200);
    let url = format!("{}/api/connectors/processes/{sid}/stream", pair.b.url());
    let mut resp = fresh_client()
        .get(&url)
        .bearer_auth(&pair.prepared.token)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut text = String::new();
    while !text.contains("dHdvCg==") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("output within 10 s")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains("b25lCg=="), "nothing twice: {text}");
}

#[tokio::test]
async fn a_drain_with_nothing_in_flight_exits_at_once_and_a_second_signal_is_immediate() {
    let mut pair = Pair::start(&["--drain-timeout", "30s"]);
    let t = Instant::now();
    sigterm(pair.a.proc.id());
    let status = pair
        .a
        .proc
        .exits_within(10, "an idle gateway to drain")
        .await;
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // B, with a call in flight and a long drain: a second SIGTERM exits now.
    let api_b = pair.api(&pair.b);
    let _executor = pair.linked_executor(&pair.b, &[]).await;
    let slow = shell_in_flight(api_b, json!(["sleep", "60"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(pair.b.proc.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(pair.b.proc.id()), "the first SIGTERM drains");
    let t = Instant::now();
    sigterm(pair.b.proc.id());
    let status = pair.b.proc.exits_within(5, "the second SIGTERM").await;
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    slow.abort();
}

#[tokio::test]
async fn an_executor_fails_over_when_its_first_gateway_is_dead() {
    let prepared = Prepared::new(&execgate(), "w1");
    let exe_token = prepared.add_executor("laptop", true);
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let b = prepared.eg.serve(&prepared.data_dir, "127.0.0.1:0", &[]);
    let api_b = Api::new(&b.url(), &prepared.token);
    let work = prepared.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let t = Instant::now();
    let _executor = prepared
        .eg
        .executor(&dead, &exe_token, &work, &["--gateway", &b.url()]);
    wait_for_env(&api_b, "laptop").await;
    // Failing over within a round waits no backoff.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let r = api_b
        .call("laptop", "shell", json!({"command": ["echo", "via-b"]}))
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "via-b\n", "{r}");
}

/// A call longer than the drain timeout is cut at the deadline, and the
/// gateway still exits 0 then, not later.
#[tokio::test]
async fn the_drain_timeout_bounds_the_wait() {
    let mut pair = Pair::start(&["--drain-timeout", "2s"]);
    let api_a = pair.api(&pair.a);
    let _executor = pair
        .linked_executor(&pair.a, &["--gateway", &pair.b.url()])
        .await;
    let slow = shell_in_flight(api_a, json!(["sleep", "30"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = Instant::now();
    sigterm(pair.a.proc.id());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(alive(pair.a.proc.id()), "still draining within its timeout");
    let status = pair.a.proc.exits_within(10, "A at its deadline").await;
    assert!(status.success(), "{status:?}");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    slow.abort();
    // The executor still moves (told at the deadline, or by the lost link).
    let api_b = pair.api(&pair.b);
    eventually(15, "the executor to move to B", || listed(&api_b, "laptop")).await;
}

/// A registration refused with 503 `draining` (here before the executor's
/// first link, the strictest case) is retried, never fatal: behind a load
/// balancer the next try lands on a replica that serves.
#[tokio::test]
async fn a_registration_refused_while_draining_is_retried() {
    let mut pair = Pair::start(&["--drain-timeout", "20s"]);
    let api_a = pair.api(&pair.a);
    let _executor = pair.linked_executor(&pair.a, &[]).await;
    let slow = shell_in_flight(api_a, json!(["sleep", "3"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    sigterm(pair.a.proc.id());
    // A new executor whose only gateway is A, while A drains.
    let late_token = pair.prepared.add_executor("late", false);
    let late_dir = pair.prepared.dir.path().join("late");
    let late_work = late_dir.join("work");
    std::fs::create_dir_all(&late_work).unwrap();
    let mut late = pair
        .prepared
        .eg
        .executor(&pair.a.url(), &late_token, &late_work, &[]);
    let late_log = late_dir.join("executor.log");
    eventually(10, "the late executor to be refused with 503", || async {
        let log = log_of(&late_log);
        (log.contains("HTTP 503") && log.contains("draining")).then_some(())
    })
    .await;
    assert!(
        late.0.try_wait().unwrap().is_none(),
        "{}",
        log_of(&late_log)
    );
    let (status, _) = slow.await.unwrap();
    assert_eq!(status, 200);
    let addr = pair.a.addr.to_string();
    let status = pair.a.proc.exits_within(20, "A to drain").await;
    assert!(status.success(), "{status:?}");
    // A comes back on its address: the late executor connects, as does the
    // first.
    let a2 = pair.prepared.eg.serve(&pair.prepared.data_dir, &addr, &[]);
    let api_a2 = Api::new(&a2.url(), &pair.prepared.token);
    wait_for_env(&api_a2, "late").await;
    wait_for_env(&api_a2, "laptop").await;
}

/// A replica killed outright: the link drops, and the executor fails over
/// to the next URL at once (no backoff within a round), its processes with it.
#[tokio::test]
async fn a_lost_link_fails_over_to_the_next_gateway() {
    let mut pair = Pair::start(&[]);
    let (api_a, api_b) = (pair.api(&pair.a), pair.api(&pair.b));
    let _executor = pair
        .linked_executor(&pair.a, &["--gateway", &pair.b.url()])
        .await;
    let sid = api_a.exec("laptop", json!({"command": ["cat"]})).await;
    assert_eq!(api_a.stdin(&sid, b"before\n", false).await.0, 200);
    api_a.read_until(&sid, 0, |d| d == b"before\n").await;
    let t = Instant::now();
    pair.a.proc.kill();
    eventually(10, "the executor to fail over to B", || {
        listed(&api_b, "laptop")
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(api_b.stdin(&sid, b"after\n", false).await.0, 200);
    let (data, _) = api_b.read_until(&sid, 0, |d| d == b"before\nafter\n").await;
    assert_eq!(data, b"before\nafter\n");
}

#[tokio::test]
async fn the_gateway_list_can_come_comma_separated_from_the_environment() {
    let prepared = Prepared::new(&execgate(), "w1");
    let exe_token = prepared.add_executor("laptop", true);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let b = prepared.eg.serve(&prepared.data_dir, "127.0.0.1:0", &[]);
    let work = prepared.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let child = std::process::Command::new(bin())
        .args(["executor", "--token", &exe_token, "--workdir"])
        .arg(&work)
        .env("EXECGATE_GATEWAY", format!("{dead},{}", b.url()))
        .env("XDG_STATE_HOME", prepared.dir.path().join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _executor = Proc(child);
    wait_for_env(&Api::new(&b.url(), &prepared.token), "laptop").await;
}

/// A stock codex on a draining gateway is never sent `execgate/move` (it
/// would drop its connection on a notification it does not know); an
/// execgate executor on the same gateway is.
#[tokio::test]
async fn a_stock_codex_is_never_told_to_move() {
    let Some(codex) = crate::codex::codex_bin() else {
        return;
    };
    let prepared = Prepared::new(&execgate(), "w1");
    let exe_token = prepared.add_executor("laptop", true);
    let creds = crate::codex::add_codex_executor(&prepared.data_dir, "codex");
    let mut a = prepared.eg.serve(
        &prepared.data_dir,
        "127.0.0.1:0",
        &["--drain-timeout", "10s"],
    );
    let api = Api::new(&a.url(), &prepared.token);
    let _codex = crate::codex::start_codex(&codex, &a.url(), &creds, prepared.dir.path(), "a");
    let work = prepared.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let _executor = prepared.eg.executor(&a.url(), &exe_token, &work, &[]);
    wait_for_env(&api, "codex").await;
    wait_for_env(&api, "laptop").await;
    // codex serves a call, then A drains.
    let r = api
        .call("codex", "shell", json!({"command": ["echo", "hi"]}))
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "hi\n", "{r}");
    sigterm(a.proc.id());
    let status = a.proc.exits_within(15, "A to drain").await;
    assert!(status.success(), "{status:?}");
    let log = log_of(&prepared.data_dir.join("gateway.log"));
    let line = log
        .lines()
        .find(|l| l.contains("executors told to move"))
        .unwrap_or_else(|| panic!("no move line in {log}"));
    assert!(line.contains("moving=1"), "{line}");
    assert!(line.contains("without_the_extension=1"), "{line}");
    assert!(
        log_of(&prepared.dir.path().join("executor.log"))
            .contains("the gateway asked this executor to move"),
        "the execgate executor was told"
    );
    let codex_log = log_of(&prepared.dir.path().join("codex-a.log"));
    assert!(!codex_log.contains("execgate/move"), "{codex_log}");
}

/// With `--drain-delay`, SIGTERM first makes `/readyz` say `draining` while
/// every request is still served (for load balancers that do not resend a
/// refused request); only after the delay are new requests refused.
#[tokio::test]
async fn a_drain_delay_makes_the_gateway_unready_before_it_refuses_anything() {
    let mut pair = Pair::start(&["--drain-delay", "6s", "--drain-timeout", "20s"]);
    let api_a = pair.api(&pair.a);
    let readyz = format!("{}/readyz", pair.a.url());
    assert_eq!(get_plain(&readyz).await.0, 200);
    let t = Instant::now();
    sigterm(pair.a.proc.id());
    let (status, _, v) = eventually(5, "A's /readyz to say draining", || async {
        let r = get_plain(&readyz).await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(v["error"]["code"], "draining", "{v}");
    // Not ready, yet still serving: a registration-like request and a call.
    let (status, v) = api_a.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(status, 200, "served during the delay: {v}");
    // After the delay, new requests are refused with 503 draining.
    let refused = eventually(15, "A to refuse new requests", || async {
        let (status, v) = api_a.post("/api/connectors/envs/list", json!({})).await;
        (status == 503).then_some(v)
    })
    .await;
    assert_eq!(refused["error"]["code"], "draining", "{refused}");
    assert!(
        t.elapsed() >= Duration::from_secs(5),
        "refused only after the delay: {:?}",
        t.elapsed()
    );
    let status = pair
        .a
        .proc
        .exits_within(20, "A to exit after its drain")
        .await;
    assert!(status.success(), "{status:?}");
}
