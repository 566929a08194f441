//! `execgate admin`: workspaces, proxy tokens, executors and capability
//! tokens, straight in the store of a data dir. Safe while a gateway serves
//! from the same data dir.
//!
//! Commands that create a secret print it alone on the last line of stdout;
//! scripts and tests rely on that. `executor add --sigv4` (a machine that
//! runs a stock codex) instead ends with three `NAME=value` lines, ready for
//! codex's environment: `EXECGATE_ENVIRONMENT_ID`, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use execgate_gateway::api::rfc3339;
use execgate_gateway::captoken::{self, admin::MintRequest};
use execgate_gateway::Store;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The gateway's data dir [default: ~/.local/share/execgate].
    #[arg(long, env = "EXECGATE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Workspaces.
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Proxy tokens, which agents use to call the connectors API.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Executors (environments) and their tokens.
    #[command(subcommand)]
    Executor(ExecutorCmd),
    /// Capability tokens (for /bridge) and their turns.
    #[command(subcommand)]
    Captoken(CaptokenCmd),
}

#[derive(Subcommand, Debug)]
pub enum CaptokenCmd {
    /// Mint a capability token for a workspace; it is printed alone on the
    /// last line. Uses the gateway's secret: `<data-dir>/cap-token-secret`
    /// (generated if missing) or --cap-token-secret-file, as `serve` does.
    Create {
        #[arg(long)]
        workspace: String,
        /// Lifetime in seconds (1-86400).
        #[arg(long, default_value_t = execgate_gateway::captoken::DEFAULT_TTL_S)]
        ttl: u64,
        /// The turn the token belongs to (revocation is per turn); default: a new `turn_…`.
        #[arg(long)]
        turn_id: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Mark the token's calls as not to be audited (the `skip_audit` claim).
        #[arg(long)]
        skip_audit: bool,
        /// The secret file the gateway is started with, if not the data dir's.
        #[arg(long, env = "EXECGATE_CAP_TOKEN_SECRET_FILE")]
        cap_token_secret_file: Option<PathBuf>,
    },
    /// Revoke every capability token of a turn, for good.
    RevokeTurn { turn_id: String },
}

