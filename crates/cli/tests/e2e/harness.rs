//! Starts real `execgate` processes on 127.0.0.1 and talks HTTP to them.
//! Every child is killed when its handle drops, so a failing test leaves
//! nothing running.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_execgate")
}

/// Runs `execgate admin --data-dir D ARGS…` and returns the last line of stdout.
pub fn admin(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("admin")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run execgate admin");
    assert!(
        out.status.success(),
        "execgate admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// Runs `execgate admin --data-dir D ARGS…` and returns all of stdout.
pub fn admin_stdout(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("admin")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run execgate admin");
    assert!(
        out.status.success(),
        "execgate admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The admin token a gateway generated in its data dir at first start.
pub fn admin_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin-token"))
        .expect("the gateway wrote <data-dir>/admin-token")
        .trim()
        .to_string()
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct GatewayProc {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl GatewayProc {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts `execgate serve` and waits for its "listening" line.
pub fn start_gateway(data_dir: &Path, listen: &str) -> GatewayProc {
    start_gateway_with(data_dir, listen, &[])
}

/// Starts `execgate serve` with extra `args` (appending to its log).
pub fn start_gateway_with(data_dir: &Path, listen: &str, args: &[&str]) -> GatewayProc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("gateway.log"))
        .unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("EXECGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start gateway");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(url) = line.strip_prefix("execgate gateway listening on http://") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "gateway did not start: {}",
                std::fs::read_to_string(data_dir.join("gateway.log")).unwrap_or_default()
            )
        })
        .parse()
        .unwrap();
    GatewayProc {
        proc: Proc(child),
        addr,
    }
}

/// Starts `execgate executor` with extra `args`.
pub fn start_executor(url: &str, token: &str, workdir: &Path, args: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(workdir.join("../executor.log"))
        .unwrap();
    let child = Command::new(bin())
        .args(["executor", "--gateway", url, "--token", token, "--workdir"])
        .arg(workdir)
        .args(args)
        .env("EXECGATE_LOG", "info")
        // Its journal of staged files goes with the test, not to ~/.local.
        .env("XDG_STATE_HOME", workdir.join("../state"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start executor");
    Proc(child)
}

/// A small HTTP client for the connectors API that returns status and JSON.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Api {
    pub fn new(url: &str, token: &str) -> Api {
        Api {
            http: fresh_client(),
            url: url.to_string(),
            token: token.to_string(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request reaches the gateway");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "status {status}: body is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, v)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.url)).json(&body))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn envs(&self) -> Value {
        let (s, v) = self.post("/api/connectors/envs/list", json!({})).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// tool/call; asserts HTTP 200 and returns the CallToolResult.
    pub async fn call(&self, env: &str, tool: &str, args: Value) -> Value {
        let (s, v) = self.call_raw(env, tool, args).await;
        assert_eq!(s, 200, "{tool} on {env}: {v}");
        v
    }

    pub async fn call_raw(&self, env: &str, tool: &str, args: Value) -> (u16, Value) {
        self.post(
            &format!("/api/connectors/envs/{env}/tool/call"),
            json!({"tool": tool, "arguments": args}),
        )
        .await
    }

    /// Starts `command` with exec_command and returns the session id.
    pub async fn exec(&self, env: &str, args: Value) -> String {
        let r = self.call(env, "exec_command", args).await;
        assert_eq!(r["isError"], false, "{r}");
        let sid = r["structuredContent"]["session_id"]
            .as_str()
            .unwrap()
            .to_string();
        let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(text["session_id"], sid.as_str());
        sid
    }

    pub async fn output(&self, sid: &str, since: u64) -> Value {
        let (s, v) = self
            .get(&format!(
                "/api/connectors/processes/{sid}/output?since={since}"
            ))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Reads output from `since` until `done(collected stdout)` or the
    /// process ends; returns (all bytes read, last answer).
    pub async fn read_until(
        &self,
        sid: &str,
        mut since: u64,
        done: impl Fn(&[u8]) -> bool,
    ) -> (Vec<u8>, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut data = Vec::new();
        loop {
            let (s, v) = self
                .get(&format!(
                    "/api/connectors/processes/{sid}/output?since={since}&wait_ms=2000"
                ))
                .await;
            assert_eq!(s, 200, "{v}");
            for c in v["chunks"].as_array().unwrap() {
                data.extend(b64d(c["data_b64"].as_str().unwrap()));
                since = c["seq"].as_u64().unwrap();
            }
            since = since.max(v["next_since"].as_u64().unwrap_or(0));
            if done(&data) || v["session_alive"] == false {
                return (data, v);
            }
            assert!(
                Instant::now() < deadline,
                "timed out; got {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }

    pub async fn stdin(&self, sid: &str, data: &[u8], eof: bool) -> (u16, Value) {
        self.post(
            &format!("/api/connectors/processes/{sid}/stdin"),
            json!({"data_b64": b64e(data), "eof": eof}),
        )
        .await
    }
}

/// A client that keeps no idle connections: tests kill gateways and provoke
/// 413s, after which a pooled connection would be dead.
pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub fn b64e(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn b64d(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Polls `f` until it is true, at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// One workspace with one connected executor: the usual test setting.
pub struct World {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub gateway: GatewayProc,
    /// Held so that the executors live (and die) with the world.
    pub executors: Vec<Proc>,
    pub api: Api,
    pub workdir: PathBuf,
    /// The `laptop` executor's token, to start another executor for it.
    pub exe_token: String,
}

impl World {
    /// Workspace `w1`, environment `laptop` (default), extra executor args.
    pub async fn start(executor_args: &[&str]) -> World {
        World::start_with(&[], executor_args).await
    }

    /// As [`World::start`], with extra gateway args too.
    pub async fn start_with(gateway_args: &[&str], executor_args: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let workdir = dir.path().join("work");
        std::fs::create_dir_all(&workdir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        admin(&data_dir, &["workspace", "create", "w1"]);
        let token = admin(&data_dir, &["token", "create", "--workspace", "w1"]);
        let exe_token = admin(
            &data_dir,
            &[
                "executor",
                "add",
                "--workspace",
                "w1",
                "--name",
                "laptop",
                "--default",
            ],
        );
        let gateway = start_gateway_with(&data_dir, "127.0.0.1:0", gateway_args);
        let url = gateway.url();
        let executor = start_executor(&url, &exe_token, &workdir, executor_args);
        let api = Api::new(&url, &token);
        wait_for_env(&api, "laptop").await;
        World {
            dir,
            data_dir,
            gateway,
            executors: vec![executor],
            api,
            workdir,
            exe_token,
        }
    }
}

impl World {
    /// A client of the admin API (`/api/admin/*`) with the admin token.
    pub fn admin_api(&self) -> Api {
        Api::new(&self.gateway.url(), &admin_token(&self.data_dir))
    }
}

pub async fn wait_for_env(api: &Api, name: &str) {
    eventually(40, &format!("environment {name} to connect"), || async {
        let v = api.envs().await;
        v["envs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == name)
    })
    .await;
}
