//! The e2e tests' use of the test kit (crates/testkit): this build's
//! `execgate` binary, and the usual world of one workspace with one
//! connected executor. Every child is killed when its handle drops, so a
//! failing test leaves nothing running.

use std::path::{Path, PathBuf};

pub use execgate_testkit::{
    admin_token, alive, b64d, b64e, eventually, fresh_client, wait_for_env, write_tools_file, Api,
    Execgate, GatewayProc, Prepared, Proc,
};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_execgate")
}

/// The `execgate` binary of this build, logging at `info`.
pub fn execgate() -> Execgate {
    Execgate::new(bin())
}

/// Runs `execgate admin --data-dir D ARGS…` and returns the last line of stdout.
pub fn admin(data_dir: &Path, args: &[&str]) -> String {
    execgate().admin(data_dir, args)
}

/// Runs `execgate admin --data-dir D ARGS…` and returns all of stdout.
pub fn admin_stdout(data_dir: &Path, args: &[&str]) -> String {
    execgate().admin_stdout(data_dir, args)
}

/// Starts `execgate serve` and waits for its "listening" line.
pub fn start_gateway(data_dir: &Path, listen: &str) -> GatewayProc {
    start_gateway_with(data_dir, listen, &[])
}

/// Starts `execgate serve` with extra `args` (appending to its log).
pub fn start_gateway_with(data_dir: &Path, listen: &str, args: &[&str]) -> GatewayProc {
    execgate().serve(data_dir, listen, args)
}

/// Starts `execgate executor` with extra `args`.
pub fn start_executor(url: &str, token: &str, workdir: &Path, args: &[&str]) -> Proc {
    execgate().executor(url, token, workdir, args)
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
        let prepared = Prepared::new(&execgate(), "w1");
        let exe_token = prepared.add_executor("laptop", true);
        let g = prepared.serve(gateway_args);
        let workdir = g.dir.path().join("work");
        std::fs::create_dir_all(&workdir).unwrap();
        let executor = g.eg.executor(&g.url, &exe_token, &workdir, executor_args);
        let api = g.api();
        wait_for_env(&api, "laptop").await;
        World {
            dir: g.dir,
            data_dir: g.data_dir,
            gateway: g.process,
            executors: vec![executor],
            api,
            workdir,
            exe_token,
        }
    }

    /// A client of the admin API (`/api/admin/*`) with the admin token.
    pub fn admin_api(&self) -> Api {
        Api::new(&self.gateway.url(), &admin_token(&self.data_dir))
    }

    /// Starts `cat` of a file `big.bin` holding `data` and waits for its
    /// exit without reading any output; returns the session and the last
    /// (empty) answer.
    pub async fn cat_unread(&self, data: &[u8]) -> (String, serde_json::Value) {
        std::fs::write(self.workdir.join("big.bin"), data).unwrap();
        let sid = self
            .api
            .exec(
                "laptop",
                serde_json::json!({"command": ["cat", "big.bin"], "pipe_stdin": false}),
            )
            .await;
        let (_, v) = self.api.read_until(&sid, 999_999_999, |_| false).await;
        (sid, v)
    }
}

/// `GET /api/connectors/processes/{sid}/stream{query}` with `api`'s token,
/// to add headers to and send.
pub fn stream_request(api: &Api, sid: &str, query: &str) -> reqwest::RequestBuilder {
    api.http
        .get(format!(
            "{}/api/connectors/processes/{sid}/stream{query}",
            api.url
        ))
        .bearer_auth(&api.token)
}

/// `n` pseudo-random bytes (xorshift), the same each time: not a short
/// cycle, and most of them not UTF-8 as a whole.
pub fn noise(n: usize) -> Vec<u8> {
    noise_from(n, 0x9e3779b97f4a7c15)
}

/// [`noise`] from another (non-zero) seed: another sequence.
pub fn noise_from(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
