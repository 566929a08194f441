//! HAProxy in front of gateway replicas, for the tests that put a real load
//! balancer between executors (a stock codex among them) and the replicas.
//!
//! [`Haproxy::start`] writes [`config`] into a private temp dir and runs
//! `haproxy -db -f …` (foreground) on a free port of 127.0.0.1, with a
//! stats socket in the same dir, through which [`Haproxy::status`] reads
//! what HAProxy thinks of each replica (`UP`, `DOWN`, …). The process is
//! killed when the [`Haproxy`] is dropped, and dies with the test process
//! (`PR_SET_PDEATHSIG`) when that is killed. Its log (one line per request,
//! with the retries and redispatches) is `haproxy.log` in the dir.
//!
//! The configuration is the one `docs/replicas.md` gives operators, with
//! shorter health-check intervals: health checks on `GET /readyz`, WebSocket
//! pass-through (`timeout tunnel`), and retries that redispatch to another
//! replica: on a connection failure always, and on a 503 for the executors'
//! registration and link routes and for GETs, so that a registration (or a
//! stock codex's re-dial) that reaches a draining replica is answered by a
//! healthy one instead of with a 503 (on which codex exits).
//!
//! **Skipping.** HAProxy comes from PATH or `/usr/sbin/haproxy` (Debian's
//! `haproxy`, which `.ci/run` installs). [`haproxy`] answers `None` (after
//! printing that the test was skipped) when it is missing, unless
//! `EXECGATE_REQUIRE_HAPROXY=1` (CI), which makes that a panic.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::Proc;

/// Set to 1 to make a missing HAProxy a failure, not a skip.
pub const REQUIRE_ENV: &str = "EXECGATE_REQUIRE_HAPROXY";

/// The settings of [`config`]: health-check timing (`inter` in ms, `fall`,
/// `rise`) and `maxconn` (HAProxy needs about twice as many open files).
#[derive(Clone, Copy, Debug)]
pub struct Checks {
    pub inter_ms: u64,
    pub fall: u32,
    pub rise: u32,
    pub maxconn: u32,
}

impl Checks {
    /// What the operators' example uses: every 2 s, down after 2 failures,
    /// up after 2 successes; 20,000 connections (executor links included).
    pub const PRODUCTION: Checks = Checks {
        inter_ms: 2000,
        fall: 2,
        rise: 2,
        maxconn: 20000,
    };
    /// The tests': every 250 ms; 1,000 connections.
    pub const FAST: Checks = Checks {
        inter_ms: 250,
        fall: 2,
        rise: 2,
        maxconn: 1000,
    };
}

/// The HAProxy configuration: a frontend on `bind`, one backend `replicas`
/// with `servers` (name, host:port) checked on `GET /readyz`. `stats_socket`
/// adds an admin socket (the tests read server states through it).
pub fn config(
    bind: &str,
    servers: &[(String, String)],
    checks: Checks,
    stats_socket: Option<&Path>,
) -> String {
    let mut c = format!(
        "global\n    maxconn {}\n    log stdout format raw local0 info\n",
        checks.maxconn
    );
    if let Some(sock) = stats_socket {
        // Where `show stat` tells which replicas HAProxy sends work to.
        c += &format!("    stats socket {} mode 600 level admin\n", sock.display());
    }
    c += r#"
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout http-request 10s
    # Long-polls (/output?wait_ms=…) and SSE streams stay open between
    # events: longer than any wait a client asks for.
    timeout client 1h
    timeout server 1h
    # After a WebSocket upgrade (executor links, the bridge): the gateway
    # pings executors every few seconds, so a dead link is seen long before.
    timeout tunnel 1h
    timeout client-fin 10s
    # A request that cannot reach a replica (refused: it is restarting) is
    # sent to another one (redispatch on each retry).
    retries 3
    option redispatch 1
    # ... and so is one that a replica refuses with 503 (it is draining),
    # but only where resending is harmless: the executors' registration and
    # link (a stock codex exits on a 5xx there), and GETs. A POST tool call
    # answered 503 is not resent: its executor may have started it.
    retry-on conn-failure empty-response 503

frontend execgate
"#;
    c += &format!("    bind {bind}\n");
    c += r#"    default_backend replicas

backend replicas
    balance leastconn
    acl executor_route path_beg /cloud/environment/
    acl safe_method method GET HEAD
    http-request disable-l7-retry unless executor_route || safe_method
    # Ready replicas only: /readyz is 503 while a replica drains or has lost
    # its store, 200 once it serves.
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host haproxy
    http-check expect status 200
"#;
    c += &format!(
        "    default-server check inter {}ms fall {} rise {}\n",
        checks.inter_ms, checks.fall, checks.rise
    );
    for (name, addr) in servers {
        c += &format!("    server {name} {addr}\n");
    }
    c
}

/// A running HAProxy; killed when dropped.
pub struct Haproxy {
    dir: tempfile::TempDir,
    proc: Proc,
    addr: SocketAddr,
    config: String,
}

