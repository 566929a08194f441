//! `execgate serve`: the gateway alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use execgate_gateway::config::{
    default_max_connections, AuditMode, CacheConfig, ClusterConfig, LimitsConfig, ListenerConfig,
    RateConfig, RemoteConfig, SecretString, VerifierConfig,
};
use execgate_gateway::{Gateway, GatewayConfig};

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "EXECGATE_LISTEN", default_value = "127.0.0.1:6060")]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics at `GET /metrics` on this address, a
    /// listener of its own without authentication (keep it private).
    /// Off by default; `execgate up` turns it on, on 127.0.0.1 and a free port.
    #[arg(long, env = "EXECGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Traces and the log format.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
    /// Where the embedded store lives [default: ~/.local/share/execgate].
    #[arg(long, env = "EXECGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the store in PostgreSQL (`postgres://user:pass@host/db`)
    /// instead of SQLite in the data dir: workspaces, tokens, executors,
    /// sessions, revocations, the audit log, and the admin token and
    /// capability-token secret unless given as files. Several gateways may
    /// share one database (see docs/replicas.md).
    #[arg(long, env = "EXECGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Threads serving requests [default: one per CPU]. 1 runs everything on
    /// one thread, which measured faster on a 2-vCPU VM (cross-thread
    /// wake-ups are dear there; see BENCHMARKS.md) but lets one heavy
    /// request (a large file's checksum, a big JSON answer) delay the rest.
    #[arg(long, env = "EXECGATE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
    /// Seconds an executor link may stay silent (no frame, no answer to the
    /// gateway's pings, sent after half of it in silence) before it is declared dead:
    /// its calls in flight fail at once with 503 executor_unavailable, and
    /// the executor may connect again.
    #[arg(long, env = "EXECGATE_EXECUTOR_PING_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub executor_ping_timeout_secs: u64,
    /// Seconds a bridge client's request may wait for the executor's answer
    /// (a process/read its waitMs on top) before the gateway answers it with
    /// a JSON-RPC error (-32603, data.code gateway_timeout).
    #[arg(long, env = "EXECGATE_BRIDGE_REQUEST_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub bridge_request_timeout_secs: u64,
    /// Request bodies larger than this many bytes get 413.
    #[arg(long, env = "EXECGATE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Base URL executors should dial back, when the gateway sits behind a
    /// proxy (default: from the Host header of their register request).
    #[arg(long, env = "EXECGATE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Verify proxy tokens against this token authority
    /// (`POST {URL}/internal/validate-proxy-token`) instead of the store.
    #[arg(
        long,
        env = "EXECGATE_AGENTSERVER_URL",
        requires = "agentserver_secret_file"
    )]
    pub agentserver_url: Option<String>,
    /// File holding the secret sent to the authority as X-Internal-Secret.
    #[arg(
        long,
        env = "EXECGATE_AGENTSERVER_SECRET_FILE",
        requires = "agentserver_url"
    )]
    pub agentserver_secret_file: Option<PathBuf>,
    /// Remote mode: at most this many cached token verdicts.
    #[arg(long, env = "EXECGATE_AUTH_CACHE_CAPACITY", default_value_t = 10_000)]
    pub auth_cache_capacity: u64,
    /// Remote mode: seconds an accepted token stays cached.
    #[arg(long, env = "EXECGATE_AUTH_CACHE_ACCEPTED_SECS", default_value_t = 300)]
    pub auth_cache_accepted_secs: u64,
    /// Remote mode: seconds a rejected token stays cached.
    #[arg(long, env = "EXECGATE_AUTH_CACHE_REJECTED_SECS", default_value_t = 30)]
    pub auth_cache_rejected_secs: u64,
    /// Remote mode: seconds to wait for the authority's answer.
    #[arg(long, env = "EXECGATE_AUTH_TIMEOUT_SECS", default_value_t = 5)]
    pub auth_timeout_secs: u64,
    /// Serve POST /internal/validate-proxy-token from this gateway's store
    /// to callers sending this file's secret as X-Internal-Secret (other
    /// gateways' remote mode). Without it, /internal/* is 404.
    #[arg(long, env = "EXECGATE_INTERNAL_SECRET_FILE")]
    pub internal_secret_file: Option<PathBuf>,
    /// File holding the admin API's token [default: <data-dir>/admin-token,
    /// generated at first start].
    #[arg(long, env = "EXECGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// best-effort: a call whose audit record cannot be written goes on
    /// (and the record is counted as lost); fail-closed: it is refused with
    /// 503 audit_unavailable.
    #[arg(long, env = "EXECGATE_AUDIT", default_value = "best-effort")]
    pub audit: AuditMode,
    /// Requests per second each workspace may make (a token bucket per
    /// workspace, in this gateway's memory); 429 rate_limited beyond.
    /// Default: no limit.
    #[arg(long, env = "EXECGATE_RATE_LIMIT_RPS")]
    pub rate_limit_rps: Option<f64>,
    /// With --rate-limit-rps: how many requests may come at once
    /// [default: the rate, rounded up].
    #[arg(long, env = "EXECGATE_RATE_LIMIT_BURST", requires = "rate_limit_rps")]
    pub rate_limit_burst: Option<u32>,
    /// Live process sessions (exec_command) a workspace may have; 429
    /// too_many_sessions beyond. Default: no limit.
    #[arg(long, env = "EXECGATE_MAX_SESSIONS_PER_WORKSPACE")]
    pub max_sessions_per_workspace: Option<u32>,
    /// The HMAC secret of capability tokens (/bridge). Default:
    /// `<data-dir>/cap-token-secret`, generated at first start (mode 0600).
    /// `execgate admin captoken create` must use the same one.
    #[arg(long, env = "EXECGATE_CAP_TOKEN_SECRET_FILE")]
    pub cap_token_secret_file: Option<PathBuf>,
    /// Connections served at once (REST, MCP, executor links and bridge
    /// sessions together); past it a new connection gets 503
    /// too_many_connections and is closed at once [default: the open-file
    /// limit less 256, at most 20000].
    #[arg(long, env = "EXECGATE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Seconds a connection may take to send a request's headers, and stay
    /// idle between requests, before it is closed. Not applied while a
    /// request is served (long-polls, SSE, WebSockets).
    #[arg(long, env = "EXECGATE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Milliseconds between a live bridge session's checks that its turn
    /// was not revoked by another process [default: 5000]. Hidden: for
    /// tests, which need not wait the default interval.
    #[arg(long, hide = true, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub bridge_recheck_ms: Option<u64>,
    /// Run as one replica of several sharing one store: the URL other
    /// replicas reach this one at (`http(s)://host:port`). An executor's
    /// link is then held by one replica at a time (a lease), and a call
    /// arriving at another replica is forwarded to it (docs/replicas.md).
    #[arg(long, env = "EXECGATE_ADVERTISE_URL", requires = "cluster_secret_file")]
    pub advertise_url: Option<String>,
    /// With --advertise-url: the file of the secret every replica shares,
    /// which authenticates the replicas' peer channel. Never logged.
    #[arg(long, env = "EXECGATE_CLUSTER_SECRET_FILE", requires = "advertise_url")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Milliseconds an executor lease lasts without renewal [default:
    /// 10000]. Hidden: for tests.
    #[arg(long, hide = true, value_name = "MS", value_parser = clap::value_parser!(u64).range(500..))]
    pub lease_ms: Option<u64>,
    /// On SIGTERM (or Ctrl-C), how long the gateway drains before it exits:
    /// it refuses new requests and links (503 draining), lets the calls in
    /// flight finish, tells its executors to move to another replica, then
    /// exits 0. A second signal exits at once. Seconds, or with a unit
    /// (`500ms`, `30s`, `2m`).
    #[arg(long, env = "EXECGATE_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// On SIGTERM (or Ctrl-C), how long the gateway keeps serving every
    /// request while `/readyz` already answers 503 before it starts to
    /// drain: time for a load balancer that does not resend refused
    /// requests (a Kubernetes Service) to stop sending work here. Set it
    /// to the probe's period times its failure threshold. A second signal
    /// exits at once. Same units as --drain-timeout.
    #[arg(long, env = "EXECGATE_DRAIN_DELAY", value_name = "DURATION", default_value = "0s",
          value_parser = parse_duration)]
    pub drain_delay: Duration,
}

