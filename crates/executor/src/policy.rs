//! The executor's policy: the limits its machine's owner set with
//! `--root DIR`, `--allow-tools LIST`, `--read-only` and
//! `--max-processes N`. Checked once at start (a bad option refuses to
//! start), announced in `initialize` (`environmentInfo.execgate.policy`),
//! and enforced here on every request, whatever the gateway asks.
//!
//! - **Paths** (`--root`): every `fs/*` path and every `process/start` cwd
//!   goes through [`PathRules`] (see `paths`), which confines it.
//! - **Method classes** (`--read-only`, `--allow-tools`): the executor does
//!   not know which tool a request serves, so it allows a *class* of methods
//!   when some allowed tool needs it (reads, writes, processes; the mapping
//!   is `execgate_protocol::policy`'s). Each method's class ([`Access`]) is
//!   declared with it in the method table (`methods`). Read-only refuses every write and
//!   every `process/start`: a process can write anywhere the user can.
//! - **Custom tools**: when no allowed tool runs arbitrary commands (`shell`,
//!   `exec_command`) but some allowed custom tools do, `process/start` is
//!   served only for a command line their argv template can produce, in
//!   their cwd, with their environment.
//! - **Processes** (`--max-processes`): a [`ProcessPermit`] per process that
//!   has not exited yet; `process/start` beyond the limit is -32031.
//!
//! - **Sandbox** (`--sandbox`, see `sandbox`): what every process may do,
//!   enforced by the kernel; announced here with the rest.
//!
//! Without `--sandbox`, processes are not confined: a shell started in the
//! root can `cd /` and write anywhere the user can; `--root` confines the
//! file methods and the cwd, not what a program does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use execgate_protocol::custom_tool::{could_render, CustomToolSpec};
use execgate_protocol::exec::{EnvPolicy, ProcessStartParams};
use execgate_protocol::jsonrpc::{code, RpcError};
use execgate_protocol::policy::{ExecutorPolicy, CORE_TOOLS};

use crate::beneath::Root;
use crate::paths::{confine, Last, PathRules};
use crate::sandbox::{SandboxConfig, Sandboxes};

/// The policy options, as given (`ExecutorConfig::policy`).
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// Confine file paths and cwds to this directory (`--root`).
    pub root: Option<PathBuf>,
    /// Only these tools, core or custom (`--allow-tools`). `None`: all.
    pub allow_tools: Option<Vec<String>>,
    /// No file changes, no processes (`--read-only`).
    pub read_only: bool,
    /// At most this many processes at once (`--max-processes`).
    pub max_processes: Option<usize>,
    /// Confine every process (`--sandbox`, `--sandbox-write`…).
    pub sandbox: Option<SandboxConfig>,
}

impl PolicyConfig {
    fn is_empty(&self) -> bool {
        self.root.is_none()
            && self.allow_tools.is_none()
            && !self.read_only
            && self.max_processes.is_none()
            && self.sandbox.is_none()
    }
}

/// The checked policy, shared by every connection.
pub(crate) struct Policy {
    /// Path resolution: the working directory, and the canonical root.
    pub paths: PathRules,
    /// The limits as announced; all off without options.
    limits: ExecutorPolicy,
    /// Whether any option was given (else nothing is announced).
    announce: bool,
    /// When `process/start` is limited to custom tools: their command lines.
    commands: Vec<AllowedCommand>,
    max_processes: Option<usize>,
    live: Arc<AtomicUsize>,
    /// `--sandbox`, and what a call may ask for on top.
    pub sandboxes: Sandboxes,
}

/// A command line an allowed custom tool may start.
struct AllowedCommand {
    name: String,
    argv: Vec<String>,
    /// Canonical when it exists.
    cwd: PathBuf,
    env: EnvPolicy,
}

/// Holds one place under `--max-processes` until the process has exited.
pub(crate) struct ProcessPermit(Arc<AtomicUsize>);

