//! `--otlp-endpoint`: one REST tool call with a W3C `traceparent` yields
//! the gateway's and the executor's spans in one trace, exported over
//! OTLP/HTTP to a receiver in this test (axum on 127.0.0.1, decoding the
//! protobuf with opentelemetry-proto), with each parent right:
//! caller → http.request → tool.call → link.request → executor.request →
//! process.spawn.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::json;

use crate::harness::{eventually, execgate, fresh_client, Prepared};

/// One exported span: its service and what the test looks at.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` (protobuf).
async fn receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut sink = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        sink.push(Got {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent: hex::encode(&span.parent_span_id),
                            attributes: span
                                .attributes
                                .iter()
                                .map(|a| (a.key.clone(), text(&a.value)))
                                .collect(),
                        });
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    axum::body::Bytes::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

const HTTP: &str = "POST /api/connectors/envs/{name}/tool/call";

#[tokio::test]
async fn one_tool_call_is_one_trace_across_gateway_and_executor() {
    let (otlp, got) = receiver().await;
    let gw = Prepared::new(&execgate(), "w").serve(&["--otlp-endpoint", &otlp]);
    let (_exe, _work) = gw.executor("laptop", &["--otlp-endpoint", &otlp]).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = fresh_client()
        .post(format!("{}/api/connectors/envs/laptop/tool/call", gw.url))
        .bearer_auth(&gw.token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"tool": "shell", "arguments": {"command": ["echo", "argument-secret"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["isError"], false, "{body}");

    let spans = eventually(Duration::from_secs(20), "the executor's spans", || {
        let got = got.clone();
        async move {
            let spans: Vec<Got> = got
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            let has = |n: &str| spans.iter().any(|s| s.name == n);
            (has(HTTP) && has("tool shell") && has("process.spawn")).then_some(spans)
        }
    })
    .await;
    let one = |name: &str| -> Got {
        let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "no {name} in {spans:#?}");
        found[0].clone()
    };
    // Span names as OpenTelemetry shows them (`otel.name`): the HTTP
    // server span is `METHOD route`, the others `tool T`, `link M`,
    // `executor M`.
    let http = one(HTTP);
    assert_eq!(http.service, "execgate-gateway");
    assert_eq!(http.parent, caller_span, "the traceparent is its parent");
    assert_eq!(
        http.attr("http.route"),
        Some("/api/connectors/envs/{name}/tool/call")
    );
    let tool = one("tool shell");
    assert_eq!(tool.parent, http.span_id);
    assert_eq!(tool.attr("tool"), Some("shell"));
    assert_eq!(tool.attr("environment"), Some("laptop"));
    assert_eq!(tool.attr("workspace"), Some("w"));
    let start = spans
        .iter()
        .find(|s| s.name == "link process/start" && s.attr("rpc.method") == Some("process/start"))
        .unwrap_or_else(|| panic!("no link process/start in {spans:#?}"));
    assert_eq!(start.parent, tool.span_id);
    let handled = spans
        .iter()
        .find(|s| {
            s.name == "executor process/start" && s.attr("rpc.method") == Some("process/start")
        })
        .unwrap_or_else(|| panic!("no executor process/start in {spans:#?}"));
    assert_eq!(handled.service, "execgate-executor");
    assert_eq!(handled.parent, start.span_id, "across the link");
    let spawn = one("process.spawn");
    assert_eq!(spawn.service, "execgate-executor");
    assert_eq!(spawn.parent, handled.span_id);
    // Names, never arguments or output.
    for s in &spans {
        for (k, v) in &s.attributes {
            assert!(!v.contains("argument-secret"), "{k}={v} in {}", s.name);
        }
    }
}

/// `--log-format json`: every line of the gateway's log is a JSON object,
/// and a line logged while serving a request that came with a
/// `traceparent` carries that trace id (in its span list: the request's
/// span), even without an OTLP endpoint.
#[tokio::test]
async fn json_logs_carry_the_trace_id() {
    let gw = Prepared::new(&execgate(), "w").serve(&["--log-format", "json"]);
    let exe_id = gw
        .add_executor("spare", false)
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    // A malformed SigV4 register: refused with a warning, logged inside
    // the request's span.
    let r = fresh_client()
        .post(format!(
            "{}/cloud/environment/{exe_id}/direct/register",
            gw.url
        ))
        .header("authorization", "AWS4-HMAC-SHA256 nonsense")
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let log = gw.data_dir.join("gateway.log");
    let line = eventually(Duration::from_secs(10), "the warning in the log", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut found = None;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(
                    v["level"].is_string() && v["timestamp"].is_string(),
                    "{line}"
                );
                if v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("SigV4 request refused"))
                {
                    found = Some(v);
                }
            }
            found
        }
    })
    .await;
    let spans = line["spans"].as_array().expect("a span list");
    assert!(
        spans.iter().any(|s| s["trace_id"] == trace_id),
        "no trace id in {line}"
    );
}
