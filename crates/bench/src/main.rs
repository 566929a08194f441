//! `cargo run --release -p execgate-bench -- [--quick] [--json FILE]`
//!
//! Starts the release `execgate` binary as a real gateway and executors on
//! 127.0.0.1 and measures figures, each beside a baseline measured in the
//! same run (this machine is shared and noisy, so only ratios compare
//! across runs). Prints a table; `--json` writes every figure under a
//! stable key.

mod files;
mod harness;

use std::path::PathBuf;

use clap::Parser;
use serde_json::{Map, Value};

#[derive(Parser, Debug)]
struct Args {
    /// Small sizes, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only run figures whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

/// One measured figure.
pub struct Figure {
    /// Stable key for `--json`, e.g. `files.copy_path.mb_per_s`.
    pub key: String,
    pub label: String,
    pub value: f64,
    pub unit: &'static str,
    /// The same-run baseline this figure is compared with, if any.
    pub baseline: Option<(String, f64)>,
}

impl Figure {
    fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.value / b)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = harness::execgate_binary()?;
    let mut figures = Vec::new();
    let want = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    if want("files") {
        figures.extend(files::run(&bin, args.quick).await?);
    }

    println!(
        "{:<44} {:>12} {:<6} {:>9}  baseline",
        "figure", "value", "unit", "ratio"
    );
    for f in &figures {
        let ratio = f.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default();
        let base = f
            .baseline
            .as_ref()
            .map(|(l, v)| format!("{l} = {v:.1}"))
            .unwrap_or_default();
        println!(
            "{:<44} {:>12.1} {:<6} {:>9}  {base}",
            f.label, f.value, f.unit, ratio
        );
    }
    if let Some(path) = args.json {
        let mut out = Map::new();
        for f in &figures {
            out.insert(f.key.clone(), Value::from(f.value));
            if let Some(r) = f.ratio() {
                out.insert(format!("{}.ratio", f.key), Value::from(r));
            }
        }
        std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(out))?)?;
    }
    Ok(())
}
