//! File transfer: PUT and GET through `/files` and `copy_path` between two
//! executors, against a local `cp` of the same file measured in the same
//! run, plus how much the gateway's RSS grows during the copy (it should
//! stay flat: transfers stream in 1 MiB chunks), and the CPU each process
//! spent on it per GiB (/proc: the gateway, the source executor, the
//! destination executor). With `--ssh`, `scp` of the same file to the
//! bench's own sshd (a login user with no rc files when run as root, see
//! `peers`) in the same run, and copy_path's ratio to it. scp neither
//! verifies a digest nor flushes to disk; copy_path does both.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::harness::{cpu_time, rss_kib};
use crate::Figure;

pub async fn run(bin: &Path, quick: bool, ssh: bool) -> anyhow::Result<Vec<Figure>> {
    let size: u64 = if quick { 64 << 20 } else { 1 << 30 };
    let gw = crate::harness::gateway(bin, &[]);
    let (exe_a, work_a) = gw.executor("a", &[]).await;
    let (exe_b, work_b) = gw.executor("b", &[]).await;
    let src = work_a.join("src.bin");
    write_pseudo_random(&src, size)?;
    let mb = |secs: f64| size as f64 / 1e6 / secs;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut figures = Vec::new();
    let label = if quick { "64 MiB" } else { "1 GiB" };

    // Baseline: a local cp of the same file.
    let cp_dst = work_b.join("cp.bin");
    let cp = mb(local_cp(&src, &cp_dst, false)?.as_secs_f64());
    let base = || Some((format!("local cp {label}"), cp));

    // The disk's bound for a durable copy: `PUT` and `copy_path` end with
    // an fsync of the whole file (issue 3: a verified, durable file or
    // nothing), which `cp` alone does not wait for.
    let durable = mb(local_cp(&src, &cp_dst, true)?.as_secs_f64());
    figures.push(Figure {
        key: "files.local_cp_fsync.mb_per_s".into(),
        label: format!("local cp + fsync {label}"),
        value: durable,
        unit: "MB/s",
        baseline: base(),
    });

    // PUT from a local file.
    let t = Instant::now();
    let file = tokio::fs::File::open(&src).await?;
    let body = reqwest::Body::wrap_stream(tokio_stream_of(file));
    let resp = http
        .put(format!("{}/api/connectors/envs/b/files", gw.url))
        .query(&[("path", "put.bin")])
        .bearer_auth(&gw.token)
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("PUT failed: {}", resp.text().await?);
    }
    figures.push(Figure {
        key: "files.put.mb_per_s".into(),
        label: format!("PUT /files {label}"),
        value: mb(t.elapsed().as_secs_f64()),
        unit: "MB/s",
        baseline: base(),
    });
    std::fs::remove_file(work_b.join("put.bin"))?;

    // GET into a local file.
    let t = Instant::now();
    let resp = http
        .get(format!("{}/api/connectors/envs/a/files", gw.url))
        .query(&[("path", "src.bin")])
        .bearer_auth(&gw.token)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("GET failed: {}", resp.text().await?);
    }
    let got_path = work_b.join("got.bin");
    let mut out = tokio::fs::File::create(&got_path).await?;
    let mut stream = resp.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    if got != size {
        bail!("GET returned {got} of {size} bytes");
    }
    figures.push(Figure {
        key: "files.get.mb_per_s".into(),
        label: format!("GET /files {label}"),
        value: mb(t.elapsed().as_secs_f64()),
        unit: "MB/s",
        baseline: base(),
    });
    std::fs::remove_file(&got_path)?;

    // copy_path between the two executors, watching the gateway's RSS.
    let pid = gw.pid();
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let pids = [pid, exe_a.id(), exe_b.id()];
    let cpu0 = pids.map(cpu_time);
    let t = Instant::now();
    let r: serde_json::Value = http
        .post(format!("{}/api/connectors/envs/a/tool/call", gw.url))
        .bearer_auth(&gw.token)
        .json(&serde_json::json!({"tool": "copy_path", "arguments": {
            "source_environment_id": "a", "source_path": "src.bin",
            "destination_environment_id": "b", "destination_path": "copy.bin"}}))
        .send()
        .await?
        .json()
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu1 = pids.map(cpu_time);
    done.store(true, Ordering::Relaxed);
    sampler.await?;
    if r["isError"] != false || r["structuredContent"]["bytes"] != size {
        bail!("copy_path failed: {r}");
    }
    figures.push(Figure {
        key: "files.copy_path.mb_per_s".into(),
        label: format!("copy_path {label}"),
        value: mb(secs),
        unit: "MB/s",
        baseline: base(),
    });
    figures.push(Figure {
        key: "files.copy_path.gateway_rss_growth_mib".into(),
        label: "gateway RSS growth during copy_path".into(),
        value: peak.load(Ordering::Relaxed).saturating_sub(before) as f64 / 1024.0,
        unit: "MiB",
        baseline: None,
    });
    let gib = size as f64 / (1u64 << 30) as f64;
    for (i, who) in ["gateway", "source", "destination"].iter().enumerate() {
        let spent = cpu1[i].saturating_sub(cpu0[i]).as_secs_f64();
        figures.push(Figure::new(
            format!("files.copy_path.cpu_s_per_gib.{who}"),
            format!("  copy_path CPU per GiB, {who}"),
            spent / gib,
            "s",
        ));
    }
    std::fs::remove_file(work_b.join("copy.bin"))?;

    if ssh {
        let copy_mb = mb(secs);
        match scp(&src, size).await {
            Ok(secs) => {
                let scp_mb = mb(secs);
                figures.push(Figure {
                    key: "files.scp.mb_per_s".into(),
                    label: format!("scp {label} (no digest, no fsync)"),
                    value: scp_mb,
                    unit: "MB/s",
                    baseline: base(),
                });
                figures.push(
                    Figure::new(
                        "files.copy_path.vs_scp",
                        format!("copy_path {label} against scp"),
                        copy_mb,
                        "MB/s",
                    )
                    .vs(format!("scp {label}"), scp_mb),
                );
            }
            Err(e) => println!("note: scp figure skipped: {e:#}"),
        }
    }
    Ok(figures)
}

