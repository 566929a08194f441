//! A lightweight executor that the bench plays itself, for the scale
//! figure: it speaks the real protocol to the real gateway, but does
//! nothing else, so thousands of them fit in one process.
//!
//! 1. `POST /cloud/environment/{id}/direct/register` with its executor
//!    token as bearer; the answer holds a single-use WebSocket URL.
//! 2. Dials that URL (tokio-tungstenite, TCP_NODELAY).
//! 3. Answers the gateway's `initialize` with a minimal `EnvironmentInfo`,
//!    waits for `initialized`, and from then on only keeps the socket
//!    read (which answers the gateway's pings) until told to stop. Any
//!    other request gets -32601, which an idle bench never sees.

use std::time::Duration;

use anyhow::{bail, Context};
use execgate_protocol::exec::{method, EnvironmentInfo, InitializeResult, ShellInfo};
use execgate_protocol::jsonrpc::{Message, RpcError};
use execgate_protocol::register::{RegisterRequest, RegisterResponse, TRANSPORT_DIRECT};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Ws;

const HANDSHAKE: Duration = Duration::from_secs(60);

/// Registers, dials and completes the handshake; then spawns the idle
/// reader, which ends when `stop` turns true or the gateway hangs up.
pub async fn connect(
    http: &reqwest::Client,
    gateway: &str,
    exe_id: &str,
    token: &str,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let reg: RegisterResponse = http
        .post(format!(
            "{gateway}/cloud/environment/{exe_id}/direct/register"
        ))
        .bearer_auth(token)
        .json(&RegisterRequest {
            transport: TRANSPORT_DIRECT.into(),
            name: None,
            is_default: None,
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // Small buffers: this side holds thousands of idle sockets, and what
    // is measured is the gateway's memory, not ours.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(reg.url.as_str(), Some(config), true)
            .await
            .with_context(|| format!("dialling {}", reg.url))?;

    let handshake = async {
        loop {
            let Some(frame) = ws.next().await else {
                bail!("the gateway hung up during the handshake");
            };
            let text = match frame? {
                Ws::Text(t) => t.as_bytes().to_vec(),
                Ws::Binary(b) => b.to_vec(),
                _ => continue,
            };
            match Message::decode(&text) {
                Ok(Message::Request { id, method: m, .. }) if m == method::INITIALIZE => {
                    let info = EnvironmentInfo {
                        shell: ShellInfo {
                            name: "sh".into(),
                            path: "/bin/sh".into(),
                        },
                        executor_version: "bench-lite".into(),
                        cwd: "file:///tmp".into(),
                        user_home_dir: "file:///root".into(),
                        platform_os: "linux".into(),
                        temp_dir: "file:///tmp".into(),
                        ..Default::default()
                    };
                    let result = InitializeResult {
                        session_id: format!("lite-{exe_id}"),
                        environment_info: info,
                    };
                    let reply = Message::response(id, Ok(serde_json::to_value(result)?));
                    ws.send(Ws::text(reply.encode())).await?;
                }
                Ok(Message::Notification { method: m, .. }) if m == method::INITIALIZED => {
                    return Ok(());
                }
                Ok(Message::Request { id, method: m, .. }) => {
                    let reply = Message::response(id, Err(RpcError::method_not_found(&m)));
                    ws.send(Ws::text(reply.encode())).await?;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(HANDSHAKE, handshake)
        .await
        .context("handshake timed out")??;

    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                frame = ws.next() => match frame {
                    // Reading is enough: tungstenite queues the pong for a
                    // ping and flushes it on the next read or write.
                    Some(Ok(Ws::Text(t))) => {
                        if let Ok(Message::Request { id, method: m, .. }) = Message::decode(t.as_bytes()) {
                            let reply = Message::response(id, Err(RpcError::method_not_found(&m)));
                            if ws.send(Ws::text(reply.encode())).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
        let _ = ws.close(None).await;
    }))
}

/// The bench run as a host of in-bench executors in a child process
/// (`execgate-bench --lite-host`), for figures that need more sockets than
/// one process may open (the `fleet`'s 30,000 against a hard limit of
/// 20,000 here, which only a privileged process could raise). Reads
/// `gateway-url TAB exe_id TAB token` lines from stdin until an empty line,
/// connects them all (32 at a time), prints `ready N` (or `error …`), then
/// holds them until stdin closes, answering `count` with `alive K`.
pub async fn host() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut exes = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            break;
        }
        let mut parts = line.split('\t').map(str::to_string);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(url), Some(id), Some(token)) => exes.push((url, id, token)),
            _ => bail!("--lite-host: bad line {line:?}"),
        }
    }
    let client = crate::harness::http();
    let (stop_tx, stop_rx) = watch::channel(false);
    let results: Vec<_> = futures_util::stream::iter(exes.iter())
        .map(|(url, id, token)| {
            let (client, stop) = (client.clone(), stop_rx.clone());
            async move { connect(&client, url, id, token, stop).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut stdout = tokio::io::stdout();
    let mut tasks = Vec::with_capacity(exes.len());
    for r in results {
        match r {
            Ok(t) => tasks.push(t),
            Err(e) => {
                stdout
                    .write_all(format!("error {e:#}\n").as_bytes())
                    .await?;
                stdout.flush().await?;
                return Ok(());
            }
        }
    }
    stdout
        .write_all(format!("ready {}\n", tasks.len()).as_bytes())
        .await?;
    stdout.flush().await?;
    // Hold them until the parent closes our stdin (or goes away); a
    // `count` line asks how many are still connected (`alive K`): a link
    // the gateway closed ends its task.
    while let Some(line) = lines.next_line().await? {
        if line == "count" {
            let alive = tasks.iter().filter(|t| !t.is_finished()).count();
            stdout
                .write_all(format!("alive {alive}\n").as_bytes())
                .await?;
            stdout.flush().await?;
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}
