//! Figure 6, held sockets: `shell ["true"]` latency while a client holds N
//! sockets open on the gateway (N = 5,000; 500 with --quick), half of them
//! with half a request head sent, half with nothing, against the same call
//! on the same gateway with none held (measured before and after, the two
//! halves of the baseline). Before the listener had a header read timeout
//! and a connection cap (issue #15), about 1,100 such sockets stopped a
//! gateway with the usual 1,024-descriptor limit.
//!
//! The gateway runs with a 60 s header read timeout here, so that all N
//! stay open while the calls are measured; with the default (10 s) it
//! would start closing them sooner, which the e2e tests check.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::harness::http;
use crate::{latency_figures, Report};

pub async fn run(bin: &Path, quick: bool, nofile: u64) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let want = if quick { 500 } else { 5_000 };
    // This process holds N descriptors; leave room for the rest.
    let n = want.min(nofile.saturating_sub(600) as usize);
    if n < want {
        println!("note: held sockets: {n} instead of {want} (open-file limit {nofile})");
    }
    let gw = crate::harness::gateway(bin, &["--header-read-timeout-secs", "60"]);
    let (_exe, _work) = gw.executor("a", &[]).await;
    let client = http();
    let url = format!("{}/api/connectors/envs/a/tool/call", gw.url);
    let call = || async {
        let t = Instant::now();
        let v: serde_json::Value = client
            .post(&url)
            .bearer_auth(&gw.token)
            .json(&json!({"tool": "shell", "arguments": {"command": ["true"]}}))
            .send()
            .await?
            .json()
            .await?;
        if v["isError"] != false {
            bail!("shell true failed: {v}");
        }
        anyhow::Ok(t.elapsed())
    };
    let samples = if quick { 20 } else { 200 };
    for _ in 0..5 {
        call().await?;
    }
    let mut alone = Vec::new();
    for _ in 0..samples / 2 {
        alone.push(call().await?);
    }

    let addr: SocketAddr = gw
        .url
        .strip_prefix("http://")
        .context("gateway url")?
        .parse()?;
    let held = tokio::task::spawn_blocking(move || hold(addr, n)).await??;
    let mut with = Vec::new();
    for _ in 0..samples {
        with.push(call().await?);
    }
    drop(held);
    // Let the gateway see them go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..samples / 2 {
        alone.push(call().await?);
    }
    report.figures.extend(latency_figures(
        &format!("held.n{n}.shell_true"),
        &format!("shell true, {n} half-open sockets held"),
        &with,
        "none held",
        &alone,
    ));
    Ok(report)
}

/// `n` sockets to `addr`: even ones sent half a request head, odd ones
/// nothing.
fn hold(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    use std::io::Write;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr)?;
        if i % 2 == 0 {
            s.write_all(b"POST /api/connectors/envs/list HTTP/1.1\r\nHost: x\r\nAuthor")?;
        }
        held.push(s);
    }
    Ok(held)
}
