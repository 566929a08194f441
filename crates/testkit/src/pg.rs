//! Throwaway PostgreSQL clusters for the tests of the PostgreSQL store.
//!
//! [`Cluster::start`] runs `initdb` and `pg_ctl start` in a private temp
//! dir: a free port on 127.0.0.1 (`listen_addresses='127.0.0.1'`), its
//! unix socket in the same dir, trust authentication for user `postgres`,
//! and `fsync` off (the data is thrown away). The binaries come from PATH
//! or, failing that, the newest `/usr/lib/postgresql/*/bin` (Debian's
//! `postgresql` package). PostgreSQL refuses to run as root: when the
//! tests run as root, the cluster belongs to the `postgres` user (or
//! `nobody`), and its programs run through `setpriv`.
//!
//! **Stopping.** Each cluster has a watchdog shell whose stdin is a pipe
//! held by this process: when the [`Cluster`] is dropped, or the test
//! process ends in any way (even SIGKILL), the pipe closes and the
//! watchdog stops the server (immediate shutdown) and removes the dir. So
//! [`shared`]'s cluster, which lives in a static and is never dropped,
//! goes away with its test binary too.
//!
//! **Skipping.** A test calls [`database`] (a fresh database on the test
//! binary's shared cluster): `None` when PostgreSQL cannot start here,
//! after printing that the test was skipped and why, unless
//! `EXECGATE_REQUIRE_POSTGRES=1` (CI sets it), which turns that into a
//! panic with the reason.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Set to 1 to make an unavailable PostgreSQL a failure, not a skip.
pub const REQUIRE_ENV: &str = "EXECGATE_REQUIRE_POSTGRES";

/// A running throwaway cluster; stopped and removed when dropped.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The watchdog's stdin: closing it stops the cluster.
    watchdog_stdin: Option<ChildStdin>,
    watchdog: Child,
    next_db: AtomicU32,
    /// Who runs the server (see [`owner`]), and its `pg_ctl -o` options:
    /// what [`Cluster::start_server`] needs to start it again.
    owner: Option<(u32, u32)>,
    options: String,
}

impl Cluster {
    /// Starts a cluster, or says why it cannot.
    pub fn start() -> Result<Cluster, String> {
        let bin = bin_dir()?;
        let owner = owner()?;
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("execgate-pg-")
            .tempdir_in(&base)
            .map_err(|e| format!("temp dir in {}: {e}", base.display()))?
            .keep();
        let cleanup = |e: String| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| cleanup(format!("chown {}: {e}", dir.display())))?;
        }
        let data = dir.join("data");
        let out = as_owner(owner, &bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .map_err(|e| cleanup(format!("run initdb: {e}")))?;
        if !out.status.success() {
            return Err(cleanup(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // The watchdog first, so that a server that starts is always stopped.
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"cat >/dev/null
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
    kill -QUIT "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
fi
rm -rf "$1""#,
            )
            .arg("watchdog")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| cleanup(format!("start the watchdog shell: {e}")))?;
        let stdin = watchdog.stdin.take();
        let mut cluster = Cluster {
            dir: dir.clone(),
            bin,
            port: 0,
            watchdog_stdin: stdin,
            watchdog,
            next_db: AtomicU32::new(0),
            owner,
            options: String::new(),
        };
        let mut last_error = String::new();
        // A free port can be taken between the probe and the start: retry.
        for _ in 0..5 {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
                dir.display()
            );
            let out = as_owner(owner, &cluster.bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-o", &options, "start"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("run pg_ctl: {e}"))?;
            if out.status.success() {
                cluster.port = port;
                cluster.options = options;
                return Ok(cluster);
            }
            last_error = format!(
                "pg_ctl start failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        Err(last_error)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (its `postmaster.pid`), while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid")).ok()?;
        pid.lines().next()?.trim().parse().ok()
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `name` on this cluster.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new empty database and answers its URL.
    pub fn create_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url_of(&name)
    }

    /// Runs one SQL command with `psql` on the `postgres` database; panics
    /// unless it succeeds; answers its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_on(&self.url(), sql)
    }

    /// As [`Cluster::psql`], on the database at `url`.
    pub fn psql_on(&self, url: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(url)
            .args(["-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (`pg_ctl stop -m fast`: its connections are cut at
    /// once; not `immediate`, which with this cluster's `fsync` and
    /// `synchronous_commit` off may lose the last commits);
    /// [`Cluster::start_server`] starts it again with its data. Only for a cluster of one's own (not
    /// [`shared`]'s: other tests use that one).
    pub fn stop_server(&self) {
        let out = as_owner(self.owner, &self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run pg_ctl: {e}"));
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    /// Starts the server stopped by [`Cluster::stop_server`] again, on the
    /// same port.
    pub fn start_server(&self) {
        let out = as_owner(self.owner, &self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &self.options, "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run pg_ctl: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl start: {out:?}\n{}",
            self.log()
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.watchdog_stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// The test binary's cluster, started at first use; `Err` says why it
/// could not start.
pub fn shared() -> Result<&'static Cluster, String> {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    SHARED
        .get_or_init(Cluster::start)
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether PostgreSQL tests must run (`EXECGATE_REQUIRE_POSTGRES=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The shared cluster, or `None` (with a line saying `test` was skipped)
/// when PostgreSQL cannot start here; panics instead when it is required.
pub fn cluster(test: &str) -> Option<&'static Cluster> {
    match shared() {
        Ok(c) => Some(c),
        Err(why) if required() => {
            panic!("{test}: PostgreSQL is required ({REQUIRE_ENV}=1) but cannot start: {why}")
        }
        Err(why) => {
            println!("skipped {test}: PostgreSQL cannot start here ({why})");
            None
        }
    }
}

/// A fresh database on the shared cluster (see [`cluster`]).
pub fn database(test: &str) -> Option<String> {
    cluster(test).map(Cluster::create_database)
}

/// Where `initdb`, `pg_ctl` and `psql` are.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // Through symlinks: psql may not be linked next to it.
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                if let Some(parent) = real.parent() {
                    if parent.join("pg_ctl").is_file() {
                        return Ok(parent.to_owned());
                    }
                }
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no initdb on PATH nor under /usr/lib/postgresql/*/bin (install Debian's postgresql)"
            .to_string()
    })
}

/// Who runs the cluster: `None` for this process's user, or the
/// `(uid, gid)` of `postgres` (else `nobody`) when this process is root.
fn owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, user]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        };
        if let (Some(uid), Some(gid)) = (id("-u"), id("-g")) {
            return Ok(Some((uid, gid)));
        }
    }
    Err("running as root, and neither a postgres nor a nobody user exists".into())
}

fn as_owner(owner: Option<(u32, u32)>, program: &Path) -> Command {
    match owner {
        None => Command::new(program),
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            c
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

    #[test]
    fn a_cluster_starts_answers_and_goes_away() {
        let Ok(c) = Cluster::start().map_err(|why| {
            assert!(
                !required(),
                "PostgreSQL is required but cannot start: {why}"
            );
            println!("skipped: PostgreSQL cannot start here ({why})");
        }) else {
            return;
        };
        assert_eq!(c.psql("SELECT 1 + 1").trim(), "2");
        let url = c.create_database();
        let name = url.rsplit('/').next().unwrap().to_string();
        let list = c.psql("SELECT datname FROM pg_database");
        assert!(list.lines().any(|l| l.trim() == name), "{list}");
        let dir = c.dir.clone();
        assert!(dir.exists());
        drop(c);
        assert!(!dir.exists(), "the cluster's dir is removed");
    }
}
