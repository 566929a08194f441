//! The `execgate` binary: `admin`, `serve` and `executor` runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::Proc;

/// What `execgate serve` prints on stdout once it listens, before its URL.
pub const LISTENING: &str = "execgate gateway listening on ";

/// Listen here to have the OS pick a free port; [`GatewayProc::addr`] is
/// the one it picked.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// One `execgate` binary and how its children log.
#[derive(Clone, Debug)]
pub struct Execgate {
    bin: PathBuf,
    quiet: bool,
}

impl Execgate {
    /// Children log at `info`: a gateway to `<data-dir>/gateway.log`, an
    /// executor to `<workdir>/../executor.log`.
    pub fn new(bin: impl Into<PathBuf>) -> Execgate {
        Execgate {
            bin: bin.into(),
            quiet: false,
        }
    }

    /// Children log warnings only, to nowhere (the benchmark).
    pub fn quiet(mut self) -> Execgate {
        self.quiet = true;
        self
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn log_level(&self) -> &'static str {
        if self.quiet {
            "warn"
        } else {
            "info"
        }
    }

    fn log_to(&self, path: &Path) -> Stdio {
        if self.quiet {
            return Stdio::null();
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
            .into()
    }

    /// Runs `execgate admin --data-dir D ARGS…`; panics unless it succeeds,
    /// and returns all of its stdout.
    pub fn admin_stdout(&self, data_dir: &Path, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .arg("admin")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {} admin: {e}", self.bin.display()));
        assert!(
            out.status.success(),
            "execgate admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("admin prints UTF-8")
    }

    /// As [`Execgate::admin_stdout`], the last line only (where `admin`
    /// prints a created token).
    pub fn admin(&self, data_dir: &Path, args: &[&str]) -> String {
        self.admin_stdout(data_dir, args)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `execgate admin --database-url URL ARGS…` (the PostgreSQL
    /// store); panics unless it succeeds, and returns all of its stdout.
    pub fn admin_url_stdout(&self, database_url: &str, args: &[&str]) -> String {
        let out = self.admin_url_output(database_url, args);
        assert!(
            out.status.success(),
            "execgate admin --database-url {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("admin prints UTF-8")
    }

    /// As [`Execgate::admin_url_stdout`], whatever its exit status.
    pub fn admin_url_output(&self, database_url: &str, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(["admin", "--database-url", database_url])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {} admin: {e}", self.bin.display()))
    }

    /// As [`Execgate::admin_url_stdout`], the last line only.
    pub fn admin_url(&self, database_url: &str, args: &[&str]) -> String {
        self.admin_url_stdout(database_url, args)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// Starts `execgate serve --listen L --data-dir D ARGS…` and waits (at
    /// most 30 s) until it says where it listens.
    pub fn serve(&self, data_dir: &Path, listen: &str, args: &[&str]) -> GatewayProc {
        let log = data_dir.join("gateway.log");
        let mut child = Command::new(&self.bin)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("EXECGATE_LOG", self.log_level())
            .stdout(Stdio::piped())
            .stderr(self.log_to(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {} serve: {e}", self.bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let proc = Proc(child);
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stdout to its end, so that the gateway never writes to a
        // closed or full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix(LISTENING) {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "the gateway did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let addr = url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the gateway listens on {url:?}, not http://ADDR"));
        GatewayProc { proc, addr }
    }

    /// Starts `execgate executor --gateway URL --token T --workdir W ARGS…`.
    /// Its journal of staged files goes to `<workdir>/../state`, not to
    /// `~/.local/state`.
    pub fn executor(&self, url: &str, token: &str, workdir: &Path, args: &[&str]) -> Proc {
        let child = Command::new(&self.bin)
            .args(["executor", "--gateway", url, "--token", token, "--workdir"])
            .arg(workdir)
            .args(args)
            .env("EXECGATE_LOG", self.log_level())
            .env("XDG_STATE_HOME", workdir.join("../state"))
            .stdout(Stdio::null())
            .stderr(self.log_to(&workdir.join("../executor.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("start {} executor: {e}", self.bin.display()));
        Proc(child)
    }
}

/// A running `execgate serve`.
pub struct GatewayProc {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl GatewayProc {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }
}

/// The admin token a gateway generated in its data dir at first start.
pub fn admin_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin-token"))
        .expect("the gateway wrote <data-dir>/admin-token")
        .trim()
        .to_string()
}
