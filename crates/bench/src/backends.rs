//! Figure 8, backends: one gateway on PostgreSQL (`--database-url`, a fresh
//! database of the throwaway cluster the bench starts) against one on
//! SQLite (the default), side by side in the same run, each with its own
//! executor and the same 1 KiB file.
//!
//! - `read_file` of 1 KiB with 64 clients (and 16): windows of a fixed
//!   time alternating between the two gateways (SQLite first, then
//!   PostgreSQL, three rounds; one with `--quick`), the sums compared
//!   (target: PostgreSQL ≥ 0.9× SQLite). The gateways' CPU per call beside.
//! - `shell ["true"]` p50, the two gateways called in turn call by call.
//!
//! The PostgreSQL cluster runs on the same 2 cores (its `fsync` off: the
//! data is thrown away); a tool call reads the store only through the
//! in-memory lookups (token, environment), so what differs is what the
//! gateway does around a call: the audit writer's batches, the periodic
//! `last_seen` writes, the invalidation listener.
//!
//! Skipped, with the reason, when PostgreSQL cannot start here.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::harness::{cpu_time, http, prepare_on};
use crate::throughput::load;
use crate::{latency_figures, Figure, Report};

type Req = Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync>;

pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let mut report = Report::default();
    if let Err(why) = execgate_testkit::pg::shared() {
        let why = format!("PostgreSQL cannot start here: {why}");
        println!("note: backends skipped: {why}");
        report
            .skipped
            .push(("backends.read_file_1k.c64.calls_per_s".into(), why));
        return Ok(report);
    }
    let sqlite = prepare_on(bin, false).serve(&[]);
    let pg = prepare_on(bin, true).serve(&[]);
    let (sq_exe, sq_work) = sqlite.executor("a", &[]).await;
    let (pg_exe, pg_work) = pg.executor("a", &[]).await;
    for w in [&sq_work, &pg_work] {
        std::fs::write(w.join("1k.txt"), vec![b'x'; 1024])?;
    }
    let _keep = (sq_exe, pg_exe);

    let read_file = |url: &str, token: &str| -> Req {
        let url = format!("{url}/api/connectors/envs/a/tool/call");
        let token = token.to_string();
        Arc::new(move |c| {
            c.post(&url).bearer_auth(&token).json(
                &json!({"tool": "read_file", "arguments": {"path": "1k.txt", "offset": 0, "limit": 0}}),
            )
        })
    };
    let ok_read = |b: &[u8]| b.len() > 1368 && !b.windows(14).any(|w| w == b"\"isError\":true");
    let (rf_sq, rf_pg) = (
        read_file(&sqlite.url, &sqlite.token),
        read_file(&pg.url, &pg.token),
    );
    load(4, Duration::from_millis(500), rf_sq.clone(), ok_read).await?;
    load(4, Duration::from_millis(500), rf_pg.clone(), ok_read).await?;

    let window = Duration::from_secs_f64(if quick { 1.0 } else { 3.0 });
    let rounds = if quick { 1 } else { 3 };
    let mut figures = Vec::new();
    for clients in [16usize, 64] {
        // (calls, seconds, gateway CPU) for SQLite, then PostgreSQL.
        let mut sums = [(0u64, 0f64, Duration::ZERO); 2];
        for _ in 0..rounds {
            for (i, (req, pid)) in [(&rf_sq, sqlite.pid()), (&rf_pg, pg.pid())]
                .into_iter()
                .enumerate()
            {
                let (c0, t) = (cpu_time(pid), Instant::now());
                let calls = load(clients, window, req.clone(), ok_read).await?;
                sums[i].0 += calls;
                sums[i].1 += t.elapsed().as_secs_f64();
                sums[i].2 += cpu_time(pid).saturating_sub(c0);
            }
        }
        let rate = |i: usize| sums[i].0 as f64 / sums[i].1;
        let cpu = |i: usize| sums[i].2.as_secs_f64() * 1e6 / sums[i].0.max(1) as f64;
        let k = format!("backends.read_file_1k.c{clients}");
        figures.push(
            Figure::new(
                format!("{k}.calls_per_s"),
                format!("read_file 1 KiB on PostgreSQL, {clients} clients"),
                rate(1),
                "calls/s",
            )
            .vs(format!("on SQLite, {clients} clients"), rate(0)),
        );
        figures.push(
            Figure::new(
                format!("{k}.gateway_cpu_us_per_call"),
                format!("  gateway CPU per call on PostgreSQL, {clients} clients"),
                cpu(1),
                "us",
            )
            .vs("on SQLite", cpu(0)),
        );
    }

    let client = http();
    let shell = |url: String, token: String| {
        let client = &client;
        async move {
            let t = Instant::now();
            let v: serde_json::Value = client
                .post(format!("{url}/api/connectors/envs/a/tool/call"))
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
    for _ in 0..10 {
        shell(sqlite.url.clone(), sqlite.token.clone()).await?;
        shell(pg.url.clone(), pg.token.clone()).await?;
    }
    let n = if quick { 100 } else { 1000 };
    let budget = Duration::from_secs(if quick { 10 } else { 40 });
    let (mut on_pg, mut on_sq) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t = Instant::now();
    while on_pg.len() < n && t.elapsed() < budget {
        on_pg.push(shell(pg.url.clone(), pg.token.clone()).await?);
        on_sq.push(shell(sqlite.url.clone(), sqlite.token.clone()).await?);
    }
    figures.extend(latency_figures(
        "backends.shell_true",
        "shell true on PostgreSQL",
        &on_pg,
        "on SQLite",
        &on_sq,
    ));
    report.figures = figures;
    Ok(report)
}
