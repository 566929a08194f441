//! What an executor's announced policy (`environmentInfo.execgate.policy`:
//! `--root`, `--allow-tools`, `--read-only`, `--max-processes`, `--sandbox`) means on the
//! gateway's side: which tools envs/list shows, which calls are refused
//! before they reach the executor, and the `policy` field of envs/list.
//!
//! The executor enforces its policy itself, whatever the gateway sends;
//! this layer is there so that agents only see tools that can work, and a
//! refusal names the option rather than failing halfway. Refusals:
//! - a tool the allow list does not name: 403 `tool_not_allowed`;
//! - a tool that would change files or run a process on a read-only
//!   executor: 403 `policy_denied`;
//! - a call's narrower `sandbox` on an executor that cannot apply it (a
//!   stock codex would ignore it and run the process unconfined): 501
//!   `not_supported_by_executor`;
//! - what the executor itself refuses (a path outside `--root`, a `sandbox`
//!   wider than its own, …) comes
//!   back as `LinkError::Denied`: 403 `policy_denied`, or 429
//!   `too_many_processes` (see `error.rs`).
//!
//! A stock codex, and an execgate executor started without options,
//! announce no policy: nothing here applies to them.

use execgate_protocol::connectors::{error_code as code, PolicyInfo, SandboxInfo};
use execgate_protocol::exec::{NetAccess, SandboxRequest};
use execgate_protocol::policy::ExecutorPolicy;

use crate::link::Link;
use crate::ops::Error;

/// Tools a read-only executor still serves: the reads, and `copy_path` as
/// a source (its destination is checked by [`check_copy`]).
const READ_ONLY_TOOLS: &[&str] = &["read_file", "list_dir", "copy_path"];

/// The policy the link's executor announced, if any.
pub fn of(link: &Link) -> Option<ExecutorPolicy> {
    link.ext().policy
}

/// The `policy` field of envs/list.
pub fn info(link: &Link) -> Option<PolicyInfo> {
    of(link).map(|p| PolicyInfo {
        root: p.root,
        allow_tools: p.allow_tools,
        read_only: p.read_only,
        max_processes: p.max_processes,
        sandbox: p.sandbox.map(|s| SandboxInfo {
            write: s.write,
            devices: s.devices,
            read: s.read,
            net: if s.deny_net { "deny" } else { "allow" }.into(),
            landlock_abi: s.landlock_abi,
            scopes: s.scopes,
        }),
    })
}

/// A call's narrower `sandbox` (shell, exec_command) goes only to an
/// executor that announces it can apply it: anything else would run the
/// process without the confinement it asked for. Whether it is narrower
/// than the executor's own is the executor's to check (it resolves paths).
pub fn check_sandbox(link: &Link, request: Option<&SandboxRequest>) -> Result<(), Error> {
    let Some(request) = request else {
        return Ok(());
    };
    let abi = link.ext().sandbox_abi;
    let needed = if request.net == Some(NetAccess::Deny) {
        4
    } else {
        3
    };
    if abi < needed {
        return Err(Error::new(
            code::NOT_SUPPORTED_BY_EXECUTOR,
            format!(
                "environment '{}' cannot run a process in a sandbox{}: {}",
                link.name,
                if needed == 4 { " without network" } else { "" },
                if link.handshake().is_some_and(|h| h.info.execgate.is_some()) {
                    format!("it applies sandboxes with Landlock ABI {abi} (0: not at all), and this needs ABI {needed}")
                } else {
                    "its executor does not support it".to_string()
                }
            ),
        ));
    }
    Ok(())
}

/// Whether envs/list shows `tool` (core or custom) for this executor.
pub fn visible(link: &Link, tool: &str) -> bool {
    check_tool(link, tool).is_ok()
}

/// Refuses a call of `tool` (a core or custom tool of this executor) that
/// its policy does not allow.
pub fn check_tool(link: &Link, tool: &str) -> Result<(), Error> {
    let Some(policy) = of(link) else {
        return Ok(());
    };
    if !policy.lists(tool) {
        return Err(not_allowed(link, &policy, &format!("tool {tool:?} is")));
    }
    if policy.read_only && !READ_ONLY_TOOLS.contains(&tool) {
        return Err(read_only(link, tool));
    }
    Ok(())
}

/// `copy_path` reads its source and writes its destination: both must
/// allow it, and the destination must not be read-only.
pub fn check_copy(src: &Link, dst: &Link) -> Result<(), Error> {
    for link in [src, dst] {
        if let Some(policy) = of(link).filter(|p| !p.lists("copy_path")) {
            return Err(not_allowed(link, &policy, "tool \"copy_path\" is"));
        }
    }
    if of(dst).is_some_and(|p| p.read_only) {
        return Err(read_only(dst, "copy_path to it"));
    }
    Ok(())
}

/// `GET /envs/{name}/files`: a read, as `read_file` or `copy_path` does.
pub fn check_download(link: &Link) -> Result<(), Error> {
    match of(link) {
        Some(p) if !p.lists("read_file") && !p.lists("copy_path") => Err(not_allowed(
            link,
            &p,
            "downloading files (it needs read_file or copy_path) is",
        )),
        _ => Ok(()),
    }
}

/// `PUT /envs/{name}/files`: a write, as `write_file` or `copy_path` does.
pub fn check_upload(link: &Link) -> Result<(), Error> {
    match of(link) {
        Some(p) if p.read_only => Err(read_only(link, "uploading a file")),
        Some(p) if !p.lists("write_file") && !p.lists("copy_path") => Err(not_allowed(
            link,
            &p,
            "uploading files (it needs write_file or copy_path) is",
        )),
        _ => Ok(()),
    }
}

