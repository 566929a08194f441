//! The client commands: `envs`, `call`, `exec` (with `-t`, an interactive
//! terminal), `ps` and `ls`, on the connectors API through `execgate-client`
//! (EXECGATE_URL, EXECGATE_TOKEN).

use std::io::Write;

use base64::Engine;
use clap::Args;
use execgate_client::Client;
use execgate_protocol::connectors::PolicyInfo;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

pub async fn envs() -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let envs = client.envs().await?;
    if envs.is_empty() {
        println!("no environments connected");
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<20} {:<22} TOOLS",
        "NAME", "DEFAULT", "EXECUTOR", "LAST_SEEN"
    );
    for e in envs {
        let executor = e
            .executor
            .map(|x| format!("{} {}", x.kind, x.version))
            .unwrap_or_default();
        let tools: Vec<_> = e.tools.iter().map(|t| t.name.as_str()).collect();
        println!(
            "{:<20} {:<8} {:<20} {:<22} {}",
            e.name,
            if e.is_default { "yes" } else { "" },
            executor,
            e.last_seen.unwrap_or_default(),
            tools.join(",")
        );
        if let Some(policy) = &e.policy {
            for line in policy_lines(policy) {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

/// The detail lines under an environment with a policy: its limits, and
/// what its processes may do.
fn policy_lines(p: &PolicyInfo) -> Vec<String> {
    let mut limits = Vec::new();
    if let Some(root) = &p.root {
        limits.push(format!("root {root}"));
    }
    if let Some(tools) = &p.allow_tools {
        limits.push(format!("allow {}", tools.join(",")));
    }
    if p.read_only {
        limits.push("read-only".to_string());
    }
    if let Some(n) = p.max_processes {
        limits.push(format!("max {n} processes"));
    }
    let mut lines = Vec::new();
    if !limits.is_empty() {
        lines.push(format!("policy:  {}", limits.join("; ")));
    }
    lines.push(match &p.sandbox {
        None => "sandbox: none (processes can write wherever the executor's user can)".to_string(),
        Some(s) => {
            let scopes = if s.scopes.is_empty() {
                String::new()
            } else {
                format!(", scopes {}", s.scopes.join(","))
            };
            format!(
                "sandbox: write {} (+ {}); read {}; net {}; landlock ABI {}{scopes}",
                s.write.join(","),
                s.devices.join(","),
                s.read.as_ref().map_or("all".to_string(), |r| r.join(",")),
                s.net,
                s.landlock_abi
            )
        }
    });
    lines
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// Environment name.
    pub env: String,
    /// Tool name.
    pub tool: String,
    /// Arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub args: String,
}

/// Prints the CallToolResult; exits 1 when the tool reports an error.
pub async fn call(a: CallArgs) -> anyhow::Result<i32> {
    let client = Client::from_env()?;
    let args: Value = serde_json::from_str(&a.args)
        .map_err(|e| anyhow::anyhow!("--args is not valid JSON: {e}"))?;
    let result = client.call_tool(&a.env, &a.tool, args).await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(if result.is_error { 1 } else { 0 })
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run under a pseudo-terminal, interactively (as `ssh -t`): the local
    /// terminal goes raw, keys (Ctrl-C too) go to the remote process, and
    /// window-size changes follow. Needs a terminal on stdin.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Environment name.
    pub env: String,
    /// Working directory on the environment.
    #[arg(long)]
    pub cwd: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Streams the remote process's output, forwards stdin (closing it at EOF),
/// and returns its exit code. Ctrl-C terminates the remote process.
pub async fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    if a.tty {
        return exec_tty(a).await;
    }
    let client = Client::from_env()?;
    let mut args = json!({ "command": a.command, "pipe_stdin": true });
    if let Some(cwd) = a.cwd {
        args["cwd"] = json!(cwd);
    }
    let sid = client.exec_command(&a.env, args).await?;

    let stdin_client = client.clone();
    let stdin_sid = sid.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    if let Err(e) = stdin_client.write_stdin(&stdin_sid, &[], true).await {
                        if e.code() != Some("stdin_closed") {
                            eprintln!("execgate: could not close the remote stdin: {e}");
                        }
                    }
                    return;
                }
                Ok(n) => {
                    if stdin_client
                        .write_stdin(&stdin_sid, &buf[..n], false)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });

    follow(&client, &sid, false).await
}

/// Copies the process's output to stdout and stderr (with `tty`, all to
/// stdout) until it ends, and returns its exit code (clamped to 0..=255; 1
/// when unknown). Through the stream, in the binary form when the gateway
/// has it, else SSE; a dropped connection is resumed from the last seq.
/// A gateway without the stream route is long-polled. Without `tty`,
/// Ctrl-C terminates the remote process.
async fn follow(client: &Client, sid: &str, tty: bool) -> anyhow::Result<i32> {
    use execgate_client::StreamItem;
    use execgate_protocol::exec::Stream;
    let binary = std::env::var_os("EXECGATE_STREAM").is_none_or(|v| v != "sse");
    let mut since = 0u64;
    let mut interrupted = false;
    let mut failures = 0u32;
    loop {
        let mut stream = match client.stream(sid, since, binary).await {
            Ok(s) => s,
            Err(e) if e.code() == Some("not_found") => return poll(client, sid, tty).await,
            Err(e @ execgate_client::ClientError::Http(_)) if failures < 5 => {
                failures += 1;
                tracing::debug!("stream: {e}; again from seq {since}");
                tokio::time::sleep(std::time::Duration::from_millis(200 << failures)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = tokio::signal::ctrl_c(), if !interrupted && !tty => {
                    interrupted = true;
                    client.terminate(sid).await?;
                    continue;
                }
            };
            let item = match item {
                Ok(Some(item)) => item,
                // The connection ended or broke: resume after the cursor.
                Ok(None) | Err(execgate_client::ClientError::Http(_)) => break,
                Err(e) => return Err(e.into()),
            };
            failures = 0;
            match item {
                StreamItem::Output { stream, data, .. } => {
                    write_output(stream == Stream::Stderr && !tty, &data)?;
                }
                StreamItem::Lost { bytes, .. } => match bytes {
                    Some(n) => eprintln!(
                        "execgate: {n} bytes of output were lost (the executor no longer retained them)"
                    ),
                    None => eprintln!("execgate: some output was lost (the executor cannot say how much)"),
                },
                StreamItem::Exit { exit_code, .. } => {
                    return Ok(exit_code.map(|c| c.clamp(0, 255)).unwrap_or(1))
                }
                StreamItem::Error { code, message } => {
                    // These end a stream that another try may continue.
                    if matches!(code.as_str(), "draining" | "executor_unavailable") && failures < 5 {
                        failures += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        break;
                    }
                    anyhow::bail!("{code}: {message}");
                }
                StreamItem::Keepalive | StreamItem::Unknown { .. } => {}
            }
        }
        since = stream.cursor();
    }
}

/// [`follow`] by long-polling `/output`, for a gateway without `/stream`.
async fn poll(client: &Client, sid: &str, tty: bool) -> anyhow::Result<i32> {
    let mut since = 0u64;
    let mut interrupted = false;
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        let out = tokio::select! {
            out = client.output(sid, since, Some(10_000)) => out?,
            _ = tokio::signal::ctrl_c(), if !interrupted && !tty => {
                interrupted = true;
                client.terminate(sid).await?;
                continue;
            }
        };
        if out.lost_bytes > 0 {
            eprintln!(
                "execgate: {} bytes of output were lost (the executor no longer retained them)",
                out.lost_bytes
            );
        }
        for c in &out.chunks {
            let data = b64.decode(c.data_b64.as_deref().unwrap_or_default().as_bytes())?;
            write_output(c.stream == "stderr" && !tty, &data)?;
        }
        since = out
            .next_since
            .or(out.chunks.last().map(|c| c.seq))
            .unwrap_or(since)
            .max(since);
        if !out.session_alive {
            return Ok(out.exit_code.map(|c| c.clamp(0, 255)).unwrap_or(1));
        }
    }
}

/// `execgate exec -t`: the remote process under a pseudo-terminal, driven
/// from this terminal in raw mode.
/// Writes a process's output to ours, stderr to stderr (`to_stderr`),
/// flushed at once so that it shows as it arrives.
fn write_output(to_stderr: bool, data: &[u8]) -> std::io::Result<()> {
    if to_stderr {
        let mut e = std::io::stderr().lock();
        e.write_all(data)?;
        e.flush()
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(data)?;
        o.flush()
    }
}

async fn exec_tty(a: ExecArgs) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "execgate exec -t needs a terminal on stdin (it forwards keystrokes as typed); \
             drop -t to pipe stdin to the command instead"
        );
    }
    let client = Client::from_env()?;
    let (cols, rows) = crate::terminal::size(0).unwrap_or((80, 24));
    let mut env = serde_json::Map::new();
    if let Ok(term) = std::env::var("TERM") {
        env.insert("TERM".into(), json!(term));
    }
    let mut args = json!({
        "command": a.command, "tty": true, "cols": cols, "rows": rows, "env": env,
    });
    if let Some(cwd) = a.cwd {
        args["cwd"] = json!(cwd);
    }
    let sid = client.exec_command(&a.env, args).await?;
    // Restored when this function returns, before the process exits.
    let _raw = crate::terminal::RawMode::enable(0)?;

    // Keys, raw: Ctrl-C is the 0x03 byte, interpreted by the remote terminal.
    let keys = {
        let client = client.clone();
        let sid = sid.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 4096];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = client.write_stdin(&sid, &[], true).await;
                        return;
                    }
                    Ok(n) => {
                        if client.write_stdin(&sid, &buf[..n], false).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    // Window-size changes follow the local terminal.
    let resizes = {
        let client = client.clone();
        let sid = sid.clone();
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some((cols, rows)) = crate::terminal::size(0) {
                    let _ = client.resize(&sid, cols, rows).await;
                }
            }
        })
    };

    let code = follow(&client, &sid, true).await?;
    keys.abort();
    resizes.abort();
    Ok(code)
}

