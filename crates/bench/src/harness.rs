//! Real processes for the benchmarks: the release `execgate` binary as
//! gateway and executors, set up through `execgate admin`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The `execgate` binary: `$EXECGATE_BENCH_BIN` when set (CI runs the quick
/// suite against its debug build), else the one beside this binary, built
/// first when run by cargo.
pub fn execgate_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("EXECGATE_BENCH_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("execgate");
    if let Ok(cargo) = std::env::var("CARGO") {
        // `cargo run -p execgate-bench` does not build other packages' binaries.
        let release = me.parent().is_some_and(|d| d.ends_with("release"));
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "execgate"]);
        if release {
            cmd.arg("--release");
        }
        if !cmd.status()?.success() {
            bail!("building the execgate binary failed");
        }
    }
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p execgate` first",
            bin.display()
        );
    }
    Ok(bin)
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A gateway with workspace `bench` and a proxy token.
pub struct Gateway {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
    pub url: String,
    pub token: String,
}

impl Gateway {
    pub fn start(bin: &Path) -> anyhow::Result<Gateway> {
        Self::start_with_args(bin, &[])
    }

    /// Like [`Gateway::start`], with extra `execgate serve` arguments.
    pub fn start_with_args(bin: &Path, extra: &[&str]) -> anyhow::Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        admin(bin, &data, &["workspace", "create", "bench"])?;
        let token = admin(bin, &data, &["token", "create", "--workspace", "bench"])?;
        Self::serve(bin, dir, token, extra)
    }

    /// A gateway whose store already holds `n` executors named `e0`…, for
    /// executors that the bench itself plays. Returns their `(exe_id, token)`.
    ///
    /// They are added through the store library, the very call `execgate
    /// admin executor add` makes, in this process: 10,000 runs of the CLI
    /// would each open the database and check its migrations (minutes),
    /// where one open and 10,000 inserts take seconds. Done before the
    /// gateway starts, so its caches see them all.
    pub async fn start_with_executors(
        bin: &Path,
        n: usize,
    ) -> anyhow::Result<(Gateway, Vec<(String, String)>)> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        admin(bin, &data, &["workspace", "create", "bench"])?;
        let token = admin(bin, &data, &["token", "create", "--workspace", "bench"])?;
        let store = execgate_gateway::Store::open(&data).await?;
        let mut exes = Vec::with_capacity(n);
        for i in 0..n {
            exes.push(store.add_executor("bench", &format!("e{i}"), false).await?);
        }
        drop(store);
        Ok((Self::serve(bin, dir, token, &[])?, exes))
    }

    fn serve(
        bin: &Path,
        dir: tempfile::TempDir,
        token: String,
        extra: &[&str],
    ) -> anyhow::Result<Gateway> {
        let data = dir.path().join("data");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(extra)
            .env("EXECGATE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("execgate gateway listening on ")
            .context("the gateway did not say where it listens")?
            .to_string();
        Ok(Gateway {
            bin: bin.to_owned(),
            dir,
            proc: Proc(child),
            url,
            token,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Starts an executor named `name` working in a fresh directory.
    pub async fn executor(&self, name: &str) -> anyhow::Result<(Proc, PathBuf)> {
        self.executor_with(name, &[]).await
    }

    /// Like [`Gateway::executor`], with extra `execgate executor` arguments.
    pub async fn executor_with(
        &self,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Proc, PathBuf)> {
        let data = self.dir.path().join("data");
        let token = admin(
            &self.bin,
            &data,
            &["executor", "add", "--workspace", "bench", "--name", name],
        )?;
        let work = self.dir.path().join(format!("work-{name}"));
        std::fs::create_dir_all(&work)?;
        let child = Command::new(&self.bin)
            .args([
                "executor",
                "--gateway",
                &self.url,
                "--token",
                &token,
                "--workdir",
            ])
            .arg(&work)
            .args(extra)
            .env("EXECGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let proc = Proc(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: serde_json::Value = client
                .post(format!("{}/api/connectors/envs/list", self.url))
                .bearer_auth(&self.token)
                .json(&serde_json::json!({}))
                .send()
                .await?
                .json()
                .await?;
            if v["envs"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["name"] == name))
            {
                return Ok((proc, work));
            }
            if Instant::now() > deadline {
                bail!("executor {name} did not connect");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `execgate admin` and returns the last line of its stdout.
pub fn admin(bin: &Path, data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("admin")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "execgate admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .last()
        .unwrap_or_default()
        .to_string())
}

/// Resident set size of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The part of a process's RSS that is its own (`Private_Clean` +
/// `Private_Dirty` of /proc/PID/smaps_rollup): without the pages of its
/// binary and libraries that other processes map too (the gateway and every
/// executor on a host run the one `execgate` binary).
pub fn private_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Raises this process's open-file limit to its hard limit (children such
/// as the gateway inherit it), and returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A REST client for the bench: keep-alive, TCP_NODELAY (the gateway's
/// answers are small writes that Nagle would hold back), no proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_max_idle_per_host(256)
        // Below the gateway's 10 s idle timeout.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// `head -c N /dev/zero | cat`, read by the bench through a pipe: the local
/// floor for moving a process's output. Returns MB/s.
pub async fn local_pipe_mb_s(bytes: u64) -> anyhow::Result<f64> {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &format!("head -c {bytes} /dev/zero | cat")])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    child.wait().await?;
    if got != bytes {
        bail!("the local pipe gave {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
}
