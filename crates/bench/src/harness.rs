//! Real processes for the benchmarks: the release `execgate` binary as
//! gateway and executors, set up through `execgate admin` by the test kit
//! (crates/testkit); and what the bench measures processes with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
pub use execgate_testkit::Gateway;
use execgate_testkit::{Execgate, Prepared};

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

/// The bench's gateway: workspace `bench` in a fresh data dir, with a
/// proxy token, served by `bin` with extra `execgate serve` arguments.
/// Its children log warnings only, to nowhere. Executors:
/// [`Gateway::executor`].
pub fn gateway(bin: &Path, extra: &[&str]) -> Gateway {
    prepare(bin).serve(extra)
}

/// `--postgres`: every gateway of the run keeps its store in a fresh
/// database of one throwaway PostgreSQL cluster (`execgate_testkit::pg`).
static POSTGRES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn use_postgres() {
    POSTGRES.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Workspace `bench` and its token, in a fresh data dir or (with
/// `--postgres`) a fresh PostgreSQL database.
pub fn prepare(bin: &Path) -> Prepared {
    prepare_on(bin, POSTGRES.load(std::sync::atomic::Ordering::Relaxed))
}

/// As [`prepare`], on PostgreSQL exactly when `postgres`, whatever
/// `--postgres` says (the `backends` figure runs one of each).
pub fn prepare_on(bin: &Path, postgres: bool) -> Prepared {
    let eg = Execgate::new(bin).quiet();
    if !postgres {
        return Prepared::new(&eg, "bench");
    }
    let cluster = execgate_testkit::pg::shared()
        .unwrap_or_else(|why| panic!("--postgres: PostgreSQL cannot start: {why}"));
    Prepared::new_on(&eg, "bench", Some(&cluster.create_database()))
}

/// A gateway whose store already holds `n` executors named `e0`…, for
/// executors that the bench itself plays. Returns their `(exe_id, token)`.
///
/// They are added through the store library, the very call `execgate
/// admin executor add` makes, in this process: 10,000 runs of the CLI
/// would each open the database and check its migrations (minutes),
/// where one open and 10,000 inserts take seconds. Done before the
/// gateway starts, so its caches see them all.
pub async fn gateway_with_executors(
    bin: &Path,
    n: usize,
) -> anyhow::Result<(Gateway, Vec<(String, String)>)> {
    let prepared = prepare(bin);
    let store =
        execgate_gateway::Store::open_either(prepared.database_url.as_deref(), &prepared.data_dir)
            .await?;
    let mut exes = Vec::with_capacity(n);
    for i in 0..n {
        exes.push(store.add_executor("bench", &format!("e{i}"), false).await?);
    }
    drop(store);
    Ok((prepared.serve(&[]), exes))
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

/// The fields of /proc/PID/stat after the command name (which may hold
/// spaces, so fields count from after its ')'): stat's field N is index
/// N - 3 here. Empty when the process is gone.
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect()
}

/// Index `i` of [`stat_fields`], 0 when absent.
fn field(fields: &[u64], i: usize) -> u64 {
    fields.get(i).copied().unwrap_or(0)
}

/// `ticks` of the kernel's clock (`_SC_CLK_TCK`) as a duration.
fn clock_ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Indexes in [`stat_fields`] of stat's ppid (field 4), utime, stime (14,
/// 15), cutime and cstime (16, 17: the reaped children's).
const PPID: usize = 1;
const UTIME: usize = 11;
const STIME: usize = 12;
const CUTIME: usize = 13;
const CSTIME: usize = 14;

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let f = stat_fields(pid);
    clock_ticks(field(&f, UTIME) + field(&f, STIME))
}

/// The CPU time PostgreSQL has used, when the run is on it (`--postgres`):
/// its server process, the children it reaped, and the children alive now
/// (the backends of the gateways' pools, its background workers). A
/// backend that ended between two readings counts in neither whole, so
/// the difference of two readings is a little low when connections churn.
pub fn store_cpu_time() -> Option<Duration> {
    if !POSTGRES.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let server = execgate_testkit::pg::shared().ok()?.server_pid()?;
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let f = stat_fields(pid);
        if pid == server {
            ticks += field(&f, UTIME) + field(&f, STIME) + field(&f, CUTIME) + field(&f, CSTIME);
        } else if field(&f, PPID) == u64::from(server) {
            ticks += field(&f, UTIME) + field(&f, STIME);
        }
    }
    Some(clock_ticks(ticks))
}

/// The open-file limit the bench asks for when it may (a privileged
/// run): room for every figure's sockets in one process. Without the
/// privilege, `fleet` spreads its 30,000 over three child processes.
const WANT_NOFILE: u64 = 1 << 17;

/// Raises this process's open-file limit to its hard limit (children such
/// as the gateway inherit it), and returns the new soft limit. When the
/// hard limit is below [`WANT_NOFILE`] it first tries to raise that too
/// (allowed to root, up to `fs.nr_open`); without the privilege the hard
/// limit stays, and the figures that need more sockets are skipped.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            if lim.rlim_max < WANT_NOFILE {
                let higher = libc::rlimit {
                    rlim_cur: WANT_NOFILE,
                    rlim_max: WANT_NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &higher) == 0 {
                    lim = higher;
                }
            }
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
