//! `execgate executor`: serve this machine to a gateway.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use execgate_executor::ExecutorConfig;

#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// The gateway's URL, e.g. http://127.0.0.1:6060.
    #[arg(long, env = "EXECGATE_GATEWAY")]
    pub gateway: String,
    /// The executor token `execgate admin executor add` printed.
    #[arg(long, env = "EXECGATE_EXECUTOR_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The environment name this token belongs to (checked by the gateway).
    #[arg(long)]
    pub name: Option<String>,
    /// Make this its workspace's default environment.
    #[arg(long)]
    pub default: bool,
    /// Relative paths and the default cwd resolve against this directory.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Output bytes kept in memory per process.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub retain_bytes: usize,
    /// Seconds a disconnected session keeps its processes for a reconnect.
    #[arg(long, default_value_t = 600)]
    pub session_ttl_secs: u64,
    /// A TOML file of custom tools ([[tool]] tables); checked at start, and
    /// any problem refuses to start. See README, "Custom tools".
    #[arg(long, value_name = "FILE")]
    pub tools: Option<PathBuf>,
}

pub async fn run(a: ExecutorArgs) -> anyhow::Result<()> {
    let mut config = ExecutorConfig::new(a.gateway, a.token);
    config.name = a.name;
    config.is_default = a.default;
    if let Some(w) = a.workdir {
        config.workdir = std::fs::canonicalize(&w)
            .map_err(|e| anyhow::anyhow!("--workdir {}: {e}", w.display()))?;
    }
    config.retained_bytes = a.retain_bytes;
    config.session_ttl = Duration::from_secs(a.session_ttl_secs);
    config.tools_file = a.tools;
    execgate_executor::run(config).await?;
    Ok(())
}
