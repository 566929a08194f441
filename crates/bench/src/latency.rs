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
//! Two more latencies, interleaved with the others, split the shell call's
//! cost into its layers: `GET /healthz` (the HTTP floor: client, socket,
//! router, no auth) and `read_file` of 1 KiB (auth, audit, one request and
//! answer over the executor link, no process).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::harness::{http, private_kib, rss_kib};
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

    // Warm up: connection pool, page cache, the executor's first spawn.
    for _ in 0..20 {
        call().await?;
        direct().await?;
        read_file().await?;
        healthz().await?;
    }
    let n = if quick { 200 } else { 2000 };
    let budget = Duration::from_secs(if quick { 10 } else { 60 });
    let (mut via, mut base) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut reads, mut floor) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t = Instant::now();
    while via.len() < n && t.elapsed() < budget {
        via.push(call().await?);
        base.push(direct().await?);
        reads.push(read_file().await?);
        floor.push(healthz().await?);
    }
    let mut figures = latency_figures(
        "latency.shell_true",
        "shell true via REST",
        &via,
        "direct tokio spawn",
        &base,
    );
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
    Ok(Report {
        figures,
        skipped: vec![],
    })
}