/// Seconds for `scp` of `src` (`size` bytes) to the bench's own sshd;
/// the copy is checked for its size and removed.
async fn scp(src: &Path, size: u64) -> anyhow::Result<f64> {
    let sshd = crate::peers::start_sshd().await?;
    let dst = sshd.writable_dir().join("scp.bin");
    let t = Instant::now();
    let ok = tokio::time::timeout(Duration::from_secs(300), sshd.scp(src, &dst).status())
        .await
        .context("scp timed out")??;
    let secs = t.elapsed().as_secs_f64();
    if !ok.success() {
        bail!("scp failed");
    }
    let got = std::fs::metadata(&dst)?.len();
    std::fs::remove_file(&dst)?;
    if got != size {
        bail!("scp wrote {got} of {size} bytes");
    }
    Ok(secs)
}

/// Writes `size` bytes that do not repeat in any short period.
fn write_pseudo_random(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).context("creating the source")?);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// A file as a stream of 256 KiB chunks, for a streaming request body.
fn tokio_stream_of(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

/// Times `cp src dst` (and, with `fsync`, the fsync of `dst` after it),
/// then removes `dst`.
fn local_cp(src: &Path, dst: &Path, fsync: bool) -> anyhow::Result<Duration> {
    let t = Instant::now();
    if !std::process::Command::new("cp")
        .arg(src)
        .arg(dst)
        .status()?
        .success()
    {
        bail!("cp failed");
    }
    if fsync {
        std::fs::File::open(dst)?.sync_all()?;
    }
    let took = t.elapsed();
    std::fs::remove_file(dst)?;
    Ok(took)
}
