//! Figure 2, small-call throughput: `read_file` of a 1 KiB file with 1, 16
//! and 64 clients calling in a loop for a fixed time. Reports calls/s and
//! the CPU time (user + system, from /proc/PID/stat) the gateway and the
//! executor spent per call.
//!
//! The baseline is the same loop against the gateway's `/healthz`: the same
//! HTTP stack, client and concurrency with no tool behind it, so the ratio
//! says how much of the HTTP floor a tool call keeps. The load generator
//! runs on the same 2 cores as the gateway and executor (the target counts
//! it in), so all three compete for CPU.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::harness::{cpu_time, http};
use crate::{Figure, Report};

/// Runs `clients` loops of `req` for `dur`; returns the calls completed.
pub(crate) async fn load(
    clients: usize,
    dur: Duration,
    req: Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync>,
    check: fn(&[u8]) -> bool,
) -> anyhow::Result<u64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (req, done) = (req.clone(), done.clone());
        // One client (one connection pool) per task: 64 clients are 64
        // keep-alive connections, as 64 agents would be.
        let client = http();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let body = req(&client).send().await?.bytes().await?;
                if !check(&body) {
                    bail!("bad answer: {}", String::from_utf8_lossy(&body));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed))
}

pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let gw = crate::harness::gateway(bin, &[]);
    let (exe, work) = gw.executor("a", &[]).await;
    std::fs::write(work.join("1k.txt"), vec![b'x'; 1024])?;
    let dur = Duration::from_secs_f64(if quick { 1.5 } else { 5.0 });
    let (gpid, epid) = (gw.pid(), exe.0.id());

    let url = format!("{}/api/connectors/envs/a/tool/call", gw.url);
    let token = gw.token.clone();
    let read_file: Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync> =
        Arc::new(move |c| {
            c.post(&url).bearer_auth(&token).json(
                &json!({"tool": "read_file", "arguments": {"path": "1k.txt", "offset": 0, "limit": 0}}),
            )
        });
    let health = format!("{}/healthz", gw.url);
    let healthz: Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync> =
        Arc::new(move |c| c.get(&health));
    // A read_file answer of 1 KiB carries it base64 (1368 bytes) and is not an error.
    let ok_read = |b: &[u8]| b.len() > 1368 && !b.windows(14).any(|w| w == b"\"isError\":true");
    let ok_health = |b: &[u8]| b == b"ok";

    // Warm up.
    load(4, Duration::from_millis(300), read_file.clone(), ok_read).await?;

    let mut figures = Vec::new();
    for c in [1usize, 16, 64] {
        let base = load(c, dur, healthz.clone(), ok_health).await? as f64 / dur.as_secs_f64();
        let (g0, e0, t) = (cpu_time(gpid), cpu_time(epid), Instant::now());
        let calls = load(c, dur, read_file.clone(), ok_read).await?;
        let secs = t.elapsed().as_secs_f64();
        let (g, e) = (cpu_time(gpid) - g0, cpu_time(epid) - e0);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / calls.max(1) as f64;
        let k = format!("throughput.read_file_1k.c{c}");
        figures.push(
            Figure::new(
                format!("{k}.calls_per_s"),
                format!("read_file 1 KiB, {c} clients"),
                calls as f64 / secs,
                "calls/s",
            )
            .vs(format!("GET /healthz, {c} clients"), base),
        );
        figures.push(Figure::new(
            format!("{k}.gateway_cpu_us_per_call"),
            format!("  gateway CPU per call, {c} clients"),
            per(g),
            "us",
        ));
        figures.push(Figure::new(
            format!("{k}.executor_cpu_us_per_call"),
            format!("  executor CPU per call, {c} clients"),
            per(e),
            "us",
        ));
    }
    Ok(Report {
        figures,
        skipped: vec![],
    })
}
