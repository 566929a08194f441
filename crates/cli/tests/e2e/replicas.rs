//! Replicas end to end (#18, ownership and forwarding): several real
//! `execgate serve` processes on one PostgreSQL database (a fresh database
//! of the test binary's throwaway cluster, `--database-url`), each with
//! `--advertise-url` and the same `--cluster-secret-file`; executors dial
//! one replica each, and every call is made through the others too. One
//! test also runs on a shared SQLite data dir (WAL mode).
//!
//! Without PostgreSQL the PostgreSQL tests are skipped, unless
//! `EXECGATE_REQUIRE_POSTGRES=1` (CI), which makes that a failure.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use execgate_testkit::pg::Cluster;
use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::*;
use crate::sse::SseReader;

/// A free port of 127.0.0.1 (bound, then released for the replica).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One row of `admin replicas --leases`: exe_id, replica id, epoch.
pub(crate) type Lease = (String, String, i64);

/// Replicas over one store, and the executors started on them.
pub(crate) struct Replicas {
    pub(crate) prepared: Prepared,
    /// The PostgreSQL cluster of the store, `None` for SQLite in the data
    /// dir. On PostgreSQL the replicas share the data dir too (it holds
    /// nothing durable then), so that their logs are in one file.
    cluster: Option<&'static Cluster>,
    secret_file: PathBuf,
    pub(crate) replicas: Vec<GatewayProc>,
    pub(crate) executors: Vec<Proc>,
    /// Executor name → its token.
    pub(crate) tokens: std::collections::HashMap<String, String>,
}

impl Replicas {
    /// `n` replicas (extra `args` each) of a fresh workspace `w1` on one
    /// fresh PostgreSQL database; `None` when PostgreSQL cannot start here
    /// (a panic instead with `EXECGATE_REQUIRE_POSTGRES=1`).
    pub(crate) fn start(n: usize, args: &[&str]) -> Option<Replicas> {
        let cluster = execgate_testkit::pg::cluster("replicas")?;
        let url = cluster.create_database();
        let prepared = Prepared::new_on(&execgate(), "w1", Some(&url));
        Some(Replicas::start_on(prepared, Some(cluster), n, args))
    }

    /// As [`Replicas::start`], on one SQLite data dir.
    fn start_sqlite(n: usize, args: &[&str]) -> Replicas {
        Replicas::start_on(Prepared::new(&execgate(), "w1"), None, n, args)
    }

    pub(crate) fn start_on(
        prepared: Prepared,
        cluster: Option<&'static Cluster>,
        n: usize,
        args: &[&str],
    ) -> Replicas {
        let secret_file = prepared.dir.path().join("cluster-secret");
        std::fs::write(&secret_file, "a-shared-cluster-secret-of-32-bytes\n").unwrap();
        let mut r = Replicas {
            prepared,
            cluster,
            secret_file,
            replicas: Vec::new(),
            executors: Vec::new(),
            tokens: Default::default(),
        };
        for _ in 0..n {
            let g = r.start_replica(args);
            r.replicas.push(g);
        }
        r
    }

    pub(crate) fn start_replica(&self, args: &[&str]) -> GatewayProc {
        self.start_replica_at(&format!("127.0.0.1:{}", free_port()), args)
    }

    /// A replica listening on `listen` (`host:port`), e.g. to restart one.
    pub(crate) fn start_replica_at(&self, listen: &str, args: &[&str]) -> GatewayProc {
        self.start_replica_advertising(listen, &format!("http://{listen}"), args)
    }

    /// A replica listening on `listen` that the others reach at `advertise`
    /// (e.g. through a forwarder the test can cut).
    pub(crate) fn start_replica_advertising(
        &self,
        listen: &str,
        advertise: &str,
        args: &[&str],
    ) -> GatewayProc {
        let mut all = vec![
            "--advertise-url",
            advertise,
            "--cluster-secret-file",
            self.secret_file.to_str().unwrap(),
        ];
        if let Some(db) = &self.prepared.database_url {
            all.extend(["--database-url", db]);
        }
        all.extend_from_slice(args);
        execgate().serve(&self.prepared.data_dir, listen, &all)
    }

    /// The store's arguments of `execgate admin`.
    fn store_args(&self) -> Vec<&OsStr> {
        match &self.prepared.database_url {
            Some(url) => vec!["--database-url".as_ref(), url.as_ref()],
            None => vec!["--data-dir".as_ref(), self.prepared.data_dir.as_os_str()],
        }
    }

    /// `execgate admin STORE ARGS…`: all of its stdout.
    fn admin_stdout(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(bin())
            .arg("admin")
            .args(self.store_args())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "execgate admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The admin token every replica accepts.
    pub(crate) fn admin_token(&self) -> String {
        match (&self.prepared.database_url, self.cluster) {
            (Some(url), Some(cluster)) => cluster
                .psql_on(
                    url,
                    "SELECT value FROM shared_secrets WHERE name = 'admin-token'",
                )
                .trim()
                .to_string(),
            _ => admin_token(&self.prepared.data_dir),
        }
    }

    /// A capability token of `w1` for `ttl` seconds, minted by `admin`.
    fn mint(&self, ttl: u64) -> String {
        let ttl = ttl.to_string();
        let out = self.admin_stdout(&["captoken", "create", "--workspace", "w1", "--ttl", &ttl]);
        let token = out.lines().last().unwrap_or_default().to_string();
        assert_eq!(token.split('.').count(), 3, "{token:?}");
        token
    }

    pub(crate) fn api(&self, i: usize) -> Api {
        Api::new(&self.replicas[i].url(), &self.prepared.token)
    }

    pub(crate) fn workdir(&self, name: &str) -> PathBuf {
        let work = self.prepared.dir.path().join(format!("work-{name}"));
        std::fs::create_dir_all(&work).unwrap();
        work
    }

    /// Adds executor `name` and starts it on replica `i`; waits until
    /// replica `i` shows it connected. Returns its workdir.
    pub(crate) async fn executor(&mut self, name: &str, i: usize) -> PathBuf {
        self.executor_with(name, i, &[]).await
    }

    /// [`Replicas::executor`] with extra executor `args`.
    pub(crate) async fn executor_with(&mut self, name: &str, i: usize, args: &[&str]) -> PathBuf {
        let token = self.prepared.add_executor(name, false);
        self.tokens.insert(name.to_string(), token.clone());
        let work = self.workdir(name);
        let proc = execgate().executor(&self.replicas[i].url(), &token, &work, args);
        self.executors.push(proc);
        wait_for_env(&self.api(i), name).await;
        work
    }

    /// `execgate admin replicas --leases`: (exe_id → (replica_id, epoch)),
    /// and (peer URL → replica_id).
    pub(crate) fn leases(&self) -> (Vec<Lease>, Vec<(String, String)>) {
        let out = self.admin_stdout(&["replicas", "--leases"]);
        let mut replicas = Vec::new();
        let mut leases = Vec::new();
        let mut in_leases = false;
        for line in out.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.first() {
                None => in_leases = true,
                Some(&"REPLICA") | Some(&"EXE_ID") => {}
                Some(id) if in_leases => leases.push((
                    id.to_string(),
                    cols[1].to_string(),
                    cols[2].parse().unwrap(),
                )),
                Some(id) => replicas.push((cols[1].to_string(), id.to_string())),
            }
        }
        (leases, replicas)
    }

