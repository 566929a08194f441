//! Figure 1, tool-call latency: `shell ["true"]` through the REST API,
//! one call at a time, against a direct `tokio::process` spawn and wait of
//! `true` in the bench process. Spawning `true` costs about 1.0–1.25 ms on
//! this machine, which is the floor of any shell call; the ratio is what
//! the gateway, the executor link and the executor add on top.
//!
//! The two are interleaved call by call, so that the noise of this shared
//! machine (other engineers compile on its 2 cores) falls on both alike.
//! Also reports the idle RSS of a real executor process (target ≤ 10 MiB).
//!
//! More latencies, interleaved with the others, split the shell call's
//! cost into its layers (#22, "calls at the floor"):
//!
//! - `GET /healthz` over the kept connection: the HTTP floor (client,
//!   socket, router, no auth);
//! - `read_file` of 1 KiB (auth, audit, one request and answer over the
//!   executor link, no process);
//! - on a second real executor linked to the bench instead of a gateway
//!   ([`crate::link_probe`]): a WebSocket ping (the link's floor, no work),
//!   `fs/getMetadata` of a 1-byte file (the lightest protocol request), and
//!   `process/start true` until `process/closed` (the executor's part of a
//!   shell call).
//!
//! From the p50s: what `shell true` costs beyond a spawn, the HTTP floor
//! and the link's ping, in µs and as a ratio to that sum. (A sum of
//! medians, not the median of a sum: a floor to read beside the p50, not
//! an exact split.)
//!
//! Then, after them, the time to the first output byte an agent waits for:
//! `exec_command` of `echo hi` through REST until the first `output` event
//! of its SSE stream, beside a direct spawn of `echo hi` with a pipe until
//! its first byte, interleaved call by call.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::harness::{http, private_kib, rss_kib};
use crate::link_probe::LinkProbe;
use crate::{latency_figures, percentiles, Figure, Report};

pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let gw = crate::harness::gateway(bin, &[]);
    let (exe, work) = gw.executor("a", &[]).await;
    // Idle: connected, nothing run yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(exe.0.id()) as f64 / 1024.0;
    let idle_private = private_kib(exe.0.id()) as f64 / 1024.0;

    let client = http();
    let url = format!("{}/api/connectors/envs/a/tool/call", gw.url);
    // One tool call through the REST API: its answer and how long it took.
    let tool_call = |body: serde_json::Value| {
        let (client, url, token) = (&client, &url, &gw.token);
        async move {
            let t = Instant::now();
            let v: serde_json::Value = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok((t.elapsed(), v))
        }
    };
    let call = || async {
        let (d, v) =
            tool_call(json!({"tool": "shell", "arguments": {"command": ["true"]}})).await?;
        if v["isError"] != false || v["structuredContent"]["exit_code"] != 0 {
            bail!("shell true failed: {v}");
        }
        anyhow::Ok(d)
    };
    let direct = || async {
        let t = Instant::now();
        let st = tokio::process::Command::new("true").status().await?;
        if !st.success() {
            bail!("true failed");
        }
        anyhow::Ok(t.elapsed())
    };

    std::fs::write(work.join("1k.txt"), vec![b'x'; 1024])?;
    let read_file = || async {
        let (d, v) =
            tool_call(json!({"tool": "read_file", "arguments": {"path": "1k.txt"}})).await?;
        if v["isError"] != false {
            bail!("read_file failed: {v}");
        }
        anyhow::Ok(d)
    };
    let health_url = format!("{}/healthz", gw.url);
    let healthz = || async {
        let t = Instant::now();
        let body = client.get(&health_url).send().await?.bytes().await?;
        let d = t.elapsed();
        if &body[..] != b"ok" {
            bail!("healthz: {body:?}");
        }
        anyhow::Ok(d)
    };

    let mut probe = LinkProbe::start(bin).await?;

    // Warm up: connection pool, page cache, the executor's first spawn.
    for _ in 0..20 {
        call().await?;
        direct().await?;
        read_file().await?;
        healthz().await?;
        probe.ping().await?;
        probe.get_metadata().await?;
        probe.start_true().await?;
    }
    let n = if quick { 200 } else { 2000 };
    let budget = Duration::from_secs(if quick { 10 } else { 60 });
    let (mut via, mut base) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut reads, mut floor) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut pings, mut metas, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    let t = Instant::now();
    while via.len() < n && t.elapsed() < budget {
        via.push(call().await?);
        base.push(direct().await?);
        reads.push(read_file().await?);
        floor.push(healthz().await?);
        pings.push(probe.ping().await?);
        metas.push(probe.get_metadata().await?);
        starts.push(probe.start_true().await?);
    }
    drop(probe);
    let mut figures = latency_figures(
        "latency.shell_true",
        "shell true via REST",
        &via,
        "direct tokio spawn",
        &base,
    );
    figures.extend(floors(&via, &base, &floor, &pings, &metas, &starts));
    let (reads, floor) = (percentiles(&reads), percentiles(&floor));
    figures.push(
        Figure::new(
            "latency.read_file_1k.p50_ms",
            "read_file 1 KiB via REST p50",
            reads[0],
            "ms",
        )
        .vs("GET /healthz p50", floor[0]),
    );
    figures.push(Figure::new(
        "latency.shell_true.samples",
        "shell true samples",
        via.len() as f64,
        "calls",
    ));
    figures.push(Figure::new(
        "latency.executor_idle_rss_mib",
        "executor idle RSS",
        idle_rss,
        "MiB",
    ));
    figures.push(Figure::new(
        "latency.executor_idle_private_mib",
        "  of which its own (not shared)",
        idle_private,
        "MiB",
    ));

    // Time to first output byte, after the rest (each exec_command leaves
    // a session row behind, which the calls above should not share).
    let m = if quick { 50 } else { 500 };
    for _ in 0..5 {
        first_byte_sse(&client, &gw.url, &gw.token).await?;
        first_byte_direct().await?;
    }
    let (mut sse, mut pipe) = (Vec::with_capacity(m), Vec::with_capacity(m));
    let mut answered = Vec::with_capacity(m);
    let t = Instant::now();
    while sse.len() < m && t.elapsed() < budget {
        let (answer, first) = first_byte_sse(&client, &gw.url, &gw.token).await?;
        answered.push(answer);
        sse.push(first);
        pipe.push(first_byte_direct().await?);
    }
    let (s, p) = (percentiles(&sse), percentiles(&pipe));
    for (i, name) in [(0, "p50"), (2, "p99")] {
        figures.push(
            Figure::new(
                format!("latency.first_byte_sse.{name}_ms"),
                format!("exec_command echo hi to 1st SSE byte {name}"),
                s[i],
                "ms",
            )
            .vs(format!("direct spawn to 1st pipe byte {name}"), p[i]),
        );
    }
    figures.push(Figure::new(
        "latency.first_byte_sse.exec_command_answer.p50_ms",
        "  of which exec_command's answer p50",
        percentiles(&answered)[0],
        "ms",
    ));
    Ok(Report {
        figures,
        skipped: vec![],
    })
}