/// `execgate ps`: the workspace's process sessions as a table.
pub async fn ps() -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let processes = client.processes().await?;
    if processes.is_empty() {
        println!("no process sessions");
        return Ok(());
    }
    println!(
        "{:<18} {:<14} {:<20} {:<5} {:<21} COMMAND",
        "SID", "ENV", "STATUS", "EXIT", "STARTED"
    );
    for p in processes {
        let exit = p.exit_code.map(|c| c.to_string()).unwrap_or_default();
        println!(
            "{:<18} {:<14} {:<20} {:<5} {:<21} {}",
            p.sid,
            p.env,
            p.status,
            exit,
            p.started_at,
            shell_words(&p.command)
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// ENV (its working directory) or ENV:PATH; a relative PATH resolves
    /// against the environment's working directory.
    pub target: String,
    /// The most entries to show (the first ones by name; the gateway's
    /// default is 1000, its cap 10000).
    #[arg(long, value_name = "N")]
    pub max_entries: Option<u64>,
    /// Print the tool's structured result as JSON instead.
    #[arg(long)]
    pub json: bool,
}

/// `execgate ls ENV[:PATH]`: one entry a line, sorted by name, a
/// directory with a trailing `/` and anything neither file nor directory
/// with a trailing `?` (a dangling link, a link out of the root, a FIFO…).
/// A truncated listing says so on stderr. Exits 1 when the tool fails
/// (no such directory…).
pub async fn ls(a: LsArgs) -> anyhow::Result<i32> {
    let (env, path) = match a.target.split_once(':') {
        Some((env, path)) if !path.is_empty() => (env, path),
        Some((env, _)) => (env, "."),
        None => (a.target.as_str(), "."),
    };
    if env.is_empty() {
        anyhow::bail!("no environment: write ENV or ENV:PATH");
    }
    let client = Client::from_env()?;
    let mut args = json!({ "path": path });
    if let Some(n) = a.max_entries {
        args["max_entries"] = json!(n);
    }
    let result = client.call_tool(env, "list_dir", args).await?;
    let listing = result.structured_content.unwrap_or(Value::Null);
    if result.is_error {
        let message = listing["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                result
                    .content
                    .iter()
                    .map(|c| c.text.as_str())
                    .collect::<String>()
            });
        eprintln!("error: {message}");
        return Ok(1);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    for line in ls_lines(&listing) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if listing["truncated"] == true {
        eprintln!(
            "({} of {} entries shown; --max-entries for more)",
            listing["entries"].as_array().map_or(0, Vec::len),
            listing["total"]
        );
    }
    Ok(0)
}

/// The lines of `execgate ls` for a list_dir result.
fn ls_lines(listing: &Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or_default();
            match e["kind"].as_str() {
                Some("directory") => format!("{name}/"),
                Some("file") => name.to_string(),
                _ => format!("{name}?"),
            }
        })
        .collect()
}

