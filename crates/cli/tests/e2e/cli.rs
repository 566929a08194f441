//! The `execgate` command line: `up`, the client commands, and admin.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// Starts `execgate up` and returns it with the URL and token it printed.
fn start_up(data_dir: &std::path::Path, workdir: &std::path::Path) -> (Proc, String, String) {
    start_up_with(data_dir, workdir, &[])
}

/// [`start_up`] with extra arguments (the local executor's options).
fn start_up_with(
    data_dir: &std::path::Path,
    workdir: &std::path::Path,
    extra: &[&str],
) -> (Proc, String, String) {
    let mut child = Command::new(bin())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .arg("--workdir")
        .arg(workdir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut url = None;
        let mut token = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let line = line.trim().to_string();
            if let Some(u) = line.strip_prefix("export EXECGATE_URL=") {
                url = Some(u.to_string());
            }
            if let Some(t) = line.strip_prefix("export EXECGATE_TOKEN=") {
                token = Some(t.to_string());
            }
            if line.starts_with("Press Ctrl-C") {
                let _ = tx.send((url.take().unwrap(), token.take().unwrap()));
            }
        }
    });
    let (url, token) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("execgate up prints its banner");
    (Proc(child), url, token)
}

/// Runs an `execgate` client command against `url`/`token`.
fn client(url: &str, token: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .env("EXECGATE_URL", url)
        .env("EXECGATE_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn up_serves_a_local_executor_and_the_cli_drives_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (mut up, url, token) = start_up(&data, &work);

    // The printed token works and `local` is connected and default.
    let api = Api::new(&url, &token);
    let v = api.envs().await;
    assert_eq!(v["envs"][0]["name"], "local", "{v}");
    assert_eq!(v["envs"][0]["is_default"], true);

    let (code, out, err) = client(&url, &token, &["envs"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("local") && out.contains("shell"), "{out}");

    let (code, out, err) = client(
        &url,
        &token,
        &[
            "call",
            "local",
            "shell",
            "--args",
            r#"{"command":["echo","hi"]}"#,
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["structuredContent"]["stdout"], "hi\n");

    // exec streams both streams, forwards stdin up to EOF, and exits with
    // the remote exit code.
    let (code, out, err) = client(
        &url,
        &token,
        &[
            "exec",
            "local",
            "--",
            "sh",
            "-c",
            "cat; echo err >&2; exit 7",
        ],
        b"from stdin",
    );
    assert_eq!(code, 7, "stderr: {err}");
    assert_eq!(out, "from stdin");
    assert!(err.contains("err"), "{err}");

    // Errors are readable, and a bad env is not a crash.
    let (code, _, err) = client(&url, &token, &["exec", "nope", "--", "true"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("env_not_found"), "{err}");

    // A restart on the same data dir reuses the proxy token.
    up.kill();
    let (_up, url2, token2) = start_up(&data, &work);
    assert_eq!(token2, token);
    let api = Api::new(&url2, &token2);
    wait_for_env(&api, "local").await;
    let r = api
        .call("local", "shell", json!({"command": ["pwd"]}))
        .await;
    assert_eq!(
        r["structuredContent"]["stdout"],
        format!("{}\n", std::fs::canonicalize(&work).unwrap().display())
    );
}

#[tokio::test]
async fn admin_revocation_and_removal_take_effect_on_the_next_request() {
    let w = World::start(&[]).await;
    // A second token, revoked while the gateway runs.
    let out = Command::new(bin())
        .args(["admin", "--data-dir"])
        .arg(&w.data_dir)
        .args(["token", "create", "--workspace", "w1", "--user", "u7"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let id = text.split_whitespace().nth(3).unwrap().to_string();
    assert!(id.starts_with("tok_"), "{text}");
    let token = text.lines().last().unwrap();
    let api = Api::new(&w.api.url, token);
    api.envs().await;
    let listed = admin(&w.data_dir, &["token", "list", "--workspace", "w1"]);
    assert!(listed.contains("live"), "{listed}");

    admin(&w.data_dir, &["token", "revoke", &id]);
    let (s, v) = api.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    // The other token is unaffected.
    w.api.envs().await;

    // Removing the executor removes the environment.
    let list = Command::new(bin())
        .args(["admin", "--data-dir"])
        .arg(&w.data_dir)
        .args(["executor", "list", "--workspace", "w1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("laptop"));
    admin(
        &w.data_dir,
        &["executor", "remove", "--workspace", "w1", "laptop"],
    );
    let (s, v) = w
        .api
        .call_raw("laptop", "shell", json!({"command": ["true"]}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("env_not_found"))
    );
    assert_eq!(w.api.envs().await["envs"], json!([]));
}

#[tokio::test]
async fn a_call_in_flight_fails_at_once_when_its_executor_dies() {
    let mut w = World::start(&[]).await;
    let api = w.api.clone();
    let call = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = api
            .call_raw("laptop", "shell", json!({"command": ["sleep", "30"]}))
            .await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.executors[0].kill();
    let ((s, v), took) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call must not hang")
        .unwrap();
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "executor_unavailable");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // And the environment is reported as not connected.
    let (s, v) = w
        .api
        .call_raw("laptop", "shell", json!({"command": ["true"]}))
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last seen"),
        "{v}"
    );
}

/// `execgate up` passes the executor's policy and sandbox options to its
/// local executor, and `execgate envs` shows them (issue 16, part 4).
#[tokio::test]
async fn up_takes_the_executor_policy_and_envs_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let (data, root, out) = (base.join("data"), base.join("root"), base.join("out"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let tools = base.join("tools.toml");
    std::fs::write(
        &tools,
        "[[tool]]\nname = \"hello\"\ndescription = \"hi\"\nargv = [\"echo\", \"hi\"]\n[tool.schema]\ntype = \"object\"\n",
    )
    .unwrap();
    let sandboxed = landlock_abi() >= 3;
    let mut extra = vec![
        "--root",
        root.to_str().unwrap(),
        "--allow-tools",
        "shell,read_file,hello",
        "--max-processes",
        "3",
        "--tools",
        tools.to_str().unwrap(),
    ];
    if sandboxed {
        extra.push("--sandbox");
    }
    let (_up, url, token) = start_up_with(&data, &root, &extra);

    let api = Api::new(&url, &token);
    let v = api.envs().await;
    let policy = &v["envs"][0]["policy"];
    assert_eq!(policy["root"], root.display().to_string(), "{v}");
    assert_eq!(
        policy["allow_tools"],
        json!(["shell", "read_file", "hello"]),
        "{v}"
    );
    assert_eq!(policy["max_processes"], 3, "{v}");
    let tools: Vec<&str> = v["envs"][0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"hello") && !tools.contains(&"write_file"),
        "{v}"
    );

    let (code, text, err) = client(&url, &token, &["envs"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!(
            "policy:  root {}; allow shell,read_file,hello; max 3 processes",
            root.display()
        )),
        "{text}"
    );
    if !sandboxed {
        eprintln!("no Landlock ABI 3 here: the sandbox part is skipped");
        assert!(text.contains("sandbox: none"), "{text}");
        return;
    }
    assert_eq!(
        policy["sandbox"]["write"],
        json!([root.display().to_string()]),
        "{v}"
    );
    assert!(
        text.contains(&format!("sandbox: write {} (+ /dev/null", root.display()))
            && text.contains("read all; net allow; landlock ABI"),
        "{text}"
    );
    // And the local executor's processes are confined.
    let r = api
        .call(
            "local",
            "shell",
            json!({"command": format!("echo x > {}/f", out.display())}),
        )
        .await;
    assert_ne!(r["structuredContent"]["exit_code"], 0, "{r}");
    assert!(!out.join("f").exists());
}

/// The running kernel's Landlock ABI (0: none).
fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI.
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
