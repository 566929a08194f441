//! [ext] Custom tools: commands an executor's owner declares in a tools file
//! (`execgate executor --tools FILE`) and the executor announces in
//! `initialize` as `environmentInfo.execgate.tools`.
//!
//! The executor only checks and announces them; the gateway validates a
//! call's arguments against [`CustomToolSpec::schema`], fills in the argv
//! template and runs it with `process/start`, like `shell`. The templating
//! rule lives here, in [`placeholder`], so that the executor (which refuses a
//! bad file at start) and the gateway (which fills the template in) agree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Tool names a custom tool may not take: the gateway's core tools and the
/// names of the MCP surface. A core tool always wins over a custom one; the
/// executor refuses a file that tries, so that the conflict is seen at once
/// rather than as a tool that silently never runs.
pub const RESERVED_TOOL_NAMES: &[&str] = &[
    "shell",
    "read_file",
    "write_file",
    "exec_command",
    "apply_patch",
    "copy_path",
    "list_dir",
    "list_environments",
    "write_stdin",
    "read_output",
    "terminate",
];

/// One custom tool as announced to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomToolSpec {
    pub name: String,
    pub description: String,
    /// The command. An element that is exactly `{arg}` is a placeholder:
    /// see [`placeholder`]. `argv[0]` is never one.
    pub argv: Vec<String>,
    /// Absolute path; the executor resolves a relative `cwd` against its
    /// working directory before announcing it. `None`: the executor's
    /// working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Set on top of the executor's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The deadline after which the process group is killed.
    pub timeout_ms: u64,
    /// A JSON Schema for the `arguments` object.
    pub schema: serde_json::Value,
}

/// The argument name if `element` is a placeholder: exactly `{name}` with a
/// name of ASCII letters, digits and `_` (not starting with a digit).
///
/// Only whole elements are placeholders, so an argument always becomes
/// exactly one argv element and is never split, joined or re-parsed. `{x}`
/// inside a longer element (`--out={x}`) is left as written.
pub fn placeholder(element: &str) -> Option<&str> {
    let name = element.strip_prefix('{')?.strip_suffix('}')?;
    is_identifier(name).then_some(name)
}

/// The placeholder-like `{name}`s inside a longer element, for the
/// executor's check that the file does not rely on in-element substitution.
pub fn embedded_placeholders(element: &str) -> Vec<&str> {
    if placeholder(element).is_some() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut rest = element;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find(['{', '}']) {
            Some(close) if after.as_bytes()[close] == b'}' => {
                if is_identifier(&after[..close]) {
                    found.push(&after[..close]);
                }
                rest = &after[close + 1..];
            }
            Some(close) => rest = &after[close..],
            None => break,
        }
    }
    found
}

/// Whether filling `template` in (the gateway's rule: each placeholder
/// becomes exactly one element, or none when its argument is absent) can
/// give `argv`. A placeholder used twice takes the same value both times.
/// The executor uses it to let an allowed custom tool start its own command
/// line and nothing else.
pub fn could_render(template: &[String], argv: &[String]) -> bool {
    fn go<'a>(
        template: &'a [String],
        argv: &'a [String],
        bound: &mut Vec<(&'a str, Option<&'a str>)>,
    ) -> bool {
        let Some((element, rest)) = template.split_first() else {
            return argv.is_empty();
        };
        let Some(name) = placeholder(element) else {
            return argv.first() == Some(element) && go(rest, &argv[1..], bound);
        };
        if let Some(&(_, value)) = bound.iter().find(|(n, _)| *n == name) {
            return match value {
                None => go(rest, argv, bound),
                Some(v) => {
                    argv.first().map(String::as_str) == Some(v) && go(rest, &argv[1..], bound)
                }
            };
        }
        // Absent, then present as the next element.
        bound.push((name, None));
        if go(rest, argv, bound) {
            return true;
        }
        bound.pop();
        if let Some(first) = argv.first() {
            bound.push((name, Some(first.as_str())));
            if go(rest, &argv[1..], bound) {
                return true;
            }
            bound.pop();
        }
        false
    }
    go(template, argv, &mut Vec::new())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_whole_elements_are_placeholders() {
        assert_eq!(placeholder("{text}"), Some("text"));
        assert_eq!(placeholder("{_a1}"), Some("_a1"));
        for not in [
            "text", "{text", "text}", "{}", "{1a}", "{a b}", "x{a}", "{a}}",
        ] {
            assert_eq!(placeholder(not), None, "{not}");
        }
    }

    #[test]
    fn could_render_matches_exactly_what_filling_in_can_give() {
        let t = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let template = t(&["grep", "-n", "{pattern}", "{file}"]);
        assert!(could_render(
            &template,
            &t(&["grep", "-n", "x; rm -rf /", "a.log"])
        ));
        assert!(
            could_render(&template, &t(&["grep", "-n", "x"])),
            "one absent"
        );
        assert!(could_render(&template, &t(&["grep", "-n"])), "both absent");
        assert!(
            !could_render(&template, &t(&["grep", "-n", "a", "b", "c"])),
            "too many"
        );
        assert!(
            !could_render(&template, &t(&["grep", "-r", "a"])),
            "literal changed"
        );
        assert!(!could_render(&template, &t(&["sh", "-c", "id"])));
        assert!(!could_render(&template, &t(&[])));
        // A literal that equals a value: backtracking finds the reading.
        let template = t(&["echo", "{a}", "x", "{b}"]);
        assert!(could_render(&template, &t(&["echo", "x", "x"])));
        assert!(could_render(&template, &t(&["echo", "x"])));
        // The same placeholder twice takes one value.
        let template = t(&["cp", "{f}", "{f}.bak"]);
        assert!(could_render(&template, &t(&["cp", "a", "{f}.bak"])));
        let template = t(&["diff", "{f}", "--", "{f}"]);
        assert!(could_render(&template, &t(&["diff", "a", "--", "a"])));
        assert!(could_render(&template, &t(&["diff", "--"])));
        assert!(!could_render(&template, &t(&["diff", "a", "--", "b"])));
        assert!(!could_render(&template, &t(&["diff", "a", "--"])));
    }

    #[test]
    fn embedded_placeholders_are_found() {
        assert_eq!(embedded_placeholders("--out={path}"), ["path"]);
        assert_eq!(embedded_placeholders("{a}-{b}"), ["a", "b"]);
        assert_eq!(embedded_placeholders("{print $1}"), Vec::<&str>::new());
        assert_eq!(embedded_placeholders("{{a}"), ["a"]);
        assert_eq!(embedded_placeholders("{a}"), Vec::<&str>::new());
    }

    #[test]
    fn wire_form_is_camel_case_and_omits_empty_fields() {
        let spec = CustomToolSpec {
            name: "t".into(),
            description: "d".into(),
            argv: vec!["true".into()],
            cwd: None,
            env: BTreeMap::new(),
            timeout_ms: 5,
            schema: json!({"type":"object"}),
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            json!({"name":"t","description":"d","argv":["true"],"timeoutMs":5,"schema":{"type":"object"}})
        );
        assert_eq!(serde_json::from_value::<CustomToolSpec>(v).unwrap(), spec);
    }
}