/// An argv as a shell would need it typed, for display.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgate_protocol::connectors::SandboxInfo;

    #[test]
    fn policy_lines_show_limits_and_the_sandbox() {
        let mut p = PolicyInfo {
            root: Some("/srv/p".into()),
            allow_tools: Some(vec!["shell".into(), "read_file".into()]),
            read_only: false,
            max_processes: Some(4),
            sandbox: None,
        };
        assert_eq!(
            policy_lines(&p),
            [
                "policy:  root /srv/p; allow shell,read_file; max 4 processes",
                "sandbox: none (processes can write wherever the executor's user can)"
            ]
        );
        p.sandbox = Some(SandboxInfo {
            write: vec!["/srv/p".into(), "/tmp".into()],
            devices: vec!["/dev/null".into()],
            read: None,
            net: "deny".into(),
            landlock_abi: 7,
            scopes: vec!["signal".into()],
        });
        assert_eq!(
            policy_lines(&p)[1],
            "sandbox: write /srv/p,/tmp (+ /dev/null); read all; net deny; landlock ABI 7, scopes signal"
        );
    }

    #[test]
    fn ls_marks_directories_and_others() {
        let listing = json!({"entries": [
            {"name": "a", "kind": "directory"},
            {"name": "b.txt", "kind": "file"},
            {"name": "fifo", "kind": "other"},
        ], "total": 3, "truncated": false});
        assert_eq!(ls_lines(&listing), ["a/", "b.txt", "fifo?"]);
        assert!(ls_lines(&json!({})).is_empty());
    }

    #[test]
    fn argv_is_shown_as_typed() {
        let argv: Vec<String> = ["sh", "-c", "echo 'hi' there", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            super::shell_words(&argv),
            r"sh -c 'echo '\''hi'\'' there' ''"
        );
    }
}
