//! Figure 6, peers: the latency and output figures against the tools users
//! would pick instead of execgate, so the table shows execgate (with its
//! extra hop through the gateway) beside them. Each is set beside the same
//! baselines as execgate's own figures (a direct spawn of `true`, `cat`
//! through a local pipe), measured here in the same run.
//!
//! - `--codex PATH`: a stock `codex exec-server --listen ws://127.0.0.1:0`
//!   driven directly over its WebSocket, no gateway. `process/start true`
//!   timed until its `process/closed` notification (what execgate's shell
//!   tool waits for too). The client sets TCP_NODELAY and re-arms
//!   TCP_QUICKACK after every read: codex does not set TCP_NODELAY, and
//!   against a client that delays its ACKs each call stalls ~40 ms (see
//!   the executor protocol notes), so this is codex at its best. Output:
//!   the `process/output` notifications of `head -c N /dev/zero`, decoded.
//! - `--ssh`: an sshd the bench starts on a private port with its own host
//!   and client keys, and a ControlMaster it opens first; then `ssh true`
//!   through the master (a new ssh client process per call, as a user
//!   pays) and `ssh head -c N /dev/zero` read through its stdout.
//!   sshd runs every command as `$SHELL -c CMD` of the login user, and
//!   bash reads `~/.bashrc` when sshd starts it: root's on this machine
//!   (pyenv init) made `ssh true` cost 142 ms, which is not ssh's cost.
//!   So when the bench runs as root and `useradd` exists, it logs in as a
//!   throwaway user of its own ([`LoginUser`]: shell `/bin/sh`, an empty
//!   home in the sshd's temp dir, no rc files; removed at the end), so the
//!   figure is ssh's own. Otherwise it logs in as the current user and
//!   says that the figure includes that user's shell start-up.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use execgate_testkit::eventually;

use crate::harness::{local_pipe_mb_s, private_kib, rss_kib};
use crate::{latency_figures, Figure, Report};

pub async fn run(codex_bin: Option<&Path>, ssh: bool, quick: bool) -> anyhow::Result<Report> {
    let mut report = Report::default();
    if let Some(bin) = codex_bin {
        report.figures.extend(codex(bin, quick).await?);
    }
    if ssh {
        match ssh_figures(quick).await {
            Ok(f) => report.figures.extend(f),
            Err(e) => {
                let why = format!("{e:#}");
                println!("note: ssh figures skipped: {why}");
                for k in ["peers.ssh.true.p50_ms", "peers.ssh.cat.mb_per_s"] {
                    report.skipped.push((k.into(), why.clone()));
                }
            }
        }
    }
    Ok(report)
}

fn sizes(quick: bool) -> (usize, u64, &'static str) {
    if quick {
        (100, 32 << 20, "32 MiB")
    } else {
        (1000, 256 << 20, "256 MiB")
    }
}

async fn direct_true() -> anyhow::Result<Duration> {
    let t = Instant::now();
    tokio::process::Command::new("true").status().await?;
    Ok(t.elapsed())
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Re-arms TCP_QUICKACK (Linux clears it again after some ACKs).
fn quickack(ws: &Socket) {
    use std::os::fd::AsRawFd;
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a live socket with a valid int option.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// The next JSON frame (bounded by `limit`).
async fn next_json(ws: &mut Socket, limit: Duration) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(limit, ws.next())
            .await
            .context("codex did not answer in time")?
            .context("codex hung up")??;
        quickack(ws);
        match frame {
            Ws::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
            Ws::Binary(b) => return Ok(serde_json::from_slice(&b)?),
            _ => continue,
        }
    }
}

/// A stock `codex exec-server --listen` of its own, and a WebSocket to it
/// past `initialized`; the child dies with its handle.
async fn start_codex(
    bin: &Path,
) -> anyhow::Result<(tokio::process::Child, Socket, tempfile::TempDir)> {
    let home = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(bin)
        .args([
            "exec-server",
            "--listen",
            "ws://127.0.0.1:0",
            "--concurrent-requests",
            "8",
        ])
        .env("CODEX_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("codex exec-server did not print its URL")??
        .context("codex exec-server exited")?;
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.trim(), None, true).await?;
    quickack(&ws);
    let limit = Duration::from_secs(30);
    ws.send(Ws::text(
        json!({"id": 0, "method": "initialize", "params": {"clientName": "execgate-bench"}})
            .to_string(),
    ))
    .await?;
    let init = next_json(&mut ws, limit).await?;
    if init["result"]["sessionId"].is_null() {
        bail!("codex initialize: {init}");
    }
    ws.send(Ws::text(
        json!({"method": "initialized", "params": {}}).to_string(),
    ))
    .await?;
    Ok((child, ws, home))
}

