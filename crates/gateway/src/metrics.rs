//! The gateway's Prometheus metrics: one registry, process-wide, off until
//! [`enable`] (what `execgate serve --metrics-listen` and `execgate up` call).
//!
//! A leaf at the crate root, like `secret`: every layer records into it
//! (the HTTP router, the tool calls, the link, the auth cache, the limits)
//! and it names none of them. While metrics are off, [`get`] is `None` and
//! a recording site costs one atomic load; while on, a counter is an atomic
//! add and a histogram an uncontended lock, behind a label lookup (a
//! read-locked hash map of `&'static str` labels, no allocation). Families
//! whose few labels are known in advance are resolved once, at
//! [`enable`], into handles (`links`, `auth_cache`, `rate_limited`).
//!
//! **Bounded labels.** Every label value is a `&'static str` from a fixed
//! set: a route *template* (interned, see [`route_label`]; axum's
//! `MatchedPath`, of which there are as many as routes), an HTTP method
//! (the standard ones, else `other`), a core tool's name (`custom` and
//! `unknown` for the rest), an error code, a link method of the protocol
//! (else `other`). Never a sid, a token, a path or a name an executor or
//! an agent chose.
//!
//! What is only known at scrape time (executors connected, process
//! sessions, the audit queue) is not kept here: `ops::metrics` reads it
//! from the gateway's state and encodes it after this registry.
//!
//! Replicas (`link::peer`): a replica that reaches an executor through the
//! replica holding it counts each request it sends there
//! (`execgate_forwarded_calls_total{outcome}`, with [`Forwarded`]'s fixed
//! outcomes) and its round trip through the peer
//! (`execgate_peer_request_duration_seconds{method}`); the holder counts
//! what it relays for peers (`execgate_peer_relayed_requests_total`).

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for this process (idempotent) and returns them.
pub fn enable() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The metrics, when they are on.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Latency buckets, in seconds: 0.5 ms to ~65 s, doubling.
fn latency() -> Histogram {
    Histogram::new((0..18).map(|i| 0.0005 * f64::from(1u32 << i)))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolOutcome {
    tool: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a request forwarded to the replica that holds the executor ended
/// (`execgate_forwarded_calls_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// The executor answered with a result.
    Ok,
    /// The executor, or the holder on its behalf (its own timeout, a
    /// policy refusal), answered with a JSON-RPC error.
    Error,
    /// No answer within the request's deadline.
    Timeout,
    /// The channel through the holder was lost before the answer.
    Disconnected,
    /// The holder could not be reached: dialling it failed, or did within
    /// the last 500 ms for the same lease (the call was not sent).
    Unreachable,
    /// The caller stopped waiting (its client went away).
    Cancelled,
}

impl Forwarded {
    const ALL: [&'static str; 6] = [
        "ok",
        "error",
        "timeout",
        "disconnected",
        "unreachable",
        "cancelled",
    ];
}

/// A link event (`execgate_executor_links_total{event}`).
#[derive(Clone, Copy, Debug)]
pub enum LinkEvent {
    Connected,
    Disconnected,
    Refused,
}

/// How the auth cache answered (`execgate_auth_cache_requests_total{result}`).
#[derive(Clone, Copy, Debug)]
pub enum CacheResult {
    Hit,
    Miss,
    /// A miss that waited for another request's upstream call.
    Coalesced,
}

/// Why a request was refused by a limit (`execgate_rate_limited_total{reason}`).
#[derive(Clone, Copy, Debug)]
pub enum Limited {
    /// The workspace's request rate.
    Rate,
    /// The workspace's live process sessions.
    Sessions,
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: LatencyFamily<RouteLabel>,
    tool_calls: Family<ToolOutcome, Counter>,
    tool_duration: LatencyFamily<ToolLabel>,
    links: [Counter; 3],
    output_bytes: Counter,
    output_lost_bytes: Counter,
    auth_cache: [Counter; 3],
    auth_upstream_errors: Counter,
    rate_limited: [Counter; 2],
    link_duration: LatencyFamily<MethodLabel>,
    forwarded: [Counter; 6],
    peer_duration: LatencyFamily<MethodLabel>,
    peer_relayed: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("execgate");
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration = LatencyFamily::new_with_constructor(latency as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response head, by route template",
            Unit::Seconds,
            http_duration.clone(),
        );
        let tool_calls = Family::default();
        registry.register(
            "tool_calls",
            "Tool calls (REST and MCP), by tool and outcome: ok, tool_error or the error code",
            tool_calls.clone(),
        );
        let tool_duration = LatencyFamily::new_with_constructor(latency as fn() -> Histogram);
        registry.register_with_unit(
            "tool_call_duration",
            "Duration of tool calls, by tool",
            Unit::Seconds,
            tool_duration.clone(),
        );
        let link_family = Family::<EventLabel, Counter>::default();
        registry.register(
            "executor_links",
            "Executor links: connected (handshake done), disconnected, refused",
            link_family.clone(),
        );
        let links = ["connected", "disconnected", "refused"]
            .map(|event| link_family.get_or_create_owned(&EventLabel { event }));
        let output_bytes = Counter::default();
        registry.register(
            "output_bytes",
            "Process output bytes the gateway received for callers (shell, /output, SSE)",
            output_bytes.clone(),
        );
        let output_lost_bytes = Counter::default();
        registry.register(
            "output_lost_bytes",
            "Process output bytes callers could not get: the executor no longer kept them",
            output_lost_bytes.clone(),
        );
        let cache_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "auth_cache_requests",
            "Proxy-token lookups of the remote verifier's cache: hit, miss, coalesced",
            cache_family.clone(),
        );
        let auth_cache = ["hit", "miss", "coalesced"]
            .map(|result| cache_family.get_or_create_owned(&ResultLabel { result }));
        let auth_upstream_errors = Counter::default();
        registry.register(
            "auth_upstream_errors",
            "Failed calls to the token authority",
            auth_upstream_errors.clone(),
        );
        let limited_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a workspace limit: rate (requests per second), sessions (live process sessions)",
            limited_family.clone(),
        );
        let rate_limited = ["rate", "sessions"]
            .map(|reason| limited_family.get_or_create_owned(&ReasonLabel { reason }));
        let link_duration = LatencyFamily::new_with_constructor(latency as fn() -> Histogram);
        registry.register_with_unit(
            "link_request_duration",
            "Gateway-to-executor round trips, by protocol method",
            Unit::Seconds,
            link_duration.clone(),
        );
        let forwarded_family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "forwarded_calls",
            "Executor requests sent through the replica that holds the executor, by outcome: ok, error, timeout, disconnected, unreachable, cancelled",
            forwarded_family.clone(),
        );
        let forwarded = Forwarded::ALL
            .map(|outcome| forwarded_family.get_or_create_owned(&OutcomeLabel { outcome }));
        let peer_duration = LatencyFamily::new_with_constructor(latency as fn() -> Histogram);
        registry.register_with_unit(
            "peer_request_duration",
            "Round trips of executor requests through the replica that holds the executor, by protocol method",
            Unit::Seconds,
            peer_duration.clone(),
        );
        let peer_relayed = Counter::default();
        registry.register(
            "peer_relayed_requests",
            "Executor requests this replica relayed to its executors for other replicas",
            peer_relayed.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            tool_calls,
            tool_duration,
            links,
            output_bytes,
            output_lost_bytes,
            auth_cache,
            auth_upstream_errors,
            rate_limited,
            link_duration,
            forwarded,
            peer_duration,
            peer_relayed,
        }
    }

    /// Appends the Prometheus text format (0.0.4) of every metric here.
    pub fn encode(&self, out: &mut String) {
        let _ = prometheus_client::encoding::prometheus_text::encode(out, &self.registry);
    }

    /// One HTTP request answered (`route`: see [`route_label`]).
    pub fn http_request(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        let method = method_label(method);
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    /// One tool call finished (`tool`: a core tool's name, `custom` or
    /// `unknown`; `outcome`: `ok`, `tool_error` or an error code).
    pub fn tool_call(&self, tool: &'static str, outcome: &'static str, took: Duration) {
        self.tool_calls
            .get_or_create(&ToolOutcome { tool, outcome })
            .inc();
        self.tool_duration
            .get_or_create(&ToolLabel { tool })
            .observe(took.as_secs_f64());
    }

    pub fn link(&self, event: LinkEvent) {
        self.links[event as usize].inc();
    }

    /// One gateway-to-executor request answered (or failed) after `took`.
    pub fn link_request(&self, method: &str, took: Duration) {
        self.link_duration
            .get_or_create(&MethodLabel {
                method: execgate_protocol::exec::method_label(method),
            })
            .observe(took.as_secs_f64());
    }

    /// One request sent through the replica that holds the executor, ended
    /// after `took`: its outcome, and its round trip by method.
    pub fn forwarded_request(&self, method: &str, outcome: Forwarded, took: Duration) {
        self.forwarded(outcome);
        self.peer_duration
            .get_or_create(&MethodLabel {
                method: execgate_protocol::exec::method_label(method),
            })
            .observe(took.as_secs_f64());
    }

    /// One forwarded request's outcome (alone: [`Forwarded::Unreachable`],
    /// which sent nothing).
    pub fn forwarded(&self, outcome: Forwarded) {
        self.forwarded[outcome as usize].inc();
    }

    /// One request relayed for another replica.
    pub fn peer_relayed(&self) {
        self.peer_relayed.inc();
    }

    /// Output bytes delivered, and bytes lost before they could be.
    pub fn output(&self, bytes: u64, lost: u64) {
        if bytes > 0 {
            self.output_bytes.inc_by(bytes);
        }
        if lost > 0 {
            self.output_lost_bytes.inc_by(lost);
        }
    }

    pub fn auth_cache(&self, result: CacheResult) {
        self.auth_cache[result as usize].inc();
    }

    pub fn auth_upstream_error(&self) {
        self.auth_upstream_errors.inc();
    }

    pub fn rate_limited(&self, why: Limited) {
        self.rate_limited[why as usize].inc();
    }
}

