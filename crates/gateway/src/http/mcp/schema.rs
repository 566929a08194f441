//! The MCP server's core tools: name, description, and the JSON Schema of
//! their arguments (`inputSchema`), written once, here.
//!
//! Six of them (`shell` … `copy_path`) are the REST tools and take exactly
//! the fields of their REST argument structs (`crate::ops::tools::*Args`); the
//! `rest_structs_match_the_schemas` test in `mcp` checks that, field by
//! field, against the real parser, so the two cannot drift apart silently.
//! The other four exist only in MCP, where there is no `/processes` URL to
//! post to; their argument structs live next to their schemas.
//!
//! Every schema says `additionalProperties: false`, because the REST structs
//! refuse unknown fields: advertising otherwise would invite calls that
//! fail.

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// How a core MCP tool is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `crate::ops::tools::call`, exactly as `POST /envs/{name}/tool/call`.
    Rest,
    ListEnvironments,
    WriteStdin,
    ReadOutput,
    Terminate,
}

pub struct CoreTool {
    pub name: &'static str,
    pub description: &'static str,
    pub route: Route,
    /// The tool's own properties (without `environment_id`) and required names.
    properties: fn() -> Value,
    required: &'static [&'static str],
}

impl CoreTool {
    /// The tool's `inputSchema`: its properties plus `environment_id`.
    pub fn input_schema(&self) -> Map<String, Value> {
        let mut properties = match (self.properties)() {
            Value::Object(map) => map,
            _ => unreachable!("properties are an object"),
        };
        properties.insert("environment_id".into(), environment_id_property(self.route));
        object_schema(properties, self.required)
    }
}

/// `{type: object, properties, required, additionalProperties: false}`.
pub fn object_schema(properties: Map<String, Value>, required: &[&str]) -> Map<String, Value> {
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), json!(required));
    }
    schema.insert("additionalProperties".into(), json!(false));
    schema
}

fn environment_id_property(route: Route) -> Value {
    let description = match route {
        Route::ListEnvironments => "Only this environment (a name from list_environments).",
        Route::WriteStdin | Route::ReadOutput | Route::Terminate => {
            "Optional check: the environment the session runs in. The session_id alone \
             identifies the process."
        }
        Route::Rest => {
            "The environment to run in (a name from list_environments). \
             Default: the workspace's default environment."
        }
    };
    json!({"type": "string", "minLength": 1, "description": description})
}

fn command() -> Value {
    json!({
        "description": "An argv array, or a string run with `sh -c`.",
        "oneOf": [
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            {"type": "string", "minLength": 1}
        ]
    })
}

fn env() -> Value {
    json!({
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Environment variables set on top of the executor's."
    })
}

fn timeout_ms(default: u64) -> Value {
    json!({
        "type": "integer", "minimum": 1, "maximum": 86_400_000u64,
        "description": format!("Time limit in milliseconds (default {default}).")
    })
}

fn sandbox() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "description": "Run the process in a narrower sandbox than the environment's own (Landlock; \
                        never a wider one, which is refused with 403 policy_denied). `write`: it may \
                        change files only beneath these existing paths (and /dev/null, terminals); \
                        `[]` for none. `net: \"deny\"`: no TCP connect or bind.",
        "properties": {
            "write": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "net": {"type": "string", "enum": ["allow", "deny"]}
        }
    })
}

fn session_id() -> Value {
    json!({"type": "string", "minLength": 1, "description": "The session_id exec_command returned."})
}