/// The floors of a shell call, from interleaved samples: the spawn, the
/// HTTP floor, the link (ping, lightest request, the executor's own
/// `process/start true`), and `shell true` beyond spawn + HTTP + ping.
fn floors(
    shell: &[Duration],
    spawn: &[Duration],
    http: &[Duration],
    ping: &[Duration],
    meta: &[Duration],
    start: &[Duration],
) -> Vec<Figure> {
    let p50 = |s: &[Duration]| percentiles(s)[0];
    let (shell, spawn, http) = (p50(shell), p50(spawn), p50(http));
    let (ping, meta, start) = (p50(ping), p50(meta), p50(start));
    let floor = spawn + http + ping;
    vec![
        Figure::new(
            "latency.floor.spawn.p50_ms",
            "floor: direct spawn of true p50",
            spawn,
            "ms",
        ),
        Figure::new(
            "latency.floor.http.p50_ms",
            "floor: GET /healthz (kept connection) p50",
            http,
            "ms",
        ),
        Figure::new(
            "latency.floor.link_ping.p50_ms",
            "floor: link round trip (WebSocket ping) p50",
            ping,
            "ms",
        ),
        Figure::new(
            "latency.floor.link_get_metadata.p50_ms",
            "link fs/getMetadata of 1 byte p50",
            meta,
            "ms",
        )
        .vs("link ping p50", ping),
        Figure::new(
            "latency.floor.link_start_true.p50_ms",
            "link process/start true to closed p50",
            start,
            "ms",
        )
        .vs("direct spawn p50", spawn),
        Figure::new(
            "latency.shell_true.vs_floor.p50_ms",
            "shell true via REST p50 vs its floor",
            shell,
            "ms",
        )
        .vs("spawn + HTTP floor + link ping p50", floor),
        Figure::new(
            "latency.shell_true.overhead_us",
            "  shell true p50 beyond that floor",
            (shell - floor) * 1e3,
            "us",
        ),
    ]
}

/// `exec_command` of `echo hi` through REST, then its SSE stream until the
/// first `output` event: the times from sending the call to its answer and
/// to that event.
/// The stream is then read to its `exit`, so that its connection goes
/// back to the pool.
async fn first_byte_sse(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<(Duration, Duration)> {
    use futures_util::StreamExt;
    let t = Instant::now();
    let v: serde_json::Value = client
        .post(format!("{base}/api/connectors/envs/a/tool/call"))
        .bearer_auth(token)
        .json(&json!({"tool": "exec_command", "arguments": {
            "command": ["echo", "hi"], "pipe_stdin": false}}))
        .send()
        .await?
        .json()
        .await?;
    let answered = t.elapsed();
    let Some(sid) = v["structuredContent"]["session_id"].as_str() else {
        bail!("exec_command gave no session_id: {v}");
    };
    let resp = client
        .get(format!("{base}/api/connectors/processes/{sid}/stream"))
        .bearer_auth(token)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("SSE: {} {}", resp.status(), resp.text().await?);
    }
    let mut body = resp.bytes_stream();
    let (mut buf, mut first, mut out) = (Vec::new(), None, Vec::new());
    let limit = Duration::from_secs(30);
    'read: while let Some(chunk) = tokio::time::timeout(limit, body.next())
        .await
        .context("SSE: no event in 30 s")?
    {
        buf.extend_from_slice(&chunk?);
        while let Some(end) = memchr::memmem::find(&buf, b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let (mut name, mut data) = ("message", &b""[..]);
            for line in crate::output::lines(&event[..end]) {
                if let Some(v) = line.strip_prefix(b"event:") {
                    name = std::str::from_utf8(v)?.trim();
                } else if let Some(v) = line.strip_prefix(b"data:") {
                    data = v.strip_prefix(b" ").unwrap_or(v);
                }
            }
            match name {
                "output" => {
                    first.get_or_insert_with(|| t.elapsed());
                    let v: serde_json::Value = serde_json::from_slice(data)?;
                    let b64 = v["data_b64"].as_str().unwrap_or_default();
                    crate::decode_base64(b64.as_bytes(), &mut out)?;
                }
                "exit" => break 'read,
                "lost" | "error" => bail!("SSE: {name} event: {}", String::from_utf8_lossy(data)),
                _ => {}
            }
        }
    }
    match first {
        Some(d) if out == b"hi\n" => Ok((answered, d)),
        _ => bail!("SSE: echo hi gave {:?}", String::from_utf8_lossy(&out)),
    }
}

/// A direct spawn of `echo hi` with its stdout on a pipe, until the first
/// byte is read.
async fn first_byte_direct() -> anyhow::Result<Duration> {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let mut child = tokio::process::Command::new("echo")
        .arg("hi")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut byte = [0u8; 1];
    let n = out.read(&mut byte).await?;
    let d = t.elapsed();
    if n != 1 || byte[0] != b'h' {
        bail!("echo hi: first byte {:?}", &byte[..n]);
    }
    child.wait().await?;
    Ok(d)
}
