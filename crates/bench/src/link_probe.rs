//! The bench as a gateway for one real `execgate executor`, to time the
//! executor link on its own: no HTTP client, no auth, no audit, no store.
//!
//! The executor is the real binary, started with `--gateway` pointing at
//! a register endpoint served here: one `POST …/direct/register`, answered
//! (by hand, HTTP/1.1 with `Connection: close`) with the URL of a second
//! listener, where the bench accepts the executor's WebSocket (TCP_NODELAY
//! on both ends, as the gateway does), sends `initialize` and
//! `initialized`, and then times round trips on the link:
//!
//! - [`LinkProbe::ping`]: a WebSocket ping until its pong, the link's
//!   floor. tungstenite answers it in the executor's reader, before any
//!   JSON-RPC dispatch.
//! - [`LinkProbe::get_metadata`]: `fs/getMetadata` of a 1-byte file, the
//!   lightest request the protocol has: decode, dispatch, one `stat` on
//!   the executor's blocking pool, the answer.
//! - [`LinkProbe::start_true`]: `process/start ["true"]` until its
//!   `process/closed` notification: the executor's whole part of a shell
//!   call, without the gateway.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use execgate_protocol::jsonrpc::{Id, Message};
use execgate_protocol::register::TRANSPORT_DIRECT;
use execgate_testkit::{Execgate, Proc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::WebSocketStream;

const LIMIT: Duration = Duration::from_secs(30);

/// One real executor, linked to the bench instead of a gateway.
pub struct LinkProbe {
    ws: WebSocketStream<TcpStream>,
    next_id: i64,
    file_uri: String,
    cwd_uri: String,
    _exe: Proc,
    _dir: tempfile::TempDir,
}

impl LinkProbe {
    pub async fn start(bin: &Path) -> anyhow::Result<LinkProbe> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work)?;
        let file = work.join("one-byte.txt");
        std::fs::write(&file, b"x")?;
        let register = TcpListener::bind("127.0.0.1:0").await?;
        let link = TcpListener::bind("127.0.0.1:0").await?;
        let gateway = format!("http://{}", register.local_addr()?);
        let ws_url = format!("ws://{}/link", link.local_addr()?);
        let exe =
            Execgate::new(bin)
                .quiet()
                .executor(&gateway, "exe_benchprobe.secret", &work, &[]);
        tokio::time::timeout(LIMIT, answer_register(&register, &ws_url))
            .await
            .context("the probe executor did not register")??;
        let (stream, _) = tokio::time::timeout(LIMIT, link.accept())
            .await
            .context("the probe executor did not dial the link")??;
        stream.set_nodelay(true)?;
        let ws = tokio_tungstenite::accept_async(stream).await?;
        let mut probe = LinkProbe {
            ws,
            next_id: 1,
            file_uri: file_uri(&file),
            cwd_uri: file_uri(&work),
            _exe: exe,
            _dir: dir,
        };
        probe
            .request("initialize", json!({"clientName": "execgate-bench"}))
            .await?;
        probe
            .send(Message::notification("initialized", json!({})))
            .await?;
        Ok(probe)
    }

    async fn send(&mut self, m: Message) -> anyhow::Result<()> {
        self.ws.send(Ws::text(m.encode())).await?;
        Ok(())
    }

    /// The next JSON-RPC message from the executor (pongs are skipped).
    async fn next(&mut self) -> anyhow::Result<Message> {
        loop {
            let frame = tokio::time::timeout(LIMIT, self.ws.next())
                .await
                .context("the probe executor did not answer in time")?
                .context("the probe executor hung up")??;
            let text = match frame {
                Ws::Text(t) => t.as_bytes().to_vec(),
                Ws::Binary(b) => b.to_vec(),
                _ => continue,
            };
            return Message::decode(&text).map_err(|e| anyhow::anyhow!("bad frame: {e:?}"));
        }
    }

    /// Sends a request and waits for its answer (notifications in between
    /// are dropped).
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Message::request(Id::Num(id), method, params))
            .await?;
        loop {
            if let Message::Response { id: got, result } = self.next().await? {
                if got == Id::Num(id) {
                    return result.map_err(|e| anyhow::anyhow!("{method}: {e:?}"));
                }
            }
        }
    }

    /// A WebSocket ping until its pong.
    pub async fn ping(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.ws.send(Ws::Ping(b"bench".to_vec().into())).await?;
        loop {
            let frame = tokio::time::timeout(LIMIT, self.ws.next())
                .await
                .context("no pong in time")?
                .context("the probe executor hung up")??;
            if let Ws::Pong(_) = frame {
                return Ok(t.elapsed());
            }
        }
    }

    /// `fs/getMetadata` of a 1-byte file, until its answer.
    pub async fn get_metadata(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let v = self
            .request("fs/getMetadata", json!({"path": self.file_uri}))
            .await?;
        let d = t.elapsed();
        if v.is_null() {
            bail!("fs/getMetadata: empty answer");
        }
        Ok(d)
    }

    /// `process/start ["true"]` until its `process/closed`.
    pub async fn start_true(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let pid = format!("p{}", self.next_id);
        let params = json!({"processId": pid, "argv": ["true"], "cwd": self.cwd_uri,
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin"}, "tty": false});
        self.request("process/start", params).await?;
        loop {
            if let Message::Notification { method, params } = self.next().await? {
                if method == "process/closed" && params["processId"] == pid.as_str() {
                    return Ok(t.elapsed());
                }
            }
        }
    }
}

fn file_uri(p: &Path) -> String {
    let p: PathBuf = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    format!("file://{}", p.display())
}

/// Answers the executor's one `POST /cloud/environment/{id}/direct/register`
/// with `ws_url`.
async fn answer_register(listener: &TcpListener, ws_url: &str) -> anyhow::Result<()> {
    let (mut s, _) = listener.accept().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Headers, then as much body as Content-Length says.
    let (head_end, length) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("the probe executor closed its register request");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            if !head.starts_with("post ") || !head.contains("/direct/register") {
                bail!("the probe executor sent {head:?}");
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = json!({"environment_id": "exe_benchprobe", "url": ws_url,
        "transport": TRANSPORT_DIRECT, "registration_id": "bench"})
    .to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(answer.as_bytes()).await?;
    s.shutdown().await?;
    Ok(())
}