/// `30`, `30s`, `500ms`, `2m`: a duration for `--drain-timeout`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: a number, then ms, s or m"))?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        other => Err(format!("unknown unit {other:?}: use ms, s or m")),
    }
}

/// A shared secret from a file, without its trailing newline.
fn read_secret(path: &Path, flag: &str) -> anyhow::Result<SecretString> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(!secret.is_empty(), "{flag}: {} is empty", path.display());
    Ok(SecretString::new(secret))
}

impl GatewayArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::default_data_dir)
    }

    pub fn config(&self) -> anyhow::Result<GatewayConfig> {
        let mut c = GatewayConfig::new(self.listen, self.data_dir());
        c.database_url = self.database_url.clone();
        c.max_body_bytes = self.max_body_bytes;
        c.link.ping_timeout = Duration::from_secs(self.executor_ping_timeout_secs);
        c.link.bridge_request_timeout = Duration::from_secs(self.bridge_request_timeout_secs);
        c.public_url = self.public_url.clone();
        if let (Some(url), Some(file)) = (&self.agentserver_url, &self.agentserver_secret_file) {
            let secret = read_secret(file, "--agentserver-secret-file")?;
            let mut remote = RemoteConfig::new(url.clone(), secret);
            remote.timeout = Duration::from_secs(self.auth_timeout_secs.max(1));
            remote.cache = CacheConfig {
                capacity: self.auth_cache_capacity,
                accepted_ttl: Duration::from_secs(self.auth_cache_accepted_secs),
                rejected_ttl: Duration::from_secs(self.auth_cache_rejected_secs),
            };
            c.auth.verifier = VerifierConfig::Remote(remote);
        }
        c.cap_token_secret_file = self.cap_token_secret_file.clone();
        if let Some(file) = &self.internal_secret_file {
            c.auth.internal_secret = Some(read_secret(file, "--internal-secret-file")?);
        }
        c.admin_token_file = self.admin_token_file.clone();
        c.listener = ListenerConfig {
            max_connections: match self.max_connections {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => default_max_connections(crate::fdlimit::current()),
            },
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
        };
        if let Some(ms) = self.bridge_recheck_ms {
            c.link.bridge_recheck = Duration::from_millis(ms);
        }
        if let (Some(url), Some(file)) = (&self.advertise_url, &self.cluster_secret_file) {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--advertise-url must be an http:// or https:// URL"
            );
            let secret = read_secret(file, "--cluster-secret-file")?;
            anyhow::ensure!(
                secret.expose().len() >= 16,
                "--cluster-secret-file: the secret must be at least 16 bytes"
            );
            let mut cluster = ClusterConfig::new(url.clone(), secret);
            if let Some(ms) = self.lease_ms {
                cluster.lease = Duration::from_millis(ms);
                cluster.heartbeat = (cluster.lease / 5).min(cluster.heartbeat);
            }
            c.cluster = Some(cluster);
        }
        c.audit = self.audit;
        c.drain_timeout = self.drain_timeout;
        c.limits = LimitsConfig {
            rate: self.rate()?,
            max_sessions_per_workspace: match self.max_sessions_per_workspace {
                Some(0) => anyhow::bail!(
                    "--max-sessions-per-workspace must be at least 1 (leave it out for no limit)"
                ),
                n => n,
            },
        };
        Ok(c)
    }

    fn rate(&self) -> anyhow::Result<Option<RateConfig>> {
        let Some(rps) = self.rate_limit_rps else {
            return Ok(None);
        };
        anyhow::ensure!(
            rps.is_finite() && rps > 0.0,
            "--rate-limit-rps must be a positive number of requests per second"
        );
        let burst = self
            .rate_limit_burst
            .unwrap_or_else(|| rps.ceil().min(f64::from(u32::MAX)) as u32);
        anyhow::ensure!(burst >= 1, "--rate-limit-burst must be at least 1");
        Ok(Some(RateConfig {
            per_second: rps,
            burst,
        }))
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub async fn run(a: ServeArgs) -> anyhow::Result<()> {
    crate::fdlimit::raise_nofile_limit("gateway");
    if a.gateway.metrics_listen.is_some() {
        execgate_gateway::enable_metrics();
    }
    // Before the "listening" line: a SIGTERM that follows it must drain,
    // not kill.
    let signals = Signals::install();
    let gateway = Gateway::bind(a.gateway.config()?).await?;
    // Bound before the "listening" line, so that whoever waits for that
    // line can scrape at once.
    let metrics = match a.gateway.metrics_listen {
        Some(addr) => Some(start_metrics(addr, &gateway).await?),
        None => None,
    };
    // Scripts and tests read this line to learn the port (with --listen :0).
    println!(
        "execgate gateway listening on http://{}",
        gateway.local_addr()
    );
    if let Some(bound) = metrics {
        println!("execgate gateway metrics on http://{bound}/metrics");
    }
    match &a.gateway.database_url {
        Some(_) => tracing::info!("serving from the PostgreSQL store"),
        None => tracing::info!(data_dir = %a.gateway.data_dir().display(), "serving"),
    }
    if let Some(signals) = signals {
        tokio::spawn(signals.drain_on_them(gateway.handle(), a.gateway.drain_delay));
    }
    gateway.serve().await?;
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some(Signals { term, int }),
            _ => {
                tracing::warn!("cannot handle SIGTERM and SIGINT: the gateway will not drain");
                None
            }
        }
    }

    /// SIGTERM or SIGINT (Ctrl-C) starts a drain; `serve` returns when it
    /// is done. A second one of either exits at once (128 + the signal).
    async fn drain_on_them(self, handle: execgate_gateway::GatewayHandle, delay: Duration) {
        let Signals { mut term, mut int } = self;
        drain_on_signals(&mut term, &mut int, handle, delay).await;
    }
}