impl Drop for ProcessPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::PROCESSES_RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Policy {
    /// Checks the options against the working directory (absolute) and the
    /// custom tools. Returns the policy and the working directory to use
    /// (resolved inside the root when there is one). Errors name the option.
    pub fn new(
        config: &PolicyConfig,
        workdir: PathBuf,
        tools: &[CustomToolSpec],
    ) -> Result<(Policy, PathBuf), String> {
        let mut paths = PathRules::new(workdir.clone());
        let mut limits = ExecutorPolicy {
            read_only: config.read_only,
            ..Default::default()
        };
        if let Some(root) = &config.root {
            let canonical = std::fs::canonicalize(root)
                .map_err(|e| format!("--root {}: {e}", root.display()))?;
            if !canonical.is_dir() {
                return Err(format!("--root {}: not a directory", root.display()));
            }
            let inside = confine(&canonical, &workdir, Last::Follow).map_err(|_| {
                format!(
                    "--workdir {} is outside --root {}; leave --workdir out to work in the root",
                    workdir.display(),
                    canonical.display()
                )
            })?;
            for tool in tools {
                let Some(cwd) = &tool.cwd else { continue };
                if confine(&canonical, Path::new(cwd), Last::Follow).is_err() {
                    return Err(format!(
                        "custom tool {:?} (--tools) has cwd {cwd}, which is outside --root {}",
                        tool.name,
                        canonical.display()
                    ));
                }
            }
            limits.root = Some(canonical.display().to_string());
            paths = PathRules {
                workdir: inside,
                root: Some(Root::open(canonical)?),
            };
        }
        if let Some(list) = &config.allow_tools {
            limits.allow_tools = Some(allow_list(list, tools)?);
        }
        if let Some(max) = config.max_processes {
            if max == 0 {
                return Err("--max-processes must be at least 1".into());
            }
            limits.max_processes = Some(u32::try_from(max).unwrap_or(u32::MAX));
        }
        let commands = if limits.allows_any_process() || limits.read_only {
            Vec::new()
        } else {
            tools
                .iter()
                .filter(|t| limits.lists(&t.name))
                .map(|t| {
                    let cwd = t
                        .cwd
                        .as_ref()
                        .map_or_else(|| paths.workdir.clone(), PathBuf::from);
                    AllowedCommand {
                        name: t.name.clone(),
                        argv: t.argv.clone(),
                        cwd: std::fs::canonicalize(&cwd).unwrap_or(cwd),
                        env: EnvPolicy::inherit_all(t.env.clone()),
                    }
                })
                .collect()
        };
        // Processes write beneath the root, or the workdir without one.
        let sandboxes = Sandboxes::new(
            config.sandbox.as_ref(),
            paths.root.as_ref().map_or(&paths.workdir, |r| &r.path),
        )?;
        limits.sandbox = sandboxes.announced();
        let workdir = paths.workdir.clone();
        Ok((
            Policy {
                paths,
                limits,
                announce: !config.is_empty(),
                commands,
                max_processes: config.max_processes,
                live: Arc::new(AtomicUsize::new(0)),
                sandboxes,
            },
            workdir,
        ))
    }

    /// A policy without limits, working in `workdir`.
    #[cfg(test)]
    pub fn open(workdir: PathBuf) -> Policy {
        Policy::new(&PolicyConfig::default(), workdir, &[])
            .expect("no options, nothing to refuse")
            .0
    }

    /// What `initialize` announces; `None` without any option.
    pub fn announced(&self) -> Option<ExecutorPolicy> {
        self.announce.then(|| self.limits.clone())
    }

    /// Refuses method `name`, of class `access` (the method table's), when
    /// no allowed tool needs that class, or when it would change something
    /// on a read-only executor.
    pub fn check(&self, name: &str, access: Access) -> Result<(), RpcError> {
        let limits = &self.limits;
        let refusal = match access {
            Access::Read if !limits.allows_reads() => self.not_needed(name, "reads files"),
            Access::Write if limits.read_only => RpcError::policy_denied(format!(
                "{name} is refused: this executor is read-only (--read-only)"
            )),
            Access::Write if !limits.allows_writes() => self.not_needed(name, "changes files"),
            Access::Start if limits.read_only => RpcError::policy_denied(format!(
                "{name} is refused: this executor is read-only (--read-only), and a process could change files"
            )),
            Access::Start if !limits.allows_any_process() && self.commands.is_empty() => {
                self.not_needed(name, "runs processes")
            }
            _ => return Ok(()),
        };
        Err(refusal)
    }

