//! The execgate executor: runs on a user's machine, dials out to a gateway
//! over WebSocket, and serves the gateway's JSON-RPC requests to start
//! processes and touch files (the codex `exec-server` protocol, plus the
//! execgate extensions described in `execgate_protocol::exec`).
//!
//! The CLI builds an [`ExecutorConfig`] and awaits [`run`].
//!
//! Modules, outermost first:
//! - `connect`: register with the gateway, dial the WebSocket, back off.
//! - `connection`: one WebSocket: frame loop, the writer task, idle timeout.
//! - `rpc`: one connection's JSON-RPC lifecycle: the handshake, and each
//!   request turned into its response.
//! - `methods`: the method table, the only routing: each method's name,
//!   where it runs, its policy class and its handler, declared once.
//! - `wire`: params and results as they travel (JSON, blobs in binary
//!   frames), shared by the table and the method modules.
//! - `state`: what every connection shares, and `environmentInfo`.
//! - `session`: sessions, which keep processes across reconnects.
//! - `process`: a session's process table: spawn, pipes/pty, env, signals.
//! - `output`: a process's output log: seqs, retention, lost bytes, long-poll.
//! - `spill`: the bounded on-disk tail of output logs.
//! - `notify`: the non-blocking path of notifications to the gateway.
//! - `staged`: the running SHA-256 of staged files, for `fs/commitFile`.
//! - `staged_sweep`: removing the staged files transfers left behind.
//! - `fs`: the `fs/*` methods.
//! - `paths`: `file://` URIs and relative paths, and confinement to `--root`.
//! - `beneath`: using a confined path through the kernel (openat2 beneath
//!   the root's descriptor, `*at` calls), so that no race escapes the root.
//! - `policy`: `--root`, `--allow-tools`, `--read-only`, `--max-processes`.
//! - `sandbox`: `--sandbox`: Landlock confinement of every process.
//! - `tools_file`: the `--tools` file of custom tools, checked at start.
//!
//! `unsafe` is used for system calls std lacks (`openat2`, the `*at` calls,
//! Landlock, `fork` for the reaper); each block says why it is sound in a
//! `// SAFETY:` comment, which clippy enforces below.

#![deny(clippy::undocumented_unsafe_blocks)]

#[doc(hidden)]
pub mod bench_api;
mod beneath;
mod connect;
mod connection;
mod digest;
mod error;
mod fs;
#[doc(hidden)]
pub mod fuzz_api;
mod methods;
pub mod metrics;
mod notify;
mod output;
mod paths;
mod policy;
mod process;
mod rpc;
mod sandbox;
mod session;
mod spill;
mod staged;
mod staged_sweep;
mod state;
mod tools_file;
pub mod trace;
mod wire;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

pub use error::ExecutorError;
pub use policy::PolicyConfig;
pub use sandbox::SandboxConfig;
pub use tools_file::{ToolsFileError, ToolsFileProblem};

use connect::{Backoff, Gateway};
use state::{ExecutorState, ShutdownGuard};

/// Output bytes kept in memory per process unless configured otherwise.
pub const DEFAULT_RETAINED_BYTES: usize = 1 << 20;
/// How long a session without a connection keeps its processes by default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a finished process stays readable by default.
pub const DEFAULT_EXITED_RETENTION: Duration = Duration::from_secs(30 * 60);
/// Output bytes per process kept on disk after the in-memory ring.
pub const DEFAULT_SPILL_BYTES: u64 = 64 << 20;
/// Output bytes all processes together may keep on disk.
pub const DEFAULT_SPILL_TOTAL_BYTES: u64 = 1 << 30;
/// A staged file nobody wrote for this long is removed by default.
pub const DEFAULT_STALE_STAGED: Duration = Duration::from_secs(60 * 60);

/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// After a draining gateway's `execgate/move`, the next dial waits a random
/// delay up to this, so that a gateway's executors do not all land on the
/// next one in the same instant.
const MOVE_JITTER: Duration = Duration::from_millis(500);

