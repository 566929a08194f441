//! The OpenAPI 3.1 document of the public HTTP API (`GET /openapi.json`,
//! `execgate openapi`).
//!
//! The paths are not written here: each public handler carries its own
//! `#[utoipa::path]`, and [`crate::http::public_routes`] registers handlers
//! and document entries from one list (utoipa-axum's `routes!`), so a route
//! cannot be served without being documented, nor documented without being
//! served. This module owns what is shared by every operation: the info
//! block, the proxy-token security scheme, and the error envelope, which
//! [`finish`] adds to every operation as the responses any of them
//! can give (400, 401, 429, 503 and `default`).

use execgate_protocol::connectors::ErrorResponse;

use crate::ops::tools::{Route, CORE_TOOLS};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

/// The name of the bearer scheme in `components.securitySchemes`.
pub const PROXY_TOKEN: &str = "proxy_token";

/// The document's fixed parts; paths are added by the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "execgate connectors API",
        description = "Agents call tools on connected machines (environments) of their \
workspace: list environments, call tools, drive processes, stream files. Every \
route takes a workspace-scoped proxy token as `Authorization: Bearer`. Errors \
are `{\"error\":{\"code\",\"message\"}}`; clients match on `code`.",
        license(name = "MIT"),
    ),
    security(("proxy_token" = [])),
    components(schemas(ErrorResponse)),
    modifiers(&ProxyTokenScheme),
    tags(
        (name = "environments", description = "Connected machines and their tools"),
        (name = "processes", description = "exec_command sessions: stdin, output, signals"),
        (name = "files", description = "Raw file bytes, streamed"),
    )
)]
pub struct ApiDoc;

/// The `{sid}` of the process routes, for their `params(...)`.
#[derive(utoipa::IntoParams)]
#[into_params(names("sid"), parameter_in = Path)]
#[allow(dead_code)] // a description for the document, never built
pub struct SessionPath(
    /// The session id exec_command returned.
    String,
);

/// What every `{sid}` route answers when the session cannot be reached, for
/// their `responses(...)`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the document, never built
pub enum SessionErrors {
    /// No such session in this workspace (`session_not_found`).
    #[response(status = 404)]
    NotFound(ErrorResponse),
    /// The executor forgot the process (`session_expired`), or restarted
    /// and lost it (`executor_restarted`).
    #[response(status = 410)]
    Gone(ErrorResponse),
}

/// The `Idempotency-Key` header of the mutating routes, for their
/// `params(...)` (see `http::idempotency`).
#[derive(utoipa::IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
#[allow(dead_code)] // a description for the document, never built
pub struct IdempotencyKey(
    /// Makes a retry safe: a repeat with the same key and the same request
    /// (method, path, body) within 24 h answers the first answer without
    /// doing it again, with `Idempotent-Replayed: true`; a duplicate sent
    /// while the first runs waits for it. 1-255 bytes of printable ASCII
    /// (a UUID), scoped to the workspace.
    #[param(min_length = 1, max_length = 255, pattern = "^[ -~]+$")]
    Option<String>,
);

/// What a request with an `Idempotency-Key` can answer besides its own
/// answers, for their `responses(...)`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the document, never built
pub enum IdempotencyErrors {
    /// The key's first request was cut off before its answer was recorded,
    /// or ended 503 with its outcome unknown (the executor's link went away
    /// after the request was sent) (`idempotency_key_in_doubt`), or its
    /// answer was over 1 MiB and not kept (`idempotency_answer_too_large`);
    /// it is not done again.
    #[response(status = 409)]
    Conflict(ErrorResponse),
    /// The key was used for a different request (`idempotency_key_reused`).
    #[response(status = 422)]
    Reused(ErrorResponse),
}

/// A file's raw bytes, as the `/files` routes send and take them (not JSON).
/// OpenAPI 3.1 spells this as a string with a `contentMediaType`.
pub struct FileBytes;

impl PartialSchema for FileBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl ToSchema for FileBytes {}

/// One Server-Sent Event of `GET /processes/{sid}/stream`, as OpenAPI 3.1
/// (and schemathesis) describe an event stream: an object with `event`,
/// `id` and `data`, whose `data` is JSON with its own `contentSchema`. The
/// events are written by [`crate::http::stream`].
pub struct StreamEvent;