#[derive(Subcommand, Debug)]
pub enum WorkspaceCmd {
    /// Create a workspace.
    Create { name: String },
    /// List workspaces.
    List,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a proxy token; it is printed once, on the last line.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// List proxy tokens (never the tokens themselves).
    List {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Revoke a proxy token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ExecutorCmd {
    /// Register an executor (creating its workspace if needed); its token
    /// is printed once, on the last line.
    Add {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        default: bool,
        /// For a stock `codex exec-server --aws-sigv4`: issue an AWS SigV4
        /// key instead of a token. Ends with three lines:
        /// EXECGATE_ENVIRONMENT_ID=…, AWS_ACCESS_KEY_ID=…, AWS_SECRET_ACCESS_KEY=….
        #[arg(long)]
        sigv4: bool,
    },
    /// List executors.
    List {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Remove an executor by name or exe_id.
    Remove {
        #[arg(long)]
        workspace: String,
        name: String,
    },
}

pub async fn run(a: AdminArgs) -> anyhow::Result<()> {
    let dir = a.data_dir.unwrap_or_else(crate::default_data_dir);
    let store = Store::open(&dir).await?;
    match a.command {
        AdminCommand::Workspace(WorkspaceCmd::Create { name }) => {
            store.create_workspace(&name).await?;
            println!("created workspace {name}");
        }
        AdminCommand::Workspace(WorkspaceCmd::List) => {
            println!("{:<24} CREATED", "NAME");
            for w in store.list_workspaces().await? {
                println!("{:<24} {}", w.name, rfc3339(w.created_at));
            }
        }
        AdminCommand::Token(TokenCmd::Create { workspace, user }) => {
            let (id, token) = store
                .create_proxy_token(&workspace, user.as_deref())
                .await?;
            println!("created proxy token {id} for workspace {workspace} (shown once):");
            println!("{token}");
        }
        AdminCommand::Token(TokenCmd::List { workspace }) => {
            println!(
                "{:<22} {:<20} {:<16} {:<22} STATUS",
                "ID", "WORKSPACE", "USER", "CREATED"
            );
            for t in store.list_proxy_tokens(workspace.as_deref()).await? {
                let status = match t.revoked_at {
                    Some(at) => format!("revoked {}", rfc3339(at)),
                    None => "live".into(),
                };
                println!(
                    "{:<22} {:<20} {:<16} {:<22} {status}",
                    t.id,
                    t.workspace,
                    t.user_id.as_deref().unwrap_or("-"),
                    rfc3339(t.created_at)
                );
            }
        }
        AdminCommand::Token(TokenCmd::Revoke { id }) => {
            store.revoke_proxy_token(&id).await?;
            println!("revoked {id}");
        }
        AdminCommand::Executor(ExecutorCmd::Add {
            workspace,
            name,
            default,
            sigv4: true,
        }) => {
            // In remote auth mode workspaces are named by the token
            // authority; adding an executor is what brings one into being here.
            store.ensure_workspace(&workspace).await?;
            let key = store.add_sigv4_executor(&workspace, &name, default).await?;
            println!(
                "added executor {name} ({}) to workspace {workspace}; run codex with --environment-id {} and these credentials (shown once):",
                key.exe_id, key.exe_id
            );
            println!("EXECGATE_ENVIRONMENT_ID={}", key.exe_id);
            println!("AWS_ACCESS_KEY_ID={}", key.key_id);
            println!("AWS_SECRET_ACCESS_KEY={}", key.secret);
        }
        AdminCommand::Executor(ExecutorCmd::Add {
            workspace,
            name,
            default,
            sigv4: false,
        }) => {
            store.ensure_workspace(&workspace).await?;
            let (exe_id, token) = store.add_executor(&workspace, &name, default).await?;
            println!("added executor {name} ({exe_id}) to workspace {workspace}; its token (shown once):");
            println!("{token}");
        }
        AdminCommand::Executor(ExecutorCmd::List { workspace }) => {
            println!(
                "{:<22} {:<16} {:<20} {:<8} {:<10} {:<22} {:<22}",
                "EXE_ID", "WORKSPACE", "NAME", "DEFAULT", "VERSION", "CONNECTED", "LAST_SEEN"
            );
            for e in store.list_executors(workspace.as_deref()).await? {
                let connected = match (e.connected_at, e.disconnected_at) {
                    (Some(c), Some(d)) if d >= c => "no".to_string(),
                    (Some(c), _) => rfc3339(c),
                    (None, _) => "never".to_string(),
                };
                println!(
                    "{:<22} {:<16} {:<20} {:<8} {:<10} {:<22} {:<22}",
                    e.exe_id,
                    e.workspace,
                    e.name,
                    if e.is_default { "yes" } else { "" },
                    e.version.as_deref().unwrap_or("-"),
                    connected,
                    e.last_seen_at.map(rfc3339).unwrap_or_else(|| "-".into())
                );
            }
        }
        AdminCommand::Captoken(CaptokenCmd::Create {
            workspace,
            ttl,
            turn_id,
            user,
            skip_audit,
            cap_token_secret_file,
        }) => {
            let secret = captoken::keyfile::load(cap_token_secret_file.as_deref(), &dir)?;
            let req = MintRequest {
                workspace,
                ttl_s: Some(ttl),
                turn_id,
                user_id: user,
                skip_audit: skip_audit.then_some(true),
            };
            let m = captoken::admin::mint(&store, &secret, &req, captoken::now_s()).await?;
            println!(
                "capability token for workspace {}, turn {}, expires {} (shown once):",
                m.workspace,
                m.turn_id,
                rfc3339(m.exp * 1000)
            );
            println!("{}", m.token);
        }
        AdminCommand::Captoken(CaptokenCmd::RevokeTurn { turn_id }) => {
            let r = captoken::admin::revoke_turn(&store, &turn_id).await?;
            println!("revoked turn {} (since {})", r.turn_id, r.revoked_at);
        }
        AdminCommand::Executor(ExecutorCmd::Remove { workspace, name }) => {
            store.remove_executor(&workspace, &name).await?;
            println!("removed executor {name} from workspace {workspace}");
        }
    }
    Ok(())
}
