//! Figure 8, the cost of metrics: `shell ["true"]` and `read_file` of 1 KiB
//! through REST on a gateway and executor with `--metrics-listen` (every
//! request, tool call and link round trip recorded), against the same
//! calls on a twin pair without, started side by side and called
//! alternately, call by call, so that the machine's noise falls on both
//! alike. The target (issue #19): within 3 % at p50.
//!
//! Throughput too: `read_file` with 16 clients, in windows alternating
//! between the two sides (where a per-request cost would show first: the
//! gateway is CPU-bound there), and the gateway's CPU time per call.
//!
//! At the end the metrics side is scraped once, to check that it did
//! count the calls (a figure of a gateway that recorded nothing would
//! prove nothing).
//!
//! `EXECGATE_BENCH_GATEWAY_METRICS` and `EXECGATE_BENCH_EXECUTOR_METRICS`
//! (`host:port`) fix the metrics side's `--metrics-listen` addresses, so
//! that a Prometheus can scrape it during the run (the dashboard's
//! picture, docs/grafana/README.md); free ports otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use std::sync::Arc;

use crate::harness::{cpu_time, http, Gateway};
use crate::throughput::load;
use crate::{latency_figures, Figure, Report};

/// A free port of 127.0.0.1 for a `--metrics-listen`.
fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// `$var` when set, else a free address.
fn metrics_addr(var: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(addr) if !addr.is_empty() => Ok(addr),
        _ => free_addr(),
    }
}

pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let gw_metrics = metrics_addr("EXECGATE_BENCH_GATEWAY_METRICS")?;
    let exe_metrics = metrics_addr("EXECGATE_BENCH_EXECUTOR_METRICS")?;
    let off = crate::harness::gateway(bin, &[]);
    let on = crate::harness::gateway(bin, &["--metrics-listen", &gw_metrics]);
    let (_exe_off, work_off) = off.executor("a", &[]).await;
    let (_exe_on, work_on) = on.executor("a", &["--metrics-listen", &exe_metrics]).await;
    for work in [&work_off, &work_on] {
        std::fs::write(work.join("1k.txt"), vec![b'x'; 1024])?;
    }

    let client = http();
    let call = |gw: &Gateway, body: Value| {
        let client = &client;
        let url = format!("{}/api/connectors/envs/a/tool/call", gw.url);
        let token = gw.token.clone();
        async move {
            let t = Instant::now();
            let v: Value = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            let d = t.elapsed();
            if v["isError"] != false {
                bail!("tool call failed: {v}");
            }
            anyhow::Ok(d)
        }
    };
    let shell = json!({"tool": "shell", "arguments": {"command": ["true"]}});
    let read = json!({"tool": "read_file", "arguments": {"path": "1k.txt"}});

    for _ in 0..20 {
        for gw in [&off, &on] {
            call(gw, shell.clone()).await?;
            call(gw, read.clone()).await?;
        }
    }
    let n = if quick { 200 } else { 2000 };
    let budget = Duration::from_secs(if quick { 10 } else { 90 });
    let mut s = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut r = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let t = Instant::now();
    let mut off_first = true;
    while s[0].len() < n && t.elapsed() < budget {
        // Which side goes first alternates too.
        let order = if off_first { [0, 1] } else { [1, 0] };
        off_first = !off_first;
        for side in order {
            let gw = [&off, &on][side];
            s[side].push(call(gw, shell.clone()).await?);
            r[side].push(call(gw, read.clone()).await?);
        }
    }

    // Throughput, 16 clients, alternating windows.
    type Req = Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync>;
    let reader = |gw: &Gateway| -> Req {
        let url = format!("{}/api/connectors/envs/a/tool/call", gw.url);
        let token = gw.token.clone();
        Arc::new(move |c| {
            c.post(&url).bearer_auth(&token).json(
                &json!({"tool": "read_file", "arguments": {"path": "1k.txt", "offset": 0, "limit": 0}}),
            )
        })
    };
    let ok_read = |b: &[u8]| b.len() > 1368 && !b.windows(14).any(|w| w == b"\"isError\":true");
    let window = Duration::from_secs_f64(if quick { 0.5 } else { 2.0 });
    let windows = if quick { 2 } else { 5 };
    let mut calls = [0u64; 2];
    let mut cpu = [Duration::ZERO; 2];
    let mut took = [0f64; 2];
    let mut off_first = true;
    for _ in 0..windows {
        let order = if off_first { [0, 1] } else { [1, 0] };
        off_first = !off_first;
        for side in order {
            let gw = [&off, &on][side];
            let (c0, t) = (cpu_time(gw.pid()), Instant::now());
            calls[side] += load(16, window, reader(gw), ok_read).await?;
            took[side] += t.elapsed().as_secs_f64();
            cpu[side] += cpu_time(gw.pid()) - c0;
        }
    }
    let per_call = |side: usize| cpu[side].as_secs_f64() * 1e6 / calls[side].max(1) as f64;

    // The metrics side counted them.
    let text = client
        .get(format!("http://{gw_metrics}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let counted = text
        .lines()
        .find(|l| {
            l.starts_with("execgate_tool_calls_total{")
                && l.contains("tool=\"shell\"")
                && l.contains("outcome=\"ok\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    if counted < s[1].len() as f64 {
        bail!(
            "the metrics gateway counted {counted} shell calls, not {}",
            s[1].len()
        );
    }

    let mut figures = latency_figures(
        "metrics_cost.shell_true",
        "shell true, metrics on",
        &s[1],
        "metrics off",
        &s[0],
    );
    figures.extend(latency_figures(
        "metrics_cost.read_file_1k",
        "read_file 1 KiB, metrics on",
        &r[1],
        "metrics off",
        &r[0],
    ));
    figures.push(
        Figure::new(
            "metrics_cost.read_file_1k.c16.calls_per_s",
            "read_file 1 KiB, 16 clients, metrics on",
            calls[1] as f64 / took[1],
            "calls/s",
        )
        .vs("metrics off", calls[0] as f64 / took[0]),
    );
    figures.push(
        Figure::new(
            "metrics_cost.read_file_1k.c16.gateway_cpu_us_per_call",
            "  gateway CPU per call, metrics on",
            per_call(1),
            "us",
        )
        .vs("metrics off", per_call(0)),
    );
    Ok(Report {
        figures,
        skipped: vec![],
    })
}
