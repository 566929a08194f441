//! `--metrics-listen`: the gateway's and the executor's `GET /metrics`,
//! scraped before and after known traffic and parsed (the Prometheus text
//! format 0.0.4, strictly: a line that is not a comment or a well-formed
//! sample fails the test); each counter must move by exactly what the
//! traffic did, with the right labels, and no secret or per-call value may
//! become a label. (prometheus-parse was tried: it splits label values on
//! `,`, `=` and `}`, and route templates hold braces.)

use std::collections::HashMap;

use serde_json::json;

use crate::harness::{execgate, fresh_client, stream_request, Prepared};

/// A free port of 127.0.0.1, for a `--metrics-listen` (the listener is
/// closed before the process binds it).
pub(crate) fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One scrape: its raw text, and its samples by (metric name, sorted labels).
pub(crate) struct Scrape {
    pub(crate) text: String,
    values: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Scrape {
    pub(crate) async fn of(addr: &str) -> Scrape {
        let r = fresh_client()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = r.text().await.unwrap();
        let values = parse(&text);
        assert!(!values.is_empty(), "no samples in:\n{text}");
        Scrape { text, values }
    }

    /// The sample `name{labels}`; 0 when absent (a counter not yet touched).
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.values
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every label value of metric `name`'s samples under label `key`.
    pub(crate) fn label_values(&self, name: &str, key: &str) -> Vec<String> {
        self.values
            .keys()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, ls)| ls.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()))
            .collect()
    }
}

type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses the Prometheus text format (0.0.4): `# HELP`/`# TYPE` comments,
/// and samples `name{label="value",…} value` whose label values may hold
/// any character, with `\\`, `\"` and `\n` escaped. Panics on anything else.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or_else(|| bad(line));
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let (key, r) = rest.split_once("=\"").unwrap_or_else(|| bad(line));
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => bad(line),
                        },
                        Some((_, c)) => value.push(c),
                        None => bad(line),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &r[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let value = rest.trim().split(' ').next().unwrap_or_else(|| bad(line));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| bad(line)),
        };
        labels.sort();
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "a sample twice: {line}"
        );
    }
    samples
}

fn bad(line: &str) -> ! {
    panic!("not a sample line: {line:?}")
}

