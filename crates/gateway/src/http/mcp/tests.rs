//! The MCP schemas against the real argument parsers, and the pure helpers.

use super::*;
use crate::link::Link;
use crate::ops::tools::{parse_args, ReadOutputArgs, Route, TerminateArgs, WriteStdinArgs};
use crate::store::Store;

/// The field names a `deny_unknown_fields` struct accepts, read from the
/// parser's own refusal of an unknown field ("expected one of `a`, `b`").
fn accepted_fields(error: &crate::ops::Error) -> Vec<String> {
    assert_eq!(error.code, code::BAD_ARGUMENTS, "{error}");
    let (_, expected) = error
        .message
        .split_once("expected")
        .unwrap_or_else(|| panic!("not an unknown-field refusal: {error}"));
    let mut fields: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    fields.sort();
    fields
}

fn schema_fields(tool: &tools::CoreTool) -> (Vec<String>, Vec<String>) {
    let s = tool.input_schema();
    let mut props: Vec<String> = s["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    props.sort();
    let required = s
        .get("required")
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    (props, required)
}

/// A value of the property's schema type, good enough for the parser.
fn sample(property: &Value) -> Value {
    match property["type"].as_str() {
        Some("integer") => json!(1),
        Some("boolean") => json!(false),
        Some("object") => json!({}),
        _ => json!("true"),
    }
}

/// Checks one tool's schema against `parse`: the same field set, and each
/// required field refused when missing.
async fn check<F, Fut>(tool: &tools::CoreTool, parse: F)
where
    F: Fn(Map<String, Value>) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::ops::Error>>,
{
    let (props, required) = schema_fields(tool);
    let mut unknown = Map::new();
    unknown.insert("zz_not_a_field".into(), json!(1));
    let e = parse(unknown).await.unwrap_err();
    assert_eq!(
        accepted_fields(&e),
        props,
        "{}: the MCP schema (left side: the REST parser) disagrees; fix its declaration in crates/gateway/src/ops/tools/",
        tool.name
    );
    let schema = tool.input_schema();
    for missing in &required {
        let args: Map<String, Value> = required
            .iter()
            .filter(|r| *r != missing)
            .map(|r| (r.clone(), sample(&schema["properties"][r])))
            .collect();
        let e = parse(args).await.unwrap_err();
        assert!(
            e.message.contains(&format!("missing field `{missing}`")),
            "{}: {missing} is required by the schema but: {e}",
            tool.name
        );
    }
}

#[tokio::test]
async fn rest_structs_match_the_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let state = AppState::new(
        GatewayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().into()),
        store,
    );
    let caller = Caller {
        workspace: "w".into(),
        user_id: None,
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let link = Link::new("exe_1".into(), "w".into(), "laptop".into(), tx);
    // Every core tool the REST API offers is an MCP tool routed to it, with
    // the same fields. (Arguments are parsed before the link is used.)
    let rest_tools: Vec<String> = tools::list(&link)
        .into_iter()
        .filter(|t| t.kind == "core")
        .map(|t| t.name)
        .collect();
    assert!(rest_tools.len() >= 4, "{rest_tools:?}");
    for name in &rest_tools {
        let tool = tools::core_tool(name)
            .unwrap_or_else(|| panic!("REST tool {name} has no declaration in ops/tools"));
        assert_eq!(tool.route, Route::Rest, "{name}");
        let (state, caller, link) = (&state, &caller, &link);
        check(tool, move |args| async move {
            let link = async { Ok(link.clone()) };
            tools::call(state, caller, Via::Mcp, "laptop", link, name, args)
                .await
                .map(|_| ())
        })
        .await;
    }
    // The MCP-only tools against their own structs.
    for tool in tools::CORE_TOOLS {
        let name = tool.name;
        match tool.route {
            Route::Rest => continue,
            Route::ListEnvironments => {
                check(tool, |a| async move {
                    parse_args::<tools::ListEnvironmentsArgs>(a).map(|_| ())
                })
                .await
            }
            Route::WriteStdin => {
                check(tool, |a| async move {
                    parse_args::<WriteStdinArgs>(a).map(|_| ())
                })
                .await
            }
            Route::ReadOutput => {
                check(tool, |a| async move {
                    parse_args::<ReadOutputArgs>(a).map(|_| ())
                })
                .await
            }
            Route::Terminate => {
                check(tool, |a| async move {
                    parse_args::<TerminateArgs>(a).map(|_| ())
                })
                .await
            }
        }
        assert!(!rest_tools.iter().any(|r| r == name), "{name}");
    }
}