/// How to reach the gateway and how to run processes.
#[derive(Clone)]
pub struct ExecutorConfig {
    /// The gateway's base URL, e.g. `http://127.0.0.1:6060` (`ws(s)://` works too).
    pub gateway_url: String,
    /// More gateways (replicas), dialled in order after `gateway_url` when
    /// it cannot be reached, refuses the registration, or the link drops.
    pub fallback_gateway_urls: Vec<String>,
    /// The executor token, `{exe_id}.{secret}`.
    pub token: String,
    /// Sent when registering; the gateway refuses a name that does not match.
    pub name: Option<String>,
    /// Ask to be the workspace's default environment.
    pub is_default: bool,
    /// Relative paths and the default cwd resolve against it; reported as
    /// `environmentInfo.cwd`.
    pub workdir: PathBuf,
    /// Output bytes kept in memory per process.
    pub retained_bytes: usize,
    /// How long a session without a connection keeps its processes.
    pub session_ttl: Duration,
    /// How long a finished process stays readable.
    pub exited_retention: Duration,
    /// Output bytes per process kept on disk once they leave the in-memory
    /// ring; 0 turns spilling off.
    pub spill_bytes: u64,
    /// Output bytes all processes together may keep on disk.
    pub spill_total_bytes: u64,
    /// Where spill files go; default `$TMPDIR/execgate-spill-<uid>`. Files
    /// are unlinked on creation, so nothing is ever left behind.
    pub spill_dir: Option<PathBuf>,
    /// The TOML file of custom tools (`--tools`), checked at start.
    pub tools_file: Option<PathBuf>,
    /// Where the executor keeps what must survive it: the journal of the
    /// directories staged files were written in. Default
    /// `$XDG_STATE_HOME/execgate` (`~/.local/state/execgate`); `None`:
    /// nothing is kept, and staged files a crash left are swept only by the
    /// executor that saw them written.
    pub state_dir: Option<PathBuf>,
    /// A staged file (`.name.execgate-part-*`) nobody wrote for this long is
    /// removed: its transfer is dead.
    pub stale_staged_after: Duration,
    /// The owner's limits (`--root`, `--allow-tools`, `--read-only`,
    /// `--max-processes`, `--sandbox`), checked at start and enforced on every request.
    /// With a root, `workdir` must lie inside it.
    pub policy: PolicyConfig,
}

impl ExecutorConfig {
    /// A configuration with the defaults, working in the current directory.
    pub fn new(gateway_url: impl Into<String>, token: impl Into<String>) -> Self {
        ExecutorConfig {
            gateway_url: gateway_url.into(),
            fallback_gateway_urls: Vec::new(),
            token: token.into(),
            name: None,
            is_default: false,
            workdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            retained_bytes: DEFAULT_RETAINED_BYTES,
            session_ttl: DEFAULT_SESSION_TTL,
            exited_retention: DEFAULT_EXITED_RETENTION,
            spill_bytes: DEFAULT_SPILL_BYTES,
            spill_total_bytes: DEFAULT_SPILL_TOTAL_BYTES,
            spill_dir: None,
            tools_file: None,
            state_dir: staged_sweep::default_state_dir(),
            stale_staged_after: DEFAULT_STALE_STAGED,
            policy: PolicyConfig::default(),
        }
    }
}

// Hand-written so that the token never ends up in a log.
impl fmt::Debug for ExecutorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = match self.token.split_once('.') {
            Some((id, _)) => format!("{id}.***"),
            None => "***".into(),
        };
        f.debug_struct("ExecutorConfig")
            .field("gateway_url", &self.gateway_url)
            .field("fallback_gateway_urls", &self.fallback_gateway_urls)
            .field("token", &token)
            .field("name", &self.name)
            .field("is_default", &self.is_default)
            .field("workdir", &self.workdir)
            .field("retained_bytes", &self.retained_bytes)
            .field("session_ttl", &self.session_ttl)
            .field("exited_retention", &self.exited_retention)
            .field("spill_bytes", &self.spill_bytes)
            .field("spill_total_bytes", &self.spill_total_bytes)
            .field("spill_dir", &self.spill_dir)
            .field("tools_file", &self.tools_file)
            .field("state_dir", &self.state_dir)
            .field("stale_staged_after", &self.stale_staged_after)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Connects to the gateway and serves it, reconnecting whenever the link