/// The parser reads what it must, escapes and braces included.
#[test]
fn the_parser_reads_escapes_and_braces() {
    let s = parse(
        "# TYPE a counter\na_total{route=\"/x/{id}\",m=\"q\\\"\\\\,=\"} 3\nb 1.5\nh_bucket{le=\"+Inf\"} 2\n",
    );
    let key = |n: &str, l: &[(&str, &str)]| {
        (
            n.to_string(),
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        s[&key("a_total", &[("m", "q\"\\,="), ("route", "/x/{id}")])],
        3.0
    );
    assert_eq!(s[&key("b", &[])], 1.5);
    assert_eq!(s[&key("h_bucket", &[("le", "+Inf")])], 2.0);
}

/// The metric names the dashboard (docs/grafana/execgate.json) uses, each
/// time it uses one (a histogram's `_bucket` taken off).
pub(crate) fn dashboard_metrics() -> Vec<String> {
    let dashboard = include_str!("../../../../docs/grafana/execgate.json");
    dashboard
        .match_indices("execgate_")
        .map(|(i, _)| {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            name.strip_suffix("_bucket").unwrap_or(&name).to_string()
        })
        .collect()
}

/// Dashboard metrics that only a replica forwarding calls has samples of
/// (a histogram without samples is not in the text at all).
pub(crate) const REPLICA_ONLY: &[&str] = &["execgate_peer_request_duration_seconds"];

const CALL_ROUTE: &str = "/api/connectors/envs/{name}/tool/call";

#[tokio::test]
async fn gateway_and_executor_metrics_count_known_traffic() {
    let gw_metrics = free_addr();
    let exe_metrics = free_addr();
    let gw = Prepared::new(&execgate(), "w").serve(&["--metrics-listen", &gw_metrics]);
    let (_exe, work) = gw
        .executor("laptop", &["--metrics-listen", &exe_metrics])
        .await;
    std::fs::write(work.join("f.txt"), "one\ntwo\n").unwrap();
    let api = gw.api();

    let g0 = Scrape::of(&gw_metrics).await;
    let e0 = Scrape::of(&exe_metrics).await;
    assert_eq!(
        g0.get("execgate_executors_connected", &[("kind", "execgate")]),
        1.0
    );
    assert_eq!(
        g0.get("execgate_executors_connected", &[("kind", "codex")]),
        0.0
    );
    assert_eq!(
        g0.get("execgate_executor_links_total", &[("event", "connected")]),
        1.0
    );
    assert_eq!(e0.get("execgate_executor_connected", &[]), 1.0);
    assert!(
        e0.get("execgate_executor_open_fds", &[]) > 0.0,
        "{}",
        e0.text
    );

    // Known traffic: 3 shell calls printing 3 bytes each, 2 read_file, one
    // shell that fails as a tool (a program that does not exist), one
    // unknown tool, one unknown environment, one refused executor register.
    for _ in 0..3 {
        let r = api
            .call("laptop", "shell", json!({"command": ["echo", "hi"]}))
            .await;
        assert_eq!(r["isError"], false, "{r}");
    }
    for _ in 0..2 {
        let r = api
            .call("laptop", "read_file", json!({"path": "f.txt"}))
            .await;
        assert_eq!(r["isError"], false, "{r}");
    }
    let r = api
        .call(
            "laptop",
            "shell",
            json!({"command": ["/nonexistent/program-xyz"]}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    let (status, _) = api.call_raw("laptop", "no_such_tool", json!({})).await;
    assert_eq!(status, 400);
    let (status, _) = api.call_raw("nowhere", "shell", json!({})).await;
    assert_eq!(status, 404);
    let exe_id = gw
        .add_executor("spare", false)
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let refused = fresh_client()
        .post(format!(
            "{}/cloud/environment/{exe_id}/direct/register",
            gw.url
        ))
        .bearer_auth(format!("{exe_id}.wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A process session, whose sid must not become a label.
    let sid = api
        .exec("laptop", json!({"command": ["sleep", "30"]}))
        .await;

    let g1 = Scrape::of(&gw_metrics).await;
    let e1 = Scrape::of(&exe_metrics).await;
    let delta = |name: &str, labels: &[(&str, &str)]| g1.get(name, labels) - g0.get(name, labels);

    let calls = "execgate_tool_calls_total";
    assert_eq!(delta(calls, &[("tool", "shell"), ("outcome", "ok")]), 3.0);
    assert_eq!(
        delta(calls, &[("tool", "shell"), ("outcome", "tool_error")]),
        1.0
    );
    assert_eq!(
        delta(calls, &[("tool", "read_file"), ("outcome", "ok")]),
        2.0
    );
    assert_eq!(
        delta(calls, &[("tool", "unknown"), ("outcome", "unknown_tool")]),
        1.0
    );
    assert_eq!(
        delta(calls, &[("tool", "shell"), ("outcome", "env_not_found")]),
        1.0
    );
    assert_eq!(
        delta(calls, &[("tool", "exec_command"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        delta(
            "execgate_tool_call_duration_seconds_count",
            &[("tool", "shell")]
        ),
        5.0
    );
    let http = "execgate_http_requests_total";
    // 3 + 2 + 1 (the failing shell) + 1 (exec_command): 200s; the unknown
    // tool a 400, the unknown environment a 404, all on the template.
    let on_call = |status: &str| {
        delta(
            http,
            &[
                ("route", CALL_ROUTE),
                ("method", "POST"),
                ("status", status),
            ],
        )
    };
    assert_eq!(on_call("200"), 7.0, "{}", g1.text);
    assert_eq!(on_call("400"), 1.0);
    assert_eq!(on_call("404"), 1.0);
    assert_eq!(
        delta(
            "execgate_http_request_duration_seconds_count",
            &[("route", CALL_ROUTE)]
        ),
        9.0
    );
    assert_eq!(
        delta("execgate_executor_links_total", &[("event", "refused")]),
        1.0
    );
    // The three `echo hi`: 3 bytes each.
    assert_eq!(delta("execgate_output_bytes_total", &[]), 9.0);
    assert_eq!(delta("execgate_output_lost_bytes_total", &[]), 0.0);
    assert!(
        delta(
            "execgate_link_request_duration_seconds_count",
            &[("method", "process/start")]
        ) >= 5.0,
        "{}",
        g1.text
    );
    assert!(
        delta(
            "execgate_link_request_duration_seconds_count",
            &[("method", "fs/readFile")]
        ) >= 2.0
            || delta(
                "execgate_link_request_duration_seconds_count",
                &[("method", "fs/readRange")]
            ) >= 2.0,
        "{}",
        g1.text
    );
    assert_eq!(
        g1.get("execgate_process_sessions", &[("status", "live")]),
        1.0
    );
    assert!(
        g1.text.contains("execgate_audit_queue_depth "),
        "{}",
        g1.text
    );
    assert_eq!(g1.get("execgate_audit_records_dropped_total", &[]), 0.0);

    // Every route label is a template of the router, never a path.
    for route in g1.label_values(http, "route") {
        assert!(
            route == "unmatched" || !route.contains("laptop") && !route.contains("nowhere"),
            "a path as a route label: {route}"
        );
    }

    // The executor: one process/start each for the 3 + 1 shells and the
    // exec_command, the failing one refused; spawns timed for the 4 that ran.
    let edelta = |name: &str, labels: &[(&str, &str)]| e1.get(name, labels) - e0.get(name, labels);
    let requests = "execgate_executor_requests_total";
    assert_eq!(
        edelta(requests, &[("method", "process/start"), ("outcome", "ok")])
            + edelta(
                requests,
                &[("method", "process/start"), ("outcome", "error")]
            ),
        5.0,
        "{}",
        e1.text
    );
    assert_eq!(
        edelta("execgate_executor_spawn_duration_seconds_count", &[]),
        4.0,
        "{}",
        e1.text
    );
    assert!(edelta("execgate_executor_output_bytes_total", &[]) >= 9.0);

    // The dashboard (docs/grafana/execgate.json) names only metrics that
    // exist (those of replicas only: replicas::forwarded_calls_are_counted).
    let names = dashboard_metrics();
    for name in names.iter().filter(|n| !REPLICA_ONLY.contains(&n.as_str())) {
        let declared = format!("# TYPE {name} ");
        assert!(
            g1.text.contains(&declared) || e1.text.contains(&declared),
            "the dashboard uses {name}, which neither /metrics has"
        );
    }
    assert!(
        names.len() >= 20,
        "only {} metric names in the dashboard",
        names.len()
    );

    // No secret and no per-call value anywhere in either text.
    for text in [&g0.text, &g1.text, &e0.text, &e1.text] {
        for secret in [gw.token.as_str(), sid.as_str(), "f.txt", "nowhere"] {
            assert!(!text.contains(secret), "{secret:?} in the metrics:\n{text}");
        }
        assert!(!text.contains(work.to_str().unwrap()));
    }
}

/// A stream's output counts in `execgate_output_bytes_total` once, in SSE
/// and in binary form alike, whether it was pushed while the stream
/// followed the process (notifications) or read (`process/read`, here a
/// second stream of the ended process).
#[tokio::test]
async fn streamed_output_is_counted_once_pushed_or_read() {
    let gw_metrics = free_addr();
    let gw = Prepared::new(&execgate(), "w").serve(&["--metrics-listen", &gw_metrics]);
    let (_exe, work) = gw.executor("laptop", &[]).await;
    let api = gw.api();
    let output_bytes = || async {
        Scrape::of(&gw_metrics)
            .await
            .get("execgate_output_bytes_total", &[])
    };
    let stream = |sid: String, accept: &'static str| {
        let api = &api;
        async move {
            let resp = stream_request(api, &sid, "")
                .header("Accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{accept}");
            resp
        }
    };
    // Nothing until `go` exists: the stream is following by then, so the
    // output comes pushed.
    let script = "while [ ! -e go ]; do sleep 0.05; done; printf 12345; sleep 0.3; printf 67890";
    for (accept, outputs) in [
        ("text/event-stream", [&b"MTIzNDU="[..], b"Njc4OTA="]),
        ("application/octet-stream", [&b"12345"[..], b"67890"]),
    ] {
        let _ = std::fs::remove_file(work.join("go"));
        let sid = api
            .exec(
                "laptop",
                json!({"command": ["sh", "-c", script], "pipe_stdin": false}),
            )
            .await;
        let before = output_bytes().await;
        let resp = stream(sid.clone(), accept).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        std::fs::write(work.join("go"), "").unwrap();
        let body = tokio::time::timeout(std::time::Duration::from_secs(30), resp.bytes())
            .await
            .expect("the stream ends after the exit")
            .unwrap();
        for want in outputs {
            assert!(
                body.windows(want.len()).any(|w| w == want),
                "{accept}: {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        let pushed = output_bytes().await;
        assert_eq!(pushed - before, 10.0, "{accept}: pushed output");
        // The same output again, read: the process has ended.
        let body = stream(sid, accept).await.bytes().await.unwrap();
        assert!(body.len() > 10, "{accept}");
        assert_eq!(output_bytes().await - pushed, 10.0, "{accept}: read output");
    }
}

/// Off by default: without --metrics-listen nothing listens, and the API
/// has no /metrics route.
#[tokio::test]
async fn metrics_are_off_by_default() {
    let gw = Prepared::new(&execgate(), "w").serve(&[]);
    let r = fresh_client()
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The auth cache, the token authority's failures and the rate limit, on a
/// gateway in remote mode (`--agentserver-url`) against a second gateway
/// that is the token authority.
#[tokio::test]
async fn auth_cache_and_rate_limit_metrics() {
    use crate::harness::{admin, start_gateway_with, Api};

    const SECRET: &str = "metrics-test-internal-secret";
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("authority"), dir.path().join("gateway"));
    for d in [&a_dir, &b_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let secret_file = dir.path().join("internal-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    admin(&a_dir, &["workspace", "create", "w1"]);
    let good = admin(&a_dir, &["token", "create", "--workspace", "w1"]);
    admin(&b_dir, &["workspace", "create", "w1"]);
    let mut a = start_gateway_with(
        &a_dir,
        "127.0.0.1:0",
        &["--internal-secret-file", secret_file.to_str().unwrap()],
    );
    let metrics = free_addr();
    let b = start_gateway_with(
        &b_dir,
        "127.0.0.1:0",
        &[
            "--agentserver-url",
            &a.url(),
            "--agentserver-secret-file",
            secret_file.to_str().unwrap(),
            "--rate-limit-rps",
            "0.01",
            "--rate-limit-burst",
            "2",
            "--metrics-listen",
            &metrics,
        ],
    );
    let s0 = Scrape::of(&metrics).await;
    let list = |token: &str| {
        let api = Api::new(&b.url(), token);
        async move { api.post("/api/connectors/envs/list", json!({})).await.0 }
    };
    // good: a miss (asked upstream), a hit, a hit over the rate (429);
    // an unknown token: a miss, rejected upstream (401).
    assert_eq!(list(&good).await, 200);
    assert_eq!(list(&good).await, 200);
    assert_eq!(list(&good).await, 429);
    assert_eq!(list("egp_unknown-token").await, 401);
    // The authority down: another unknown token is a miss and an upstream error.
    a.proc.kill();
    assert_eq!(list("egp_another-unknown").await, 503);

    let s1 = Scrape::of(&metrics).await;
    let delta = |name: &str, labels: &[(&str, &str)]| s1.get(name, labels) - s0.get(name, labels);
    let cache = "execgate_auth_cache_requests_total";
    assert_eq!(delta(cache, &[("result", "miss")]), 3.0, "{}", s1.text);
    assert_eq!(delta(cache, &[("result", "hit")]), 2.0);
    assert_eq!(delta(cache, &[("result", "coalesced")]), 0.0);
    assert_eq!(delta("execgate_auth_upstream_errors_total", &[]), 1.0);
    assert_eq!(
        delta("execgate_rate_limited_total", &[("reason", "rate")]),
        1.0
    );
    assert_eq!(
        delta("execgate_rate_limited_total", &[("reason", "sessions")]),
        0.0
    );
    assert!(!s1.text.contains(&good), "a token in the metrics");
}