/// `process/start` of `argv` with id `id`, as codex takes it.
fn codex_start(id: String, argv: Value) -> Ws {
    Ws::text(
        json!({"id": id, "method": "process/start", "params": {
            "processId": id, "argv": argv, "cwd": "file:///tmp",
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin"}, "tty": false}})
        .to_string(),
    )
}

/// Runs one process to its `process/closed`; returns its stdout bytes.
async fn run_to_close(ws: &mut Socket, id: &str, limit: Duration) -> anyhow::Result<u64> {
    let mut decoded = Vec::new();
    let mut got = 0u64;
    // Bounded by count as well as by the per-frame timeout.
    for _ in 0..10_000_000 {
        let v = next_json(ws, limit).await?;
        if v["error"].is_object() {
            bail!("codex: {v}");
        }
        if v["params"]["processId"] != id {
            continue;
        }
        match v["method"].as_str() {
            Some("process/output") => {
                decoded.clear();
                let chunk = v["params"]["chunk"].as_str().unwrap_or_default();
                crate::decode_base64(chunk.as_bytes(), &mut decoded)?;
                got += decoded.len() as u64;
            }
            Some("process/closed") => return Ok(got),
            _ => {}
        }
    }
    bail!("codex: no process/closed for {id}")
}

/// codex-direct output: MB/s of `head -c bytes /dev/zero` read as
/// `process/output` notifications from a fresh codex exec-server (the
/// `output` group's peer, measured beside its binary stream).
pub(crate) async fn codex_output_mb_s(bin: &Path, bytes: u64) -> anyhow::Result<f64> {
    let (mut child, mut ws, _home) = start_codex(bin).await?;
    let t = Instant::now();
    ws.send(codex_start(
        "out".into(),
        json!(["head", "-c", bytes.to_string(), "/dev/zero"]),
    ))
    .await?;
    let got = run_to_close(&mut ws, "out", Duration::from_secs(30)).await?;
    let secs = t.elapsed().as_secs_f64();
    if got != bytes {
        bail!("codex output: {got} of {bytes} bytes");
    }
    let _ = ws.close(None).await;
    let _ = child.kill().await;
    Ok(bytes as f64 / 1e6 / secs)
}

async fn codex(bin: &Path, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let (n, bytes, label) = sizes(quick);
    let (mut child, mut ws, _home) = start_codex(bin).await?;
    let limit = Duration::from_secs(30);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = child.id().map(rss_kib).unwrap_or(0) as f64 / 1024.0;
    let idle_private = child.id().map(private_kib).unwrap_or(0) as f64 / 1024.0;

    let start = codex_start;

    for i in 0..20 {
        let id = format!("w{i}");
        ws.send(start(id.clone(), json!(["true"]))).await?;
        run_to_close(&mut ws, &id, limit).await?;
        direct_true().await?;
    }
    let (mut via, mut base) = (Vec::new(), Vec::new());
    let t = Instant::now();
    let budget = Duration::from_secs(if quick { 10 } else { 60 });
    while via.len() < n && t.elapsed() < budget {
        let id = format!("t{}", via.len());
        let t1 = Instant::now();
        ws.send(start(id.clone(), json!(["true"]))).await?;
        run_to_close(&mut ws, &id, limit).await?;
        via.push(t1.elapsed());
        base.push(direct_true().await?);
    }
    let mut figures = latency_figures(
        "peers.codex.start_true",
        "codex-direct process/start true",
        &via,
        "direct tokio spawn",
        &base,
    );

    let pipe = local_pipe_mb_s(bytes).await?;
    let t = Instant::now();
    ws.send(start(
        "out".into(),
        json!(["head", "-c", bytes.to_string(), "/dev/zero"]),
    ))
    .await?;
    let got = run_to_close(&mut ws, "out", limit).await?;
    let secs = t.elapsed().as_secs_f64();
    if got != bytes {
        bail!("codex output: {got} of {bytes} bytes");
    }
    figures.push(
        Figure::new(
            "peers.codex.output.mb_per_s",
            format!("codex-direct output {label} (notifications)"),
            bytes as f64 / 1e6 / secs,
            "MB/s",
        )
        .vs(format!("cat {label} through a local pipe"), pipe),
    );
    figures.push(Figure::new(
        "peers.codex.idle_rss_mib",
        "codex exec-server idle RSS",
        idle_rss,
        "MiB",
    ));
    figures.push(Figure::new(
        "peers.codex.idle_private_mib",
        "  of which its own (not shared)",
        idle_private,
        "MiB",
    ));
    let _ = ws.close(None).await;
    let _ = child.kill().await;
    Ok(figures)
}

/// An sshd of our own, and the ControlMaster to it; both go when dropped.
pub(crate) struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    sshd: tokio::process::Child,
    /// Whom the client logs in as: a throwaway user, or (None) the
    /// current one.
    user: Option<LoginUser>,
}

/// A login user with an empty shell start-up, for as long as the figure
/// runs: `useradd` with shell `/bin/sh` (which reads no rc file for
/// `sh -c CMD`), an empty home that the bench creates (no skeleton
/// files), and the password field `*` (sshd without PAM refuses the
/// locked `!` that `useradd` would set; `*` matches no password, and
/// password logins are off anyway). `userdel` when dropped.
struct LoginUser {
    name: String,
}

impl LoginUser {
    /// The user, when this process may create one (root, with `useradd`);
    /// `None` otherwise.
    fn create(home: &Path) -> anyhow::Result<Option<LoginUser>> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !Path::new("/usr/sbin/useradd").exists() {
            return Ok(None);
        }
        let name = format!("egbench{}", std::process::id());
        std::fs::create_dir_all(home)?;
        let ok = std::process::Command::new("/usr/sbin/useradd")
            .args(["-M", "-N", "-s", "/bin/sh", "-p", "*", "-d"])
            .arg(home)
            .arg(&name)
            .status()?
            .success();
        if !ok {
            bail!("useradd {name} failed");
        }
        let user = LoginUser { name };
        let ok = std::process::Command::new("chown")
            .arg(&user.name)
            .arg(home)
            .status()?
            .success();
        if !ok {
            bail!("chown {} {} failed", user.name, home.display());
        }
        Ok(Some(user))
    }
}

impl Drop for LoginUser {
    fn drop(&mut self) {
        // -f: its sshd session may not have exited yet.
        let _ = std::process::Command::new("/usr/sbin/userdel")
            .args(["-f", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

impl Sshd {
    /// A directory the login user may write, for a copy's destination.
    pub(crate) fn writable_dir(&self) -> std::path::PathBuf {
        match &self.user {
            Some(_) => self.dir.path().join("home"),
            None => self.dir.path().to_owned(),
        }
    }

    /// `scp local 127.0.0.1:remote` through the ControlMaster, as the
    /// login user.
    pub(crate) fn scp(&self, local: &Path, remote: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("scp");
        c.arg("-q");
        self.options(&mut c)
            .args(["-P", &self.port.to_string()])
            .arg(local);
        let host = match &self.user {
            Some(user) => format!("{}@127.0.0.1:{}", user.name, remote.display()),
            None => format!("127.0.0.1:{}", remote.display()),
        };
        c.arg(host).stdin(Stdio::null());
        c
    }

    /// The options `ssh` and `scp` share: no config file, the bench's key,
    /// no host key checks, quiet, never a prompt, the ControlMaster.
    fn options<'c>(&self, c: &'c mut tokio::process::Command) -> &'c mut tokio::process::Command {
        let d = self.dir.path();
        c.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(d.join("id_ed25519"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
            ])
            .arg("-o")
            .arg(format!("ControlPath={}", d.join("cm").display()))
    }

    fn client(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        self.options(&mut c);
        if let Some(user) = &self.user {
            c.args(["-l", &user.name]);
        }
        c.args(["-p", &self.port.to_string(), "127.0.0.1"])
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Stop the master through its control socket, then our sshd.
        let d = self.dir.path();
        let _ = std::process::Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", d.join("cm").display()))
            .args(["-O", "exit", "-p", &self.port.to_string(), "127.0.0.1"])
            .stderr(Stdio::null())
            .status();
        let _ = self.sshd.start_kill();
    }
}

pub(crate) async fn start_sshd() -> anyhow::Result<Sshd> {
    let sshd_bin = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("sshd is not installed (apt-get install openssh-server)")?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for (f, _) in [("host_ed25519", ()), ("id_ed25519", ())] {
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(f))
            .status()?
            .success();
        if !ok {
            bail!("ssh-keygen failed");
        }
    }
    std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys"))?;
    let user = LoginUser::create(&d.join("home"))?;
    if user.is_some() {
        // sshd reads authorized_keys as the user: it needs a way in (the
        // private keys stay 0600, root's).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(
            d.join("authorized_keys"),
            std::fs::Permissions::from_mode(0o644),
        )?;
    } else {
        println!(
            "note: ssh logs in as the current user (not root, or no useradd): \
             the ssh figures include that user's shell start-up"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nUsePAM no\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nMaxSessions 100\n\
             Subsystem sftp internal-sftp\n",
            d = d.display()
        ),
    )?;
    // sshd insists on its privilege-separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let sshd = tokio::process::Command::new(sshd_bin)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let s = Sshd {
        dir,
        port,
        sshd,
        user,
    };
    eventually(10, &format!("sshd to listen on port {port}"), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
    })
    .await;
    // The master: authenticates once, then backgrounds (-f) and serves
    // every later client over the control socket.
    let ok = tokio::time::timeout(
        Duration::from_secs(20),
        s.client()
            .args([
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=120",
                "-f",
                "-N",
            ])
            .stdout(Stdio::null())
            .status(),
    )
    .await
    .context("the ssh ControlMaster did not come up")??;
    if !ok.success() {
        bail!("the ssh ControlMaster failed to connect to our sshd");
    }
    Ok(s)
}