    /// The id of replica `i`, as it heartbeats.
    pub(crate) fn replica_id(&self, i: usize) -> String {
        self.replica_id_at(&self.replicas[i].url())
    }

    /// The id of the replica whose advertise URL is `url`.
    pub(crate) fn replica_id_at(&self, url: &str) -> String {
        self.leases()
            .1
            .into_iter()
            .find(|(u, _)| *u == url)
            .map(|(_, id)| id)
            .unwrap_or_else(|| panic!("replica {url} is not listed"))
    }

    /// The holder and epoch of `exe_id`'s lease, by the executor's name.
    pub(crate) fn lease_of(&self, name: &str) -> (String, i64) {
        let exe_id = self.exe_id(name);
        self.leases()
            .0
            .into_iter()
            .find(|(e, _, _)| *e == exe_id)
            .map(|(_, r, epoch)| (r, epoch))
            .unwrap_or_else(|| panic!("no lease for {name}"))
    }

    pub(crate) fn exe_id(&self, name: &str) -> String {
        let out = self.admin_stdout(&["executor", "list"]);
        out.lines()
            .find(|l| l.split_whitespace().nth(2) == Some(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no executor {name}: {out}"))
            .to_string()
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    noise_from(n, seed | 1)
}

async fn put_file(api: &Api, env: &str, path: &str, data: Vec<u8>) {
    let resp = api
        .http
        .put(format!(
            "{}/api/connectors/envs/{env}/files?path={path}",
            api.url
        ))
        .bearer_auth(&api.token)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
}

async fn get_file(api: &Api, env: &str, path: &str) -> Vec<u8> {
    let resp = api
        .http
        .get(format!(
            "{}/api/connectors/envs/{env}/files?path={path}",
            api.url
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

async fn shell_stdout(api: &Api, env: &str, command: &str) -> String {
    let r = api.call(env, "shell", json!({ "command": command })).await;
    assert_eq!(r["isError"], false, "{r}");
    r["structuredContent"]["stdout"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Three replicas, executors `a` on replica 0 and `b` on replica 1;
/// replica 2 holds none. Every tool, files, processes, SSE and copy_path
/// work through every replica.
#[tokio::test]
async fn any_replica_serves_any_call() {
    let Some(c) = Replicas::start(3, &[]) else {
        return;
    };
    any_replica_serves_any_call_on(c).await;
}

/// [`any_replica_serves_any_call`] on one SQLite data dir.
#[tokio::test]
async fn any_replica_serves_any_call_on_sqlite() {
    any_replica_serves_any_call_on(Replicas::start_sqlite(3, &[])).await;
}

async fn any_replica_serves_any_call_on(mut c: Replicas) {
    let work_a = c.executor("a", 0).await;
    let work_b = c.executor("b", 1).await;

    // envs/list on every replica shows both, connected, with their tools
    // (a replica re-reads who holds what at most every 0.5 s).
    for i in 0..3 {
        let api = c.api(i);
        eventually(5, "envs/list to show a and b", || async {
            api.envs().await["envs"].as_array().unwrap().len() == 2
        })
        .await;
        let envs = api.envs().await;
        let names: Vec<&str> = envs["envs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"a") && names.contains(&"b"),
            "replica {i}: {envs}"
        );
        let tools = envs["envs"][0]["tools"].as_array().unwrap();
        assert!(
            tools.iter().any(|t| t["name"] == "shell" || t == "shell"),
            "{envs}"
        );
    }

    // The admin API of a replica holding neither says both are online.
    let admin = c.admin_token();
    let v: Value = fresh_client()
        .get(format!("{}/api/admin/executors", c.replicas[2].url()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let online: Vec<&Value> = v["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["online"])
        .collect();
    assert_eq!(online, [&json!(true), &json!(true)], "{v}");

    // Core tools through a non-owner.
    for (i, env, work) in [
        (2, "a", &work_a),
        (2, "b", &work_b),
        (1, "a", &work_a),
        (0, "b", &work_b),
    ] {
        let api = c.api(i);
        let out = shell_stdout(&api, env, "echo hello-$((6*7)); pwd").await;
        let canon = std::fs::canonicalize(work).unwrap();
        assert_eq!(
            out,
            format!("hello-42\n{}\n", canon.display()),
            "replica {i} {env}"
        );

        let data = random_bytes(5000, i as u64 + 7);
        let r = api
            .call(
                env,
                "write_file",
                json!({"path": format!("d{i}/f.bin"), "content_b64": b64e(&data)}),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
        assert_eq!(
            std::fs::read(work.join(format!("d{i}/f.bin"))).unwrap(),
            data
        );
        let r = api
            .call(env, "read_file", json!({"path": format!("d{i}/f.bin")}))
            .await;
        assert_eq!(b64d(r["content"][0]["text"].as_str().unwrap()), data);
        let r = api
            .call(env, "list_dir", json!({"path": format!("d{i}")}))
            .await;
        assert_eq!(r["isError"], false, "{r}");
        assert_eq!(r["structuredContent"]["entries"][0]["name"], "f.bin", "{r}");
        let r = api
            .call(
                env,
                "exec_command",
                json!({"command": ["sh", "-c", "echo exec-ok"], "pipe_stdin": false}),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
    }

    // A process started through replica 1 (a is on 0), written and read
    // through 2, read through 0, terminated through 2.
    let sid = c
        .api(1)
        .exec("a", json!({"command": ["cat"], "pipe_stdin": true}))
        .await;
    let (s, v) = c.api(2).stdin(&sid, b"ping through two\n", false).await;
    assert_eq!(s, 200, "{v}");
    let (data, _) = c
        .api(2)
        .read_until(&sid, 0, |d| d.ends_with(b"ping through two\n"))
        .await;
    assert_eq!(data, b"ping through two\n");
    let (data, _) = c
        .api(0)
        .read_until(&sid, 0, |d| d.ends_with(b"ping through two\n"))
        .await;
    assert_eq!(data, b"ping through two\n");
    let (s, v) = c.api(1).get("/api/connectors/processes").await;
    assert_eq!(s, 200, "{v}");
    assert!(v.to_string().contains(&sid), "{v}");
    let (s, v) = c
        .api(2)
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually(20, "the process to end", || async {
        c.api(0).output(&sid, 0).await["session_alive"] == false
    })
    .await;

    // SSE through a non-owner, of a process started through a third.
    let lines = "i=1; while [ $i -le 3000 ]; do echo $i; i=$((i+1)); done";
    let sid = c
        .api(0)
        .exec(
            "b",
            json!({"command": ["sh", "-c", lines], "pipe_stdin": false}),
        )
        .await;
    let mut reader = SseReader::open(&c.api(2), &sid, None, None).await;
    let mut out = Vec::new();
    let mut exit = None;
    while let Some(e) = reader.next().await {
        match e.event.as_str() {
            "output" => out.extend(b64d(e.data["data_b64"].as_str().unwrap())),
            "exit" => {
                exit = Some(e.data.clone());
                break;
            }
            other => assert_ne!(other, "lost", "{:?}", e.data),
        }
    }
    let expected: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    assert_eq!(exit, Some(json!({"exit_code": 0})));

    // GET/PUT /files through non-owners (binary, larger than one frame).
    let data = random_bytes(3 << 20, 99);
    put_file(&c.api(2), "a", "up.bin", data.clone()).await;
    assert_eq!(std::fs::read(work_a.join("up.bin")).unwrap(), data);
    assert_eq!(sha(&get_file(&c.api(1), "a", "up.bin").await), sha(&data));

    // copy_path between executors held by two different replicas, both
    // directions, through a replica holding neither and through an owner.
    for (i, from, to, to_work) in [(2, "a", "b", &work_b), (0, "b", "a", &work_a)] {
        let dest = format!("copied-from-{from}.bin");
        let src = if from == "a" { "up.bin" } else { "back.bin" };
        if from == "b" {
            std::fs::write(work_b.join("back.bin"), &data[..1 << 20]).unwrap();
        }
        let expected =
            std::fs::read(if from == "a" { &work_a } else { &work_b }.join(src)).unwrap();
        let r = c
            .api(i)
            .call(
                to,
                "copy_path",
                json!({
                    "source_environment_id": from, "source_path": src,
                    "destination_environment_id": to, "destination_path": dest,
                }),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
        // Two execgate executors: verified by BLAKE3 (the source hashed
        // what it read), whichever replica relayed it.
        assert_eq!(
            r["structuredContent"]["blake3"],
            blake3::hash(&expected).to_hex().as_str(),
            "{r}"
        );
        assert_eq!(
            sha(&std::fs::read(to_work.join(&dest)).unwrap()),
            sha(&expected)
        );
    }

    // admin replicas: three replicas, a on 0 and b on 1.
    let (_, replicas) = c.leases();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert_eq!(c.lease_of("a"), (c.replica_id(0), 1));
    assert_eq!(c.lease_of("b"), (c.replica_id(1), 1));
}

/// The peer endpoint takes only the cluster secret's signature: no
/// credentials, a proxy token or a wrong secret are 401; a gateway that is
/// not a replica has no such route.
#[tokio::test]
async fn the_peer_channel_needs_the_cluster_secret() {
    let Some(mut c) = Replicas::start(1, &[]) else {
        return;
    };
    c.executor("a", 0).await;
    let exe_id = c.exe_id("a");
    let http = fresh_client();
    let url = format!("{}/peer/v1/links/{exe_id}", c.replicas[0].url());
    let upgrade = |r: reqwest::RequestBuilder| {
        r.header("Connection", "upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
    };
    let resp = upgrade(http.get(&url)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{body}"
    );
    let resp = upgrade(http.get(&url).bearer_auth(&c.prepared.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let now = execgate_gateway_now_ms();
    let resp = upgrade(http.get(&url))
        .header("x-execgate-replica", "rep_x")
        .header("x-execgate-peer-time", now.to_string())
        .header("x-execgate-peer-signature", "00".repeat(32))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad peer signature"),
        "{body}"
    );

    // A single gateway has no peer route.
    let single = Prepared::new(&execgate(), "w1").serve(&[]);
    let resp = upgrade(http.get(format!("{}/peer/v1/links/{exe_id}", single.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

fn execgate_gateway_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn marker(work: &Path, text: &str) {
    std::fs::write(work.join("marker.txt"), text).unwrap();
}

/// Fencing and moving ownership: executor `x` is on replica 0; a second
/// executor process with the same token dials replica 1 while the first
/// one's socket is still open (it is stopped, so it answers nothing) and
/// while replica 0 cannot be reached by its peers (its advertise URL goes
/// through a forwarder the test cuts): replica 1 cannot have the first
/// link confirmed, so the newer link wins (the one-live-link rule across
/// replicas, `cluster_rules`, blocks only on a holder's confirmation). The
/// lease moves to replica 1 (epoch 2), replica 0 closes its link although
/// the socket is open, and calls through replica 0 reach the new executor
/// through replica 1.
#[tokio::test]
async fn a_lease_taken_by_another_replica_fences_the_old_link() {
    // Replica 0 would otherwise declare the stopped executor dead by itself.
    // A lease of 60 s: the old link's lease falls due ~30 s after it was
    // taken, so its fencing within the 10 s below comes from the beat's
    // count of leases, not from the lease falling due.
    let args = ["--executor-ping-timeout-secs", "120", "--lease-ms", "60000"];
    let Some(mut c) = Replicas::start(0, &args) else {
        return;
    };
    let listen0: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let peer_path = Balancer::start(listen0).await;
    let r = c.start_replica_advertising(&listen0.to_string(), &peer_path.url, &args);
    c.replicas.push(r);
    let r = c.start_replica(&args);
    c.replicas.push(r);
    let work1 = c.executor("x", 0).await;
    marker(&work1, "first");
    assert_eq!(
        shell_stdout(&c.api(1), "x", "cat marker.txt").await,
        "first"
    );
    assert_eq!(c.lease_of("x"), (c.replica_id_at(&peer_path.url), 1));

    let first_pid = c.executors[0].id();
    signal(first_pid, "STOP");
    // Replica 0's peers can no longer reach it (connections to its
    // advertise URL are cut at once).
    peer_path.switch(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let token = c.tokens["x"].clone();
    let work2 = c.workdir("x2");
    marker(&work2, "second");
    let second = execgate().executor(&c.replicas[1].url(), &token, &work2, &[]);
    c.executors.push(second);

    let r1 = c.replica_id(1);
    eventually(20, "the lease to move to replica 1", || async {
        c.lease_of("x") == (r1.clone(), 2)
    })
    .await;
    // Replica 0 no longer serves its old link: its calls go to replica 1.
    eventually(10, "replica 0 to forward to the new owner", || async {
        let (s, v) = c
            .api(0)
            .call_raw("x", "shell", json!({"command": "cat marker.txt"}))
            .await;
        s == 200 && v["structuredContent"]["stdout"] == "second"
    })
    .await;
    let log = std::fs::read_to_string(c.prepared.data_dir.join("gateway.log")).unwrap();
    assert!(
        log.contains("no longer holds the executor's lease"),
        "replica 0 did not close its link for the lost lease"
    );
    // SIGKILL while stopped: it never re-dials.
    c.executors[0].kill();
    // And the new owner serves it too.
    assert_eq!(
        shell_stdout(&c.api(1), "x", "cat marker.txt").await,
        "second"
    );
}

/// A replica paused past its lease serves none of its executors when it
/// resumes until the executor has re-linked (a new epoch); meanwhile the
/// other replicas refuse calls for it with 503 instead of forwarding.
#[tokio::test]
async fn a_replica_paused_past_its_lease_is_fenced() {
    let Some(mut c) = Replicas::start(2, &["--lease-ms", "1500"]) else {
        return;
    };
    let work = c.executor("x", 0).await;
    marker(&work, "x");
    assert_eq!(shell_stdout(&c.api(1), "x", "cat marker.txt").await, "x");
    let pid = c.replicas[0].pid();
    signal(pid, "STOP");
    // Past the lease: replica 1 does not forward to a replica whose lease
    // lapsed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, v) = c
        .api(1)
        .call_raw("x", "shell", json!({"command": "true"}))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "executor_unavailable");
    signal(pid, "CONT");
    // Resumed: replica 0 closes the link (its lease lapsed), the executor
    // re-dials it and takes the lease again, epoch 2.
    let r0 = c.replica_id(0);
    eventually(30, "the executor to re-link with a new epoch", || async {
        c.lease_of("x") == (r0.clone(), 2)
    })
    .await;
    assert_eq!(shell_stdout(&c.api(1), "x", "cat marker.txt").await, "x");
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A TCP forwarder standing in for a load balancer: connections go to its
/// current backend, which the test switches.
struct Balancer {
    url: String,
    backend: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start(backend: std::net::SocketAddr) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let backend = std::sync::Arc::new(std::sync::Mutex::new(backend));
        let current = backend.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let to = *current.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Balancer { url, backend, task }
    }

    fn switch(&self, to: std::net::SocketAddr) {
        *self.backend.lock().unwrap() = to;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// SIGKILL the replica holding an executor while a process streams
/// numbered lines: the executor re-links (through the balancer) to another
/// replica, which takes the lease with the next epoch, and reading the
/// session through a third replica yields every line, in order, with no
/// gap and no duplicate.
#[tokio::test]
async fn killing_the_owner_loses_no_line() {
    let Some(mut c) = Replicas::start(3, &["--lease-ms", "3000"]) else {
        return;
    };
    let lb = Balancer::start(c.replicas[0].addr).await;
    let token = c.prepared.add_executor("x", false);
    let work = c.workdir("x");
    c.executors
        .push(execgate().executor(&lb.url, &token, &work, &[]));
    wait_for_env(&c.api(0), "x").await;
    assert_eq!(c.lease_of("x"), (c.replica_id(0), 1));

    const N: u32 = 400;
    let script = format!("i=1; while [ $i -le {N} ]; do echo $i; sleep 0.01; i=$((i+1)); done");
    let api = c.api(2);
    let sid = api
        .exec(
            "x",
            json!({"command": ["sh", "-c", script], "pipe_stdin": false}),
        )
        .await;
    // An SSE stream of the session through replica 2 as well, across the kill.
    let sse_api = api.clone();
    let sse_sid = sid.clone();
    let sse = tokio::spawn(async move {
        let mut reader = SseReader::open(&sse_api, &sse_sid, None, None).await;
        let mut out = Vec::new();
        let mut ids = Vec::new();
        while let Some(e) = reader.next().await {
            match e.event.as_str() {
                "output" => {
                    out.extend(b64d(e.data["data_b64"].as_str().unwrap()));
                    ids.push(e.id.unwrap());
                }
                "exit" => return (out, ids, Some(e.data)),
                other => panic!("unexpected {other} event: {}", e.data),
            }
        }
        (out, ids, None)
    });
    let mut data = Vec::new();
    let mut since = 0u64;
    let mut killed = false;
    let mut refused = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {} bytes",
            data.len()
        );
        let (s, v) = api
            .get(&format!(
                "/api/connectors/processes/{sid}/output?since={since}&wait_ms=1000"
            ))
            .await;
        if s != 200 {
            // The owner is gone and the executor not yet re-linked.
            assert!(killed, "{s} {v}");
            assert_eq!(v["error"]["code"], "executor_unavailable", "{v}");
            refused += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        for chunk in v["chunks"].as_array().unwrap() {
            data.extend(b64d(chunk["data_b64"].as_str().unwrap()));
            since = chunk["seq"].as_u64().unwrap();
        }
        since = since.max(v["next_since"].as_u64().unwrap_or(0));
        if !killed && data.len() > 200 {
            // Mid-stream: the balancer sends new connections to replica 1,
            // and the owner dies.
            lb.switch(c.replicas[1].addr);
            c.replicas[0].proc.kill();
            killed = true;
        }
        if v["session_alive"] == false {
            break;
        }
    }
    assert!(killed, "the process ended before the owner was killed");
    let expected: String = (1..=N).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(data).unwrap(), expected);
    let (out, ids, exit) = tokio::time::timeout(Duration::from_secs(40), sse)
        .await
        .expect("the stream ends")
        .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), expected, "SSE output");
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "SSE ids: {ids:?}");
    assert_eq!(exit, Some(json!({"exit_code": 0})));
    assert_eq!(c.lease_of("x"), (c.replica_id(1), 2));
    eprintln!("calls refused while the executor re-linked: {refused}");
}

/// The bridge (a capability-token holder speaking the executor protocol)
/// through a replica that does not hold the executor: requests relayed,
/// and the session's notifications (its tap) too. MCP through it as well.
#[tokio::test]
async fn the_bridge_and_mcp_work_through_a_non_owner() {
    let Some(mut c) = Replicas::start(2, &[]) else {
        return;
    };
    let work = c.executor("x", 0).await;
    let token = c.mint(300);
    let mut b = crate::bridge::bridge(&c.replicas[1], "x", &token).await;
    let init = b
        .ok(json!(0), "initialize", json!({"clientName": "test"}))
        .await;
    assert!(
        init["sessionId"].as_str().unwrap().starts_with("br-"),
        "{init}"
    );
    let cwd = format!("file://{}", std::fs::canonicalize(&work).unwrap().display());
    b.ok(
        json!(1),
        "process/start",
        json!({"processId": "p1", "argv": ["sh", "-c", "echo via-peer; sleep 0.2; echo two"],
               "cwd": cwd, "env": {}, "tty": false}),
    )
    .await;
    let (out, last) = b.read_all("p1", json!("r")).await;
    assert_eq!(String::from_utf8_lossy(&out), "via-peer\ntwo\n");
    assert_eq!(last["exitCode"], 0, "{last}");
    while !b.notes.iter().any(|n| n["method"] == "process/closed") {
        let n = b.next().await;
        b.notes.push(n);
    }
    assert!(b.notes.iter().all(|n| n["params"]["processId"] == "p1"));
    assert!(b.notes.iter().any(|n| n["method"] == "process/output"));

    // MCP tools/call through the non-owner.
    let mcp = crate::mcp::Mcp::new(&c.replicas[1].url(), &c.prepared.token);
    let v = mcp
        .request(
            "tools/call",
            json!({"name": "shell", "arguments": {"environment_id": "x", "command": "echo mcp-ok"}}),
        )
        .await;
    assert_eq!(
        v["result"]["structuredContent"]["stdout"], "mcp-ok\n",
        "{v}"
    );
}

/// Six executors spread over three replicas: every core tool on every
/// executor through every replica, a process of each read through another
/// replica, envs/list complete everywhere.
#[tokio::test]
async fn six_executors_on_three_replicas_through_every_replica() {
    let Some(mut c) = Replicas::start(3, &[]) else {
        return;
    };
    let mut works = Vec::new();
    for e in 0..6 {
        // One with a policy to announce (and describe on other replicas).
        let args: &[&str] = if e == 5 {
            &["--max-processes", "50"]
        } else {
            &[]
        };
        works.push(c.executor_with(&format!("e{e}"), e % 3, args).await);
    }
    for r in 0..3 {
        let api = c.api(r);
        eventually(5, "envs/list to show all six", || async {
            api.envs().await["envs"].as_array().unwrap().len() == 6
        })
        .await;
    }
    // Each replica describes every executor as its owner does (those it
    // does not hold, from the handshake in the lease), last_seen aside.
    let mut lists = Vec::new();
    for r in 0..3 {
        let mut envs = c.api(r).envs().await["envs"].as_array().unwrap().clone();
        for env in &mut envs {
            env.as_object_mut().unwrap().remove("last_seen");
        }
        envs.sort_by_key(|e| e["name"].as_str().unwrap().to_string());
        lists.push(envs);
    }
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[0], lists[2]);
    assert_eq!(lists[0][0]["executor"]["kind"], "execgate");
    assert_eq!(
        lists[0][5]["policy"]["max_processes"], 50,
        "{}",
        lists[0][5]
    );
    // Pages of 2 through every replica walk the same six, in name order
    // (most of them described from the leases).
    for r in 0..3 {
        let api = c.api(r);
        let (mut walked, mut after) = (Vec::new(), Value::Null);
        loop {
            let (s, v) = api
                .post(
                    "/api/connectors/envs/list",
                    json!({"limit": 2, "after": after}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            let envs = v["envs"].as_array().unwrap();
            assert!(envs.len() <= 2, "{v}");
            walked.extend(envs.iter().map(|e| e["name"].as_str().unwrap().to_string()));
            match v.get("next") {
                Some(next) => after = next.clone(),
                None => break,
            }
        }
        assert_eq!(walked, ["e0", "e1", "e2", "e3", "e4", "e5"], "replica {r}");
    }
    // Listing opened no channel to any owner.
    let log = std::fs::read_to_string(c.prepared.data_dir.join("gateway.log")).unwrap();
    assert!(!log.contains("opened a channel to the executor through its owner"));
    for r in 0..3 {
        let api = c.api(r);
        for (e, work) in works.iter().enumerate() {
            let env = format!("e{e}");
            let tag = format!("r{r}-e{e}");
            assert_eq!(
                shell_stdout(&api, &env, &format!("echo {tag}")).await,
                format!("{tag}\n")
            );
            let r1 = api
                .call(
                    &env,
                    "write_file",
                    json!({"path": format!("{tag}/w.txt"), "content": tag}),
                )
                .await;
            assert_eq!(r1["isError"], false, "{r1}");
            assert_eq!(
                std::fs::read_to_string(work.join(format!("{tag}/w.txt"))).unwrap(),
                tag
            );
            let r2 = api
                .call(
                    &env,
                    "read_file",
                    json!({"path": format!("{tag}/w.txt"), "encoding": "utf-8"}),
                )
                .await;
            assert_eq!(r2["content"][0]["text"], tag.as_str(), "{r2}");
            let patch = format!(
                "*** Begin Patch\n*** Add File: {tag}/p.txt\n+patched {tag}\n*** End Patch"
            );
            let r3 = api.call(&env, "apply_patch", json!({"patch": patch})).await;
            assert_eq!(r3["isError"], false, "{r3}");
            assert_eq!(
                std::fs::read_to_string(work.join(format!("{tag}/p.txt"))).unwrap(),
                format!("patched {tag}\n")
            );
            let r4 = api.call(&env, "list_dir", json!({"path": tag})).await;
            let names: Vec<&str> = r4["structuredContent"]["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["p.txt", "w.txt"], "{r4}");
            // exec_command here, its output read through the next replica.
            let sid = api
                .exec(&env, json!({"command": ["sh", "-c", format!("echo out-{tag}")], "pipe_stdin": false}))
                .await;
            let (out, _) = c
                .api((r + 1) % 3)
                .read_until(&sid, 0, |d| d.ends_with(b"\n"))
                .await;
            assert_eq!(String::from_utf8(out).unwrap(), format!("out-{tag}\n"));
        }
    }
    let (leases, _) = c.leases();
    assert_eq!(leases.len(), 6, "{leases:?}");
    for e in 0..6 {
        assert_eq!(c.lease_of(&format!("e{e}")), (c.replica_id(e % 3), 1));
    }
}

/// Two replicas and a stock codex exec-server named `codex` linked to
/// replica 0; `None` (the test skips) without a codex binary or without
/// PostgreSQL where it is not required.
async fn codex_on_two_replicas() -> Option<(Replicas, Proc)> {
    let bin = crate::codex::codex_bin()?;
    let c = Replicas::start(2, &[])?;
    let creds = crate::codex::add_codex_executor_on(&c.store_args(), "codex");
    let codex = crate::codex::start_codex(
        &bin,
        &c.replicas[0].url(),
        &creds,
        c.prepared.dir.path(),
        "a",
    );
    wait_for_env(&c.api(0), "codex").await;
    Some((c, codex))
}

/// A stock codex exec-server (SigV4, text frames only) on replica 0, used
/// through replica 1: shell, files, a process and its output.
#[tokio::test]
async fn a_stock_codex_is_served_through_a_non_owner() {
    let Some((c, _codex)) = codex_on_two_replicas().await else {
        return;
    };
    let api = c.api(1);
    eventually(5, "replica 1 to list codex", || async {
        api.envs().await["envs"].as_array().unwrap().len() == 1
    })
    .await;
    let envs = api.envs().await;
    assert_eq!(envs["envs"][0]["executor"]["kind"], "codex", "{envs}");
    assert_eq!(
        shell_stdout(&api, "codex", "echo via-peer").await,
        "via-peer\n"
    );
    let data = random_bytes(200_000, 5);
    put_file(&api, "codex", "c.bin", data.clone()).await;
    assert_eq!(
        sha(&get_file(&c.api(0), "codex", "c.bin").await),
        sha(&data)
    );
    let r = api
        .call("codex", "read_file", json!({"path": "c.bin"}))
        .await;
    assert_eq!(
        sha(&b64d(r["content"][0]["text"].as_str().unwrap())),
        sha(&data)
    );
    let sid = api
        .exec(
            "codex",
            json!({"command": ["sh", "-c", "echo one; sleep 0.3; echo two"], "pipe_stdin": false}),
        )
        .await;
    let (out, _) = c
        .api(0)
        .read_until(&sid, 0, |d| d.ends_with(b"two\n"))
        .await;
    assert_eq!(out, b"one\ntwo\n");
    let (out, _) = api.read_until(&sid, 0, |d| d.ends_with(b"two\n")).await;
    assert_eq!(out, b"one\ntwo\n");
}

/// A stock codex's output beyond its retention is lost; the owner counts
/// the lost bytes from the notifications it saw (codex does not count
/// them), and a non-owner reading the session reports the same number, not
/// "unknown" (the owner fills `lostBytes` into the relayed read).
#[tokio::test]
async fn codex_lost_bytes_are_counted_through_a_non_owner() {
    let Some((c, _codex)) = codex_on_two_replicas().await else {
        return;
    };
    let (owner, other) = (c.api(0), c.api(1));
    eventually(5, "replica 1 to list codex", || async {
        other.envs().await["envs"].as_array().unwrap().len() == 1
    })
    .await;
    const TOTAL: usize = 3 * 1024 * 1024;
    let sid = other
        .exec(
            "codex",
            json!({"command": ["sh", "-c", format!("head -c {TOTAL} /dev/zero | tr '\\0' x")]}),
        )
        .await;
    eventually(30, "the process to end", || async {
        owner.output(&sid, 1 << 40).await["session_alive"] == false
    })
    .await;
    let on_owner = owner.output(&sid, 0).await;
    let through = other.output(&sid, 0).await;
    assert_eq!(on_owner["truncated"], true, "{}", on_owner["lost_bytes"]);
    if on_owner.get("lost_bytes_unknown") == Some(&json!(true)) {
        // codex dropped notifications (a loaded machine): the owner cannot
        // count either, and nothing is left to compare.
        assert_eq!(through["lost_bytes_unknown"], true);
        eprintln!("codex dropped notifications: loss unknown on the owner too");
        return;
    }
    let lost = on_owner["lost_bytes"].as_u64().unwrap();
    assert!(lost > 0, "{on_owner}");
    assert_eq!(
        through.get("lost_bytes_unknown"),
        None,
        "the non-owner knows the count: {}",
        through["lost_bytes"]
    );
    assert_eq!(through["lost_bytes"].as_u64(), Some(lost));
    assert_eq!(through["chunks"][0]["seq"], on_owner["chunks"][0]["seq"]);
}

/// The per-workspace session cap holds exactly across replicas on
/// PostgreSQL: starts racing on three replicas (each on its own executor,
/// and through the others) never leave more than N live sessions.
#[tokio::test]
async fn the_session_cap_holds_across_replicas() {
    const N: usize = 2;
    let Some(mut c) = Replicas::start(3, &["--max-sessions-per-workspace", "2"]) else {
        return;
    };
    for i in 0..3 {
        c.executor(&format!("x{i}"), i).await;
    }
    for i in 0..3 {
        let api = c.api(i);
        eventually(5, "every replica to list every executor", || async {
            api.envs().await["envs"].as_array().unwrap().len() == 3
        })
        .await;
    }
    for round in 0..3 {
        let starts = (0..12).map(|k| {
            let (api, env) = (c.api(k % 3), format!("x{}", (k + round) % 3));
            async move {
                api.call_raw(&env, "exec_command", json!({"command": ["sleep", "60"]}))
                    .await
            }
        });
        let answers = futures_util::future::join_all(starts).await;
        let mut started = Vec::new();
        for (s, v) in &answers {
            match s {
                200 => started.push(
                    v["structuredContent"]["session_id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                ),
                429 => assert_eq!(v["error"]["code"], "too_many_sessions", "{v}"),
                _ => panic!("{s} {v}"),
            }
        }
        let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
        assert_eq!(started.len(), N, "round {round}: {statuses:?}");
        let (s, v) = c.api(0).get("/api/connectors/processes?limit=1000").await;
        assert_eq!(s, 200, "{v}");
        let live = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "running")
            .count();
        assert_eq!(live, N, "{v}");
        for (k, sid) in started.iter().enumerate() {
            let (s, v) = c
                .api(k % 3)
                .post(
                    &format!("/api/connectors/processes/{sid}/terminate"),
                    json!({}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
    }
}

/// A channel to an owner is kept while idle, past several ping timeouts
/// (both ends ping), and reused by the next call.
#[tokio::test]
async fn an_idle_channel_is_kept_and_reused() {
    let Some(mut c) = Replicas::start(2, &["--executor-ping-timeout-secs", "1"]) else {
        return;
    };
    c.executor("x", 0).await;
    let opened = || {
        std::fs::read_to_string(c.prepared.data_dir.join("gateway.log"))
            .unwrap()
            .matches("opened a channel to the executor through its owner")
            .count()
    };
    assert_eq!(shell_stdout(&c.api(1), "x", "echo 1").await, "1\n");
    let first = opened();
    assert!(first >= 1, "no channel was opened");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(shell_stdout(&c.api(1), "x", "echo 2").await, "2\n");
    assert_eq!(opened(), first, "the idle channel was not kept");
}

/// Forwarded calls and peer latency (#19) on two replicas with
/// `--metrics-listen`: the executor on replica 0, calls through replica 1.
/// Replica 1 counts each request it sends through replica 0, by outcome,
/// and its round trip by method; replica 0 counts what it relays, and
/// forwards nothing itself. Once replica 0 is killed, replica 1's calls
/// fail: `unreachable` (or `disconnected` for a call that was already on
/// the channel when it died).
#[tokio::test]
async fn forwarded_calls_are_counted() {
    use crate::metrics::{free_addr, Scrape};
    let Some(mut c) = Replicas::start(0, &[]) else {
        return;
    };
    let metrics = [free_addr(), free_addr()];
    for addr in &metrics {
        // A long lease: the dead owner's lease is still fresh when the
        // test calls through replica 1 after the kill.
        let r = c.start_replica(&["--lease-ms", "30000", "--metrics-listen", addr]);
        c.replicas.push(r);
    }
    let work = c.executor("x", 0).await;
    std::fs::write(work.join("f.txt"), "one\n").unwrap();
    let (owner, other) = (c.api(0), c.api(1));
    // The channel is opened (and a process/start relayed) before the
    // first scrapes.
    assert_eq!(shell_stdout(&other, "x", "echo hi").await, "hi\n");

    let s0 = [Scrape::of(&metrics[0]).await, Scrape::of(&metrics[1]).await];
    // Known traffic: 3 read_file through replica 1, one of a missing file
    // (the executor's error), 2 read_file through the owner.
    for _ in 0..3 {
        let r = other.call("x", "read_file", json!({"path": "f.txt"})).await;
        assert_eq!(r["isError"], false, "{r}");
    }
    let r = other
        .call("x", "read_file", json!({"path": "missing.txt"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    for _ in 0..2 {
        let r = owner.call("x", "read_file", json!({"path": "f.txt"})).await;
        assert_eq!(r["isError"], false, "{r}");
    }
    let s1 = [Scrape::of(&metrics[0]).await, Scrape::of(&metrics[1]).await];
    let delta = |i: usize, name: &str, labels: &[(&str, &str)]| {
        s1[i].get(name, labels) - s0[i].get(name, labels)
    };
    let fwd = "execgate_forwarded_calls_total";
    let outcomes = [
        "ok",
        "error",
        "timeout",
        "disconnected",
        "unreachable",
        "cancelled",
    ];
    let read = [("method", "fs/readRange")];
    assert_eq!(delta(1, fwd, &[("outcome", "ok")]), 3.0, "{}", s1[1].text);
    assert_eq!(
        delta(1, fwd, &[("outcome", "error")]),
        1.0,
        "{}",
        s1[1].text
    );
    for outcome in &outcomes[2..] {
        assert_eq!(delta(1, fwd, &[("outcome", outcome)]), 0.0, "{outcome}");
    }
    assert_eq!(
        delta(1, "execgate_peer_request_duration_seconds_count", &read),
        4.0,
        "{}",
        s1[1].text
    );
    assert!(delta(1, "execgate_peer_request_duration_seconds_sum", &read) > 0.0);
    // The non-owner's own link round trips include them too.
    assert_eq!(
        delta(1, "execgate_link_request_duration_seconds_count", &read),
        4.0
    );
    assert_eq!(delta(1, "execgate_peer_relayed_requests_total", &[]), 0.0);
    // The owner relayed exactly those 4 and forwarded nothing; its link
    // carried them and its own 2.
    assert_eq!(
        delta(0, "execgate_peer_relayed_requests_total", &[]),
        4.0,
        "{}",
        s1[0].text
    );
    assert_eq!(
        delta(0, "execgate_link_request_duration_seconds_count", &read),
        6.0
    );
    for outcome in outcomes {
        assert_eq!(s1[0].get(fwd, &[("outcome", outcome)]), 0.0, "{outcome}");
    }
    assert!(
        s1[0]
            .label_values("execgate_peer_request_duration_seconds_count", "method")
            .is_empty(),
        "{}",
        s1[0].text
    );
    // Every peer method label is a protocol method (bounded).
    for method in s1[1].label_values("execgate_peer_request_duration_seconds_count", "method") {
        assert!(
            method.starts_with("process/") || method.starts_with("fs/"),
            "{method}"
        );
    }
    // The dashboard's replica-only metrics exist on a forwarding replica.
    for name in crate::metrics::REPLICA_ONLY {
        assert!(
            crate::metrics::dashboard_metrics()
                .iter()
                .any(|n| n == name),
            "{name} is not on the dashboard"
        );
        assert!(
            s1[1].text.contains(&format!("# TYPE {name} ")),
            "{name} is not in:\n{}",
            s1[1].text
        );
    }

    // The owner dies: two calls through replica 1 fail, neither sent to an
    // executor.
    c.replicas[0].proc.kill();
    for _ in 0..2 {
        let (status, v) = other
            .call_raw("x", "read_file", json!({"path": "f.txt"}))
            .await;
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["error"]["code"], "executor_unavailable", "{v}");
    }
    let s2 = Scrape::of(&metrics[1]).await;
    let after = |outcome: &str| {
        s2.get(fwd, &[("outcome", outcome)]) - s1[1].get(fwd, &[("outcome", outcome)])
    };
    assert!(after("unreachable") >= 1.0, "{}", s2.text);
    assert_eq!(
        after("unreachable") + after("disconnected"),
        2.0,
        "{}",
        s2.text
    );
    assert_eq!(after("ok") + after("error"), 0.0);
}

/// Registers `token`'s executor on `gateway`: the connect URL it answers.
async fn register(gateway: &str, exe_id: &str, token: &str) -> String {
    let r = fresh_client()
        .post(format!(
            "{gateway}/cloud/environment/{exe_id}/direct/register"
        ))
        .bearer_auth(token)
        .json(&json!({"transport": "direct_jsonrpc_v1"}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["url"].as_str().unwrap().to_string()
}

/// The HTTP status of a refused WebSocket dial of `url`, 101 if it opened.
async fn dial_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("dial {url}: {e}"),
    }
}

/// Behind a load balancer without session affinity: a connect ticket
/// handed out by replica 0's register opens the WebSocket on replica 1,
/// once; used, expired or replaced tickets open nothing on any replica.
#[tokio::test]
async fn a_ticket_from_one_replica_opens_the_link_on_another() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(c) = Replicas::start(2, &[]) else {
        return;
    };
    let token = c.prepared.add_executor("x", false);
    let exe_id = c.exe_id("x");
    let (a, b) = (c.replicas[0].url(), c.replicas[1].url());
    let on_b = |url: &str| url.replacen(&a["http://".len()..], &b["http://".len()..], 1);

    // A replaced ticket opens nothing; the newest one opens on B, once.
    let first = register(&a, &exe_id, &token).await;
    let url = register(&a, &exe_id, &token).await;
    assert!(url.contains("?ticket="), "{url}");
    assert_eq!(dial_status(&on_b(&first)).await, 401);
    let (mut ws, _) = tokio_tungstenite::connect_async(on_b(&url)).await.unwrap();
    assert_eq!(
        dial_status(&url).await,
        401,
        "a used ticket opened a link on A"
    );
    assert_eq!(dial_status(&on_b(&url)).await, 401);
    // The executor's handshake on B: B takes the lease, and A serves it.
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("initialize")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["method"] == "initialize" {
            let answer = json!({"jsonrpc": "2.0", "id": v["id"], "result": {
                "sessionId": "s1", "environmentInfo": {}}});
            ws.send(Message::Text(answer.to_string().into()))
                .await
                .unwrap();
        }
        if v["method"] == "initialized" {
            break;
        }
    }
    eventually(10, "replica 1 to hold x", || async {
        c.leases()
            .0
            .iter()
            .any(|(e, r, _)| *e == exe_id && *r == c.replica_id(1))
    })
    .await;
    let api = c.api(0);
    eventually(5, "replica 0 to list x", || async {
        api.envs().await["envs"].as_array().unwrap().len() == 1
    })
    .await;
    drop(ws);
}

/// How many times a replica set out to enforce session `sid`'s deadline
/// (the replicas share one log file).
fn enforcements(c: &Replicas, sid: &str) -> usize {
    std::fs::read_to_string(c.prepared.data_dir.join("gateway.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("enforcing a due deadline") && l.contains(sid))
        .count()
}

/// Reads session `sid` through `api` until it ends, waiting out 503s
/// while its executor re-links: the final output answer.
async fn wait_for_exit(api: &Api, sid: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut since = 0u64;
    loop {
        assert!(std::time::Instant::now() < deadline, "{sid} never ended");
        let (s, v) = api
            .get(&format!(
                "/api/connectors/processes/{sid}/output?since={since}&wait_ms=1000"
            ))
            .await;
        if s != 200 {
            assert_eq!(v["error"]["code"], "executor_unavailable", "{v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        since = since.max(v["next_since"].as_u64().unwrap_or(0));
        if v["session_alive"] == false {
            return v;
        }
    }
}

/// `max_runtime_ms` of a process started through a non-owner: the holder
/// kills it on time, once; and when the holder dies before the deadline,
/// the replica the executor re-links to kills it, once.
#[tokio::test]
async fn a_deadline_is_enforced_once_by_the_holder_even_if_it_dies() {
    let Some(mut c) = Replicas::start(3, &["--lease-ms", "3000"]) else {
        return;
    };
    let lb = Balancer::start(c.replicas[0].addr).await;
    let token = c.prepared.add_executor("x", false);
    let work = c.workdir("x");
    c.executors
        .push(execgate().executor(&lb.url, &token, &work, &[]));
    wait_for_env(&c.api(0), "x").await;

    let started = std::time::Instant::now();
    let sid = c
        .api(1)
        .exec(
            "x",
            json!({"command": ["sleep", "30"], "max_runtime_ms": 1000}),
        )
        .await;
    let v = wait_for_exit(&c.api(2), &sid).await;
    let took = started.elapsed();
    assert_eq!(v["exit_code"], 137, "{v}");
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(5),
        "{took:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(enforcements(&c, &sid), 1, "enforced more than once");

    // The holder dies before the next deadline: the new holder does it.
    let started = std::time::Instant::now();
    let sid = c
        .api(1)
        .exec(
            "x",
            json!({"command": ["sleep", "30"], "max_runtime_ms": 3000}),
        )
        .await;
    lb.switch(c.replicas[2].addr);
    c.replicas[0].proc.kill();
    let v = wait_for_exit(&c.api(1), &sid).await;
    let took = started.elapsed();
    assert_eq!(v["exit_code"], 137, "{v}");
    assert!(
        took >= Duration::from_millis(3000) && took < Duration::from_secs(15),
        "{took:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(enforcements(&c, &sid), 1, "enforced more than once");
    assert_eq!(c.lease_of("x").0, c.replica_id(2));
}
