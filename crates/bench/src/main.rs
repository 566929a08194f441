//! `cargo run --release -p execgate-bench -- [--quick] [--json FILE] [--only NAME] [--skip NAME] [--codex PATH] [--ssh]`
//!
//! Starts the release `execgate` binary as a real gateway and executors on
//! 127.0.0.1 and measures figures, each beside a baseline measured in the
//! same run (this machine is shared and noisy, so only ratios compare
//! across runs). Prints a table; `--json` writes every figure under a
//! stable key. One module per figure:
//!
//! - [`latency`]: `shell ["true"]` via REST against a direct spawn of `true`,
//!   its floors (HTTP, a link ping to a real executor linked to the bench,
//!   [`link_probe`]) and what it costs beyond them; and the time from
//!   `exec_command` of `echo hi` to its first output byte over SSE.
//! - [`throughput`]: `read_file` of 1 KiB at 1, 16 and 64 clients, and the
//!   gateway's CPU time per call.
//! - [`output`]: 256 MiB of process output through `/output` polling, SSE and
//!   the binary stream (with `--codex`, also beside codex-direct output),
//!   against `cat` through a local pipe.
//! - [`files`]: PUT/GET and copy_path against a local `cp`.
//! - [`scale`]: N idle executor connections (an in-bench executor speaking
//!   the real protocol): gateway RSS per connection, envs/list latency.
//! - [`held`]: shell latency while a client holds 5,000 half-open sockets
//!   on the gateway, against none held.
//! - [`replicas`]: `shell true` latency and `read_file` throughput through
//!   a replica that forwards to the executor's owner, against the owner.
//! - [`metrics_cost`]: shell and read_file latency with `--metrics-listen`
//!   against without, two gateway/executor pairs called alternately.
//! - [`peers`]: the latency and output figures against a stock codex
//!   exec-server (`--codex PATH`) and ssh with a ControlMaster (`--ssh`).
//! - [`backends`]: `read_file` throughput and `shell` latency of a gateway
//!   on PostgreSQL against one on SQLite.
//! - [`fleet`]: three replicas and 30,000 idle executors: RSS per
//!   executor, envs/list of a workspace of 10,000.
//!
//! `backends` and `fleet` are heavy: a full run includes them, a plain
//! `--quick` does not (`--quick --only fleet` runs one at small sizes).
//!
//! `--quick` is CI's smoke test: small sizes, under 2 minutes, and it fails
//! unless every figure was produced (it does not judge the numbers).

mod backends;
mod files;
mod fleet;
mod harness;
mod held;
mod latency;
mod link_probe;
mod lite_executor;
mod metrics_cost;
mod output;
mod peers;
mod replicas;
mod scale;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::{Map, Value};

#[derive(Parser, Debug)]
struct Args {
    /// Small sizes, for a smoke test; fails unless every figure is produced.
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only run figures whose name contains this (latency, throughput,
    /// output, files, scale, held, replicas, metrics, peers, backends,
    /// fleet).
    #[arg(long)]
    only: Option<String>,
    /// Skip the figure groups whose name contains this (repeatable): a
    /// full run but for one heavy group, e.g. `--skip fleet` beside a
    /// separate `--only fleet --postgres`.
    #[arg(long, value_name = "NAME")]
    skip: Vec<String>,
    /// A stock codex binary: also measure `codex exec-server` directly.
    #[arg(long, value_name = "PATH")]
    codex: Option<PathBuf>,
    /// Also measure ssh with a ControlMaster to a local sshd.
    #[arg(long)]
    ssh: bool,
    /// Run every gateway on PostgreSQL (`--database-url`, a fresh database
    /// of a throwaway cluster this run starts) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Internal: host in-bench executors for a parent bench (see
    /// `lite_executor::host`).
    #[arg(long, hide = true)]
    lite_host: bool,
}

/// One measured figure.
pub struct Figure {
    /// Stable key for `--json`, e.g. `latency.shell_true.p50_ms`.
    pub key: String,
    pub label: String,
    pub value: f64,
    pub unit: &'static str,
    /// The same-run baseline this figure is compared with, if any.
    pub baseline: Option<(String, f64)>,
}

impl Figure {
    pub fn new(
        key: impl Into<String>,
        label: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Figure {
            key: key.into(),
            label: label.into(),
            value,
            unit,
            baseline: None,
        }
    }

    pub fn vs(mut self, label: impl Into<String>, value: f64) -> Self {
        self.baseline = Some((label.into(), value));
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.value / b)
    }
}

