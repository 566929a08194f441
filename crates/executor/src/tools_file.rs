//! The `--tools` file: custom tools declared in TOML, checked once at start
//! and announced to the gateway in `initialize` (as
//! `environmentInfo.execgate.tools`, see `execgate_protocol::custom_tool`).
//!
//! ```toml
//! [[tool]]
//! name = "echo_arg"
//! description = "echo one argument"
//! argv = ["printf", "%s", "{text}"]   # "{text}" as a whole element is the argument
//! timeout_ms = 10000                  # optional, default 60000
//! cwd = "sub/dir"                     # optional, relative to --workdir
//! env = { LC_ALL = "C" }              # optional, set on top of the executor's
//! [tool.schema]                       # JSON Schema for the arguments object
//! type = "object"
//! required = ["text"]
//! [tool.schema.properties.text]
//! type = "string"
//! ```
//!
//! Every problem is found here, before the executor connects, and refuses the
//! whole file: a tool that silently did not work (a typo in a placeholder, a
//! name a core tool shadows) would be found much later by an agent that
//! cannot fix it. The executor only announces; the gateway validates
//! arguments and fills in the template.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use execgate_protocol::custom_tool::{
    embedded_placeholders, placeholder, CustomToolSpec, RESERVED_TOOL_NAMES,
};
use serde::Deserialize;

/// A custom tool's deadline when its entry has no `timeout_ms` (as `shell`).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const MAX_TIMEOUT_MS: u64 = 86_400_000;
const MAX_NAME_LEN: usize = 64;

/// Why the tools file was refused. Its message names the file, and the tool
/// and the problem.
#[derive(Debug, thiserror::Error)]
#[error("tools file {}: {problem}", path.display())]
pub struct ToolsFileError {
    pub path: PathBuf,
    pub problem: ToolsFileProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolsFileProblem {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    /// Not TOML, or not a list of `[[tool]]` tables; toml's message carries
    /// the line and column.
    #[error("{0}")]
    Syntax(String),
    #[error("tool {tool}: {reason}")]
    Tool { tool: String, reason: String },
}

/// Reads and checks the tools file. Relative `cwd`s resolve against
/// `workdir` (absolute).
pub fn load(path: &Path, workdir: &Path) -> Result<Vec<CustomToolSpec>, ToolsFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ToolsFileError {
        path: path.to_path_buf(),
        problem: ToolsFileProblem::Read(e),
    })?;
    parse(&text, workdir).map_err(|problem| ToolsFileError {
        path: path.to_path_buf(),
        problem,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsFile {
    #[serde(default)]
    tool: Vec<toml::Table>,
}

/// One `[[tool]]`; unknown keys are refused so that a typo (`args` for
/// `argv`, `timeout` for `timeout_ms`) is not silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolEntry {
    name: String,
    description: String,
    argv: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    schema: toml::Table,
}

/// Parses and checks the text of a tools file.
pub fn parse(text: &str, workdir: &Path) -> Result<Vec<CustomToolSpec>, ToolsFileProblem> {
    let file: ToolsFile =
        toml::from_str(text).map_err(|e| ToolsFileProblem::Syntax(e.to_string()))?;
    let mut specs = Vec::with_capacity(file.tool.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, table) in file.tool.into_iter().enumerate() {
        let ordinal = i + 1;
        // Name the tool by its name when it has one, else by its position.
        let label = match table.get("name").and_then(|v| v.as_str()) {
            Some(name) => format!("{name:?} (the [[tool]] #{ordinal})"),
            None => format!("[[tool]] #{ordinal}"),
        };
        let refuse = |reason: String| ToolsFileProblem::Tool {
            tool: label.clone(),
            reason,
        };
        // With the path of the failing key: "timeout_ms: invalid value…".
        let entry: ToolEntry = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let message = e.inner().message().trim().to_string();
                refuse(match e.path().to_string() {
                    root if root == "." => message,
                    path => format!("{path}: {message}"),
                })
            })?;
        if let Some(first) = seen.insert(entry.name.clone(), ordinal) {
            return Err(refuse(format!(
                "the name is already taken by the [[tool]] #{first}; tool names must be unique"
            )));
        }
        specs.push(check(entry, workdir).map_err(refuse)?);
    }
    Ok(specs)
}

