//! Figure 7, replicas: a call that arrives at a replica which does not hold
//! the executor (forwarded over the peer channel to the owner) against the
//! same call made on the owner, in the same run. Two replicas (`serve
//! --advertise-url … --cluster-secret-file …`) share one data dir; the
//! executor dials replica A; replica B forwards.
//!
//! - `shell ["true"]` one call at a time, A and B interleaved call by call
//!   (target: B's p50 ≤ 1.25× A's).
//! - `read_file` of 1 KiB with 64 clients for a fixed time, through B then
//!   through A, three rounds in a full run (target: B ≥ 0.7× A).
//! - A process's output (32 MiB quick, 256 MiB full) read by SSE through B,
//!   then another through A, three rounds in a full run (target: B ≥ 0.7×
//!   A); then the same as binary frames (`Accept: application/octet-stream`).
//!
//! Both replicas and the executor run on the same 2 cores as the load
//! generator: forwarding costs B's CPU as well as A's, which the
//! throughput ratio includes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use execgate_testkit::{wait_for_env, Api, Execgate, GatewayProc, Prepared};
use serde_json::json;

use crate::harness::http;
use crate::throughput::load;
use crate::{latency_figures, Figure, Report};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let eg = Execgate::new(bin).quiet();
    let prepared = Prepared::new(&eg, "bench");
    let secret = prepared.dir.path().join("cluster-secret");
    std::fs::write(&secret, "bench-cluster-secret-0123456789abcdef")?;
    let replica = |listen: &str| -> GatewayProc {
        let url = format!("http://{listen}");
        eg.serve(
            &prepared.data_dir,
            listen,
            &[
                "--advertise-url",
                &url,
                "--cluster-secret-file",
                secret.to_str().unwrap_or_default(),
            ],
        )
    };
    let a = replica(&format!("127.0.0.1:{}", free_port()?));
    let b = replica(&format!("127.0.0.1:{}", free_port()?));
    let token = prepared.add_executor("a", false);
    let work = prepared.dir.path().join("work-a");
    std::fs::create_dir_all(&work)?;
    // Room for the SSE figure's output on disk, as in `output`.
    let spill = (320u64 << 20).to_string();
    // Twelve streams of it in a full run (SSE and binary, each through B
    // and through A, three rounds), all kept until the executor exits.
    let total = (4096u64 << 20).to_string();
    let _exe = eg.executor(
        &a.url(),
        &token,
        &work,
        &["--spill-bytes", &spill, "--spill-total-bytes", &total],
    );
    wait_for_env(&Api::new(&a.url(), &prepared.token), "a").await;
    wait_for_env(&Api::new(&b.url(), &prepared.token), "a").await;
    std::fs::write(work.join("1k.txt"), vec![b'x'; 1024])?;

    let client = http();
    let shell = |base: String| {
        let (client, token) = (&client, &prepared.token);
        async move {
            let t = Instant::now();
            let v: serde_json::Value = client
                .post(format!("{base}/api/connectors/envs/a/tool/call"))
                .bearer_auth(token)
                .json(&json!({"tool": "shell", "arguments": {"command": ["true"]}}))
                .send()
                .await?
                .json()
                .await?;
            if v["isError"] != false || v["structuredContent"]["exit_code"] != 0 {
                bail!("shell true failed: {v}");
            }
            anyhow::Ok(t.elapsed())
        }
    };
    for _ in 0..20 {
        shell(a.url()).await?;
        shell(b.url()).await?;
    }
    let n = if quick { 200 } else { 2000 };
    let budget = Duration::from_secs(if quick { 10 } else { 60 });
    let (mut owner, mut forwarded) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t = Instant::now();
    while owner.len() < n && t.elapsed() < budget {
        forwarded.push(shell(b.url()).await?);
        owner.push(shell(a.url()).await?);
    }
    let mut figures = latency_figures(
        "replicas.shell_true",
        "shell true via a non-owner replica",
        &forwarded,
        "on the owner",
        &owner,
    );

    let dur = Duration::from_secs_f64(if quick { 1.5 } else { 3.0 });
    let read_file =
        |base: String| -> Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync> {
            let url = format!("{base}/api/connectors/envs/a/tool/call");
            let token = prepared.token.clone();
            Arc::new(move |c| {
                c.post(&url).bearer_auth(&token).json(
                &json!({"tool": "read_file", "arguments": {"path": "1k.txt", "offset": 0, "limit": 0}}),
            )
            })
        };
    let ok_read = |b: &[u8]| b.len() > 1368 && !b.windows(14).any(|w| w == b"\"isError\":true");
    load(4, Duration::from_millis(300), read_file(b.url()), ok_read).await?;
    // Windows alternating B, A (three rounds in a full run), summed: one
    // window each moved with the other helpers' load on this machine.
    let rounds = if quick { 1 } else { 3 };
    let (mut calls_b, mut calls_a) = (0u64, 0u64);
    for _ in 0..rounds {
        calls_b += load(64, dur, read_file(b.url()), ok_read).await?;
        calls_a += load(64, dur, read_file(a.url()), ok_read).await?;
    }
    let secs = dur.as_secs_f64() * rounds as f64;
    let (via_b, via_a) = (calls_b as f64 / secs, calls_a as f64 / secs);
    figures.push(
        Figure::new(
            "replicas.read_file_1k.c64.calls_per_s",
            "read_file 1 KiB via a non-owner, 64 clients",
            via_b,
            "calls/s",
        )
        .vs("on the owner, 64 clients", via_a),
    );

    let bytes: u64 = if quick { 32 << 20 } else { 256 << 20 };
    let budget = Duration::from_secs(if quick { 30 } else { 180 });
    let token = &prepared.token;
    // Streams alternating B, A (three rounds in a full run), each round's
    // time summed: one stream of 256 MiB lasts about a second, and single
    // ones moved from 0.49x to 0.86x between runs with the other helpers'
    // load on this machine (BENCHMARKS.md, replicas, session 11).
    let secs = |rate: f64| bytes as f64 / 1e6 / rate;
    let (mut secs_b, mut secs_a, mut lost_b) = (0.0, 0.0, 0u64);
    for _ in 0..rounds {
        let (via_b, lost) = crate::output::sse(&b.url(), token, &client, bytes, budget).await?;
        let (via_a, _) = crate::output::sse(&a.url(), token, &client, bytes, budget).await?;
        (secs_b, secs_a, lost_b) = (secs_b + secs(via_b), secs_a + secs(via_a), lost_b + lost);
    }
    let total_mb = bytes as f64 / 1e6 * rounds as f64;
    let (via_b, via_a) = (total_mb / secs_b, total_mb / secs_a);
    figures.push(
        Figure::new(
            "replicas.sse.mb_per_s",
            "output via SSE through a non-owner",
            via_b,
            "MB/s",
        )
        .vs("through the owner", via_a),
    );
    figures.push(Figure::new(
        "replicas.sse.lost_mib",
        "  output that stream reported lost",
        lost_b as f64 / (1 << 20) as f64,
        "MiB",
    ));
    // The binary form (`Accept: application/octet-stream`) likewise.
    let (mut secs_b, mut secs_a, mut lost_b, mut binary) = (0.0, 0.0, 0u64, true);
    for _ in 0..rounds {
        let via_b = crate::output::binary(&b.url(), token, &client, bytes, budget).await?;
        let via_a = crate::output::binary(&a.url(), token, &client, bytes, budget).await?;
        let (Some((via_b, lost)), Some((via_a, _))) = (via_b, via_a) else {
            binary = false;
            break;
        };
        (secs_b, secs_a, lost_b) = (secs_b + secs(via_b), secs_a + secs(via_a), lost_b + lost);
    }
    let mut skipped = vec![];
    if binary {
        let (via_b, via_a) = (total_mb / secs_b, total_mb / secs_a);
        figures.push(
            Figure::new(
                "replicas.binary.mb_per_s",
                "output as binary frames through a non-owner",
                via_b,
                "MB/s",
            )
            .vs("through the owner", via_a),
        );
        figures.push(Figure::new(
            "replicas.binary.lost_mib",
            "  output that stream reported lost",
            lost_b as f64 / (1 << 20) as f64,
            "MiB",
        ));
    } else {
        skipped.push((
            "replicas.binary.mb_per_s".to_string(),
            "the gateway answered SSE to Accept: application/octet-stream".to_string(),
        ));
    }
    Ok(Report { figures, skipped })
}