#[test]
fn every_schema_is_a_closed_object_with_environment_id() {
    for tool in tools::CORE_TOOLS {
        let s = tool.input_schema();
        assert_eq!(s["type"], "object", "{}", tool.name);
        assert_eq!(s["additionalProperties"], false, "{}", tool.name);
        assert_eq!(
            s["properties"]["environment_id"]["type"], "string",
            "{}",
            tool.name
        );
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(
                s["properties"].get(r.as_str().unwrap()).is_some(),
                "{}: {r}",
                tool.name
            );
        }
    }
}

#[test]
fn api_errors_map_to_mcp() {
    let bad = answer(Err(ApiError::bad_arguments(
        "arguments.timeout_ms: must be at least 1",
    )))
    .unwrap_err();
    assert_eq!(bad.code, ErrorCode::INVALID_PARAMS);
    assert!(bad.message.contains("timeout_ms"));
    let unknown = answer(Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        code::UNKNOWN_TOOL,
        "nope",
    )))
    .unwrap_err();
    assert_eq!(unknown.code, ErrorCode::METHOD_NOT_FOUND);
    let offline = answer(Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code::EXECUTOR_UNAVAILABLE,
        "executor 'laptop' is not connected (last seen 5 s ago)",
    )))
    .unwrap();
    assert_eq!(offline.is_error, Some(true));
    let v = serde_json::to_value(&offline).unwrap();
    assert_eq!(
        v["structuredContent"]["error"]["code"],
        "executor_unavailable"
    );
    assert!(v["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not connected"));
}

fn offer(env: &str, is_default: bool) -> Offer {
    Offer {
        env: env.into(),
        is_default,
        description: "d".into(),
        schema: json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
    }
}

#[test]
fn custom_tools_take_environment_id_and_require_it_when_ambiguous() {
    let one = custom_tool("echo_arg", &[offer("gpu-1", false)]);
    assert_eq!(
        one.input_schema["properties"]["environment_id"]["enum"],
        json!(["gpu-1"])
    );
    assert_eq!(one.input_schema["required"], json!(["text"]));
    let with_default = custom_tool("echo_arg", &[offer("a", false), offer("b", true)]);
    assert_eq!(with_default.input_schema["required"], json!(["text"]));
    let ambiguous = custom_tool("echo_arg", &[offer("a", false), offer("b", false)]);
    assert_eq!(
        ambiguous.input_schema["required"],
        json!(["text", "environment_id"])
    );
    assert!(ambiguous.description.unwrap().contains("offered by a, b"));
}

#[test]
fn allowed_hosts_follow_the_listen_address_and_public_url() {
    let mut c = GatewayConfig::new("127.0.0.1:6060".parse().unwrap(), "/tmp".into());
    assert!(allowed_hosts(&c)
        .unwrap()
        .contains(&"localhost".to_string()));
    c.listen = "10.1.2.3:6060".parse().unwrap();
    c.public_url = Some("https://gw.example:6060/".into());
    let hosts = allowed_hosts(&c).unwrap();
    assert!(hosts.contains(&"10.1.2.3".to_string()), "{hosts:?}");
    assert!(hosts.contains(&"gw.example".to_string()), "{hosts:?}");
    c.listen = "0.0.0.0:6060".parse().unwrap();
    c.public_url = None;
    assert_eq!(allowed_hosts(&c), None);
}