/// Checks one entry and turns it into what the gateway is told.
fn check(entry: ToolEntry, workdir: &Path) -> Result<CustomToolSpec, String> {
    let ToolEntry {
        name,
        description,
        argv,
        cwd,
        env,
        timeout_ms,
        schema,
    } = entry;

    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "name must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '_' or '-'"
        ));
    }
    if RESERVED_TOOL_NAMES.contains(&name.as_str()) {
        return Err(format!(
            "the name {name:?} is a core tool's, and a custom tool may not shadow it; rename the tool (reserved: {})",
            RESERVED_TOOL_NAMES.join(", ")
        ));
    }
    if description.trim().is_empty() {
        return Err("description must not be empty: agents choose tools by it".into());
    }

    let schema = serde_json::to_value(&schema)
        .map_err(|e| format!("schema cannot be converted to JSON: {e}"))?;
    if let Err(e) = jsonschema::meta::validate(&schema) {
        return Err(format!(
            "schema is not a valid JSON Schema: {e} (at schema{})",
            e.instance_path()
        ));
    }
    if let Err(e) = jsonschema::validator_for(&schema) {
        return Err(format!("schema cannot be used: {e}"));
    }
    if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        return Err(
            "schema must have type = \"object\": a tool's arguments are a JSON object".into(),
        );
    }
    let declared = schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();

    match argv.first() {
        None => return Err("argv must not be empty".into()),
        Some(program) if placeholder(program).is_some() => {
            return Err(format!(
                "argv[0] is {program:?}, a placeholder; argv[0] must name the program, so that callers choose arguments, not what runs"
            ))
        }
        Some(_) => {}
    }
    for (i, element) in argv.iter().enumerate() {
        if element.contains('\0') {
            return Err(format!("argv[{i}] contains a NUL byte"));
        }
        if let Some(arg) = placeholder(element) {
            if !declared.iter().any(|d| d == arg) {
                return Err(format!(
                    "argv[{i}] is the placeholder {element:?} but the schema declares no property {arg:?}; declare it under [tool.schema.properties.{arg}]"
                ));
            }
        }
        if let Some(arg) = embedded_placeholders(element)
            .into_iter()
            .find(|a| declared.iter().any(|d| d == a))
        {
            return Err(format!(
                "argv[{i}] {element:?} has {{{arg}}} inside a longer element; only an element that is exactly \"{{{arg}}}\" is replaced by the argument, so make it an element of its own"
            ));
        }
    }

    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(format!(
            "timeout_ms must be between 1 and {MAX_TIMEOUT_MS} (a day), not {timeout_ms}"
        ));
    }
    for (key, value) in &env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!(
                "env {key:?}: a name must be non-empty without '=' or NUL, a value without NUL"
            ));
        }
    }
    let cwd = match cwd {
        None => None,
        Some(c) if c.is_empty() || c.contains('\0') => {
            return Err(format!("cwd {c:?} is not a usable path"))
        }
        Some(c) => {
            let absolute = workdir.join(&c);
            Some(
                absolute
                    .to_str()
                    .ok_or_else(|| format!("cwd {c:?} is not valid UTF-8 once resolved"))?
                    .to_string(),
            )
        }
    };

    Ok(CustomToolSpec {
        name,
        description,
        argv,
        cwd,
        env,
        timeout_ms,
        schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONTRACT: &str = r#"
[[tool]]
name = "echo_arg"
description = "echo one argument"
argv = ["printf", "%s", "{text}"]
timeout_ms = 10000
[tool.schema]
type = "object"
required = ["text"]
[tool.schema.properties.text]
type = "string"
"#;

    fn parse_ok(text: &str) -> Vec<CustomToolSpec> {
        parse(text, Path::new("/work")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refusal(text: &str) -> String {
        match parse(text, Path::new("/work")) {
            Ok(specs) => panic!("accepted: {specs:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A one-tool file with `extra` lines in the tool's table.
    fn tool(name: &str, argv: &str, extra: &str) -> String {
        format!(
            "[[tool]]\nname = \"{name}\"\ndescription = \"d\"\nargv = {argv}\n{extra}\n\
             [tool.schema]\ntype = \"object\"\n[tool.schema.properties.text]\ntype = \"string\"\n"
        )
    }

    #[test]
    fn the_contract_form_parses() {
        let specs = parse_ok(CONTRACT);
        assert_eq!(
            specs,
            [CustomToolSpec {
                name: "echo_arg".into(),
                description: "echo one argument".into(),
                argv: vec!["printf".into(), "%s".into(), "{text}".into()],
                cwd: None,
                env: BTreeMap::new(),
                timeout_ms: 10_000,
                schema: json!({"type":"object","required":["text"],
                               "properties":{"text":{"type":"string"}}}),
            }]
        );
    }

    #[test]
    fn optional_fields_have_defaults_and_cwd_resolves_against_the_workdir() {
        let specs = parse_ok(&tool(
            "t",
            r#"["ls"]"#,
            "cwd = \"sub\"\nenv = { A = \"1\" }",
        ));
        assert_eq!(specs[0].timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(specs[0].cwd.as_deref(), Some("/work/sub"));
        assert_eq!(specs[0].env["A"], "1");
        assert!(parse_ok("").is_empty());
    }

    #[test]
    fn the_file_is_read_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tools.toml");
        std::fs::write(&path, CONTRACT).unwrap();
        assert_eq!(load(&path, dir.path()).unwrap().len(), 1);
        let missing = dir.path().join("nope.toml");
        let e = load(&missing, dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("tools file {}: cannot read it", missing.display())),
            "{e}"
        );
        std::fs::write(&path, tool("shell", r#"["ls"]"#, "")).unwrap();
        let e = load(&path, dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("tools file {}: tool \"shell\"", path.display())),
            "{e}"
        );
    }

    #[test]
    fn each_problem_refuses_the_file_naming_tool_and_problem() {
        let two = format!(
            "{}{}",
            tool("a", r#"["ls"]"#, ""),
            tool("a", r#"["ls"]"#, "")
        );
        let cases: Vec<(String, &str)> = vec![
            ("[[tool]\nname=".into(), "TOML parse error at line 1"),
            ("tools = 1".into(), "unknown field `tools`"),
            (
                "[[tool]]\nname = \"a\"\nargv = [\"ls\"]\n[tool.schema]\ntype = \"object\"\n".into(),
                "tool \"a\" (the [[tool]] #1): missing field `description`",
            ),
            (
                "[[tool]]\ndescription = \"d\"\nargv = [\"ls\"]\n[tool.schema]\n".into(),
                "tool [[tool]] #1: missing field `name`",
            ),
            (tool("a", r#"["ls"]"#, "args = []"), "unknown field `args`"),
            (tool("a", r#"["ls", 5]"#, ""), "argv[1]: invalid type: integer `5`"),
            (two, "tool \"a\" (the [[tool]] #2): the name is already taken by the [[tool]] #1"),
            (tool("read_file", r#"["ls"]"#, ""), "the name \"read_file\" is a core tool's"),
            (tool("terminate", r#"["ls"]"#, ""), "may not shadow it"),
            (tool("a b", r#"["ls"]"#, ""), "name must be 1 to 64"),
            (tool("a", "[]", ""), "argv must not be empty"),
            (tool("a", r#"["{text}"]"#, ""), "argv[0] is \"{text}\", a placeholder"),
            (
                tool("a", r#"["echo", "{txet}"]"#, ""),
                "argv[1] is the placeholder \"{txet}\" but the schema declares no property \"txet\"",
            ),
            (
                tool("a", r#"["echo", "--t={text}"]"#, ""),
                "argv[1] \"--t={text}\" has {text} inside a longer element",
            ),
            (tool("a", r#"["ls"]"#, "timeout_ms = 0"), "timeout_ms must be between 1"),
            (tool("a", r#"["ls"]"#, "timeout_ms = -5"), "timeout_ms: invalid value"),
            (tool("a", r#"["ls"]"#, "env = { \"A=B\" = \"1\" }"), "env \"A=B\""),
            (tool("a", r#"["ls"]"#, "env = { A = 1 }"), "env.A: invalid type: integer `1`"),
            (
                "[[tool]]\nname = \"a\"\ndescription = \"d\"\nargv = [\"ls\"]\n[tool.schema]\ntype = \"objekt\"\n".into(),
                "schema is not a valid JSON Schema",
            ),
            (
                "[[tool]]\nname = \"a\"\ndescription = \"d\"\nargv = [\"ls\"]\n[tool.schema]\ntype = \"string\"\n".into(),
                "schema must have type = \"object\"",
            ),
            (
                "[[tool]]\nname = \"a\"\ndescription = \"d\"\nargv = [\"ls\"]\n[tool.schema]\ntype = \"object\"\nproperties = { x = { minLength = -1 } }\n".into(),
                "schema is not a valid JSON Schema",
            ),
            (
                "[[tool]]\nname = \"a\"\ndescription = \"\"\nargv = [\"ls\"]\n[tool.schema]\ntype = \"object\"\n".into(),
                "description must not be empty",
            ),
        ];
        for (text, needle) in cases {
            let e = refusal(&text);
            assert!(
                e.contains(needle),
                "{text:?}\n  gave: {e}\n  wanted: {needle}"
            );
        }
    }

    #[test]
    fn braces_that_name_no_argument_are_left_alone() {
        let argv = r#"["awk", "{ print $1 }", "--x={other}", "{text}"]"#;
        let specs = parse_ok(&tool("a", argv, ""));
        assert_eq!(
            specs[0].argv,
            ["awk", "{ print $1 }", "--x={other}", "{text}"]
        );
    }
}
