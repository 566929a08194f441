//! `execgate executor`: serve this machine to a gateway.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use execgate_executor::{ExecutorConfig, PolicyConfig, SandboxConfig};

#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// The gateway's URL, e.g. http://127.0.0.1:6060. Repeat it (or give
    /// a comma-separated list in the variable) for replicas: they are
    /// dialled in order, failing over to the next when one cannot be
    /// reached, refuses the registration or drops the link.
    #[arg(long, env = "EXECGATE_GATEWAY", required = true, value_delimiter = ',')]
    pub gateway: Vec<String>,
    /// The executor token `execgate admin executor add` printed.
    #[arg(long, env = "EXECGATE_EXECUTOR_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The environment name this token belongs to (checked by the gateway).
    #[arg(long)]
    pub name: Option<String>,
    /// Make this its workspace's default environment.
    #[arg(long)]
    pub default: bool,
    /// Relative paths and the default cwd resolve against this directory
    /// (default: the current directory, or --root when given).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Output bytes kept in memory per process.
    #[arg(long, default_value_t = execgate_executor::DEFAULT_RETAINED_BYTES)]
    pub retain_bytes: usize,
    /// Seconds a disconnected session keeps its processes for a reconnect.
    #[arg(long, default_value_t = execgate_executor::DEFAULT_SESSION_TTL.as_secs())]
    pub session_ttl_secs: u64,
    /// Seconds a finished process stays readable; then its session expires.
    #[arg(long, default_value_t = execgate_executor::DEFAULT_EXITED_RETENTION.as_secs())]
    pub exited_retention_secs: u64,
    /// Output bytes per process kept on disk after the in-memory ring (0: off).
    #[arg(long, default_value_t = execgate_executor::DEFAULT_SPILL_BYTES)]
    pub spill_bytes: u64,
    /// Output bytes all processes together may keep on disk.
    #[arg(long, default_value_t = execgate_executor::DEFAULT_SPILL_TOTAL_BYTES)]
    pub spill_total_bytes: u64,
    /// Directory for spill files (default: $TMPDIR/execgate-spill-<uid>).
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Where the executor keeps what outlives it: the journal of where
    /// transfers staged files (default: $XDG_STATE_HOME/execgate, else
    /// ~/.local/state/execgate).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds after its last write a staged transfer file
    /// (`.name.execgate-part-*`) that was never committed is removed.
    #[arg(long, value_name = "N", default_value_t = execgate_executor::DEFAULT_STALE_STAGED.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stale_staged_secs: u64,
    /// The owner's limits and the sandbox (shared with `execgate up`).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Serve Prometheus metrics at `GET /metrics` on this address (no
    /// authentication: keep it private). Off by default.
    #[arg(long, env = "EXECGATE_EXECUTOR_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Traces and the log format.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
}

pub async fn run(a: ExecutorArgs) -> anyhow::Result<()> {
    crate::fdlimit::raise_nofile_limit("executor");
    if let Some(addr) = a.metrics_listen {
        execgate_executor::metrics::enable();
        let bound = crate::metrics_listen::start(
            addr,
            execgate_executor::metrics::CONTENT_TYPE,
            std::sync::Arc::new(|| Box::pin(async { execgate_executor::metrics::render() })),
        )
        .await?;
        // Scripts and tests read this line to learn the port (with :0).
        println!("execgate executor metrics on http://{bound}/metrics");
    }
    let mut gateways = a.gateway.into_iter().map(|g| g.trim().to_string());
    let first = gateways.next().unwrap_or_default();
    let mut config = ExecutorConfig::new(first, a.token);
    config.fallback_gateway_urls = gateways.filter(|g| !g.is_empty()).collect();
    config.name = a.name;
    config.is_default = a.default;
    a.policy.apply(a.workdir, &mut config)?;
    config.retained_bytes = a.retain_bytes;
    config.session_ttl = Duration::from_secs(a.session_ttl_secs);
    config.exited_retention = Duration::from_secs(a.exited_retention_secs);
    config.spill_bytes = a.spill_bytes;
    config.spill_total_bytes = a.spill_total_bytes;
    config.spill_dir = a.spill_dir;
    if let Some(dir) = a.state_dir {
        config.state_dir = Some(dir);
    }
    config.stale_staged_after = Duration::from_secs(a.stale_staged_secs);
    execgate_executor::run(config).await?;
    Ok(())
}

/// The executor's policy and sandbox options: `execgate executor` and
/// `execgate up` (for its local executor) take the same.
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// A TOML file of custom tools ([[tool]] tables); checked at start, and
    /// any problem refuses to start. See README, "Custom tools".
    #[arg(long, value_name = "FILE")]
    pub tools: Option<PathBuf>,
    /// Confine every file path and cwd the gateway sends to DIR, after
    /// resolving `..` and symlinks; an escape is refused. Processes are
    /// confined only with --sandbox (else a shell can still `cd /`).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Only these tools may be used, comma-separated: core tools (shell,
    /// read_file, write_file, exec_command, apply_patch, copy_path, list_dir) and
    /// custom tools of --tools.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allow_tools: Option<Vec<String>>,
    /// Only reads: no file is changed and no process is started.
    #[arg(long)]
    pub read_only: bool,
    /// At most N processes run at once; more are refused until one exits.
    #[arg(long, value_name = "N")]
    pub max_processes: Option<usize>,
    /// Confine every process the executor starts (Landlock, Linux 6.2+):
    /// writes only beneath --root (else --workdir), --sandbox-write paths
    /// and /dev/null, /dev/tty and the like. Refuses to start where the
    /// kernel cannot enforce it.
    #[arg(long)]
    pub sandbox: bool,
    /// With --sandbox: processes may also write beneath PATH (repeatable;
    /// e.g. /tmp).
    #[arg(long, value_name = "PATH", requires = "sandbox")]
    pub sandbox_write: Vec<PathBuf>,
    /// With --sandbox: processes may read only beneath these paths
    /// (repeatable), plus /usr, /bin, /lib*, /etc, /dev, /proc, the
    /// directories of PATH and the write paths [default: everywhere].
    #[arg(long, value_name = "PATH", requires = "sandbox")]
    pub sandbox_read: Vec<PathBuf>,
    /// With --sandbox: `deny` refuses TCP connect and bind (Linux 6.7+).
    #[arg(long, value_name = "RULE", requires = "sandbox")]
    pub sandbox_net: Option<NetRule>,
}

/// `--sandbox-net`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetRule {
    Allow,
    Deny,
}

impl PolicyArgs {
    /// Sets `config`'s workdir (`workdir`, else the root, else as it is),
    /// policy and tools file.
    pub fn apply(
        self,
        workdir: Option<PathBuf>,
        config: &mut ExecutorConfig,
    ) -> anyhow::Result<()> {
        // With a root, work in it unless told otherwise (a workdir outside
        // it is refused at start).
        if let Some(w) = workdir.as_ref().or(self.root.as_ref()) {
            let flag = if workdir.is_some() {
                "--workdir"
            } else {
                "--root"
            };
            config.workdir = std::fs::canonicalize(w)
                .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", w.display()))?;
        }
        config.policy = PolicyConfig {
            root: self.root,
            allow_tools: self.allow_tools,
            read_only: self.read_only,
            max_processes: self.max_processes,
            sandbox: self.sandbox.then(|| SandboxConfig {
                write: self.sandbox_write,
                read: (!self.sandbox_read.is_empty()).then_some(self.sandbox_read),
                deny_net: self.sandbox_net == Some(NetRule::Deny),
            }),
        };
        config.tools_file = self.tools;
        Ok(())
    }
}
