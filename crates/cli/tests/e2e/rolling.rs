//! Draining with replicas on PostgreSQL (#18): a draining owner keeps
//! serving the calls other replicas forward to it until its executors
//! move; `execgate/move` names the replicas to move to; and a rolling
//! restart of three replicas under a steady load of tool calls, with the
//! count of the calls that failed (only calls in flight on a replica killed
//! hard may fail); and an MCP `notifications/cancelled` that reaches
//! another replica than the call's.
//!
//! Skipped without PostgreSQL, unless `EXECGATE_REQUIRE_POSTGRES=1`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::replicas::{signal, Replicas};

/// Two replicas (draining within 20 s) and executor `x` held by A, given
/// B too, once B lists it (from the lease: no channel to A is open yet);
/// with A's and B's replica ids.
async fn x_on_a_listed_by_b() -> Option<(Replicas, String, String)> {
    let mut c = Replicas::start(2, &["--drain-timeout", "20s"])?;
    let b_url = c.replicas[1].url();
    c.executor_with("x", 0, &["--gateway", &b_url]).await;
    let (a_id, b_id) = (c.replica_id(0), c.replica_id(1));
    let api_b = c.api(1);
    eventually(5, "B to list x", || async {
        api_b.envs().await["envs"].as_array().unwrap().len() == 1
    })
    .await;
    Some((c, a_id, b_id))
}

/// A `shell` call of `command` on `x` through `api`, in its own task.
fn shell_on_x(api: Api, command: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    tokio::spawn(async move {
        api.call_raw("x", "shell", json!({ "command": command }))
            .await
    })
}

