//! Malformed requests get a clear 4xx with an error code, and the gateway
//! goes on serving.

use serde_json::{json, Value};

use crate::harness::*;

enum Body {
    Json(Value),
    Raw(&'static str),
    Big(usize),
}

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    auth: Option<&'static str>,
    body: Body,
    status: u16,
    code: &'static str,
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_gateway_keeps_serving() {
    let w = World::start(&[]).await;
    let sid = w.api.exec("laptop", json!({"command": ["cat"]})).await;
    let call = "/api/connectors/envs/laptop/tool/call".to_string();
    let tool = |t: &str, args: Value| Body::Json(json!({"tool": t, "arguments": args}));
    let proc_ = |op: &str| format!("/api/connectors/processes/{sid}/{op}");
    let list = "/api/connectors/envs/list".to_string();
    let cases = vec![
        Case {
            what: "no Authorization",
            method: "POST",
            path: list.clone(),
            auth: None,
            body: Body::Json(json!({})),
            status: 401,
            code: "missing_bearer",
        },
        Case {
            what: "Basic auth",
            method: "POST",
            path: list.clone(),
            auth: Some("Basic dXNlcjpwYXNz"),
            body: Body::Json(json!({})),
            status: 401,
            code: "missing_bearer",
        },
        Case {
            what: "unknown token",
            method: "POST",
            path: list.clone(),
            auth: Some("Bearer egp_not_a_token"),
            body: Body::Json(json!({})),
            status: 401,
            code: "invalid_token",
        },
        Case {
            what: "truncated JSON",
            method: "POST",
            path: list.clone(),
            auth: Some(""),
            body: Body::Raw("{"),
            status: 400,
            code: "bad_json",
        },
        Case {
            what: "not JSON",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: Body::Raw("hello"),
            status: 400,
            code: "bad_json",
        },
        Case {
            what: "missing tool",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: Body::Json(json!({"arguments": {}})),
            status: 400,
            code: "bad_request",
        },
        Case {
            what: "tool not a string",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: Body::Json(json!({"tool": 5})),
            status: 400,
            code: "bad_request",
        },
        Case {
            what: "unknown tool",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("rm_rf", json!({})),
            status: 400,
            code: "unknown_tool",
        },
        Case {
            what: "unknown env",
            method: "POST",
            path: "/api/connectors/envs/nope/tool/call".into(),
            auth: Some(""),
            body: tool("shell", json!({"command": ["true"]})),
            status: 404,
            code: "env_not_found",
        },
        Case {
            what: "arguments not an object",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: Body::Json(json!({"tool": "shell", "arguments": [1]})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "environment_id disagrees with path",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool(
                "shell",
                json!({"command": ["true"], "environment_id": "other"}),
            ),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "shell without command",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "command of wrong type",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({"command": 5})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "empty argv",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({"command": []})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "timeout_ms a string",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({"command": ["true"], "timeout_ms": "5"})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "unknown argument",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({"command": ["true"], "timeout": 5})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "env value not a string",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({"command": ["true"], "env": {"A": 1}})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "shell env name with '='",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({"command": ["true"], "env": {"A=B": "1"}})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "shell env name empty",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("shell", json!({"command": ["true"], "env": {"": "1"}})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "exec_command env name with NUL",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool(
                "exec_command",
                json!({"command": ["true"], "env": {"A\u{0}B": "1"}}),
            ),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "exec_command env name with '='",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool(
                "exec_command",
                json!({"command": ["true"], "env": {"=X": "1"}}),
            ),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "read_file without path",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("read_file", json!({})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "read_file negative offset",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("read_file", json!({"path": "x", "offset": -1})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "read_file empty path",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("read_file", json!({"path": ""})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "write_file bad base64",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool(
                "write_file",
                json!({"path": "x", "content_b64": "!!not base64!!"}),
            ),
            status: 400,
            code: "bad_base64",
        },
        Case {
            what: "write_file without content",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: tool("write_file", json!({"path": "x"})),
            status: 400,
            code: "bad_arguments",
        },
        Case {
            what: "stdin bad base64",
            method: "POST",
            path: proc_("stdin"),
            auth: Some(""),
            body: Body::Json(json!({"data_b64": "%%%"})),
            status: 400,
            code: "bad_base64",
        },
        Case {
            what: "stdin without data_b64",
            method: "POST",
            path: proc_("stdin"),
            auth: Some(""),
            body: Body::Json(json!({})),
            status: 400,
            code: "bad_request",
        },
        Case {
            what: "stdin unknown sid",
            method: "POST",
            path: "/api/connectors/processes/ps_nope/stdin".into(),
            auth: Some(""),
            body: Body::Json(json!({"data_b64": ""})),
            status: 404,
            code: "session_not_found",
        },
        Case {
            what: "output unknown sid",
            method: "GET",
            path: "/api/connectors/processes/ps_nope/output".into(),
            auth: Some(""),
            body: Body::Raw(""),
            status: 404,
            code: "session_not_found",
        },
        Case {
            what: "terminate unknown sid",
            method: "POST",
            path: "/api/connectors/processes/ps_nope/terminate".into(),
            auth: Some(""),
            body: Body::Json(json!({})),
            status: 404,
            code: "session_not_found",
        },
        Case {
            what: "since not a number",
            method: "GET",
            path: format!("{}?since=abc", proc_("output")),
            auth: Some(""),
            body: Body::Raw(""),
            status: 400,
            code: "bad_request",
        },
        Case {
            what: "oversized body",
            method: "POST",
            path: call.clone(),
            auth: Some(""),
            body: Body::Big(17 * 1024 * 1024),
            status: 413,
            code: "payload_too_large",
        },
        Case {
            what: "unknown route",
            method: "GET",
            path: "/api/connectors/nothing".into(),
            auth: Some(""),
            body: Body::Raw(""),
            status: 404,
            code: "not_found",
        },
        Case {
            what: "wrong method",
            method: "GET",
            path: list.clone(),
            auth: Some(""),
            body: Body::Raw(""),
            status: 405,
            code: "method_not_allowed",
        },
    ];
    assert!(cases.len() >= 20);

    let http = fresh_client();
    for c in cases {
        let url = format!("{}{}", w.api.url, c.path);
        let mut req = match c.method {
            "GET" => http.get(&url),
            _ => http.post(&url),
        };
        match c.auth {
            Some("") => req = req.bearer_auth(&w.api.token),
            Some(h) => req = req.header("Authorization", h),
            None => {}
        }
        req = match c.body {
            Body::Json(v) => req.json(&v),
            Body::Raw(s) => req.body(s),
            Body::Big(n) => {
                let mut s = String::from("{\"tool\":\"shell\",\"arguments\":{\"command\":[\"");
                s.push_str(&"x".repeat(n));
                s.push_str("\"]}}");
                req.header("content-type", "application/json").body(s)
            }
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.what));
        let status = resp.status().as_u16();
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: body is not the JSON envelope: {e}", c.what));
        assert_eq!(status, c.status, "{}: {body}", c.what);
        assert_eq!(body["error"]["code"], c.code, "{}: {body}", c.what);
        let msg = body["error"]["message"].as_str().unwrap_or("");
        assert!(msg.len() > 10, "{}: message too thin: {body}", c.what);
    }

    // Messages name the field at fault.
    let (_, v) = w
        .api
        .call_raw(
            "laptop",
            "shell",
            json!({"command": ["true"], "timeout_ms": "5"}),
        )
        .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout_ms"),
        "{v}"
    );

    // The gateway still serves a normal call, and the session is intact.
    let r = w
        .api
        .call(
            "laptop",
            "shell",
            json!({"command": ["echo", "still here"]}),
        )
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "still here\n");
    assert_eq!(w.api.stdin(&sid, b"ok\n", false).await.0, 200);
}

/// What the HTTP stack answers by itself (an extractor's plain-text
/// rejection) carries the envelope too, and two `Authorization` headers are
/// refused wherever a token is read, not resolved to the first.
#[tokio::test]
async fn bare_rejections_get_the_envelope_and_two_authorization_headers_are_refused() {
    let w = World::start(&[]).await;
    let http = fresh_client();
    // axum's own Query rejection (a duplicate field): once text/plain.
    let resp = http
        .get(format!(
            "{}/cloud/environment/exe_0000000000000000/direct/connect?ticket=a&ticket=b",
            w.api.url
        ))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("the envelope");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");

    let two = |req: reqwest::RequestBuilder| {
        req.header("Authorization", format!("Bearer {}", w.api.token))
            .header("Authorization", "Bearer egp_someone_else")
    };
    for (what, req) in [
        (
            "REST",
            two(http.post(format!("{}/api/connectors/envs/list", w.api.url))).json(&json!({})),
        ),
        (
            "MCP",
            two(http.post(format!("{}/mcp", w.api.url)))
                .header("Accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
        ),
        (
            "register",
            two(http.post(format!(
                "{}/cloud/environment/exe_0000000000000000/direct/register",
                w.api.url
            )))
            .json(&json!({})),
        ),
    ] {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.expect("the envelope");
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than one"),
            "{what}: {v}"
        );
    }
}
