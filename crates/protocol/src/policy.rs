//! [ext] An executor's policy: the limits its machine's owner set with
//! `execgate executor --root DIR --allow-tools LIST --read-only
//! --max-processes N`, announced in `initialize` as
//! `environmentInfo.execgate.policy`.
//!
//! The executor enforces it, whatever the gateway asks; the gateway reads it
//! to hide the tools that cannot work, to refuse them before they reach the
//! executor, and to show it in envs/list. Which executor methods each core
//! tool needs is decided here, once, so both sides agree.

use serde::{Deserialize, Serialize};

/// The gateway's core tools, by name.
pub const CORE_TOOLS: &[&str] = &[
    "shell",
    "read_file",
    "write_file",
    "exec_command",
    "apply_patch",
    "copy_path",
    "list_dir",
];

/// Core tools that read files (`fs/readFile`, `fs/readRange`,
/// `fs/getMetadata`, `fs/readDirectory`). `apply_patch` reads the files it
/// patches; `copy_path` reads its source; `list_dir` reads a directory.
pub const READING_TOOLS: &[&str] = &["read_file", "apply_patch", "copy_path", "list_dir"];

/// Core tools that change files (`fs/writeFile`, `fs/writeRange`,
/// `fs/commitFile`, `fs/rename`, `fs/remove`, `fs/createDirectory`,
/// `fs/copy`, `fs/symlink`). `apply_patch` stages, renames and removes;
/// `copy_path` writes its destination.
pub const WRITING_TOOLS: &[&str] = &["write_file", "apply_patch", "copy_path"];

/// Core tools that change nothing (they read a file, a directory, a
/// process's output or the environments): safe to do again. Clients call
/// them without an `Idempotency-Key` and retry them after a connection
/// error, a 502 or a 503 (`crates/client`, the Python SDK); the gateway
/// releases a key sent with one whose outcome is unknown. (`read_output`
/// and `list_environments` exist only in MCP.)
pub const READ_ONLY_TOOLS: &[&str] = &["read_file", "list_dir", "read_output", "list_environments"];

/// Core tools that run any command (`process/start`). Custom tools run
/// processes too, but only their own command line.
pub const PROCESS_TOOLS: &[&str] = &["shell", "exec_command"];

/// The policy as announced. All fields absent/false: no limits (an executor
/// without any policy option announces no policy at all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecutorPolicy {
    /// Every `fs/*` path and every `process/start` cwd must resolve (through
    /// `..` and symbolic links) inside this directory: an absolute path
    /// without symlinks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Only these tools (core tool names and custom tool names) may be used.
    /// `None`: every tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_tools: Option<Vec<String>>,
    /// No file is changed and no process is started.
    pub read_only: bool,
    /// At most this many processes run at once (started, not yet exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
    /// Every process the executor starts is confined by the kernel
    /// (`--sandbox`, Landlock). Absent: processes are not confined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxPolicy>,
}

/// [ext] The sandbox every process of an executor runs in
/// (`execgate executor --sandbox`), as announced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SandboxPolicy {
    /// Processes may change files only beneath these paths (canonical),
    /// besides [`SandboxPolicy::devices`].
    pub write: Vec<String>,
    /// Device files always writable (`/dev/null`, the terminals…).
    pub devices: Vec<String>,
    /// Processes may read only beneath these paths; `None`: everywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Vec<String>>,
    /// TCP connect and bind refused.
    pub deny_net: bool,
    /// The Landlock ABI of the kernel that enforces it.
    pub landlock_abi: u32,
    /// Landlock scopes in force: `abstract_unix_socket` (no connecting to
    /// an abstract unix socket made outside the sandbox) and `signal` (no
    /// signals to processes outside it); empty below ABI 6.
    pub scopes: Vec<String>,
}

impl ExecutorPolicy {
    /// Whether the allow list (if any) names `tool`. Says nothing about
    /// `read_only`.
    pub fn lists(&self, tool: &str) -> bool {
        match &self.allow_tools {
            None => true,
            Some(list) => list.iter().any(|t| t == tool),
        }
    }

    fn lists_any(&self, tools: &[&str]) -> bool {
        tools.iter().any(|t| self.lists(t))
    }

    /// Whether the read methods of `fs/*` are served.
    pub fn allows_reads(&self) -> bool {
        self.lists_any(READING_TOOLS)
    }

    /// Whether the methods of `fs/*` that change files are served.
    pub fn allows_writes(&self) -> bool {
        !self.read_only && self.lists_any(WRITING_TOOLS)
    }

    /// Whether `process/start` is served for any command line. When false
    /// and not read-only, it may still be served for the command lines of
    /// allowed custom tools.
    pub fn allows_any_process(&self) -> bool {
        !self.read_only && self.lists_any(PROCESS_TOOLS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn allowing(tools: &[&str]) -> ExecutorPolicy {
        ExecutorPolicy {
            allow_tools: Some(tools.iter().map(|t| t.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn method_classes_follow_the_tools_that_need_them() {
        let all = ExecutorPolicy::default();
        assert!(all.allows_reads() && all.allows_writes() && all.allows_any_process());

        let read = allowing(&["read_file"]);
        assert!(read.allows_reads());
        assert!(!read.allows_writes());
        assert!(!read.allows_any_process());

        let list = allowing(&["list_dir"]);
        assert!(list.allows_reads(), "list_dir reads a directory");
        assert!(!list.allows_writes() && !list.allows_any_process());

        let write = allowing(&["write_file"]);
        assert!(!write.allows_reads(), "write_file reads nothing");
        assert!(write.allows_writes());

        for tool in ["apply_patch", "copy_path"] {
            let p = allowing(&[tool]);
            assert!(p.allows_reads() && p.allows_writes(), "{tool}");
            assert!(!p.allows_any_process(), "{tool}");
        }

        let custom_only = allowing(&["grep_logs"]);
        assert!(!custom_only.allows_reads() && !custom_only.allows_writes());
        assert!(!custom_only.allows_any_process());
        assert!(custom_only.lists("grep_logs") && !custom_only.lists("shell"));

        let read_only = ExecutorPolicy {
            read_only: true,
            ..Default::default()
        };
        assert!(read_only.allows_reads());
        assert!(!read_only.allows_writes());
        assert!(!read_only.allows_any_process());
    }

    #[test]
    fn wire_form_is_camel_case_and_omits_unset_limits() {
        let p = ExecutorPolicy {
            root: Some("/srv/x".into()),
            allow_tools: None,
            read_only: true,
            max_processes: Some(3),
            sandbox: None,
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"root":"/srv/x","readOnly":true,"maxProcesses":3})
        );
        let back: ExecutorPolicy = serde_json::from_value(json!({"readOnly":true})).unwrap();
        assert!(back.read_only && back.root.is_none());
    }
}