/// What a figure module hands back: its figures, and the ones it had to
/// skip with the reason (printed, and accepted by `--quick`).
#[derive(Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub skipped: Vec<(String, String)>,
}

/// Percentiles of latency samples, in milliseconds.
pub fn percentiles(samples: &[Duration]) -> [f64; 3] {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        // Nearest rank.
        let i = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
        ms[i]
    };
    [at(0.50), at(0.90), at(0.99)]
}

/// p50/p90/p99 figures of `samples`, each beside the same percentile of
/// `base` (the same-run baseline).
/// Decodes base64 `text`, appending to `out`, as every client in the bench
/// does: with SIMD (`base64-simd`), as a throughput-minded client would.
/// The scalar `base64` crate took ~12 % of the machine in the SSE window, a
/// load generator's cost that the 2 cores then lacked for the gateway
/// (BENCHMARKS.md, session 4).
pub fn decode_base64(text: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    base64_simd::STANDARD
        .decode_append(text, out)
        .map_err(|e| anyhow::anyhow!("bad base64: {e}"))
}

pub fn latency_figures(
    key: &str,
    label: &str,
    samples: &[Duration],
    base_label: &str,
    base: &[Duration],
) -> Vec<Figure> {
    let (p, b) = (percentiles(samples), percentiles(base));
    ["p50", "p90", "p99"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Figure::new(
                format!("{key}.{name}_ms"),
                format!("{label} {name}"),
                p[i],
                "ms",
            )
            .vs(format!("{base_label} {name}"), b[i])
        })
        .collect()
}