#[test]
fn a_cancellation_reaches_one_call_of_its_token_or_none() {
    let inflight = Arc::new(Inflight::default());
    let a = inflight.register("tok-a", &json!(7));
    let _b = inflight.register("tok-b", &json!(7));
    assert!(
        !inflight.cancel("tok-a", &json!("7")),
        "an id's type counts"
    );
    assert!(!inflight.cancel("tok-c", &json!(7)), "another token's call");
    assert!(inflight.cancel("tok-a", &json!(7)));
    assert!(*a.cancelled.borrow());
    // Two calls of one token with one id: ambiguous, none is cancelled.
    let c = inflight.register("tok-b", &json!(7));
    assert!(!inflight.cancel("tok-b", &json!(7)));
    drop(c);
    assert!(inflight.cancel("tok-b", &json!(7)));
    drop(a);
    drop(_b);
    assert!(inflight.lock().is_empty(), "entries go with their calls");
}

#[test]
fn cancelled_notifications_are_recognised() {
    let id = |body: &str| cancelled_request_id(body.as_bytes());
    assert_eq!(
        id(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#),
        Some(json!(3))
    );
    assert_eq!(
        id(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"x","reason":"r"}}"#
        ),
        Some(json!("x"))
    );
    // A request of that name, another method, no id: not one.
    assert_eq!(
        id(
            r#"{"jsonrpc":"2.0","id":1,"method":"notifications/cancelled","params":{"requestId":3}}"#
        ),
        None
    );
    assert_eq!(
        id(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"requestId":3}}"#),
        None
    );
    assert_eq!(
        id(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}"#),
        None
    );
}

/// `tasks/get`'s wire shape per status (the specification's `DetailedTask`):
/// a result (an `isError` one too) is `completed`, an error `tools/call`
/// answers as JSON-RPC is `failed` with it, and a tool error the call
/// answers as a result (an executor that restarted) is `completed`.
#[test]
fn a_task_is_working_completed_failed_or_cancelled_on_the_wire() {
    let task = |state| tasks::Task {
        task_id: "ps_1".into(),
        created_at_ms: 1_764_000_000_000,
        updated_at_ms: 1_764_000_001_000,
        ttl_ms: 1_860_000,
        poll_interval_ms: 1000,
        status_message: None,
        state,
    };
    let wire = |state| {
        serde_json::to_value(GetTaskResult::new(detailed_task(task(state)).unwrap())).unwrap()
    };

    let working = wire(tasks::TaskState::Working);
    assert_eq!(
        working,
        json!({"resultType": "complete", "taskId": "ps_1", "status": "working",
               "createdAt": "2025-11-24T16:00:00Z", "lastUpdatedAt": "2025-11-24T16:00:01Z",
               "ttlMs": 1_860_000, "pollIntervalMs": 1000})
    );
    let done = wire(tasks::TaskState::Done(Ok(CallToolResult::text(
        "out\n[exit_code=3]",
        Some(json!({"stdout": "out\n", "exit_code": 3})),
        false,
    ))));
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["result"]["structuredContent"]["exit_code"], 3,
        "{done}"
    );
    assert_eq!(done["result"]["isError"], false, "{done}");
    let restarted = wire(tasks::TaskState::Done(Err(crate::ops::Error::new(
        code::EXECUTOR_RESTARTED,
        "executor 'laptop' restarted",
    ))));
    assert_eq!(restarted["status"], "completed");
    assert_eq!(restarted["result"]["isError"], true, "{restarted}");
    let failed = wire(tasks::TaskState::Done(Err(
        crate::ops::Error::bad_arguments("arguments.command: missing"),
    )));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], -32602, "{failed}");
    assert!(failed.get("result").is_none(), "{failed}");
    let cancelled = wire(tasks::TaskState::Cancelled);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled.get("result").is_none() && cancelled.get("error").is_none());
    // An unknown task (or another workspace's) is -32602.
    let e = task_error(tasks::task_not_found("ps_x"));
    assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
}
