//! The executor's Prometheus metrics (`execgate executor --metrics-listen`).
//!
//! Two kinds:
//! - levels kept in plain atomics, always (one relaxed add where they
//!   change, whether metrics are on or not): processes running, output
//!   bytes held in memory and on disk, output bytes logged, whether a
//!   gateway link is up;
//! - per-request figures (requests by method and outcome, their duration,
//!   spawn duration) in a registry that exists only once [`enable`] was
//!   called: while off, a recording site is one atomic load.
//!
//! [`render`] reads both, and counts the open descriptors, at scrape time.
//! Labels are bounded: a method is one of the protocol's (else `other`),
//! an outcome `ok` or `error`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use execgate_protocol::exec::method_label;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Processes started and not yet exited.
pub(crate) static PROCESSES_RUNNING: AtomicI64 = AtomicI64::new(0);
/// Output bytes held in memory by output logs.
pub(crate) static OUTPUT_LOG_BYTES: AtomicI64 = AtomicI64::new(0);
/// Output bytes held on disk by spills.
pub(crate) static SPILL_BYTES: AtomicI64 = AtomicI64::new(0);
/// Output bytes processes wrote, since start.
pub(crate) static OUTPUT_BYTES: AtomicU64 = AtomicU64::new(0);
/// 1 while a gateway link is up.
pub(crate) static CONNECTED: AtomicI64 = AtomicI64::new(0);

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns the per-request metrics on for this process (idempotent).
pub fn enable() {
    METRICS.get_or_init(Metrics::new);
}

#[inline]
pub(crate) fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 50 µs to ~26 s, doubling.
fn latency() -> Histogram {
    Histogram::new((0..20).map(|i| 0.00005 * f64::from(1u32 << i)))
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: LatencyFamily<MethodLabel>,
    spawn_duration: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("execgate_executor");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests from the gateway, by protocol method and outcome (ok, error)",
            requests.clone(),
        );
        let request_duration = LatencyFamily::new_with_constructor(latency as fn() -> Histogram);
        registry.register_with_unit(
            "request_duration",
            "Time to answer a request, by protocol method (a long-poll's wait included)",
            Unit::Seconds,
            request_duration.clone(),
        );
        let spawn_duration = latency();
        registry.register_with_unit(
            "spawn_duration",
            "Time to start a child process (fork/exec or posix_spawn, pipes or pty)",
            Unit::Seconds,
            spawn_duration.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            spawn_duration,
        }
    }

    pub fn request(&self, name: &str, ok: bool, took: Duration) {
        let method = method_label(name);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
        self.request_duration
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }

    pub fn spawned(&self, took: Duration) {
        self.spawn_duration.observe(took.as_secs_f64());
    }
}

/// Open file descriptors of this process (`/proc/self/fd`), if readable.
fn open_fds() -> Option<i64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // Less the one `read_dir` itself holds.
    Some(dir.count() as i64 - 1)
}

/// The Prometheus text (0.0.4) of the executor's metrics; `None` while off.
pub fn render() -> Option<String> {
    let metrics = get()?;
    let mut out = String::with_capacity(16 * 1024);
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics.registry);
    let mut now = Registry::with_prefix("execgate_executor");
    let level = |a: &AtomicI64| ConstGauge::new(a.load(Ordering::Relaxed).max(0));
    now.register(
        "processes_running",
        "Processes started and not yet exited",
        level(&PROCESSES_RUNNING),
    );
    now.register_with_unit(
        "output_log",
        "Process output held in memory by output logs",
        Unit::Bytes,
        level(&OUTPUT_LOG_BYTES),
    );
    now.register_with_unit(
        "spill",
        "Process output held on disk (spill files)",
        Unit::Bytes,
        level(&SPILL_BYTES),
    );
    now.register_with_unit(
        "output",
        "Process output written by children, since start",
        Unit::Bytes,
        ConstCounter::new(OUTPUT_BYTES.load(Ordering::Relaxed)),
    );
    now.register(
        "connected",
        "1 while the link to the gateway is up",
        level(&CONNECTED),
    );
    if let Some(fds) = open_fds() {
        now.register("open_fds", "Open file descriptors", ConstGauge::new(fds));
    }
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &now);
    Some(out)
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