/// Whether `GET {url}/readyz` answers 200.
async fn ready(url: &str) -> bool {
    fresh_client()
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// A replica that drains still holds its executors until they move: a call
/// that another replica forwards to it meanwhile (over a new peer channel)
/// is served, not refused with `draining`. Then the executor moves to the
/// replica the hint names, which serves it.
#[tokio::test]
async fn a_call_forwarded_to_a_draining_owner_is_served() {
    let Some((mut c, a_id, b_id)) = x_on_a_listed_by_b().await else {
        return;
    };
    let api_b = c.api(1);

    // A call in flight on A keeps A draining (its executor stays) for 6 s.
    let slow = shell_on_x(c.api(0), json!(["sh", "-c", "sleep 6; echo slow-done"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(c.replicas[0].pid(), "TERM");
    let a_url = c.replicas[0].url();
    eventually(5, "A to drain", || async { !ready(&a_url).await }).await;
    let (status, v) = c.api(0).post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("draining"))
    );

    // Through B: a new channel to the draining owner, and calls served at
    // the first attempt.
    let (status, r) = api_b
        .call_raw("x", "shell", json!({"command": "echo forwarded"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["structuredContent"]["stdout"], "forwarded\n", "{r}");
    let (status, r) = api_b
        .call_raw(
            "x",
            "write_file",
            json!({"path": "d.txt", "content": "during the drain"}),
        )
        .await;
    assert_eq!((status, &r["isError"]), (200, &json!(false)), "{r}");
    let (status, r) = api_b
        .call_raw(
            "x",
            "read_file",
            json!({"path": "d.txt", "encoding": "utf-8"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["content"][0]["text"], "during the drain", "{r}");
    assert!(
        !slow.is_finished(),
        "the forwarded calls were made while A still drained its own call"
    );
    assert_eq!(c.lease_of("x").0, a_id, "A still held x");

    // A's own call completes; x moves to B; A exits 0.
    let (status, r) = slow.await.unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["structuredContent"]["stdout"], "slow-done\n", "{r}");
    eventually(10, "x to move to B", || async { c.lease_of("x").0 == b_id }).await;
    let exit = c.replicas[0].proc.exits_within(20, "A to exit").await;
    assert!(exit.success(), "A exited with {exit:?}");
    let (status, r) = api_b
        .call_raw(
            "x",
            "read_file",
            json!({"path": "d.txt", "encoding": "utf-8"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["content"][0]["text"], "during the drain", "{r}");
}

/// A `shell` call forwarded through the owner outlives the executor's
/// move: A drains (it has no call of its own, so x moves at once) while a
/// `shell` started through B runs on x; the call reads the rest of its
/// output through x's new owner and succeeds.
#[tokio::test]
async fn a_forwarded_shell_outlives_its_executor_moving() {
    let Some((mut c, a_id, b_id)) = x_on_a_listed_by_b().await else {
        return;
    };
    let call = shell_on_x(
        c.api(1),
        json!(["sh", "-c", "echo before; sleep 5; echo after"]),
    );
    // The process runs (through A) before A drains.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!call.is_finished());
    assert_eq!(c.lease_of("x").0, a_id);
    signal(c.replicas[0].pid(), "TERM");
    eventually(10, "x to move to B", || async { c.lease_of("x").0 == b_id }).await;
    assert!(!call.is_finished(), "the move came while the command ran");
    let (status, r) = call.await.unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["structuredContent"]["stdout"], "before\nafter\n", "{r}");
    assert_eq!(r["structuredContent"]["exit_code"], 0, "{r}");
    let exit = c.replicas[0].proc.exits_within(20, "A to exit").await;
    assert!(exit.success(), "A exited with {exit:?}");
}

/// `execgate/move` carries the other live replicas (the least loaded
/// first): x, whose own list is A, B, C, moves from A to C (B holds y),
/// not to B, its next URL.
#[tokio::test]
async fn a_moving_executor_follows_the_gateways_hint() {
    let Some(mut c) = Replicas::start(3, &["--drain-timeout", "10s"]) else {
        return;
    };
    let (b_url, c_url) = (c.replicas[1].url(), c.replicas[2].url());
    c.executor_with("y", 1, &[]).await;
    c.executor_with("x", 0, &["--gateway", &b_url, "--gateway", &c_url])
        .await;
    let (a_id, c_id) = (c.replica_id(0), c.replica_id(2));
    assert_eq!(c.lease_of("x").0, a_id);

    signal(c.replicas[0].pid(), "TERM");
    let holder = eventually(10, "x to move off A", || async {
        let (holder, _) = c.lease_of("x");
        (holder != a_id).then_some(holder)
    })
    .await;
    assert_eq!(holder, c_id, "x moved to the hinted replica C, not to B");
    let exit = c.replicas[0].proc.exits_within(10, "A to exit").await;
    assert!(exit.success(), "A exited with {exit:?}");
    let (status, r) = c
        .api(1)
        .call_raw("x", "shell", json!({"command": "echo on-c"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["structuredContent"]["stdout"], "on-c\n", "{r}");
}

/// Retries after a 503 or a transport error: the Rust client's
/// (`execgate_client::DEFAULT_RETRIES`).
const RETRIES: u32 = 3;

/// One call of the load, as it ended.
#[derive(Debug)]
struct Record {
    id: u64,
    tool: &'static str,
    env: String,
    attempts: u32,
    /// Since the load began.
    ended: Duration,
    took: Duration,
    /// Why each retry was needed.
    retries: Vec<String>,
    error: Option<String>,
}

/// What one attempt gave.
enum Attempt {
    Done(Value),
    /// A 503 (with its `Retry-After`) or a transport error.
    Retry(String, Option<u64>),
    Fail(String),
}

/// The load's client: what a client behind a load balancer does.
///
/// - **The load balancer.** Each attempt goes to the next replica in
///   rotation. A replica that refuses the connection (it is down) or
///   answers 503 `draining` did nothing with the request, so the next
///   replica gets it at once (HAProxy's `retry-on conn-failure 503` with
///   `option redispatch`; a balancer that checks `/readyz` stops sending
///   there within its check interval anyway).
/// - **The client.** The Rust client's policy: a mutating call (`shell`,
///   `write_file`) carries an `Idempotency-Key` and is retried with it
///   after any other 503 or a transport error, up to [`RETRIES`] times,
///   250 ms doubling (jittered), at least the `Retry-After` (capped at
///   10 s). `read_file` changes nothing and carries no key; it is retried
///   the same way (the Rust client sends read-only tools once).
struct Load {
    urls: Vec<String>,
    token: String,
    http: reqwest::Client,
    rotation: AtomicUsize,
    ids: AtomicU64,
    /// Calls with an attempt in flight: id → (replica, environment).
    in_flight: Mutex<HashMap<u64, (usize, String)>>,
    records: Mutex<Vec<Record>>,
    redispatched: AtomicU64,
    stop: AtomicBool,
    t0: Instant,
}

impl Load {
    fn new(urls: Vec<String>, token: String) -> Load {
        Load {
            urls,
            token,
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            rotation: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::new()),
            records: Mutex::new(Vec::new()),
            redispatched: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            t0: Instant::now(),
        }
    }

    /// Calls `tool` on `env`; `expect`: the text `read_file` must return.
    /// Whether it succeeded.
    async fn call(&self, env: &str, tool: &'static str, args: Value, expect: Option<&str>) -> bool {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let key = (tool != "read_file").then(|| format!("roll-{id}"));
        let body = json!({"tool": tool, "arguments": args});
        let started = Instant::now();
        let mut attempts = 0;
        let mut retries = Vec::new();
        let error = loop {
            attempts += 1;
            match self.attempt(id, env, &body, key.as_deref()).await {
                Attempt::Done(v) => break check(tool, &v, expect),
                Attempt::Retry(why, after) if attempts <= RETRIES => {
                    retries.push(why);
                    tokio::time::sleep(retry_delay(attempts, after)).await;
                }
                Attempt::Retry(why, _) | Attempt::Fail(why) => break Some(why),
            }
        };
        let ok = error.is_none();
        self.records.lock().unwrap().push(Record {
            id,
            tool,
            env: env.to_string(),
            attempts,
            ended: self.t0.elapsed(),
            took: started.elapsed(),
            retries,
            error,
        });
        ok
    }

    /// One attempt, through the "load balancer" (see [`Load`]).
    async fn attempt(&self, id: u64, env: &str, body: &Value, key: Option<&str>) -> Attempt {
        let n = self.urls.len();
        let mut refused = String::new();
        let first = self.rotation.fetch_add(1, Ordering::Relaxed);
        for hop in 0..n {
            let r = (first + hop) % n;
            let mut req = self
                .http
                .post(format!(
                    "{}/api/connectors/envs/{env}/tool/call",
                    self.urls[r]
                ))
                .bearer_auth(&self.token)
                .json(body);
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key);
            }
            self.in_flight
                .lock()
                .unwrap()
                .insert(id, (r, env.to_string()));
            let answer = async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let bytes = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, after, bytes))
            }
            .await;
            self.in_flight.lock().unwrap().remove(&id);
            let (status, after, bytes) = match answer {
                Err(e) if e.is_connect() => {
                    self.redispatched.fetch_add(1, Ordering::Relaxed);
                    refused = format!("replica {r}: {e}");
                    continue;
                }
                Err(e) => return Attempt::Retry(format!("replica {r}: {e:?}"), None),
                Ok(answer) => answer,
            };
            let v: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            match status {
                200 => return Attempt::Done(v),
                503 if v["error"]["code"] == "draining" => {
                    self.redispatched.fetch_add(1, Ordering::Relaxed);
                    refused = format!("replica {r}: 503 {v}");
                    continue;
                }
                503 => return Attempt::Retry(format!("replica {r}: 503 {v}"), after),
                _ => return Attempt::Fail(format!("replica {r}: {status} {v}")),
            }
        }
        Attempt::Retry(format!("no replica took it: {refused}"), None)
    }
}

/// The Rust client's delay before retry `retry` (1, 2, …).
fn retry_delay(retry: u32, retry_after: Option<u64>) -> Duration {
    let base = (250u64 << (retry.saturating_sub(1)).min(4)).min(4000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let jittered = base / 2 + nanos % (base / 2 + 1);
    let after = retry_after.map_or(0, |s| s.min(10) * 1000);
    Duration::from_millis(jittered.max(after))
}

/// Why a 200 answer is not the expected result, if it is not.
fn check(tool: &str, v: &Value, expect: Option<&str>) -> Option<String> {
    if v["isError"] != false {
        return Some(format!("{tool} failed: {v}"));
    }
    match tool {
        "shell" if v["structuredContent"]["exit_code"] != 0 => {
            Some(format!("shell true did not exit 0: {v}"))
        }
        "read_file" => match expect {
            Some(text) if v["content"][0]["text"] != text => {
                Some(format!("read_file did not read {text:?}: {v}"))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Worker `k` on `env`, until told to stop: write a file, read it back,
/// run `true`; again.
async fn worker(load: Arc<Load>, k: usize, env: String) {
    let path = format!("roll-{k}.txt");
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let text = format!("worker {k}, write {n}");
        let written = load
            .call(
                &env,
                "write_file",
                json!({"path": path, "content": text}),
                None,
            )
            .await;
        // After a failed write the file's content is unknown.
        let expect = written.then_some(text.as_str());
        load.call(
            &env,
            "read_file",
            json!({"path": path, "encoding": "utf-8"}),
            expect,
        )
        .await;
        load.call(&env, "shell", json!({"command": ["true"]}), None)
            .await;
    }
}

/// The shortest step of the restart (for the check that calls were served
/// during each).
const STEP: Duration = Duration::from_secs(2);

/// Waits until `step` has passed since `from` (on the load's clock).
async fn at_least_since(load: &Load, from: Duration, step: Duration) {
    let left = (from + step).saturating_sub(load.t0.elapsed());
    tokio::time::sleep(left).await;
}

/// The issue's test: three replicas on PostgreSQL, four executors with all
/// three `--gateway`s, six clients calling `write_file`, `read_file` and
/// `shell true` through every replica without a pause. Each replica in
/// turn is drained (SIGTERM) and started again; then one is killed
/// (SIGKILL) and started again. No call fails but calls in flight on the
/// killed replica (sent to it, or to an executor it held) at the moment of
/// the kill; their count is printed and bounded by that in-flight count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_fails_no_call() {
    const EXECUTORS: usize = 4;
    const CLIENTS: usize = 6;
    let args = ["--drain-timeout", "10s"];
    let began = Instant::now();
    let Some(mut c) = Replicas::start(3, &args) else {
        return;
    };
    let urls: Vec<String> = (0..3).map(|i| c.replicas[i].url()).collect();
    for e in 0..EXECUTORS {
        let first = e % 3;
        let (b, cc) = (&urls[(first + 1) % 3], &urls[(first + 2) % 3]);
        c.executor_with(&format!("e{e}"), first, &["--gateway", b, "--gateway", cc])
            .await;
    }
    for i in 0..3 {
        let api = c.api(i);
        eventually(10, "every replica to list every executor", || async {
            api.envs().await["envs"].as_array().unwrap().len() == EXECUTORS
        })
        .await;
    }
    let exe_ids: HashMap<String, String> = (0..EXECUTORS)
        .map(|e| (c.exe_id(&format!("e{e}")), format!("e{e}")))
        .collect();

    let load = Arc::new(Load::new(urls.clone(), c.prepared.token.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(worker(load.clone(), k, format!("e{}", k % EXECUTORS))))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The rolling restart: drain, exit, start again, ready; the next one.
    let mut windows = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let from = load.t0.elapsed();
        signal(c.replicas[i].pid(), "TERM");
        let exit = c.replicas[i]
            .proc
            .exits_within(20, "a draining replica to exit")
            .await;
        assert!(exit.success(), "replica {i} exited with {exit:?}");
        let listen = c.replicas[i].addr.to_string();
        c.replicas[i] = tokio::task::block_in_place(|| c.start_replica_at(&listen, &args));
        eventually(20, "the restarted replica to be ready", || ready(url)).await;
        at_least_since(&load, from, STEP).await;
        windows.push((
            format!("replica {i} drained and restarted"),
            from,
            load.t0.elapsed(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // A hard kill: the replica holding the most executors.
    let (leases, replicas) = tokio::task::block_in_place(|| c.leases());
    let index_of: HashMap<String, usize> = replicas
        .iter()
        .filter_map(|(url, id)| Some((id.clone(), urls.iter().position(|u| u == url)?)))
        .collect();
    let mut held: HashMap<usize, HashSet<String>> = HashMap::new();
    for (exe_id, replica, _) in &leases {
        if let (Some(&i), Some(name)) = (index_of.get(replica), exe_ids.get(exe_id)) {
            held.entry(i).or_default().insert(name.clone());
        }
    }
    let (k, held_by_k) = held
        .into_iter()
        .max_by_key(|(_, names)| names.len())
        .expect("some replica holds an executor");
    let from = load.t0.elapsed();
    let in_flight_at_kill: HashSet<u64> = {
        // No attempt starts or ends while the lock is held: the set is
        // exactly what is in flight at the kill.
        let in_flight = load.in_flight.lock().unwrap();
        // SAFETY: kill(2) with a pid this test started.
        assert_eq!(
            unsafe { libc::kill(c.replicas[k].pid() as i32, libc::SIGKILL) },
            0
        );
        in_flight
            .iter()
            .filter(|(_, (r, env))| *r == k || held_by_k.contains(env))
            .map(|(id, _)| *id)
            .collect()
    };
    c.replicas[k]
        .proc
        .exits_within(10, "the killed replica to be gone")
        .await;
    let listen = c.replicas[k].addr.to_string();
    c.replicas[k] = tokio::task::block_in_place(|| c.start_replica_at(&listen, &args));
    eventually(20, "the restarted replica to be ready", || ready(&urls[k])).await;
    at_least_since(&load, from, STEP).await;
    windows.push((
        format!("replica {k} killed and restarted"),
        from,
        load.t0.elapsed(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("a client to finish its last call")
            .unwrap();
    }

    let records = std::mem::take(&mut *load.records.lock().unwrap());
    let failed: Vec<&Record> = records.iter().filter(|r| r.error.is_some()).collect();
    let retried = records.iter().filter(|r| r.attempts > 1).count();
    let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();
    println!(
        "rolling restart under load: {} calls, {} failed (all in flight on the killed replica {k}, \
         which had {} calls in flight: bound {}), {} retried by the client, {} redispatched by the \
         balancer, slowest {:.1} s, {:.1} s in all",
        records.len(),
        failed.len(),
        in_flight_at_kill.len(),
        in_flight_at_kill.len(),
        retried,
        load.redispatched.load(Ordering::Relaxed),
        slowest.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    println!("  steps: {windows:?}");
    for r in &failed {
        println!(
            "  call {} ({} on {}, {} attempts, {:.1} s): {}",
            r.id,
            r.tool,
            r.env,
            r.attempts,
            r.took.as_secs_f64(),
            r.error.as_deref().unwrap_or_default()
        );
    }
    for r in records
        .iter()
        .filter(|r| !r.retries.is_empty() && !in_flight_at_kill.contains(&r.id))
        .take(20)
    {
        println!(
            "  retried: call {} ({} on {}, ended at {:.1} s, {:.1} s): {:?}",
            r.id,
            r.tool,
            r.env,
            r.ended.as_secs_f64(),
            r.took.as_secs_f64(),
            r.retries
        );
    }
    let unexplained: Vec<&&Record> = failed
        .iter()
        .filter(|r| !in_flight_at_kill.contains(&r.id))
        .collect();
    assert!(
        unexplained.is_empty(),
        "calls failed that were not in flight on the killed replica: {unexplained:#?}"
    );
    assert!(failed.len() <= in_flight_at_kill.len());
    // The load was real, and went on during every restart.
    assert!(records.len() >= 100, "only {} calls", records.len());
    for (what, from, to) in &windows {
        let served = records
            .iter()
            .filter(|r| r.error.is_none() && r.ended >= *from && r.ended <= *to)
            .count();
        assert!(served > 0, "no call was served while {what}");
    }
}

/// POSTs one MCP message (protocol 2025-06-18, before cancellation by
/// closing the request) to `base`'s `/mcp`: (status, body as text).
async fn mcp_post(base: &str, token: &str, message: Value) -> (u16, String) {
    let resp = fresh_client()
        .post(format!("{base}/mcp"))
        .bearer_auth(token)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(&message)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// A `notifications/cancelled` that reaches another replica than the one
/// running the call (a load balancer chose) is passed on and cancels it.
#[tokio::test]
async fn a_cancellation_reaches_the_call_on_another_replica() {
    let Some(mut c) = Replicas::start(2, &[]) else {
        return;
    };
    c.executor_with("x", 0, &[]).await;
    let token = c.prepared.token.clone();
    let (a_url, b_url) = (c.replicas[0].url(), c.replicas[1].url());
    let call = {
        let (a_url, token) = (a_url.clone(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = mcp_post(
                &a_url,
                &token,
                json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {
                    "name": "shell",
                    "arguments": {"environment_id": "x", "command": ["sleep", "30"]}}}),
            )
            .await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!call.is_finished(), "the call runs");
    let (status, _) = mcp_post(
        &b_url,
        &token,
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 77, "reason": "changed my mind"}}),
    )
    .await;
    assert_eq!(status, 202);
    let ((status, body), took) = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the call to be cancelled, not to run its 30 s")
        .unwrap();
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("the request was cancelled"), "{body}");
}

/// The peer cancellation route, as a hostile client meets it: a malformed
/// body and a missing signature both get a 4xx in the error envelope, and
/// nothing is cancelled.
#[tokio::test]
async fn the_peer_cancellation_route_refuses_strangers_in_the_envelope() {
    let Some(c) = Replicas::start(1, &[]) else {
        return;
    };
    let url = format!("{}/peer/v1/cancel", c.replicas[0].url());
    for (content_type, body) in [
        ("application/json", "{not json"),
        ("application/json", r#"{"tokenHash": 5}"#),
        ("text/plain", "x"),
        ("application/json", r#"{"tokenHash": "ab", "id": "1"}"#),
    ] {
        let r = fresh_client()
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{body}: {status} {v}");
        assert!(v["error"]["code"].is_string(), "{body}: {status} {v}");
        assert!(v["error"]["message"].is_string(), "{body}: {status} {v}");
    }
}
