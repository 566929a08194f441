//! `execgate`: one binary for the gateway, the executor, administration, and
//! the client commands. Each subcommand lives in its own module; this file
//! only parses arguments and dispatches.

mod admin;
mod client_cmds;
mod cp;
mod executor_cmd;
mod fdlimit;
mod mcp_stdio;
mod metrics_listen;
mod serve;
mod telemetry;
mod terminal;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "execgate",
    version,
    about = "The gateway between AI agents and real machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Run an executor: dial out to a gateway and serve this machine.
    Executor(executor_cmd::ExecutorArgs),
    /// Manage workspaces, proxy tokens and executors in a data dir.
    Admin(admin::AdminArgs),
    /// Start a gateway with an executor named `local`, ready to use.
    Up(up::UpArgs),
    /// List the connected environments (EXECGATE_URL, EXECGATE_TOKEN).
    Envs,
    /// Call a tool on an environment and print the result as JSON.
    Call(client_cmds::CallArgs),
    /// Run a command on an environment, streaming its output, forwarding
    /// stdin, and exiting with its exit code (`-t`: interactively, under a
    /// pseudo-terminal).
    Exec(client_cmds::ExecArgs),
    /// List the workspace's process sessions (exec_command).
    Ps,
    /// List a directory of an environment (list_dir): ENV or ENV:PATH.
    Ls(client_cmds::LsArgs),
    /// Copy files: LOCAL ENV:PATH, ENV:PATH LOCAL, or ENV:PATH ENV2:PATH.
    Cp(cp::CpArgs),
    /// Serve MCP on stdin/stdout for clients that launch a command (Claude
    /// Desktop, Codex, IDEs), relayed to the gateway's /mcp (EXECGATE_URL,
    /// EXECGATE_TOKEN): the same tools, results and errors.
    Mcp(mcp_stdio::McpArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (what a gateway
    /// serves at /openapi.json).
    Openapi,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXECGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colors only on a terminal: `execgate mcp`'s stderr, for one, ends up
    // in an MCP client's log file.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The executor runs on one thread: its work is mostly waiting on
    // sockets, pipes and children, and a call hops between several tasks
    // (request reader, process pumps, exit watcher, frame writer). On a
    // multi-threaded runtime each hop can be a cross-thread wake-up, which
    // costs ~100 µs on this kind of VM; on one thread it is a queue push.
    // Measured: shell `true` p50 4.1× → 3.4× a direct spawn (BENCHMARKS.md).
    // Blocking file work still goes to the blocking pool. The gateway can
    // be asked for the same with `--worker-threads 1`.
    // Worker threads get the main thread's usual 8 MiB, not tokio's 2 MiB:
    // a deep call (MCP → tool → link, in a debug build) once overflowed 2 MiB
    // and aborted the gateway. Only touched pages cost memory.
    const WORKER_STACK: usize = 8 << 20;
    let threads = match &cli.command {
        // The relay mostly waits on stdin and HTTP answers.
        Command::Executor(_) | Command::Mcp(_) => Some(1),
        Command::Serve(a) => a.gateway.worker_threads,
        Command::Up(a) => a.gateway.worker_threads,
        _ => None,
    };
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .thread_stack_size(WORKER_STACK)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .thread_stack_size(WORKER_STACK)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(a) => {
                let (_guard, otel, spans) =
                    telemetry::init("info", &a.gateway.telemetry, "execgate-gateway")?;
                if spans {
                    execgate_gateway::enable_tracing(otel);
                }
                serve::run(a).await.map(|_| 0)
            }
            Command::Executor(a) => {
                let (_guard, otel, _) = telemetry::init("info", &a.telemetry, "execgate-executor")?;
                if otel {
                    execgate_executor::trace::enable();
                }
                executor_cmd::run(a).await.map(|_| 0)
            }
            Command::Admin(a) => {
                init_tracing("warn");
                admin::run(a).await.map(|_| 0)
            }
            Command::Up(a) => {
                let (_guard, otel, spans) =
                    telemetry::init("warn", &a.gateway.telemetry, "execgate")?;
                if spans {
                    execgate_gateway::enable_tracing(otel);
                }
                if otel {
                    execgate_executor::trace::enable();
                }
                up::run(a).await.map(|_| 0)
            }
            Command::Envs => {
                init_tracing("warn");
                client_cmds::envs().await.map(|_| 0)
            }
            Command::Call(a) => {
                init_tracing("warn");
                client_cmds::call(a).await
            }
            Command::Exec(a) => {
                init_tracing("warn");
                client_cmds::exec(a).await
            }
            Command::Ps => {
                init_tracing("warn");
                client_cmds::ps().await.map(|_| 0)
            }
            Command::Ls(a) => {
                init_tracing("warn");
                client_cmds::ls(a).await
            }
            Command::Cp(a) => {
                init_tracing("warn");
                cp::run(a).await.map(|_| 0)
            }
            Command::Mcp(a) => {
                // stderr only: stdout carries the protocol.
                init_tracing("warn,execgate=info");
                mcp_stdio::run(a).await
            }
            Command::Openapi => {
                let doc = execgate_gateway::openapi_document();
                println!("{}", serde_json::to_string_pretty(&doc)?);
                Ok(0)
            }
        }
    });
    // Dropping the runtime would wait for blocking stdin readers; exit now.
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
    }
}

/// The default data dir: `$EXECGATE_DATA_DIR` is handled by clap; this is
/// `$XDG_DATA_HOME/execgate` or `~/.local/share/execgate`.
pub(crate) fn default_data_dir() -> std::path::PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return std::path::PathBuf::from(x).join("execgate");
    }
    match std::env::var_os("HOME") {
        Some(h) => std::path::PathBuf::from(h).join(".local/share/execgate"),
        None => std::path::PathBuf::from(".execgate"),
    }
}
