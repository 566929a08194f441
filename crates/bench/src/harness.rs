//! Real processes for the benchmarks: the release `execgate` binary as
//! gateway and executors, set up through `execgate admin`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The `execgate` binary beside this one, built first when run by cargo.
pub fn execgate_binary() -> anyhow::Result<PathBuf> {
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
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        admin(bin, &data, &["workspace", "create", "bench"])?;
        let token = admin(bin, &data, &["token", "create", "--workspace", "bench"])?;
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
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