impl PartialSchema for StreamEvent {
    fn schema() -> RefOr<Schema> {
        let event = |name: &str, description: &str, data: serde_json::Value| {
            serde_json::json!({
                "type": "object",
                "description": description,
                "required": ["event", "data"],
                "properties": {
                    "event": {"type": "string", "enum": [name]},
                    "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The seq; resume after it with Last-Event-ID."},
                    "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
                }
            })
        };
        let seq = serde_json::json!({"type": "integer", "minimum": 0});
        let schema = serde_json::json!({"oneOf": [
            event("output", "A chunk of output; `id` is its seq.", serde_json::json!({
                "type": "object", "required": ["stream", "data_b64"],
                "properties": {
                    "stream": {"type": "string", "enum": ["stdout", "stderr", "pty"]},
                    "data_b64": {"type": "string", "contentEncoding": "base64"},
                }
            })),
            event("lost", "Output the executor dropped before it was read: seqs `from_seq`..=`to_seq`, `bytes` of it (null when unknown).", serde_json::json!({
                "type": "object", "required": ["from_seq", "to_seq", "bytes"],
                "properties": {"from_seq": seq, "to_seq": seq, "bytes": {"type": ["integer", "null"], "minimum": 0}}
            })),
            event("exit", "The process exited; the stream ends.", serde_json::json!({
                "type": "object", "required": ["exit_code"],
                "properties": {"exit_code": {"type": ["integer", "null"]}}
            })),
            event("error", "The stream cannot go on (`executor_restarted`, `session_expired`, `executor_unavailable`); the stream ends and the client may resume.", serde_json::json!({
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
            })),
        ]});
        // Fixed and valid: the unit test checks it survives into the document.
        RefOr::T(serde_json::from_value(schema).unwrap_or_default())
    }
}

impl ToSchema for StreamEvent {}

/// The binary form of `GET /processes/{sid}/stream` (`Accept:
/// application/octet-stream`): frames, described in words (OpenAPI has no
/// schema for a binary framing). The framing is
/// `execgate_protocol::output_frames`.
pub struct OutputFrames;

impl PartialSchema for OutputFrames {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .description(Some(OUTPUT_FRAMES_DOC))
            .into()
    }
}

impl ToSchema for OutputFrames {}

/// What `OutputFrames` says in the document.
pub const OUTPUT_FRAMES_DOC: &str = "A sequence of frames, each a 13-byte header \
`[u8 type][u64 big-endian seq][u32 big-endian length]` and `length` payload bytes \
(at most 16 MiB). Types: 0 keepalive (seq 0, empty; after 15 s of silence); \
1 stdout, 2 stderr, 3 pty: raw output bytes, seq = the last seq the frame carries \
(consecutive chunks of one stream may share a frame: it carries every output byte \
with a seq after the previous frame's seq up to its own); 4 lost: seq = to_seq, \
payload the JSON `{\"from_seq\",\"to_seq\",\"bytes\"}` (bytes null when unknown); \
5 exit: seq = the last seq, payload `{\"exit_code\"}`, then the stream ends; \
6 error: seq = the last seq delivered, payload `{\"code\",\"message\"}`, then the \
stream ends. The JSON payloads are the SSE events' `data`, byte for byte. Resume \
with `?since=` (or `Last-Event-ID`) = the seq of the last whole frame read; skip \
frames of an unknown type.";

struct ProxyTokenScheme;

impl Modify for ProxyTokenScheme {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            PROXY_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A workspace-scoped proxy token (`execgate admin token create`).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The error responses every operation shares. A handler's own
/// `responses(...)` lists what is particular to it (404 for an unknown
/// environment, 410 for an expired session…); those are kept.
struct ErrorResponses;

impl ErrorResponses {
    const SHARED: &'static [(&'static str, &'static str)] = &[
        (
            "400",
            "Bad input: malformed JSON, a wrong field, an out-of-range parameter, \
             an unknown tool (`unknown_tool`). The message names the field.",
        ),
        (
            "401",
            "Missing, unknown or revoked proxy token (`missing_bearer`, `invalid_token`).",
        ),
        (
            "429",
            "Over the workspace's rate limit (`rate_limited`) or its cap on live sessions \
             (`too_many_sessions`); `Retry-After` says when to try again.",
        ),
        (
            "503",
            "Try again later (`Retry-After` says when): the executor is not connected \
             (`executor_unavailable`), the token authority cannot answer (`auth_unavailable`), \
             the audit log cannot be written (`audit_unavailable`, with `--audit fail-closed`), \
             or this gateway is draining for a restart (`draining`: retry, another replica serves it).",
        ),
        (
            "default",
            "Any other failure, in the same envelope; `code` says which.",
        ),
    ];

    fn envelope(description: &str) -> Response {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name(
                        ErrorResponse::name(),
                    ))))
                    .build(),
            )
            .build()
    }
}

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let ops: [&mut Option<Operation>; 4] = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                // An unauthenticated operation (`security: [{}]`, only
                // /healthz) does no work that can fail.
                let open = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                if open {
                    continue;
                }
                for (status, description) in Self::SHARED {
                    op.responses
                        .responses
                        .entry((*status).to_string())
                        .or_insert_with(|| RefOr::T(Self::envelope(description)));
                }
            }
        }
    }
}

/// Completes the document once the router added its paths: the shared
/// error responses go on every operation, and the core tools' argument
/// schemas join the components.
pub fn finish(doc: &mut OpenApi) {
    ErrorResponses.modify(doc);
    core_tool_arguments(doc);
    replayed_header(doc);
}

