//! Pieces of JSON Schema the core tools' declarations share. Every schema
//! says `additionalProperties: false`, because the argument structs refuse
//! unknown fields: advertising otherwise would invite calls that fail.

use serde_json::{json, Map, Value};

use super::Route;

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

/// The `environment_id` every core tool takes, as its route reads it.
pub fn environment_id_property(route: Route) -> Value {
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

pub fn command() -> Value {
    json!({
        "description": "An argv array, or a string run with `sh -c`.",
        "oneOf": [
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            {"type": "string", "minLength": 1}
        ]
    })
}

pub fn env() -> Value {
    json!({
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Environment variables set on top of the executor's."
    })
}

pub fn timeout_ms(default: u64) -> Value {
    json!({
        "type": "integer", "minimum": 1, "maximum": 86_400_000u64,
        "description": format!("Time limit in milliseconds (default {default}).")
    })
}

pub fn sandbox() -> Value {
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

pub fn session_id() -> Value {
    json!({"type": "string", "minLength": 1, "description": "The session_id exec_command returned."})
}