pub const CORE_TOOLS: &[CoreTool] = &[
    CoreTool {
        name: "list_environments",
        description: "List the connected environments (machines) of this workspace, which one is \
                      the default, and the tools each offers.",
        route: Route::ListEnvironments,
        properties: || json!({}),
        required: &[],
    },
    CoreTool {
        name: "shell",
        description: "Run a command to completion and return its stdout, stderr and exit code. \
                      A non-zero exit is not an error; a timeout kills the whole process group.",
        route: Route::Rest,
        properties: || {
            json!({
                "command": command(),
                "cwd": {"type": "string", "description": "Working directory (default: the executor's)."},
                "env": env(),
                "timeout_ms": timeout_ms(60_000),
                "sandbox": sandbox()
            })
        },
        required: &["command"],
    },
    CoreTool {
        name: "read_file",
        description: "Read a file; the content comes back base64-encoded. Relative paths resolve \
                      against the executor's working directory.",
        route: Route::Rest,
        properties: || {
            json!({
                "path": {"type": "string", "minLength": 1},
                "offset": {"type": "integer", "minimum": 0, "description": "Byte offset to start at."},
                "limit": {"type": "integer", "minimum": 0, "description": "Bytes to read; 0 reads to the end."}
            })
        },
        required: &["path"],
    },
    CoreTool {
        name: "write_file",
        description: "Write a file atomically from base64 content.",
        route: Route::Rest,
        properties: || {
            json!({
                "path": {"type": "string", "minLength": 1},
                "content_b64": {"type": "string", "contentEncoding": "base64",
                                "description": "The whole new content, standard base64."},
                "create_parents": {"type": "boolean", "default": true,
                                   "description": "Create missing parent directories."}
            })
        },
        required: &["path", "content_b64"],
    },
    CoreTool {
        name: "apply_patch",
        description: "Apply a patch in Codex's grammar (*** Begin Patch … *** End Patch: Add File, \
                      Update File with @@ hunks, Move to, Delete File), atomically across files.",
        route: Route::Rest,
        properties: || {
            json!({
                "patch": {"type": "string", "minLength": 1},
                "dry_run": {"type": "boolean", "default": false, "description": "Only check that it applies."},
                "expected_sha256": {
                    "type": "object", "additionalProperties": {"type": "string"},
                    "description": "path → SHA-256 (hex) the file must have, else nothing is changed."
                }
            })
        },
        required: &["patch"],
    },
    CoreTool {
        name: "exec_command",
        description: "Start a long-running process and return its session_id. Then use \
                      write_stdin, read_output and terminate with that session_id.",
        route: Route::Rest,
        properties: || {
            json!({
                "command": command(),
                "cwd": {"type": "string"},
                "env": env(),
                "tty": {"type": "boolean", "default": false, "description": "Run under a pseudo-terminal."},
                "pipe_stdin": {"type": "boolean", "default": true,
                               "description": "Keep stdin open for write_stdin."},
                "cols": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "Terminal width (tty)."},
                "rows": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "Terminal height (tty)."},
                "max_runtime_ms": {"type": "integer", "minimum": 1,
                                   "description": "Terminate the process (its whole group) once it has run this long."},
                "sandbox": sandbox()
            })
        },
        required: &["command"],
    },
    CoreTool {
        name: "copy_path",
        description: "Copy a file or (with recursive) a directory tree between environments of this \
                      workspace, verified by SHA-256; nothing appears at the destination unless complete.",
        route: Route::Rest,
        properties: || {
            json!({
                "source_environment_id": {"type": "string", "minLength": 1},
                "source_path": {"type": "string", "minLength": 1},
                "destination_environment_id": {"type": "string", "minLength": 1},
                "destination_path": {"type": "string", "minLength": 1},
                "recursive": {"type": "boolean", "default": false},
                "timeout_ms": timeout_ms(600_000)
            })
        },
        required: &[
            "source_environment_id",
            "source_path",
            "destination_environment_id",
            "destination_path",
        ],
    },
    CoreTool {
        name: "write_stdin",
        description: "Write to the stdin of a process started by exec_command: `chars` (text) or \
                      `data_b64` (bytes), and/or `eof: true` to close stdin. With a tty, \"\\u0003\" is Ctrl-C.",
        route: Route::WriteStdin,
        properties: || {
            json!({
                "session_id": session_id(),
                "chars": {"type": "string", "description": "Text to write, as UTF-8."},
                "data_b64": {"type": "string", "contentEncoding": "base64", "description": "Bytes to write, standard base64."},
                "eof": {"type": "boolean", "default": false, "description": "Close stdin after writing."}
            })
        },
        required: &["session_id"],
    },
    CoreTool {
        name: "read_output",
        description: "Read a process's output after seq `after_seq`, waiting up to `wait_ms` for \
                      some. Pass the answer's next_since as after_seq to read on; session_alive \
                      turns false once it has exited and all output was read.",
        route: Route::ReadOutput,
        properties: || {
            json!({
                "session_id": session_id(),
                "after_seq": {"type": "integer", "minimum": 0, "default": 0,
                              "description": "Return chunks with seq greater than this."},
                "wait_ms": {"type": "integer", "minimum": 0, "default": 0,
                            "description": format!("Long-poll up to this long when there is no new \
                                                    output (at most {} ms; longer waits are capped).",
                                                   crate::ops::processes::MAX_WAIT_MS)}
            })
        },
        required: &["session_id"],
    },
    CoreTool {
        name: "terminate",
        description: "Terminate a process started by exec_command (its whole process group).",
        route: Route::Terminate,
        properties: || json!({"session_id": session_id()}),
        required: &["session_id"],
    },
];

/// The core tool `name`, if there is one.
pub fn core_tool(name: &str) -> Option<&'static CoreTool> {
    CORE_TOOLS.iter().find(|t| t.name == name)
}

/// `list_environments`' arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEnvironmentsArgs {
    #[serde(default)]
    pub environment_id: Option<String>,
}

/// `write_stdin`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteStdinArgs {
    pub session_id: String,
    #[serde(default)]
    pub chars: Option<String>,
    #[serde(default)]
    pub data_b64: Option<String>,
    #[serde(default)]
    pub eof: bool,
    #[serde(default)]
    pub environment_id: Option<String>,
}

/// `read_output`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOutputArgs {
    pub session_id: String,
    #[serde(default)]
    pub after_seq: u64,
    #[serde(default)]
    pub wait_ms: u64,
    #[serde(default)]
    pub environment_id: Option<String>,
}

/// `terminate`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminateArgs {
    pub session_id: String,
    #[serde(default)]
    pub environment_id: Option<String>,
}