/// `Idempotent-Replayed: true` on every answer of the operations that take
/// an `Idempotency-Key` (a replay has the first answer's status, whichever).
fn replayed_header(doc: &mut OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.post, &mut item.put].into_iter().flatten() {
            let keyed = op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p, RefOr::T(p) if p.name == "Idempotency-Key"));
            if !keyed {
                continue;
            }
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response.headers.insert(
                        "Idempotent-Replayed".into(),
                        RefOr::T(HeaderBuilder::new()
                            .schema(Some(
                                ObjectBuilder::new()
                                    .schema_type(Type::String)
                                    .enum_values(Some(["true"])),
                            ))
                            .description(Some(
                                "`true` when this is the answer of an earlier request with the same Idempotency-Key, replayed without doing it again",
                            ))
                            .build()),
                    );
                }
            }
        }
    }
}

/// `ShellArguments`, `ReadFileArguments`…: the `arguments` of each core tool
/// of `tool/call`, from the same schemas MCP advertises
/// ([`crate::ops::tools`], checked against the REST parsers by a test).
/// `ToolCallRequest.arguments` stays a plain object because custom tools
/// take any shape (envs/list gives each one's `input_schema`).
fn core_tool_arguments(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    for tool in CORE_TOOLS.iter().filter(|t| t.route == Route::Rest) {
        let schema = serde_json::Value::Object(tool.input_schema());
        // The schemas are ours and valid; a failure here is a bug that the
        // unit test below catches.
        if let Ok(schema) = serde_json::from_value::<Schema>(schema) {
            components
                .schemas
                .insert(arguments_schema_name(tool.name), RefOr::T(schema));
        }
    }
}

/// `read_file` → `ReadFileArguments`.
fn arguments_schema_name(tool: &str) -> String {
    let mut name: String = tool
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    name.push_str("Arguments");
    name
}

/// The whole document, as `/openapi.json` serves it.
pub fn document() -> OpenApi {
    let mut doc = crate::http::public_routes().into_openapi();
    finish(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_operations_document_the_replay_header() {
        let doc = serde_json::to_value(document()).unwrap();
        let ok = &doc["paths"]["/api/connectors/envs/{name}/tool/call"]["post"]["responses"]["200"];
        assert_eq!(
            ok["headers"]["Idempotent-Replayed"]["schema"]["enum"],
            serde_json::json!(["true"])
        );
        let put = &doc["paths"]["/api/connectors/envs/{name}/files"]["put"]["responses"]["422"];
        assert!(put["headers"]["Idempotent-Replayed"].is_object(), "{put}");
        let get = &doc["paths"]["/api/connectors/envs/{name}/files"]["get"]["responses"]["200"];
        assert!(get["headers"].get("Idempotent-Replayed").is_none());
    }

    #[test]
    fn is_openapi_3_1_with_bearer_scheme_and_envelope() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            doc["components"]["securitySchemes"][PROXY_TOKEN]["scheme"],
            "bearer"
        );
        let envelope = &doc["components"]["schemas"]["ErrorResponse"];
        assert_eq!(envelope["required"], serde_json::json!(["error"]));
    }

    #[test]
    fn stream_event_schema_is_not_empty() {
        let doc = serde_json::to_value(document()).unwrap();
        let one_of = &doc["components"]["schemas"]["StreamEvent"]["oneOf"];
        assert_eq!(one_of.as_array().map(Vec::len), Some(4), "{one_of}");
        // utoipa's model drops keywords it does not know (`const`, for one):
        // check the ones schemathesis relies on survived.
        let output = &one_of[0]["properties"];
        assert_eq!(output["event"]["enum"], serde_json::json!(["output"]));
        assert_eq!(output["data"]["contentMediaType"], "application/json");
        assert_eq!(
            output["data"]["contentSchema"]["required"],
            serde_json::json!(["stream", "data_b64"])
        );
    }

    #[test]
    fn every_rest_core_tool_has_its_arguments_schema() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for tool in CORE_TOOLS.iter().filter(|t| t.route == Route::Rest) {
            let name = arguments_schema_name(tool.name);
            assert_eq!(
                schemas[&name],
                serde_json::Value::Object(tool.input_schema()),
                "{name}"
            );
        }
        assert!(schemas["ApplyPatchArguments"].is_object());
    }

    #[test]
    fn authenticated_operations_document_the_envelope() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = &op["responses"];
                if path == "/healthz" || path == "/readyz" {
                    assert!(responses.get("401").is_none());
                    continue;
                }
                seen += 1;
                for status in ["400", "401", "429", "503", "default"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorResponse",
                        "{method} {path} {status}"
                    );
                }
            }
        }
        assert!(seen >= 11, "only {seen} operations");
    }
}