fn not_allowed(link: &Link, policy: &ExecutorPolicy, what: &str) -> Error {
    let allowed = policy.allow_tools.clone().unwrap_or_default();
    Error::new(
        code::TOOL_NOT_ALLOWED,
        format!(
            "{what} not allowed on environment '{}': its executor allows only {} (--allow-tools)",
            link.name,
            allowed.join(", ")
        ),
    )
}

fn read_only(link: &Link, what: &str) -> Error {
    Error::new(code::POLICY_DENIED,
        format!(
            "environment '{}' is read-only (its executor runs with --read-only): {what} would change files or run a process; read_file, list_dir, and copy_path from it, still work",
            link.name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Handshake;
    use execgate_protocol::exec::{EnvironmentInfo, ExtCapabilities};
    use std::sync::Arc;

    fn link_with(policy: Option<ExecutorPolicy>) -> Arc<Link> {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let link = Link::new("exe_1".into(), "w".into(), "box".into(), tx);
        let ext = ExtCapabilities {
            policy,
            ..Default::default()
        };
        link.set_handshake(Handshake {
            session_id: "s".into(),
            info: EnvironmentInfo {
                execgate: Some(ext.clone()),
                ..Default::default()
            },
            ext,
        });
        link
    }

    fn code_of(r: Result<(), Error>) -> (u16, &'static str, String) {
        // The status callers see: through the HTTP layer.
        let e = crate::http::error::ApiError::from(r.expect_err("refused"));
        (e.status.as_u16(), e.code, e.message)
    }

    #[test]
    fn no_policy_allows_everything() {
        let link = link_with(None);
        for tool in ["shell", "write_file", "custom_x"] {
            check_tool(&link, tool).unwrap();
        }
        check_copy(&link, &link).unwrap();
        check_upload(&link).unwrap();
        assert_eq!(info(&link), None);
    }

    #[test]
    fn allow_list_refuses_other_tools_naming_the_allowed_ones() {
        let link = link_with(Some(ExecutorPolicy {
            allow_tools: Some(vec!["read_file".into(), "grep_logs".into()]),
            ..Default::default()
        }));
        check_tool(&link, "read_file").unwrap();
        check_tool(&link, "grep_logs").unwrap();
        let (status, code, message) = code_of(check_tool(&link, "shell"));
        assert_eq!((status, code), (403, "tool_not_allowed"));
        assert!(message.contains("\"shell\"") && message.contains("read_file, grep_logs"));
        assert!(!visible(&link, "write_file"));
        check_download(&link).unwrap();
        assert_eq!(code_of(check_upload(&link)).1, "tool_not_allowed");
        assert_eq!(code_of(check_copy(&link, &link)).1, "tool_not_allowed");
    }

    #[test]
    fn a_call_sandbox_goes_only_to_an_executor_that_applies_it() {
        let request = |net| SandboxRequest {
            write: Some(vec!["/srv".into()]),
            net,
        };
        // A stock codex (or an executor without Landlock) would run the
        // process unconfined: 501, before anything is sent.
        let plain = link_with(None);
        check_sandbox(&plain, None).unwrap();
        let (status, code, message) = code_of(check_sandbox(&plain, Some(&request(None))));
        assert_eq!((status, code), (501, "not_supported_by_executor"));
        assert!(message.contains("sandbox"), "{message}");

        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let with_abi = |abi| {
            let link = Link::new("exe_2".into(), "w".into(), "box".into(), tx.clone());
            let ext = ExtCapabilities {
                sandbox_abi: abi,
                ..Default::default()
            };
            link.set_handshake(Handshake {
                session_id: "s".into(),
                info: EnvironmentInfo {
                    execgate: Some(ext.clone()),
                    ..Default::default()
                },
                ext,
            });
            link
        };
        let abi3 = with_abi(3);
        check_sandbox(&abi3, Some(&request(None))).unwrap();
        let (status, _, message) =
            code_of(check_sandbox(&abi3, Some(&request(Some(NetAccess::Deny)))));
        assert_eq!(status, 501);
        assert!(
            message.contains("ABI 3") && message.contains("ABI 4"),
            "{message}"
        );
        check_sandbox(&with_abi(7), Some(&request(Some(NetAccess::Deny)))).unwrap();
    }

    #[test]
    fn read_only_keeps_reads_and_copies_from_it() {
        let ro = link_with(Some(ExecutorPolicy {
            read_only: true,
            ..Default::default()
        }));
        let free = link_with(None);
        check_tool(&ro, "read_file").unwrap();
        check_tool(&ro, "copy_path").unwrap();
        check_tool(&ro, "list_dir").unwrap();
        for tool in [
            "write_file",
            "apply_patch",
            "shell",
            "exec_command",
            "custom_x",
        ] {
            let (status, code, message) = code_of(check_tool(&ro, tool));
            assert_eq!((status, code), (403, "policy_denied"), "{tool}");
            assert!(message.contains("--read-only"), "{message}");
        }
        check_copy(&ro, &free).unwrap();
        assert_eq!(code_of(check_copy(&free, &ro)).1, "policy_denied");
        check_download(&ro).unwrap();
        assert_eq!(code_of(check_upload(&ro)).1, "policy_denied");
        assert!(info(&ro).unwrap().read_only);
    }
}
