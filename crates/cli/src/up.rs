//! `execgate up`: a gateway and an in-process executor named `local` in
//! workspace `default`, both created if missing, and a proxy token to use
//! them. The quickest way from a fresh machine to a working setup.
//!
//! The executor's token is rotated at every start (it never leaves this
//! process). The proxy token is kept in `<data dir>/up-token` (mode 0600)
//! and reused while it is live, so exported shells keep working across
//! restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use execgate_executor::ExecutorConfig;
use execgate_gateway::{Gateway, Store};

use crate::executor_cmd::PolicyArgs;
use crate::serve::GatewayArgs;

const WORKSPACE: &str = "default";
const ENV_NAME: &str = "local";

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// The local executor's working directory [default: the current
    /// directory, or --root].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The local executor's limits and sandbox, as `execgate executor`'s.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub async fn run(a: UpArgs) -> anyhow::Result<()> {
    crate::fdlimit::raise_nofile_limit("gateway and executor");
    let data_dir = a.gateway.data_dir();
    execgate_gateway::enable_metrics();
    let gateway = Gateway::bind(a.gateway.config()?).await?;
    // Metrics are on for `up`: on --metrics-listen, else 127.0.0.1 and a free port.
    let metrics_addr = a
        .gateway
        .metrics_listen
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let metrics_url = format!(
        "http://{}/metrics",
        crate::serve::start_metrics(metrics_addr, &gateway).await?
    );
    let addr = gateway.local_addr();
    let url = format!("http://{addr}");
    let store = gateway.handle().store().clone();

    store.ensure_workspace(WORKSPACE).await?;
    let exe_token = match store.executor_by_name(WORKSPACE, ENV_NAME).await? {
        Some(row) => store.rotate_executor_token(&row.exe_id).await?,
        None => store.add_executor(WORKSPACE, ENV_NAME, true).await?.1,
    };
    let proxy_token = proxy_token(&store, &data_dir).await?;

    let handle = gateway.handle();
    let server = tokio::spawn(gateway.serve());

    let mut config = ExecutorConfig::new(url.clone(), exe_token);
    a.policy.apply(a.workdir, &mut config)?;
    let workdir = config.workdir.clone();
    let executor = tokio::spawn(execgate_executor::run(config));

    // Wait for the executor's link, so that the examples work when printed.
    let exe_id = store
        .executor_by_name(WORKSPACE, ENV_NAME)
        .await?
        .map(|r| r.exe_id)
        .unwrap_or_default();
    for _ in 0..100 {
        if handle.is_connected(&exe_id) || executor.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An executor that refused to start (a bad --root, --sandbox on a
    // kernel that cannot enforce it…) says why, before any example.
    if executor.is_finished() {
        executor.await??;
        anyhow::bail!("the local executor stopped");
    }

    println!("execgate is up.");
    println!("  gateway:  {url}   (data in {})", data_dir.display());
    println!(
        "  executor: '{ENV_NAME}' in workspace '{WORKSPACE}', working in {}",
        workdir.display()
    );
    // The token rides in the fragment, which the browser never sends.
    println!("  console:  {url}/ui/#token={proxy_token}");
    println!("  metrics:  {metrics_url}");
    println!();
    println!("Use it from another shell:");
    println!("  export EXECGATE_URL={url}");
    println!("  export EXECGATE_TOKEN={proxy_token}");
    println!();
    println!("  curl -s -X POST -H \"Authorization: Bearer $EXECGATE_TOKEN\" $EXECGATE_URL/api/connectors/envs/list");
    println!(
        "  curl -s -H \"Authorization: Bearer $EXECGATE_TOKEN\" $EXECGATE_URL/api/connectors/envs/{ENV_NAME}/tool/call \\"
    );
    println!("       -d '{{\"tool\":\"shell\",\"arguments\":{{\"command\":[\"uname\",\"-a\"]}}}}'");
    println!("  execgate envs");
    println!("  execgate exec {ENV_NAME} -- uname -a");
    println!();
    println!("Press Ctrl-C to stop.");

    tokio::select! {
        r = server => r??,
        r = executor => r??,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// The proxy token kept in `up-token`, or a new one if that is missing or
/// no longer live.
async fn proxy_token(store: &Store, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("up-token");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim().to_string();
        if let Some(grant) = store.verify_proxy_token(&saved).await? {
            if grant.workspace == WORKSPACE {
                return Ok(saved);
            }
        }
    }
    let (_, token) = store.create_proxy_token(WORKSPACE, None).await?;
    write_private(&path, &token)?;
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{contents}")?;
    Ok(())
}