async fn ssh_figures(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let (n, bytes, label) = sizes(quick);
    let sshd = start_sshd().await?;
    let who = if let Some(user) = &sshd.user {
        // That the commands run as that user, under sh (sshd passes the
        // shell's base name as its $0).
        let out = sshd
            .client()
            .args(["id", "-un;", "echo", "$0"])
            .output()
            .await?;
        let said = String::from_utf8_lossy(&out.stdout);
        if said.split_whitespace().collect::<Vec<_>>() != [user.name.as_str(), "sh"] {
            bail!("ssh ran as {said:?}, not {} under sh", user.name);
        }
        "plain-sh user"
    } else {
        "current user"
    };
    let call = || async {
        let t = Instant::now();
        let st = sshd
            .client()
            .arg("true")
            .stdout(Stdio::null())
            .status()
            .await?;
        if !st.success() {
            bail!("ssh true failed");
        }
        anyhow::Ok(t.elapsed())
    };
    for _ in 0..5 {
        call().await?;
    }
    // ssh calls cost ~10 ms: a fifth as many samples keep the time in check.
    let n = n / 5;
    let (mut via, mut base) = (Vec::new(), Vec::new());
    let t = Instant::now();
    let budget = Duration::from_secs(if quick { 10 } else { 60 });
    while via.len() < n && t.elapsed() < budget {
        via.push(call().await?);
        base.push(direct_true().await?);
    }
    let mut figures = latency_figures(
        "peers.ssh.true",
        &format!("ssh (ControlMaster, {who}) true"),
        &via,
        "direct tokio spawn",
        &base,
    );

    let pipe = local_pipe_mb_s(bytes).await?;
    let t = Instant::now();
    let mut child = sshd
        .client()
        .args(["head", "-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    let read_all = async {
        loop {
            let k = out.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            got += k as u64;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), read_all)
        .await
        .context("ssh cat timed out")??;
    child.wait().await?;
    if got != bytes {
        bail!("ssh cat: {got} of {bytes} bytes");
    }
    figures.push(
        Figure::new(
            "peers.ssh.cat.mb_per_s",
            format!("ssh (ControlMaster, {who}) cat {label}"),
            bytes as f64 / 1e6 / t.elapsed().as_secs_f64(),
            "MB/s",
        )
        .vs(format!("cat {label} through a local pipe"), pipe),
    );
    Ok(figures)
}