    fn not_needed(&self, name: &str, what: &str) -> RpcError {
        let allowed = self.limits.allow_tools.clone().unwrap_or_default();
        RpcError::policy_denied(format!(
            "{name} is refused: none of the tools this executor allows ({}) {what} (--allow-tools)",
            allowed.join(", ")
        ))
    }

    /// When `process/start` is limited to custom tools: refuses a command
    /// that is not one of theirs. `cwd` is the resolved working directory.
    pub fn check_start(&self, params: &ProcessStartParams, cwd: &Path) -> Result<(), RpcError> {
        if self.limits.allows_any_process() {
            return Ok(());
        }
        let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
        let matches = |c: &&AllowedCommand| {
            could_render(&c.argv, &params.argv)
                && c.cwd == cwd
                && params.env.is_empty()
                && params.env_policy.as_ref() == Some(&c.env)
                && params.arg0.is_none()
        };
        if self.commands.iter().any(|c| matches(&c)) {
            return Ok(());
        }
        let names: Vec<&str> = self.commands.iter().map(|c| c.name.as_str()).collect();
        Err(RpcError::policy_denied(format!(
            "process/start is refused: this executor runs only the commands of its allowed custom tools ({}), and {:?} in {} is not one of them (--allow-tools)",
            names.join(", "),
            params.argv,
            cwd.display()
        )))
    }

    /// Takes a place for a new process, or refuses (-32031) at the limit.
    pub fn admit_process(&self) -> Result<ProcessPermit, RpcError> {
        let max = self.max_processes.unwrap_or(usize::MAX);
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < max).then_some(live + 1)
            })
            .map_err(|live| {
                RpcError::new(
                    code::TOO_MANY_PROCESSES,
                    format!(
                        "this executor runs at most {max} processes at once (--max-processes) and {live} are running; retry when one has exited, or terminate one"
                    ),
                )
            })?;
        crate::metrics::PROCESSES_RUNNING.fetch_add(1, Ordering::Relaxed);
        Ok(ProcessPermit(self.live.clone()))
    }
}

/// What a method does, as far as the policy is concerned: each method's
/// entry in the method table (`methods`) names its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads files: allowed when some allowed tool reads files.
    Read,
    /// Changes files: refused by `--read-only`, allowed when some allowed
    /// tool changes files.
    Write,
    /// Starts a process: refused by `--read-only`, allowed when some allowed
    /// tool runs processes (or only for custom tools' commands).
    Start,
    /// Nothing the policy limits: the lifecycle, and acting on processes
    /// already started (read, write, signal, terminate, resize).
    Other,
}

impl Access {
    /// The class of a method the table does not list, checked before it is
    /// answered -32601: an `fs/*` name is taken to change files, so that a
    /// read-only executor refuses it (-32030) as it refuses every write.
    pub fn unlisted(name: &str) -> Access {
        if name.starts_with("fs/") {
            Access::Write
        } else {
            Access::Other
        }
    }
}

