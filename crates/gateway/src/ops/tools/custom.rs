//! Custom tools: commands an executor's owner declared in its `--tools`
//! file, announced in `initialize` (`environmentInfo.execgate.tools`).
//!
//! A call validates `arguments` against the tool's JSON Schema (400
//! `bad_arguments` naming the field), fills the argv template in and runs
//! it exactly like `shell` ([`shell::run_to_completion`]), so the result has
//! the same shape.
//!
//! Templating ([`render_argv`]): an argv element that is exactly `{name}` is
//! replaced by argument `name` as one element, never through a shell. An
//! absent (or null) argument drops its element, so optional flags-as-values
//! simply disappear. Strings go as they are, numbers and booleans as their
//! JSON text (`5`, `2.5`, `true`); arrays and objects are refused, because
//! there is no single obvious way to turn them into one argv element.
//! `{name}` inside a longer element is not substituted (the executor refuses
//! a file that tries, when `name` is a declared argument).

use std::time::Duration;

use execgate_protocol::connectors::{error_code, CallToolResult, ConnectorTool};
use execgate_protocol::custom_tool::{placeholder, CustomToolSpec};
use serde_json::{Map, Value};

use super::shell::{self, Command};
use super::{args, ToolContext};
use crate::link::Link;
use crate::ops::Error;

/// The custom tools the link's executor announced, in file order.
pub fn specs(link: &Link) -> Vec<CustomToolSpec> {
    link.ext().tools
}

/// Custom tools as envs/list shows them, skipping any whose name is in
/// `core` (a core tool always wins; our executor refuses such a file, but a
/// different executor might not).
pub fn list(link: &Link, core: &[&str]) -> Vec<ConnectorTool> {
    specs(link)
        .into_iter()
        .filter(|s| !core.contains(&s.name.as_str()))
        .map(|s| ConnectorTool {
            name: s.name,
            description: s.description,
            kind: "custom".into(),
            input_schema: Some(s.schema),
        })
        .collect()
}

/// The custom tool `name` of the link's executor, if it announced one.
pub fn find(link: &Link, name: &str) -> Option<CustomToolSpec> {
    specs(link).into_iter().find(|s| s.name == name)
}

/// Runs custom tool `spec` with `arguments`.
pub async fn call(
    ctx: &ToolContext<'_>,
    spec: CustomToolSpec,
    mut arguments: Map<String, Value>,
) -> Result<CallToolResult, Error> {
    // The handler has checked `environment_id` against the path; it is not
    // the tool's argument unless its schema declares it.
    let declares_env_id = spec
        .schema
        .get("properties")
        .and_then(|p| p.get("environment_id"))
        .is_some();
    if !declares_env_id {
        arguments.remove("environment_id");
    }
    let arguments = Value::Object(arguments);
    validate(&spec, &arguments)?;
    // The executor's tools file sets these, not the caller: an unusable
    // name is the executor's fault (502), as an unusable schema is.
    if let Some(problem) = spec
        .env
        .iter()
        .find_map(|(name, value)| args::env_var_problem(name, value))
    {
        return Err(Error::new(
            error_code::EXECUTOR_ERROR,
            format!(
                "the executor announced custom tool {:?} with an unusable env: {problem}",
                spec.name
            ),
        ));
    }
    let command = Command {
        argv: render_argv(&spec.argv, &arguments)?,
        cwd: args::cwd_uri(&ctx.link, spec.cwd.as_deref())?,
        env: spec.env,
        timeout: Duration::from_millis(spec.timeout_ms),
        sandbox: None,
        max_output: shell::default_max_output(ctx),
    };
    shell::run_to_completion(ctx, command).await
}

/// Checks `arguments` against the tool's schema; the error names the first
/// failing field, like `arguments.text: 5 is not of type "string"`.
fn validate(spec: &CustomToolSpec, arguments: &Value) -> Result<(), Error> {
    // Compiled per call: schemas are small, and the executor may reconnect
    // with a different file at any time, so there is nothing safe to cache
    // by name.
    let validator = jsonschema::validator_for(&spec.schema).map_err(|e| {
        Error::new(
            error_code::EXECUTOR_ERROR,
            format!(
                "the executor announced custom tool {:?} with an unusable schema: {e}",
                spec.name
            ),
        )
    })?;
    let first = validator
        .iter_errors(arguments)
        .next()
        .map(|e| format!("{}: {e}", field_path(e.instance_path().as_str())));
    match first {
        None => Ok(()),
        Some(message) => Err(Error::bad_arguments(message)),
    }
}