impl Haproxy {
    /// HAProxy `bin` in front of `servers` (named `r1`, `r2`, … in order),
    /// on a free port of 127.0.0.1; returns once it accepts connections.
    pub fn start(bin: &Path, servers: &[SocketAddr], checks: Checks) -> Result<Haproxy, String> {
        let dir = tempfile::Builder::new()
            .prefix("execgate-haproxy-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let named: Vec<(String, String)> = servers
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("r{}", i + 1), a.to_string()))
            .collect();
        let mut last_error = String::new();
        // A free port can be taken between the probe and the bind: retry.
        for _ in 0..5 {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let config = config(
                &addr.to_string(),
                &named,
                checks,
                Some(&dir.path().join("admin.sock")),
            );
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg, &config).map_err(|e| format!("write {}: {e}", cfg.display()))?;
            let log_path = dir.path().join("haproxy.log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("open {}: {e}", log_path.display()))?;
            let log2 = log.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(bin);
            cmd.arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut proc = Proc(
                cmd.spawn()
                    .map_err(|e| format!("run {}: {e}", bin.display()))?,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = proc.0.try_wait() {
                    last_error = format!(
                        "haproxy exited ({status}): {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect(addr).is_ok()
                    && std::os::unix::net::UnixStream::connect(dir.path().join("admin.sock"))
                        .is_ok()
                {
                    return Ok(Haproxy {
                        dir,
                        proc,
                        addr,
                        config,
                    });
                }
                if std::time::Instant::now() > deadline {
                    proc.kill();
                    last_error = "haproxy did not listen within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last_error)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// The configuration it runs.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Its log so far: one line per request (the `retries` field is
    /// prefixed with `+` when a request was redispatched).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// One command on the stats socket: its whole answer.
    pub fn command(&self, command: &str) -> Result<String, String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock"))
            .map_err(|e| format!("stats socket: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("stats socket: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("stats socket: {e}"))?;
        Ok(out)
    }

    /// What HAProxy thinks of server `name` (`r1`, …) of `replicas`: its
    /// `status` column (`UP`, `DOWN`, `UP 1/2`, `DOWN 1/2`, `MAINT`, …).
    pub fn status(&self, name: &str) -> Option<String> {
        let stat = self.command("show stat").ok()?;
        let header = stat.lines().next()?.trim_start_matches("# ");
        let col = header.split(',').position(|h| h == "status")?;
        stat.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&"replicas") && cols.get(1) == Some(&name))
            .and_then(|cols| cols.get(col).map(|s| s.to_string()))
    }
}

/// The HAProxy binary: PATH, else `/usr/sbin/haproxy`.
pub fn bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let b = dir.join("haproxy");
            if b.is_file() {
                return Ok(b);
            }
        }
    }
    let b = PathBuf::from("/usr/sbin/haproxy");
    if b.is_file() {
        return Ok(b);
    }
    Err("no haproxy on PATH nor at /usr/sbin/haproxy (install Debian's haproxy)".into())
}

/// Whether HAProxy tests must run (`EXECGATE_REQUIRE_HAPROXY=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The HAProxy binary, or `None` (with a line saying `test` was skipped)
/// when it is missing; panics instead when it is required.
pub fn haproxy(test: &str) -> Option<PathBuf> {
    match bin() {
        Ok(b) => Some(b),
        Err(why) if required() => {
            panic!("{test}: HAProxy is required ({REQUIRE_ENV}=1) but missing: {why}")
        }
        Err(why) => {
            println!("skipped {test}: {why}");
            None
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/replicas.md's example is this configuration, word for word.
    #[test]
    fn the_operators_example_is_this_config() {
        let servers: Vec<(String, String)> = (1..=3)
            .map(|i| (format!("r{i}"), format!("10.0.0.1{i}:6060")))
            .collect();
        let expected = config(
            ":6060",
            &servers,
            Checks::PRODUCTION,
            Some(Path::new("/run/haproxy/admin.sock")),
        );
        let docs = include_str!("../../../docs/replicas.md");
        assert!(
            docs.contains(&expected),
            "docs/replicas.md lacks the configuration of crates/testkit/src/haproxy.rs:\n{expected}"
        );
    }

    /// The configuration HAProxy itself accepts (`haproxy -c`).
    #[test]
    fn the_config_is_valid() {
        let Ok(bin) = bin().map_err(|why| {
            assert!(!required(), "HAProxy is required but missing: {why}");
            println!("skipped: {why}");
        }) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        let servers = vec![
            ("r1".to_string(), "127.0.0.1:6061".to_string()),
            ("r2".to_string(), "127.0.0.1:6062".to_string()),
        ];
        for sock in [None, Some(dir.path().join("admin.sock"))] {
            std::fs::write(
                &cfg,
                config(
                    "127.0.0.1:6060",
                    &servers,
                    Checks::PRODUCTION,
                    sock.as_deref(),
                ),
            )
            .unwrap();
            let out = Command::new(&bin)
                .arg("-c")
                .arg("-f")
                .arg(&cfg)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
