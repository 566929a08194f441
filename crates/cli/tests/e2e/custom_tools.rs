//! Custom tools from an executor's `--tools` file: listed by envs/list,
//! arguments checked against their schema, run without a shell, and a bad
//! file refused at start.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::*;

/// After the shared ones (`tests/fixtures/custom-tools.toml`: `echo_arg`, the contract
/// form of issue 3, and `add`): a tool that shows how values render, and
/// one with a cwd and env.
fn more_tools_toml(cwd: &Path) -> String {
    format!(
        r#"
[[tool]]
name = "show_args"
description = "print each argument in angle brackets"
argv = ["sh", "-c", 'for a in "$@"; do printf "<%s>" "$a"; done', "show_args", "{{n}}", "{{flag}}", "{{opt}}", "{{word}}"]
[tool.schema]
type = "object"
[tool.schema.properties.n]
type = "number"
[tool.schema.properties.flag]
type = "boolean"
[tool.schema.properties.opt]
type = "string"
[tool.schema.properties.word]
description = "any JSON value; the template decides what it can be"

[[tool]]
name = "where_am_i"
description = "print the working directory and $GREETING"
argv = ["sh", "-c", 'pwd; printf "%s" "$GREETING"']
cwd = "{}"
env = {{ GREETING = "hello from the tools file" }}
timeout_ms = 5000
[tool.schema]
type = "object"
"#,
        cwd.display()
    )
}

fn tool<'a>(env: &'a Value, name: &str) -> &'a Value {
    env["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name} in {env}"))
}

#[tokio::test]
async fn custom_tools_are_listed_checked_and_run_with_literal_arguments() {
    let files = tempfile::tempdir().unwrap();
    let tools_dir = files.path().join("tools-cwd");
    std::fs::create_dir_all(&tools_dir).unwrap();
    let tools_file = write_tools_file(files.path(), &more_tools_toml(&tools_dir));
    let w = World::start(&["--tools", tools_file.to_str().unwrap()]).await;

    // envs/list: custom tools alongside the core ones, with their schema.
    let envs = w.api.envs().await;
    let env = &envs["envs"][0];
    assert_eq!(tool(env, "shell")["kind"], "core");
    let echo = tool(env, "echo_arg");
    assert_eq!(echo["kind"], "custom", "{echo}");
    assert_eq!(echo["description"], "echo one argument");
    assert_eq!(echo["input_schema"]["required"], json!(["text"]));
    assert_eq!(tool(env, "where_am_i")["kind"], "custom");

    // A valid call answers like shell.
    let r = w
        .api
        .call("laptop", "echo_arg", json!({"text": "hello world"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let out = &r["structuredContent"];
    assert_eq!(out["stdout"], "hello world", "{r}");
    assert_eq!(out["stderr"], "");
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["timed_out"], false);
    assert!(out["duration_ms"].is_u64(), "{r}");

    // Shell metacharacters reach argv literally: printf prints them byte for
    // byte, and nothing they would do in a shell happened.
    let marker = format!("/tmp/pwned-{}-{}", std::process::id(), unique_nanos());
    let nasty =
        format!("$(touch {marker}); echo hi > f && rm -rf x | cat `touch {marker}` 'q\" \\ *");
    let r = w
        .api
        .call("laptop", "echo_arg", json!({"text": nasty}))
        .await;
    assert_eq!(r["structuredContent"]["stdout"], nasty.as_str(), "{r}");
    assert_eq!(r["structuredContent"]["exit_code"], 0);
    assert!(!Path::new(&marker).exists(), "{marker} was created");
    assert!(!w.workdir.join("f").exists(), "a redirection ran");

    // Rendering: numbers and booleans as JSON text, an absent argument drops
    // its element, an empty string stays an (empty) element.
    let r = w
        .api
        .call(
            "laptop",
            "show_args",
            json!({"n": 2.5, "flag": true, "word": ""}),
        )
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "<2.5><true><>", "{r}");

    // The tool's cwd and env.
    let r = w.api.call("laptop", "where_am_i", json!({})).await;
    assert_eq!(
        r["structuredContent"]["stdout"],
        format!("{}\nhello from the tools file", tools_dir.display()),
        "{r}"
    );

    // Schema violations: 400 bad_arguments naming the field.
    for (args, wanted) in [
        (
            json!({"text": 5}),
            "arguments.text: 5 is not of type \"string\"",
        ),
        (json!({}), "arguments: \"text\" is a required property"),
    ] {
        let (status, v) = w.api.call_raw("laptop", "echo_arg", args.clone()).await;
        assert_eq!(status, 400, "{args}: {v}");
        assert_eq!(v["error"]["code"], "bad_arguments", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(wanted), "{args}: {message}");
    }
    // Placeholders keep the template's order, whatever the arguments' order.
    let r = w
        .api
        .call(
            "laptop",
            "show_args",
            json!({"word": "y", "opt": "x", "flag": false, "n": 1}),
        )
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "<1><false><x><y>", "{r}");
    // An array passes the (untyped) schema but cannot fill one argv element.
    let (status, v) = w
        .api
        .call_raw("laptop", "show_args", json!({"word": ["a", "b"]}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_arguments");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("arguments.word: is an array"),
        "{v}"
    );

    // An unknown tool still lists the custom ones among the known.
    let (status, v) = w.api.call_raw("laptop", "echo_args", json!({})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "unknown_tool");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("echo_arg"),
        "{v}"
    );
}

fn unique_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs `execgate executor --tools FILE` against a gateway that is not
/// there; a bad file must stop it before it tries to connect.
fn executor_with_tools_file(text: &str) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-tools.toml");
    std::fs::write(&path, text).unwrap();
    let child = Command::new(bin())
        .args([
            "executor",
            "--gateway",
            "http://127.0.0.1:9",
            "--token",
            "exe_test.secret",
            "--workdir",
        ])
        .arg(dir.path())
        .arg("--tools")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start executor");
    // Killed when dropped, should it keep running.
    let mut child = Proc(child);
    let status = child.exits_within_blocking(
        20,
        "the executor to refuse the tools file (it kept running)",
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, stderr, path.display().to_string())
}

#[test]
fn an_executor_refuses_a_tools_file_that_shadows_a_core_tool() {
    let shadow = r#"
[[tool]]
name = "shell"
description = "my own shell"
argv = ["sh", "-c", "{cmd}"]
[tool.schema]
type = "object"
[tool.schema.properties.cmd]
type = "string"
"#;
    let (status, stderr, path) = executor_with_tools_file(shadow);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("tools file {path}: tool \"shell\""))
            && stderr.contains("is a core tool's, and a custom tool may not shadow it"),
        "{stderr}"
    );

    // Another refusal, to show the message names the problem: a placeholder
    // the schema does not declare.
    let undeclared = shadow
        .replace("\"shell\"", "\"my_shell\"")
        .replace("{cmd}", "{command}");
    let (status, stderr, path) = executor_with_tools_file(&undeclared);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("tools file {path}: tool \"my_shell\""))
            && stderr.contains("argv[2] is the placeholder \"{command}\" but the schema declares no property \"command\""),
        "{stderr}"
    );
}
