//! Processes under a pseudo-terminal through the REST API: a real terminal,
//! resize, and Ctrl-C as the 0x03 byte.

use serde_json::json;

use crate::harness::*;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

#[tokio::test]
async fn tty_reports_a_terminal() {
    let w = World::start(&[]).await;
    let sid = w
        .api
        .exec("laptop", json!({"command": ["tty"], "tty": true}))
        .await;
    let (data, v) = w.api.read_until(&sid, 0, |_| false).await;
    assert!(text(&data).starts_with("/dev/pts/"), "{:?}", text(&data));
    assert_eq!(v["exit_code"], 0);
    let all = w.api.output(&sid, 0).await;
    let chunks = all["chunks"].as_array().unwrap();
    assert!(!chunks.is_empty());
    assert!(chunks.iter().all(|c| c["stream"] == "pty"), "{all}");
}

#[tokio::test]
async fn stty_size_follows_a_resize() {
    let w = World::start(&[]).await;
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh"], "tty": true, "cols": 100, "rows": 30}),
        )
        .await;
    assert_eq!(w.api.stdin(&sid, b"stty size\n", false).await.0, 200);
    let (data, _) = w
        .api
        .read_until(&sid, 0, |d| text(d).contains("30 100"))
        .await;
    assert!(text(&data).contains("30 100"), "{:?}", text(&data));

    let (s, v) = w
        .api
        .post(
            &format!("/api/connectors/processes/{sid}/resize"),
            json!({"cols": 132, "rows": 43}),
        )
        .await;
    assert_eq!((s, &v), (200, &json!({"ok": true})));
    assert_eq!(w.api.stdin(&sid, b"stty size\n", false).await.0, 200);
    let (data, _) = w
        .api
        .read_until(&sid, 0, |d| text(d).contains("43 132"))
        .await;
    assert!(text(&data).contains("43 132"), "{:?}", text(&data));

    let (s, v) = w
        .api
        .post(
            &format!("/api/connectors/processes/{sid}/resize"),
            json!({"cols": 0, "rows": 43}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    w.api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;

    // A process without a terminal cannot be resized.
    let sid = w
        .api
        .exec("laptop", json!({"command": ["sleep", "30"]}))
        .await;
    let (s, v) = w
        .api
        .post(
            &format!("/api/connectors/processes/{sid}/resize"),
            json!({"cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "not_a_terminal");
    w.api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
}

#[tokio::test]
async fn ctrl_c_as_a_byte_interrupts_sleep() {
    let w = World::start(&[]).await;
    let sid = w
        .api
        .exec("laptop", json!({"command": ["sh", "-c", "echo ready; sleep 30; echo not-interrupted"], "tty": true}))
        .await;
    w.api
        .read_until(&sid, 0, |d| text(d).contains("ready"))
        .await;
    let started = std::time::Instant::now();
    assert_eq!(w.api.stdin(&sid, b"\x03", false).await.0, 200);
    let (data, v) = w.api.read_until(&sid, 0, |_| false).await;
    // Well before `sleep 30` would end by itself; generous because a loaded
    // 2-core machine once took over 10 s here (the assertions below are the
    // real check: an uninterrupted sleep prints "not-interrupted", exit 0).
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
    assert_eq!(v["session_alive"], false);
    assert_eq!(v["exit_code"], 130, "{v}");
    assert!(!text(&data).contains("not-interrupted"));
}

/// Runs `execgate exec -t laptop -- ARGS` inside `script`, which gives it a
/// real terminal on stdin; `keys` are typed into that terminal.
fn exec_t_in_a_terminal(w: &World, remote: &str, keys: &[(u64, &[u8])]) -> (i32, String) {
    use std::io::Write;
    let inner = format!("{} exec -t laptop -- sh -c {}", bin(), shell_quote(remote));
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env("EXECGATE_URL", &w.api.url)
        .env("EXECGATE_TOKEN", &w.api.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    for (delay_ms, bytes) in keys {
        std::thread::sleep(std::time::Duration::from_millis(*delay_ms));
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[tokio::test]
async fn exec_t_runs_under_a_remote_terminal_and_forwards_ctrl_c() {
    let w = World::start(&[]).await;
    let w2 = std::sync::Arc::new(w);
    // A remote terminal, its size from the local one (script's: 80x24 when
    // it has none itself), and the remote exit code.
    let w = w2.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        exec_t_in_a_terminal(&w, "tty; stty size; exit 3", &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    // Ctrl-C typed locally reaches the remote terminal as 0x03 and
    // interrupts sleep there (130 = 128 + SIGINT).
    let w = w2.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        exec_t_in_a_terminal(&w, "echo ready; sleep 30; echo no", &[(2000, b"\x03")])
    })
    .await
    .unwrap();
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("ready") && !out.contains("no\r"), "{out}");
}