/// Checks the `--allow-tools` names: each a core tool or a custom tool of
/// the `--tools` file. Keeps their order, without repeats.
fn allow_list(list: &[String], tools: &[CustomToolSpec]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in list.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let known = CORE_TOOLS.contains(&name) || tools.iter().any(|t| t.name == name);
        if !known {
            let custom: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "--allow-tools: unknown tool {name:?}; the core tools are {}{}",
                CORE_TOOLS.join(", "),
                if custom.is_empty() {
                    " (and there is no --tools file)".to_string()
                } else {
                    format!(", and the --tools file declares {}", custom.join(", "))
                }
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        return Err("--allow-tools names no tool; list at least one, e.g. read_file".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgate_protocol::exec::method;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// The environment a custom tool runs with, as the gateway sends it.
    fn env_of(set: &[(&str, &str)]) -> EnvPolicy {
        EnvPolicy::inherit_all(
            set.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn spec(name: &str, argv: &[&str], cwd: Option<&Path>) -> CustomToolSpec {
        CustomToolSpec {
            name: name.into(),
            description: String::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.map(|c| c.display().to_string()),
            env: BTreeMap::from([("MODE".to_string(), "tool".to_string())]),
            timeout_ms: 1000,
            schema: json!({"type": "object"}),
        }
    }

    fn config(f: impl FnOnce(&mut PolicyConfig)) -> PolicyConfig {
        let mut c = PolicyConfig::default();
        f(&mut c);
        c
    }

    fn allow(names: &[&str]) -> PolicyConfig {
        config(|c| c.allow_tools = Some(names.iter().map(|s| s.to_string()).collect()))
    }

    fn start(argv: &[&str], env: EnvPolicy) -> ProcessStartParams {
        ProcessStartParams {
            process_id: "p".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: String::new(),
            env: BTreeMap::new(),
            tty: false,
            pipe_stdin: None,
            arg0: None,
            env_policy: Some(env),
            cols: None,
            rows: None,
            push_output: None,
            sandbox: None,
        }
    }

    /// The verdict on method `name`, of the class the method table gives
    /// it (as the dispatcher asks).
    fn check_method(p: &Policy, name: &str) -> Result<(), RpcError> {
        let access = crate::methods::find(name).map_or(Access::unlisted(name), |m| m.access);
        p.check(name, access)
    }

    fn denied(r: Result<(), RpcError>) -> String {
        let e = r.expect_err("refused");
        assert_eq!(e.code, code::POLICY_DENIED, "{e}");
        e.message
    }

    #[test]
    fn no_options_announce_nothing_and_allow_everything() {
        let dir = tempfile::tempdir().unwrap();
        let p = Policy::open(dir.path().to_path_buf());
        assert_eq!(p.announced(), None);
        for m in [
            method::FS_READ_FILE,
            method::FS_WRITE_FILE,
            method::PROCESS_START,
        ] {
            check_method(&p, m).unwrap();
        }
    }

    #[test]
    fn read_only_refuses_writes_and_processes_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Policy::new(&config(|c| c.read_only = true), dir.path().into(), &[]).unwrap();
        check_method(&p, method::FS_READ_RANGE).unwrap();
        check_method(&p, method::FS_GET_METADATA).unwrap();
        check_method(&p, method::PROCESS_READ).unwrap();
        for m in [
            method::FS_WRITE_FILE,
            method::FS_RENAME,
            method::FS_REMOVE,
            method::FS_COMMIT_FILE,
            method::PROCESS_START,
        ] {
            assert!(denied(check_method(&p, m)).contains("--read-only"), "{m}");
        }
        assert!(p.announced().unwrap().read_only);
    }

    #[test]
    fn allow_tools_enables_only_the_method_classes_its_tools_need() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Policy::new(&allow(&["read_file"]), dir.path().into(), &[]).unwrap();
        check_method(&p, method::FS_READ_FILE).unwrap();
        let m = denied(check_method(&p, method::FS_WRITE_FILE));
        assert!(
            m.contains("read_file") && m.contains("--allow-tools"),
            "{m}"
        );
        denied(check_method(&p, method::PROCESS_START));

        let (p, _) = Policy::new(&allow(&["shell", "write_file"]), dir.path().into(), &[]).unwrap();
        check_method(&p, method::PROCESS_START).unwrap();
        check_method(&p, method::FS_WRITE_FILE).unwrap();
        denied(check_method(&p, method::FS_READ_FILE));
        p.check_start(&start(&["anything"], env_of(&[])), dir.path())
            .unwrap();
    }

    #[test]
    fn allowed_custom_tools_may_start_their_own_commands_only() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = std::fs::canonicalize(dir.path()).unwrap();
        let tools = [
            spec("grep_logs", &["grep", "-n", "{pattern}", "app.log"], None),
            spec("other", &["rm", "-rf", "{what}"], None),
        ];
        let (p, _) = Policy::new(&allow(&["grep_logs"]), cwd.clone(), &tools).unwrap();
        check_method(&p, method::PROCESS_START).unwrap();
        let env = env_of(&[("MODE", "tool")]);
        p.check_start(
            &start(&["grep", "-n", "x; id", "app.log"], env.clone()),
            &cwd,
        )
        .unwrap();
        for (argv, env, cwd) in [
            (&["sh", "-c", "id"][..], env.clone(), cwd.clone()),
            (&["rm", "-rf", "/"], env.clone(), cwd.clone()),
            (
                &["grep", "-n", "x", "/etc/passwd"],
                env.clone(),
                cwd.clone(),
            ),
            (
                &["grep", "-n", "x", "app.log"],
                env_of(&[("LD_PRELOAD", "/x.so")]),
                cwd.clone(),
            ),
            (
                &["grep", "-n", "x", "app.log"],
                env.clone(),
                PathBuf::from("/"),
            ),
        ] {
            let m = denied(p.check_start(&start(argv, env), &cwd));
            assert!(m.contains("grep_logs") && !m.contains("other,"), "{m}");
        }
        // Not even those without any allowed custom tool.
        let (p, _) = Policy::new(&allow(&["read_file"]), cwd.clone(), &tools).unwrap();
        denied(check_method(&p, method::PROCESS_START));
    }

    #[test]
    fn bad_options_refuse_to_start_naming_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let err = |c: PolicyConfig, workdir: &Path, tools: &[CustomToolSpec]| {
            Policy::new(&c, workdir.to_path_buf(), tools)
                .err()
                .expect("refused")
        };
        let e = err(allow(&["read_file", "frobnicate"]), &base, &[]);
        assert!(
            e.contains("--allow-tools") && e.contains("frobnicate"),
            "{e}"
        );
        let e = err(allow(&[" ", ""]), &base, &[]);
        assert!(e.contains("names no tool"), "{e}");
        let e = err(config(|c| c.max_processes = Some(0)), &base, &[]);
        assert!(e.contains("--max-processes"), "{e}");
        let in_root = config(|c| c.root = Some(root.clone()));
        let e = err(in_root.clone(), &base, &[]);
        assert!(
            e.contains("--workdir") && e.contains("outside --root"),
            "{e}"
        );
        let e = err(in_root.clone(), &root, &[spec("t", &["true"], Some(&base))]);
        assert!(e.contains("custom tool \"t\""), "{e}");
        let e = err(config(|c| c.root = Some(base.join("missing"))), &base, &[]);
        assert!(e.contains("--root"), "{e}");
    }

    #[test]
    fn the_root_is_canonical_and_announced() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("real/sub")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("alias")).unwrap();
        let c = PolicyConfig {
            root: Some(base.join("alias")),
            allow_tools: Some(vec!["read_file".into(), "read_file".into()]),
            read_only: false,
            max_processes: Some(4),
            sandbox: None,
        };
        let (p, workdir) = Policy::new(&c, base.join("alias/sub"), &[]).unwrap();
        assert_eq!(workdir, base.join("real/sub"));
        assert_eq!(
            p.paths.root.as_ref().map(|r| r.path.as_path()),
            Some(base.join("real").as_path())
        );
        assert_eq!(
            p.announced().unwrap(),
            ExecutorPolicy {
                root: Some(base.join("real").display().to_string()),
                allow_tools: Some(vec!["read_file".into()]),
                read_only: false,
                max_processes: Some(4),
                sandbox: None,
            }
        );
    }

    #[test]
    fn max_processes_counts_live_permits() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Policy::new(
            &config(|c| c.max_processes = Some(2)),
            dir.path().into(),
            &[],
        )
        .unwrap();
        let a = p.admit_process().unwrap();
        let _b = p.admit_process().unwrap();
        let e = p.admit_process().err().expect("third refused");
        assert_eq!(e.code, code::TOO_MANY_PROCESSES);
        assert!(e.message.contains("at most 2"), "{e}");
        drop(a);
        let _c = p.admit_process().expect("a place is free again");
    }
}