/// The keys `--quick` requires (each produced, or skipped with a reason).
fn expected_keys(args: &Args) -> Vec<String> {
    let mut keys: Vec<String> = [
        "latency.shell_true.p50_ms",
        "latency.shell_true.p90_ms",
        "latency.shell_true.p99_ms",
        "latency.read_file_1k.p50_ms",
        "latency.floor.spawn.p50_ms",
        "latency.floor.http.p50_ms",
        "latency.floor.link_ping.p50_ms",
        "latency.floor.link_get_metadata.p50_ms",
        "latency.floor.link_start_true.p50_ms",
        "latency.shell_true.vs_floor.p50_ms",
        "latency.first_byte_sse.p50_ms",
        "latency.first_byte_sse.p99_ms",
        "latency.executor_idle_rss_mib",
        "latency.executor_idle_private_mib",
        "throughput.read_file_1k.c1.calls_per_s",
        "throughput.read_file_1k.c16.calls_per_s",
        "throughput.read_file_1k.c64.calls_per_s",
        "throughput.read_file_1k.c64.gateway_cpu_us_per_call",
        "output.polling.mb_per_s",
        "output.sse.mb_per_s",
        "output.binary.mb_per_s",
        "files.local_cp_fsync.mb_per_s",
        "files.put.mb_per_s",
        "files.get.mb_per_s",
        "files.copy_path.mb_per_s",
        "files.copy_path.gateway_rss_growth_mib",
        "files.copy_path.cpu_s_per_gib.gateway",
        "files.copy_path.cpu_s_per_gib.source",
        "files.copy_path.cpu_s_per_gib.destination",
        "scale.n100.gateway_rss_kib_per_conn",
        "scale.n100.envs_list.p50_ms",
        "replicas.shell_true.p50_ms",
        "replicas.read_file_1k.c64.calls_per_s",
        "replicas.sse.mb_per_s",
        "replicas.binary.mb_per_s",
        "metrics_cost.shell_true.p50_ms",
        "metrics_cost.read_file_1k.p50_ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if args.codex.is_some() {
        keys.extend(
            [
                "peers.codex.start_true.p50_ms",
                "peers.codex.output.mb_per_s",
                "output.binary.vs_codex",
            ]
            .map(String::from),
        );
    }
    if args.ssh {
        keys.extend(["peers.ssh.true.p50_ms", "peers.ssh.cat.mb_per_s"].map(String::from));
        keys.extend(["files.scp.mb_per_s", "files.copy_path.vs_scp"].map(String::from));
    }
    if args.only.is_some() {
        // The heavy figures: run by --quick only when --only names them.
        keys.extend(
            [
                "backends.read_file_1k.c64.calls_per_s",
                "backends.shell_true.p50_ms",
                "fleet.n300.gateway_rss_kib_per_conn",
                "fleet.n300.envs_list.p50_ms",
            ]
            .map(String::from),
        );
    }
    keys.retain(|k| args.only.as_deref().is_none_or(|o| k.starts_with(o)));
    keys.retain(|k| !args.skip.iter().any(|s| k.starts_with(s.as_str())));
    keys
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.lite_host {
        harness::raise_nofile();
        return lite_executor::host().await;
    }
    let started = Instant::now();
    if args.postgres {
        harness::use_postgres();
    }
    let bin = harness::execgate_binary()?;
    // 10,000 idle executors need 10,000 sockets here and in the gateway.
    let nofile = harness::raise_nofile();
    let want = |name: &str| {
        args.only.as_deref().is_none_or(|o| name.contains(o))
            && !args.skip.iter().any(|s| name.contains(s.as_str()))
    };
    let mut report = Report::default();
    let mut add = |name: &str, r: anyhow::Result<Report>| -> anyhow::Result<()> {
        let r = r.map_err(|e| e.context(format!("figure {name}")))?;
        report.figures.extend(r.figures);
        report.skipped.extend(r.skipped);
        eprintln!("[{:5.1} s] {name} done", started.elapsed().as_secs_f64());
        Ok(())
    };
    if want("latency") {
        add("latency", latency::run(&bin, args.quick).await)?;
    }
    if want("throughput") {
        add("throughput", throughput::run(&bin, args.quick).await)?;
    }
    if want("output") {
        add(
            "output",
            output::run(&bin, args.quick, args.codex.as_deref()).await,
        )?;
    }
    if want("files") {
        let figures = files::run(&bin, args.quick, args.ssh).await;
        add(
            "files",
            figures.map(|figures| Report {
                figures,
                skipped: vec![],
            }),
        )?;
    }
    if want("scale") {
        add("scale", scale::run(&bin, args.quick, nofile).await)?;
    }
    if want("held") {
        add("held", held::run(&bin, args.quick, nofile).await)?;
    }
    if want("replicas") {
        add("replicas", replicas::run(&bin, args.quick).await)?;
    }
    if want("metrics") {
        add("metrics", metrics_cost::run(&bin, args.quick).await)?;
    }
    // Heavy: in a full run, or when --only names them.
    let heavy = |name: &str| want(name) && (!args.quick || args.only.is_some());
    if heavy("backends") {
        add("backends", backends::run(&bin, args.quick).await)?;
    }
    if heavy("fleet") {
        add("fleet", fleet::run(&bin, args.quick, nofile).await)?;
    }
    if want("peers") && (args.codex.is_some() || args.ssh) {
        add(
            "peers",
            peers::run(args.codex.as_deref(), args.ssh, args.quick).await,
        )?;
    }

    println!(
        "{:<52} {:>10} {:<8} {:>9}  baseline (same run)",
        "figure", "value", "unit", "ratio"
    );
    for f in &report.figures {
        let ratio = f.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default();
        let base = f
            .baseline
            .as_ref()
            .map(|(l, v)| format!("{l} = {v:.2}"))
            .unwrap_or_default();
        println!(
            "{:<52} {:>10.2} {:<8} {:>9}  {base}",
            f.label, f.value, f.unit, ratio
        );
    }
    for (key, why) in &report.skipped {
        println!("skipped {key}: {why}");
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let mut out = Map::new();
        for f in &report.figures {
            out.insert(f.key.clone(), Value::from(f.value));
            if let Some(r) = f.ratio() {
                out.insert(format!("{}.ratio", f.key), Value::from(r));
            }
        }
        std::fs::write(path, serde_json::to_string_pretty(&Value::Object(out))?)?;
    }
    if args.quick {
        // The smoke test: every figure produced (or skipped with a reason)
        // and a real number. How fast is not judged here.
        let mut missing = Vec::new();
        for key in expected_keys(&args) {
            let produced = report.figures.iter().find(|f| f.key == key);
            let skipped = report.skipped.iter().any(|(k, _)| *k == key);
            match produced {
                Some(f) if f.value.is_finite() && f.value >= 0.0 => {}
                Some(f) => missing.push(format!("{key} = {}", f.value)),
                None if skipped => {}
                None => missing.push(format!("{key} (not produced)")),
            }
        }
        if !missing.is_empty() {
            bail!(
                "--quick: figures missing or not numbers: {}",
                missing.join(", ")
            );
        }
        println!(
            "quick: all {} expected figures produced",
            expected_keys(&args).len()
        );
    }
    Ok(())
}
