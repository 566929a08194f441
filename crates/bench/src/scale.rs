//! Figure 5, scale: N idle executor connections (N = 100, 1,000, 10,000;
//! 100 with --quick), each made by the in-bench [`lite_executor`], which
//! speaks the real protocol to the real gateway. At each N, on a fresh
//! gateway whose store already holds N executors:
//!
//! - the gateway's RSS per connection: its RSS with all N connected and
//!   idle, less its RSS before the first one, over N. Beside it, the same
//!   for this process, which holds the other end of the same sockets (with
//!   small tungstenite buffers), as a sense of scale;
//! - the gateway's CPU time per second while the N links idle (pings,
//!   timers, sweeps), beside this process's (the executors' pongs);
//! - `envs/list` latency (p50/p90/p99) with all N connected, beside the
//!   same call on the same gateway before any connected (the store's N rows
//!   are read either way; the difference is the N live links listed).
//!
//! Needs about N file descriptors here and N in the gateway: main raises the
//! soft limit to the hard one first, and N is capped to fit.
//!
//! [`lite_executor`]: crate::lite_executor

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use execgate_testkit::eventually;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::harness::{cpu_time, http, rss_kib, Gateway};
use crate::{latency_figures, lite_executor, Figure, Report};

pub async fn run(bin: &Path, quick: bool, nofile: u64) -> anyhow::Result<Report> {
    let ns: &[usize] = if quick { &[100] } else { &[100, 1_000, 10_000] };
    let mut report = Report::default();
    for &n in ns {
        // Leave room for the rest of the bench's descriptors.
        if n as u64 + 512 > nofile {
            let why = format!("needs {n} sockets; the open-file limit is {nofile}");
            println!("note: scale N={n} skipped: {why}");
            report
                .skipped
                .push((format!("scale.n{n}.gateway_rss_kib_per_conn"), why));
            continue;
        }
        report.figures.extend(one(bin, n, quick).await?);
    }
    Ok(report)
}

async fn envs_list(client: &reqwest::Client, gw: &Gateway) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let v: Value = client
        .post(format!("{}/api/connectors/envs/list", gw.url))
        .bearer_auth(&gw.token)
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    let d = t.elapsed();
    let count = v["envs"]
        .as_array()
        .with_context(|| format!("envs/list: {v}"))?
        .len();
    Ok((d, count))
}

async fn one(bin: &Path, n: usize, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let t0 = Instant::now();
    let (gw, exes) = crate::harness::gateway_with_executors(bin, n).await?;
    let client = http();
    let samples = if quick { 20 } else { 50 };

    let mut before = Vec::new();
    for _ in 0..samples {
        before.push(envs_list(&client, &gw).await?.0);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gw_rss0 = rss_kib(gw.pid());
    let me_rss0 = rss_kib(std::process::id());

    // Connect all N, 32 at a time (as a fleet coming up would, not all at
    // once: the gateway's accept queue is finite).
    let (stop_tx, stop_rx) = watch::channel(false);
    let t_connect = Instant::now();
    let results: Vec<_> = futures_util::stream::iter(exes.iter())
        .map(|(id, token)| {
            let (client, url, stop) = (client.clone(), gw.url.clone(), stop_rx.clone());
            async move { lite_executor::connect(&client, &url, id, token, stop).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut tasks = Vec::with_capacity(n);
    for r in results {
        tasks.push(r.context("an in-bench executor failed to connect")?);
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    // The gateway registers a link just after `initialized`: wait until
    // envs/list shows all N (bounded).
    eventually(60, "envs/list to show every executor", || async {
        match envs_list(&client, &gw).await {
            Ok((_, count)) if count == n => Ok(()),
            Ok((_, count)) => Err(format!("{count} of {n} connected")),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await;
    // Idle for a moment, so the RSS is that of idle links.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gw_rss1 = rss_kib(gw.pid());
    let me_rss1 = rss_kib(std::process::id());
    // What N idle links cost the gateway (pings, timers, its sweeps) and
    // this process (the executors' side: pongs), in CPU per second.
    let idle_for = Duration::from_secs(if quick { 2 } else { 5 });
    let (gw_cpu0, me_cpu0, t_idle) = (
        cpu_time(gw.pid()),
        cpu_time(std::process::id()),
        Instant::now(),
    );
    tokio::time::sleep(idle_for).await;
    let idle_secs = t_idle.elapsed().as_secs_f64();
    let cpu_ms_per_s =
        |a: Duration, b: Duration| (a.saturating_sub(b)).as_secs_f64() * 1000.0 / idle_secs;
    let gw_idle_cpu = cpu_ms_per_s(cpu_time(gw.pid()), gw_cpu0);
    let me_idle_cpu = cpu_ms_per_s(cpu_time(std::process::id()), me_cpu0);

    let mut after = Vec::new();
    for _ in 0..samples {
        let (d, count) = envs_list(&client, &gw).await?;
        if count != n {
            bail!("envs/list shows {count} of {n}");
        }
        after.push(d);
    }

    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64;
    let k = format!("scale.n{n}");
    let mut figures = vec![
        Figure::new(
            format!("{k}.gateway_rss_kib_per_conn"),
            format!("gateway RSS per idle executor, N={n}"),
            per(gw_rss1, gw_rss0),
            "KiB",
        )
        .vs("in-bench executor side, per conn", per(me_rss1, me_rss0)),
        Figure::new(
            format!("{k}.gateway_rss_mib"),
            format!("  gateway RSS with N={n} connected"),
            gw_rss1 as f64 / 1024.0,
            "MiB",
        )
        .vs("before any connected", gw_rss0 as f64 / 1024.0),
        Figure::new(
            format!("{k}.gateway_idle_cpu_ms_per_s"),
            format!("  gateway CPU with N={n} idle, per s"),
            gw_idle_cpu,
            "ms/s",
        )
        .vs("in-bench executor side", me_idle_cpu),
        Figure::new(
            format!("{k}.connects_per_s"),
            format!("  executor connects/s, N={n}"),
            n as f64 / connect_secs,
            "conn/s",
        ),
    ];
    figures.extend(latency_figures(
        &format!("{k}.envs_list"),
        &format!("  envs/list, N={n} connected"),
        &after,
        "none connected",
        &before,
    ));
    eprintln!("scale N={n}: {:.1} s", t0.elapsed().as_secs_f64());
    Ok(figures)
}