async fn drain_on_signals(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    handle: execgate_gateway::GatewayHandle,
    delay: Duration,
) {
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let mut second = None;
    if !delay.is_zero() {
        handle.leave();
        tracing::info!(
            drain_delay_secs = delay.as_secs_f64(),
            "{first}: not ready; serving on until the drain delay has passed"
        );
        second = tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            _ = term.recv() => Some(128 + 15),
            _ = int.recv() => Some(128 + 2),
        };
    }
    if let Some(code) = second {
        tracing::warn!("second signal: exiting at once, without draining");
        std::process::exit(code);
    }
    tracing::info!(
        drain_timeout_secs = handle.drain_timeout().as_secs_f64(),
        "{first}: draining; send SIGTERM or SIGINT again to exit at once"
    );
    handle.drain();
    let code = tokio::select! {
        _ = term.recv() => 128 + 15,
        _ = int.recv() => 128 + 2,
    };
    tracing::warn!("second signal: exiting at once, without waiting for the drain");
    std::process::exit(code);
}

/// Serves the gateway's `GET /metrics` on `addr` (metrics must be on).
pub async fn start_metrics(addr: SocketAddr, gateway: &Gateway) -> anyhow::Result<SocketAddr> {
    let handle = gateway.handle();
    crate::metrics_listen::start(
        addr,
        execgate_gateway::METRICS_CONTENT_TYPE,
        std::sync::Arc::new(move || {
            let handle = handle.clone();
            Box::pin(async move { handle.metrics_text().await })
        }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeouts_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 0 "), Ok(Duration::ZERO));
        for bad in ["", "s", "1h", "-1", "1.5s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