/// drops, forever.
///
/// With several gateways (`gateway_url`, then `fallback_gateway_urls`) it
/// dials them in order and moves on to the next when one cannot be
/// reached, refuses the registration (a 503 `draining` included) or its
/// link drops; the jittered backoff is waited once per round over all of
/// them, not per URL. A draining gateway's `execgate/move` sends it on at
/// once: to the gateways it named that are in the list, in its order,
/// then to the rest of the list.
///
/// Returns an error only for a problem that retrying cannot fix: a malformed
/// configuration, or a refusal (HTTP 401/403/404/409) from the register
/// endpoint before the first successful connection. Once it has connected,
/// it keeps retrying whatever happens, logging each failure.
///
/// Dropping the returned future kills every child process it started.
pub async fn run(config: ExecutorConfig) -> Result<(), ExecutorError> {
    let gateways = Gateway::all(&config)?;
    let state = Arc::new(ExecutorState::new(&config)?);
    let _kill_children_on_exit = ShutdownGuard(state.clone());
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        // Below the gateway's 10 s idle timeout (see execgate-client).
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ExecutorError::HttpClient(error::error_chain(&e)))?;

    // Request tasks and the sweeper; dropping the set (with `run`) aborts them.
    let mut tasks = JoinSet::new();
    tasks.spawn(sweep_forever(state.clone()));
    tasks.spawn(sweep_staged_forever(state.clone()));
    // Now rather than at the first process, so a problem shows at once.
    process::reaper::start();

    let bases: Vec<url::Url> = gateways.iter().map(|g| g.base().clone()).collect();
    if bases.len() > 1 {
        let all: Vec<&str> = bases.iter().map(url::Url::as_str).collect();
        tracing::info!(
            gateways = %all.join(", "),
            workdir = %state.workdir.display(),
            "executor starting"
        );
    } else {
        tracing::info!(
            gateway = %bases[0],
            workdir = %state.workdir.display(),
            "executor starting"
        );
    }
    if let Some(policy) = state.policy.announced() {
        tracing::info!(?policy, "policy in force");
    }
    let mut backoff = Backoff::new();
    let mut connected_once = false;
    // The gateway to dial next, and the attempts since the last backoff
    // wait: one round is one attempt per gateway.
    let mut current = 0;
    let mut misses = 0;
    // After a move: the gateways still to try, in order, before the list
    // is taken round-robin again.
    let mut planned: std::collections::VecDeque<usize> = Default::default();
    loop {
        let gateway = &gateways[current];
        let mut moved = None;
        match gateway.connect(&http).await {
            Ok(socket) => {
                connected_once = true;
                planned.clear();
                let connected_at = tokio::time::Instant::now();
                tracing::info!(gateway = %gateway.base(), "connected to the gateway");
                metrics::CONNECTED.store(1, std::sync::atomic::Ordering::Relaxed);
                let ended =
                    connection::serve(socket, state.clone(), &mut tasks, connection::IDLE_TIMEOUT)
                        .await;
                metrics::CONNECTED.store(0, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("disconnected from the gateway: {ended}");
                if connected_at.elapsed() > STABLE_CONNECTION {
                    backoff.reset();
                    misses = 0;
                }
                match ended {
                    connection::Ended::Moved(params) => {
                        tracing::info!(
                            gateway = %gateway.base(),
                            reason = params.reason.as_deref().unwrap_or("draining"),
                            "the gateway asked this executor to move; the link is closed"
                        );
                        moved = Some(params);
                    }
                    ended => {
                        tracing::warn!(gateway = %gateway.base(), "disconnected from the gateway: {ended}")
                    }
                }
            }
            Err(err) => {
                if let Some(refusal) = err.permanent_refusal().filter(|_| !connected_once) {
                    return Err(refusal);
                }
                tracing::warn!(gateway = %gateway.base(), "cannot connect to the gateway: {err}");
            }
        }
        if let Some(params) = moved {
            planned = connect::after_move(&bases, current, &params.gateways).into();
            current = planned.pop_front().unwrap_or(current);
            misses = 0;
            let delay = MOVE_JITTER.mul_f64(rand::random_range(0.0..=1.0));
            tracing::info!(gateway = %bases[current], "moving in {:.1} s", delay.as_secs_f64());
            tokio::time::sleep(delay).await;
            continue;
        }
        current = planned
            .pop_front()
            .unwrap_or((current + 1) % gateways.len());
        misses += 1;
        if misses < gateways.len() {
            // Fail over to the next gateway at once.
            continue;
        }
        misses = 0;
        let delay = backoff.next_delay();
        tracing::info!("reconnecting in {:.1} s", delay.as_secs_f64());
        tokio::time::sleep(delay).await;
    }
}

/// Removes stale staged files at start, then periodically.
async fn sweep_staged_forever(state: Arc<ExecutorState>) {
    let mut ticks = tokio::time::interval(state.staged_sweep.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || state.sweep_staged()).await;
    }
}

/// Expires detached sessions and finished processes, periodically.
async fn sweep_forever(state: Arc<ExecutorState>) {
    let mut ticks = tokio::time::interval(state.sweep_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        state.sweep();
    }
}
