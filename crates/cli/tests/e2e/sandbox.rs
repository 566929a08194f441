//! `--sandbox` end to end (issue 16, part 2): processes (shell,
//! exec_command with and without a pty) write only where the executor
//! allows, `--sandbox-net deny` refuses TCP, a call's narrower `sandbox`
//! applies on top and a wider one is refused, envs/list shows the sandbox,
//! and without `--sandbox` nothing changes. Needs Landlock ABI 4 (Linux
//! 6.7); the tests say so and pass vacuously on an older kernel.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::*;

/// The running kernel's Landlock ABI (0: none).
fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // only returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    v.max(0)
}

fn have_landlock() -> bool {
    let ok = landlock_abi() >= 4;
    if !ok {
        eprintln!("skipped: this kernel has Landlock ABI {}", landlock_abi());
    }
    ok
}

/// `dir/out` beside the workdir, and `dir/extra` for `--sandbox-write`.
fn dirs(w: &World) -> (PathBuf, PathBuf, PathBuf) {
    let base = std::fs::canonicalize(w.dir.path()).unwrap();
    let (out, extra) = (base.join("out"), base.join("extra"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::create_dir_all(w.workdir.join("sub")).unwrap();
    (std::fs::canonicalize(&w.workdir).unwrap(), out, extra)
}

/// Runs `script` with `sh -c` through `shell` (plus `more` arguments);
/// returns (exit code, stdout + stderr).
async fn sh(api: &Api, env: &str, script: &str, more: Value) -> (i64, String) {
    let mut args = json!({"command": ["sh", "-c", script]});
    for (k, v) in more.as_object().unwrap() {
        args[k] = v.clone();
    }
    let r = api.call(env, "shell", args).await;
    let s = &r["structuredContent"];
    (
        s["exit_code"].as_i64().unwrap_or(-1),
        format!(
            "{}{}",
            s["stdout"].as_str().unwrap_or(""),
            s["stderr"].as_str().unwrap_or("")
        ),
    )
}

fn write_to(path: &Path) -> String {
    format!("echo x > {}", path.display())
}

fn laptop(envs: &Value) -> &Value {
    &envs["envs"][0]
}

#[tokio::test]
async fn sandboxed_processes_write_only_where_allowed_and_envs_list_shows_it() {
    if !have_landlock() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let extra = std::fs::canonicalize(tmp.path()).unwrap();
    let w = World::start(&["--sandbox", "--sandbox-write", extra.to_str().unwrap()]).await;
    let (work, out, _) = dirs(&w);

    // Outside: refused by the kernel, with the usual EACCES message.
    let (code, text) = sh(&w.api, "laptop", &write_to(&out.join("f")), json!({})).await;
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!out.join("f").exists());
    let (code, text) = sh(
        &w.api,
        "laptop",
        &format!("cd /; mkdir {}/d", out.display()),
        json!({}),
    )
    .await;
    assert_ne!(code, 0, "{text}");
    // Inside the workdir (no --root), the extra path and /dev/null: fine.
    for (path, ok) in [(work.join("f"), true), (extra.join("f"), true)] {
        let (code, text) = sh(&w.api, "laptop", &write_to(&path), json!({})).await;
        assert_eq!((code == 0, path.exists()), (ok, ok), "{path:?}: {text}");
    }
    let (code, text) = sh(
        &w.api,
        "laptop",
        "echo x > /dev/null && cat /etc/hostname >/dev/null",
        json!({}),
    )
    .await;
    assert_eq!(code, 0, "{text}");

    // exec_command under a pty: confined too, and the terminal works.
    let script = format!(
        "{}; echo rc=$?; tty >/dev/null && echo tty-ok",
        write_to(&out.join("pty"))
    );
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", script], "tty": true}),
        )
        .await;
    let (data, _) = w
        .api
        .read_until(&sid, 0, |d| String::from_utf8_lossy(d).contains("tty-ok"))
        .await;
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.contains("Permission denied") && !text.contains("rc=0"),
        "{text}"
    );
    assert!(text.contains("tty-ok"), "{text}");
    assert!(!out.join("pty").exists());

    // All of them share one sandbox: a later call may signal a process an
    // earlier one started (the ABI 6 signal scope is about the outside).
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "echo pid=$$; exec sleep 300"]}),
        )
        .await;
    let (data, _) = w
        .api
        .read_until(&sid, 0, |d| String::from_utf8_lossy(d).contains('\n'))
        .await;
    let text = String::from_utf8_lossy(&data);
    let pid = text.trim().strip_prefix("pid=").expect("pid line");
    let (code, text) = sh(&w.api, "laptop", &format!("kill {pid}"), json!({})).await;
    assert_eq!(code, 0, "{text}");
    // But not the executor, which is outside.
    if landlock_abi() >= 6 {
        let (code, text) = sh(&w.api, "laptop", "kill -0 $PPID", json!({})).await;
        assert_ne!(code, 0, "{text}");
    }

    // envs/list shows it.
    let envs = w.api.envs().await;
    let sandbox = &laptop(&envs)["policy"]["sandbox"];
    assert_eq!(
        sandbox["write"],
        json!([work.display().to_string(), extra.display().to_string()]),
        "{envs}"
    );
    assert_eq!(sandbox["read"], Value::Null, "{envs}");
    assert_eq!(sandbox["net"], "allow");
    assert!(sandbox["landlock_abi"].as_u64().unwrap() >= 4, "{sandbox}");
    assert!(
        sandbox["devices"]
            .as_array()
            .unwrap()
            .contains(&json!("/dev/null")),
        "{sandbox}"
    );
    if landlock_abi() >= 6 {
        assert_eq!(sandbox["scopes"], json!(["abstract_unix_socket", "signal"]));
    }

    // A narrower sandbox per call: only sub/ (relative to the workdir).
    let narrow = json!({"sandbox": {"write": ["sub"]}});
    let (code, _) = sh(&w.api, "laptop", &write_to(&work.join("g")), narrow.clone()).await;
    assert_ne!(code, 0);
    assert!(!work.join("g").exists());
    let (code, text) = sh(&w.api, "laptop", &write_to(&work.join("sub/g")), narrow).await;
    assert_eq!(code, 0, "{text}");
    // No writes at all, for exec_command too.
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", format!("{}; echo rc=$?", write_to(&work.join("h")))],
                   "sandbox": {"write": []}}),
        )
        .await;
    let (data, _) = w
        .api
        .read_until(&sid, 0, |d| String::from_utf8_lossy(d).contains("rc="))
        .await;
    assert!(!String::from_utf8_lossy(&data).contains("rc=0"));
    assert!(!work.join("h").exists());

    // A wider one is refused before anything runs: 403 policy_denied.
    for tool in ["shell", "exec_command"] {
        let (status, body) = w
            .api
            .call_raw(
                "laptop",
                tool,
                json!({"command": ["sh", "-c", write_to(&out.join("wide"))],
                       "sandbox": {"write": [out.display().to_string()]}}),
            )
            .await;
        assert_eq!(status, 403, "{tool}: {body}");
        assert_eq!(body["error"]["code"], "policy_denied", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("wider"),
            "{body}"
        );
    }
    assert!(!out.join("wide").exists());
    // Unknown keys are a 400 naming the field.
    let (status, body) = w
        .api
        .call_raw(
            "laptop",
            "shell",
            json!({"command": "true", "sandbox": {"read": ["/"]}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_arguments")),
        "{body}"
    );
}

/// bash's /dev/tcp connect to a listening loopback port; (exit code, text).
async fn connect(api: &Api, env: &str, port: u16, more: Value) -> (i64, String) {
    sh(
        api,
        env,
        &format!("exec bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' 2>&1"),
        more,
    )
    .await
}

#[tokio::test]
async fn sandbox_net_deny_refuses_tcp_and_a_call_cannot_reopen_it() {
    if !have_landlock() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let w = World::start(&["--sandbox", "--sandbox-net", "deny"]).await;
    let (code, text) = connect(&w.api, "laptop", port, json!({})).await;
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("Permission denied"), "{text}");
    let envs = w.api.envs().await;
    assert_eq!(laptop(&envs)["policy"]["sandbox"]["net"], "deny", "{envs}");
    let (status, body) = w
        .api
        .call_raw(
            "laptop",
            "shell",
            json!({"command": "true", "sandbox": {"net": "allow"}}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "policy_denied");
}

#[tokio::test]
async fn without_sandbox_nothing_changes_but_a_call_may_confine_itself() {
    if !have_landlock() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let w = World::start(&[]).await;
    let (work, out, _) = dirs(&w);
    // Writes anywhere the user can, connects anywhere; no policy announced.
    let (code, text) = sh(&w.api, "laptop", &write_to(&out.join("f")), json!({})).await;
    assert_eq!(code, 0, "{text}");
    let (code, text) = connect(&w.api, "laptop", port, json!({})).await;
    assert_eq!(code, 0, "{text}");
    let envs = w.api.envs().await;
    assert_eq!(laptop(&envs).get("policy"), None, "{envs}");

    // A call's own sandbox applies anyway (narrowing is always safe).
    let (code, _) = connect(&w.api, "laptop", port, json!({"sandbox": {"net": "deny"}})).await;
    assert_ne!(code, 0);
    let only_work = json!({"sandbox": {"write": [work.display().to_string()]}});
    let (code, _) = sh(
        &w.api,
        "laptop",
        &write_to(&out.join("g")),
        only_work.clone(),
    )
    .await;
    assert_ne!(code, 0);
    assert!(!out.join("g").exists());
    let (code, text) = sh(&w.api, "laptop", &write_to(&work.join("g")), only_work).await;
    assert_eq!(code, 0, "{text}");
    // A path that does not exist cannot be confined to: the tool fails
    // naming it, and nothing runs.
    let r = w
        .api
        .call(
            "laptop",
            "shell",
            json!({"command": write_to(&work.join("never")), "sandbox": {"write": ["/definitely/not/here"]}}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("sandbox.write"),
        "{r}"
    );
    assert!(!work.join("never").exists());
}

#[tokio::test]
async fn sandbox_options_refuse_to_start_with_a_message() {
    for (args, needle) in [
        (
            vec!["--sandbox", "--sandbox-write", "/definitely/not/here"],
            "--sandbox-write",
        ),
        (vec!["--sandbox-write", "/tmp"], "--sandbox"),
        (vec!["--sandbox", "--sandbox-net", "maybe"], "--sandbox-net"),
    ] {
        let out = Command::new(bin())
            .args([
                "executor",
                "--gateway",
                "http://127.0.0.1:9",
                "--token",
                "exe_x.y",
            ])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should refuse to start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn sandbox_read_confines_reads_but_programs_still_run() {
    if !have_landlock() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let (readable, hidden) = (base.join("readable"), base.join("hidden"));
    std::fs::create_dir_all(&readable).unwrap();
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(readable.join("a"), "visible\n").unwrap();
    std::fs::write(hidden.join("b"), "secret\n").unwrap();
    let w = World::start(&["--sandbox", "--sandbox-read", readable.to_str().unwrap()]).await;
    let (work, _, _) = dirs(&w);
    std::fs::write(work.join("w"), "in the workdir\n").unwrap();

    // Programs (from /usr, /bin, PATH) run and read what is listed, the
    // write paths, and /etc.
    let (code, text) = sh(
        &w.api,
        "laptop",
        &format!(
            "cat {}/a w /etc/passwd >/dev/null && echo ok",
            readable.display()
        ),
        json!({}),
    )
    .await;
    assert_eq!((code, text.trim()), (0, "ok"), "{text}");
    let (code, text) = sh(
        &w.api,
        "laptop",
        &format!("cat {}/b", hidden.display()),
        json!({}),
    )
    .await;
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("Permission denied") && !text.contains("secret"),
        "{text}"
    );
    let envs = w.api.envs().await;
    let read = laptop(&envs)["policy"]["sandbox"]["read"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(read[0], readable.display().to_string(), "{envs}");
    assert!(read.contains(&json!("/usr")), "{envs}");
}
