//! `execgate admin`: workspaces, proxy tokens, executors, the audit log and
//! capability tokens, straight in the store of a data dir. Safe while a
//! gateway serves from the same data dir. The work is
//! `execgate_gateway::admin` (operations and capability tokens), which the admin
//! API (`/api/admin/*`) shares; this module only prints.
//!
//! Commands that create a secret print it alone on the last line of stdout;
//! scripts and tests rely on that. `executor add --sigv4` (a machine that
//! runs a stock codex) instead ends with three `NAME=value` lines, ready for
//! codex's environment: `EXECGATE_ENVIRONMENT_ID`, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use execgate_gateway::admin::{self as ops, now_ms, parse_since, rfc3339, AuditQuery, MintRequest};
use execgate_gateway::captoken;
use execgate_gateway::Store;
use execgate_protocol::admin::{AddExecutor, CreateToken};

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The gateway's data dir [default: ~/.local/share/execgate].
    #[arg(long, env = "EXECGATE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The gateway's PostgreSQL store (`postgres://…`), in place of
    /// --data-dir, as `serve --database-url`.
    #[arg(long, env = "EXECGATE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
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
    /// The audit log: tool calls, process operations, file transfers and
    /// bridge sessions, oldest first.
    Audit(AuditArgs),
    /// Capability tokens (for /bridge) and their turns.
    #[command(subcommand)]
    Captoken(CaptokenCmd),
    /// Copy a single-machine store (SQLite, in a data dir) into an empty
    /// PostgreSQL store: workspaces, tokens, executors, sessions, revoked
    /// turns, the audit log, and the admin token and capability-token
    /// secret. Refuses a target that already holds data.
    Migrate {
        /// The data dir of the SQLite store.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL store's URL (`postgres://…`).
        #[arg(long)]
        to: String,
    },
    /// The gateway replicas sharing this store (`serve --advertise-url`):
    /// peer URL, heartbeat age, executors held by an unexpired lease.
    Replicas {
        /// Also list every executor's lease: holder, epoch, expiry.
        #[arg(long)]
        leases: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaptokenCmd {
    /// Mint a capability token for a workspace; it is printed alone on the
    /// last line. Uses the gateway's secret: --cap-token-secret-file, else
    /// `<data-dir>/cap-token-secret` (generated if missing), or with
    /// --database-url the store's, as `serve` does.
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

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this workspace's records.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only operations started at or after this: an RFC 3339 time
    /// (2025-05-01T12:00:00Z), a time ago (90s, 15m, 2h, 7d), or unix ms.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Print a JSON array of records (the admin API's fields) instead of a table.
    #[arg(long)]
    pub json: bool,
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
    if let AdminCommand::Migrate { from, to } = &a.command {
        let copied = execgate_gateway::migrate::sqlite_to_postgres(from, to).await?;
        println!("{copied}");
        return Ok(());
    }
    let dir = a.data_dir.unwrap_or_else(crate::default_data_dir);
    let store = Store::open_either(a.database_url.as_deref(), &dir).await?;
    match a.command {
        AdminCommand::Workspace(WorkspaceCmd::Create { name }) => {
            ops::create_workspace(&store, &name).await?;
            println!("created workspace {name}");
        }
        AdminCommand::Workspace(WorkspaceCmd::List) => {
            println!("{:<24} CREATED", "NAME");
            for w in ops::workspaces(&store).await?.workspaces {
                println!("{:<24} {}", w.name, w.created_at);
            }
        }
        AdminCommand::Token(TokenCmd::Create { workspace, user }) => {
            let t = ops::create_token(
                &store,
                &CreateToken {
                    workspace,
                    user_id: user,
                },
            )
            .await?;
            println!(
                "created proxy token {} for workspace {} (shown once):",
                t.id, t.workspace
            );
            println!("{}", t.token);
        }
        AdminCommand::Token(TokenCmd::List { workspace }) => {
            println!(
                "{:<22} {:<20} {:<16} {:<22} STATUS",
                "ID", "WORKSPACE", "USER", "CREATED"
            );
            for t in ops::tokens(&store, workspace.as_deref()).await?.tokens {
                let status = match t.revoked_at {
                    Some(at) => format!("revoked {at}"),
                    None => "live".into(),
                };
                println!(
                    "{:<22} {:<20} {:<16} {:<22} {status}",
                    t.id,
                    t.workspace,
                    t.user_id.as_deref().unwrap_or("-"),
                    t.created_at
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
            sigv4,
        }) => {
            let req = AddExecutor {
                workspace,
                name,
                default,
                sigv4,
            };
            let added = ops::add_executor(&store, &req).await?;
            let (name, exe_id, workspace) = (&added.name, &added.exe_id, &added.workspace);
            match (&added.token, &added.sigv4) {
                (_, Some(key)) => {
                    println!(
                        "added executor {name} ({exe_id}) to workspace {workspace}; run codex with --environment-id {exe_id} and these credentials (shown once):"
                    );
                    println!("EXECGATE_ENVIRONMENT_ID={exe_id}");
                    println!("AWS_ACCESS_KEY_ID={}", key.access_key_id);
                    println!("AWS_SECRET_ACCESS_KEY={}", key.secret_access_key);
                }
                (token, None) => {
                    println!("added executor {name} ({exe_id}) to workspace {workspace}; its token (shown once):");
                    println!("{}", token.as_deref().unwrap_or_default());
                }
            }
        }
        AdminCommand::Executor(ExecutorCmd::List { workspace }) => {
            println!(
                "{:<22} {:<16} {:<20} {:<8} {:<10} {:<22} {:<22}",
                "EXE_ID", "WORKSPACE", "NAME", "DEFAULT", "VERSION", "CONNECTED", "LAST_SEEN"
            );
            let rows = store.list_executors(workspace.as_deref()).await?;
            for e in rows {
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
            let secret = captoken::shared_secrets::cap_token_secret(
                &store,
                &dir,
                cap_token_secret_file.as_deref(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            let req = MintRequest {
                workspace,
                ttl_s: Some(ttl),
                turn_id,
                user_id: user,
                skip_audit: skip_audit.then_some(true),
            };
            let m = ops::mint(&store, &secret, &req, captoken::now_s()).await?;
            println!(
                "capability token for workspace {}, turn {}, expires {} (shown once):",
                m.workspace,
                m.turn_id,
                rfc3339(m.exp * 1000)
            );
            println!("{}", m.token);
        }
        AdminCommand::Captoken(CaptokenCmd::RevokeTurn { turn_id }) => {
            let r = ops::revoke_turn(&store, &turn_id).await?;
            println!("revoked turn {} (since {})", r.turn_id, r.revoked_at);
        }
        AdminCommand::Executor(ExecutorCmd::Remove { workspace, name }) => {
            store.remove_executor(&workspace, &name).await?;
            println!("removed executor {name} from workspace {workspace}");
        }
        AdminCommand::Audit(a) => audit(&store, a).await?,
        AdminCommand::Migrate { .. } => unreachable!("handled above"),
        AdminCommand::Replicas { leases } => {
            let now = now_ms();
            println!(
                "{:<22} {:<32} {:>10} {:>9} STARTED",
                "REPLICA", "PEER_URL", "HEARTBEAT", "EXECUTORS"
            );
            for r in store.list_replicas(now).await? {
                println!(
                    "{:<22} {:<32} {:>10} {:>9} {}",
                    r.replica_id,
                    r.peer_url,
                    format!("{:.1}s ago", (now - r.heartbeat_at).max(0) as f64 / 1000.0),
                    r.executors,
                    rfc3339(r.started_at)
                );
            }
            if leases {
                println!();
                println!(
                    "{:<22} {:<22} {:>6} {:>12}",
                    "EXE_ID", "REPLICA", "EPOCH", "EXPIRES"
                );
                for l in store.list_leases().await? {
                    let left = l.expires_at - now;
                    let expires = if left > 0 {
                        format!("in {:.1}s", left as f64 / 1000.0)
                    } else {
                        "lapsed".to_string()
                    };
                    println!(
                        "{:<22} {:<22} {:>6} {:>12}",
                        l.exe_id, l.replica_id, l.epoch, expires
                    );
                }
            }
        }
    }
    Ok(())
}

async fn audit(store: &Store, a: AuditArgs) -> anyhow::Result<()> {
    let since_ms = a
        .since
        .as_deref()
        .map(|s| parse_since(s, now_ms()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    let mut q = AuditQuery {
        workspace: a.workspace,
        since_ms,
        after_id: 0,
        limit: a.limit.min(1000),
    };
    let mut records = Vec::new();
    while records.len() < a.limit as usize {
        q.limit = (a.limit as usize - records.len()).min(1000) as u32;
        let (page, next) = ops::audit(store, &q).await?;
        records.extend(page);
        match next {
            Some(cursor) => q.after_id = cursor,
            None => break,
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<24} {:<14} {:<12} {:<12} {:<14} {:<5} {:<10} {:<22} {:>5} {:>8} {:>10} {:>10} ARGS_SHA256",
        "ID", "AT", "WORKSPACE", "USER", "ENV", "METHOD", "VIA", "OUTCOME", "ERROR", "EXIT", "MS", "IN", "OUT"
    );
    for r in records {
        let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        println!(
            "{:<8} {:<24} {:<14} {:<12} {:<12} {:<14} {:<5} {:<10} {:<22} {:>5} {:>8} {:>10} {:>10} {}",
            r.id,
            r.at,
            r.workspace,
            dash(&r.user_id),
            dash(&r.environment),
            r.method,
            r.via,
            r.outcome,
            dash(&r.error_code),
            r.exit_code.map_or("-".into(), |c| c.to_string()),
            r.duration_ms,
            r.bytes_in,
            r.bytes_out,
            r.args_sha256.as_deref().map_or("-", |h| &h[..h.len().min(16)]),
        );
    }
    Ok(())
}