/// The label of an HTTP method: the standard ones, else `other`.
fn method_label(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|m| *m == method)
        .unwrap_or("other")
}

/// A route template as a `&'static str` label. Templates are the router's
/// (axum's `MatchedPath`): a fixed set, so each is leaked once and the map
/// stays as small as the router.
pub fn route_label(template: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashMap<Box<str>, &'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(label) = routes.read().unwrap().get(template) {
        return label;
    }
    let mut routes = routes.write().unwrap();
    // Defensive bound: a router with this many routes does not exist.
    if routes.len() >= 1024 {
        return "other";
    }
    routes
        .entry(template.into())
        .or_insert_with(|| Box::leak(template.to_owned().into_boxed_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "other");
        use execgate_protocol::exec::method_label as link;
        assert_eq!(link("process/start"), "process/start");
        assert_eq!(link("anything/else"), "other");
        let a = route_label("/api/x/{id}");
        let b = route_label("/api/x/{id}");
        assert!(std::ptr::eq(a, b), "one leak per template");
    }

    #[test]
    fn encodes_the_text_format() {
        let m = Metrics::new();
        m.tool_call("shell", "ok", Duration::from_millis(3));
        m.link(LinkEvent::Refused);
        let mut out = String::new();
        m.encode(&mut out);
        assert!(
            out.contains("execgate_tool_calls_total{tool=\"shell\",outcome=\"ok\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("execgate_executor_links_total{event=\"refused\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("execgate_tool_call_duration_seconds_count{tool=\"shell\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn counts_forwarded_requests_by_outcome() {
        let m = Metrics::new();
        m.forwarded_request("fs/readFile", Forwarded::Ok, Duration::from_millis(2));
        m.forwarded_request("fs/readFile", Forwarded::Error, Duration::from_millis(2));
        m.forwarded_request("peer/anything", Forwarded::Cancelled, Duration::ZERO);
        m.forwarded(Forwarded::Unreachable);
        m.peer_relayed();
        let mut out = String::new();
        m.encode(&mut out);
        for (outcome, n) in [
            ("ok", 1),
            ("error", 1),
            ("timeout", 0),
            ("disconnected", 0),
            ("unreachable", 1),
            ("cancelled", 1),
        ] {
            let line = format!("execgate_forwarded_calls_total{{outcome=\"{outcome}\"}} {n}\n");
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(
            out.contains(
                "execgate_peer_request_duration_seconds_count{method=\"fs/readFile\"} 2\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("execgate_peer_request_duration_seconds_count{method=\"other\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("execgate_peer_relayed_requests_total 1\n"),
            "{out}"
        );
    }
}