/// A JSON pointer into `arguments` as a field path: `/a/0/b` becomes
/// `arguments.a[0].b`, the root `arguments`.
fn field_path(pointer: &str) -> String {
    let mut out = String::from("arguments");
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            out.push('.');
            out.push_str(&segment);
        }
    }
    out
}

/// Fills the argv template in (rules in the module header).
pub fn render_argv(template: &[String], arguments: &Value) -> Result<Vec<String>, Error> {
    let mut argv = Vec::with_capacity(template.len());
    for element in template {
        let Some(name) = placeholder(element) else {
            argv.push(element.clone());
            continue;
        };
        let value = match arguments.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            Some(v @ (Value::Array(_) | Value::Object(_))) => {
                let what = if v.is_array() {
                    "an array"
                } else {
                    "an object"
                };
                return Err(Error::bad_arguments(format!(
                    "arguments.{name}: is {what}, but it fills the argv element {element:?}, which takes one string, number or boolean"
                )));
            }
        };
        if value.contains('\0') {
            return Err(Error::bad_arguments(format!(
                "arguments.{name}: contains a NUL byte, which no argv element can hold"
            )));
        }
        argv.push(value);
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placeholders_become_exactly_one_element_each() {
        let t = template(&[
            "printf",
            "%s|%s|%s",
            "{text}",
            "{n}",
            "{flag}",
            "--x={text}",
        ]);
        let nasty = "$(touch /tmp/x); echo hi > f && rm -rf x | cat";
        let argv = render_argv(&t, &json!({"text": nasty, "n": 2.5, "flag": true})).unwrap();
        assert_eq!(
            argv,
            ["printf", "%s|%s|%s", nasty, "2.5", "true", "--x={text}"]
        );
    }

    #[test]
    fn absent_and_null_arguments_drop_their_element() {
        let t = template(&["ls", "{long}", "{dir}"]);
        assert_eq!(
            render_argv(&t, &json!({"dir": "/tmp"})).unwrap(),
            ["ls", "/tmp"]
        );
        assert_eq!(
            render_argv(&t, &json!({"long": null, "dir": ""})).unwrap(),
            ["ls", ""]
        );
    }

    #[test]
    fn arrays_objects_and_nul_are_refused_naming_the_argument() {
        let t = template(&["echo", "{a}"]);
        for (args, needle) in [
            (json!({"a": [1]}), "arguments.a: is an array"),
            (json!({"a": {"b": 1}}), "arguments.a: is an object"),
            (json!({"a": "x\u{0}y"}), "arguments.a: contains a NUL byte"),
        ] {
            let e = render_argv(&t, &args).unwrap_err();
            assert_eq!(e.code, "bad_arguments");
            assert!(e.message.contains(needle), "{}", e.message);
        }
    }

    fn spec(schema: Value) -> CustomToolSpec {
        CustomToolSpec {
            name: "t".into(),
            description: "d".into(),
            argv: template(&["true"]),
            cwd: None,
            env: Default::default(),
            timeout_ms: 1000,
            schema,
        }
    }

    #[test]
    fn schema_violations_name_the_field() {
        let s = spec(json!({
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": {"type": "string"},
                "items": {"type": "array", "items": {"type": "object",
                          "properties": {"n": {"type": "integer"}}}}
            },
            "additionalProperties": false
        }));
        assert!(validate(&s, &json!({"text": "hi"})).is_ok());
        for (args, wanted) in [
            (
                json!({"text": 5}),
                "arguments.text: 5 is not of type \"string\"",
            ),
            (json!({}), "arguments: \"text\" is a required property"),
            (
                json!({"text": "x", "items": [{"n": "1"}]}),
                "arguments.items[0].n: \"1\" is not of type \"integer\"",
            ),
            (
                json!({"text": "x", "extra": 1}),
                "arguments: Additional properties",
            ),
        ] {
            let e = validate(&s, &args).unwrap_err();
            assert_eq!(e.code, "bad_arguments");
            assert!(e.message.starts_with(wanted), "{args}: {}", e.message);
        }
    }

    #[test]
    fn field_paths_unescape_pointers() {
        assert_eq!(field_path(""), "arguments");
        assert_eq!(field_path("/a~1b/0/c~0d"), "arguments.a/b[0].c~d");
    }
}
