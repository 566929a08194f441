//! The foundation's tools and process sessions, end to end.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn envs_list_shows_only_connected_executors_with_working_tools() {
    let w = World::start(&[]).await;
    // Registered but never connected: not listed, and 503 when called.
    admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w1", "--name", "offline"],
    );
    let v = w.api.envs().await;
    let envs = v["envs"].as_array().unwrap();
    assert_eq!(envs.len(), 1, "{v}");
    let env = &envs[0];
    assert_eq!(env["name"], "laptop");
    assert_eq!(env["type"], "executor");
    assert_eq!(env["is_default"], true);
    let seen = env["last_seen"].as_str().unwrap();
    assert!(seen.ends_with('Z') && seen.len() == 20, "{seen}");
    let tools: Vec<_> = env["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["kind"], "core");
            assert!(!t["description"].as_str().unwrap().is_empty());
            t["name"].as_str().unwrap().to_string()
        })
        .collect();
    for t in ["shell", "read_file", "write_file", "exec_command"] {
        assert!(tools.contains(&t.to_string()), "{tools:?}");
    }
    assert_eq!(env["executor"]["kind"], "execgate");

    let (s, v) = w
        .api
        .call_raw("offline", "shell", json!({"command":["true"]}))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "executor_unavailable");
    assert!(v["error"]["message"].as_str().unwrap().contains("offline"));
}

#[tokio::test]
async fn shell_reports_stdout_stderr_exit_code_cwd_and_env() {
    let w = World::start(&[]).await;
    std::fs::create_dir_all(w.workdir.join("sub")).unwrap();
    let r = w
        .api
        .call(
            "laptop",
            "shell",
            json!({
                "command": ["sh", "-c", "echo out; echo err >&2; pwd; echo \"$FOO\"; exit 3"],
                "cwd": "sub",
                "env": {"FOO": "bar baz"},
            }),
        )
        .await;
    let sc = &r["structuredContent"];
    let sub = std::fs::canonicalize(w.workdir.join("sub")).unwrap();
    assert_eq!(
        sc["stdout"],
        format!("out\n{}\nbar baz\n", sub.display()),
        "{r}"
    );
    assert_eq!(sc["stderr"], "err\n");
    assert_eq!(sc["exit_code"], 3);
    assert_eq!(sc["timed_out"], false);
    assert!(sc["duration_ms"].is_u64());
    // A non-zero exit is not a tool error.
    assert_eq!(r["isError"], false);
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("--- stderr ---\nerr\n"), "{text}");
    assert!(text.ends_with("[exit_code=3]"), "{text}");

    // A string means sh -c.
    let r = w
        .api
        .call(
            "laptop",
            "shell",
            json!({"command": "echo $((6*7)) | tr 4 X"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "X2\n");
    assert_eq!(r["structuredContent"]["exit_code"], 0);

    // A program that does not exist is a tool error, not an HTTP error.
    let r = w
        .api
        .call("laptop", "shell", json!({"command": ["/nonexistent/prog"]}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
}

/// A script with no `#!` runs under /bin/sh, as execvp would run it, by
/// path and by a name found in PATH (the executor spawns with posix_spawn,
/// which has no such fallback of its own).
#[tokio::test]
async fn a_script_without_a_shebang_runs_under_sh() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::start(&[]).await;
    let bin = w.workdir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("greet");
    std::fs::write(&script, "echo \"hi $1 from $0\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let r = w
        .api
        .call("laptop", "shell", json!({"command": ["bin/greet", "a"]}))
        .await;
    assert_eq!(
        r["structuredContent"]["stdout"], "hi a from bin/greet\n",
        "{r}"
    );
    assert_eq!(r["structuredContent"]["exit_code"], 0);

    let path = format!("{}:/usr/bin:/bin", bin.display());
    let r = w
        .api
        .call(
            "laptop",
            "shell",
            json!({"command": ["greet", "b"], "env": {"PATH": path}}),
        )
        .await;
    assert_eq!(
        r["structuredContent"]["stdout"],
        format!("hi b from {}\n", script.display()),
        "{r}"
    );
}

#[tokio::test]
async fn shell_timeout_kills_the_process_and_its_children() {
    let w = World::start(&[]).await;
    let r = w
        .api
        .call(
            "laptop",
            "shell",
            json!({
                "command": ["sh", "-c", "sleep 300 & echo $! > child.pid; echo $$ > sh.pid; echo started; sleep 300"],
                "timeout_ms": 700,
            }),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    let sc = &r["structuredContent"];
    assert_eq!(sc["timed_out"], true);
    assert_eq!(sc["stdout"], "started\n");
    let ms = sc["duration_ms"].as_u64().unwrap();
    assert!((700..10_000).contains(&ms), "{ms}");
    for f in ["child.pid", "sh.pid"] {
        let pid: u32 = std::fs::read_to_string(w.workdir.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        eventually(
            5,
            &format!("{f} ({pid}) to die"),
            || async move { !alive(pid) },
        )
        .await;
    }
}

#[tokio::test]
async fn read_and_write_files_round_trip_binary_bytes() {
    let w = World::start(&[]).await;
    let data: Vec<u8> = (0..=255u8).cycle().take(4096 + 17).collect();
    let r = w
        .api
        .call(
            "laptop",
            "write_file",
            json!({"path": "deep/er/bin.dat", "content_b64": b64e(&data)}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        std::fs::read(w.workdir.join("deep/er/bin.dat")).unwrap(),
        data
    );

    let abs = w.workdir.join("deep/er/bin.dat");
    let r = w
        .api
        .call(
            "laptop",
            "read_file",
            json!({"path": abs.to_str().unwrap()}),
        )
        .await;
    assert_eq!(b64d(r["content"][0]["text"].as_str().unwrap()), data);
    assert_eq!(r["structuredContent"]["encoding"], "base64");

    let r = w
        .api
        .call(
            "laptop",
            "read_file",
            json!({"path": "deep/er/bin.dat", "offset": 250, "limit": 10}),
        )
        .await;
    assert_eq!(
        b64d(r["content"][0]["text"].as_str().unwrap()),
        &data[250..260]
    );
    let r = w
        .api
        .call(
            "laptop",
            "read_file",
            json!({"path": "deep/er/bin.dat", "offset": 100000}),
        )
        .await;
    assert_eq!(r["content"][0]["text"], "");

    // Overwrite in place, and refuse to create parents when told not to.
    w.api
        .call(
            "laptop",
            "write_file",
            json!({"path": "deep/er/bin.dat", "content_b64": b64e(b"short")}),
        )
        .await;
    assert_eq!(std::fs::read(&abs).unwrap(), b"short");
    let r = w
        .api
        .call(
            "laptop",
            "write_file",
            json!({"path": "nope/x", "content_b64": "", "create_parents": false}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(!w.workdir.join("nope").exists());

    let r = w
        .api
        .call("laptop", "read_file", json!({"path": "missing.txt"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
}

/// REST keeps base64 unless `encoding` asks otherwise; `auto` answers
/// text for UTF-8 and base64 for the rest, `utf-8` escapes losslessly.
#[tokio::test]
async fn rest_encodings_on_read_file_write_file_and_output() {
    let w = World::start(&[]).await;
    let text = "naïve\ncafé \\ end\n";
    let r = w
        .api
        .call(
            "laptop",
            "write_file",
            json!({"path": "t.txt", "content": text}),
        )
        .await;
    assert_eq!(r["structuredContent"]["bytes"], text.len(), "{r}");
    let read = |args: serde_json::Value| w.api.call("laptop", "read_file", args);
    let r = read(json!({"path": "t.txt"})).await;
    assert_eq!(r["structuredContent"]["encoding"], "base64", "{r}");
    assert_eq!(
        b64d(r["content"][0]["text"].as_str().unwrap()),
        text.as_bytes()
    );
    for enc in ["auto", "utf-8"] {
        let r = read(json!({"path": "t.txt", "encoding": enc})).await;
        assert_eq!(r["structuredContent"]["encoding"], "utf-8", "{r}");
        assert_eq!(r["structuredContent"]["content"], text, "{r}");
        assert_eq!(r["content"][0]["text"], text, "{r}");
    }
    // A limit that cuts "ï" (2 bytes at offset 2) stops before it.
    let r = read(json!({"path": "t.txt", "encoding": "auto", "limit": 3})).await;
    assert_eq!(r["structuredContent"]["content"], "na", "{r}");
    assert_eq!(r["structuredContent"]["bytes"], 2, "{r}");
    assert_eq!(r["structuredContent"]["eof"], false, "{r}");

    std::fs::write(w.workdir.join("b.bin"), b"ok\xff\\").unwrap();
    let r = read(json!({"path": "b.bin", "encoding": "auto"})).await;
    assert_eq!(r["structuredContent"]["encoding"], "base64", "{r}");
    assert_eq!(b64d(r["content"][0]["text"].as_str().unwrap()), b"ok\xff\\");
    let r = read(json!({"path": "b.bin", "encoding": "utf-8"})).await;
    assert_eq!(r["structuredContent"]["encoding"], "utf-8-escaped", "{r}");
    assert_eq!(r["structuredContent"]["content"], "ok\\xff\\\\", "{r}");

    // write_file: the field `encoding` expects, exactly one of the two.
    for (args, needle) in [
        (
            json!({"path": "x", "content": "a", "encoding": "base64"}),
            "expects content_b64",
        ),
        (
            json!({"path": "x", "content_b64": "YQ==", "encoding": "utf-8"}),
            "expects content,",
        ),
        (
            json!({"path": "x", "content": "a", "content_b64": "YQ=="}),
            "not both",
        ),
        (json!({"path": "x"}), "content_b64"),
    ] {
        let (status, v) = w.api.call_raw("laptop", "write_file", args.clone()).await;
        assert_eq!(status, 400, "{args}: {v}");
        assert_eq!(v["error"]["code"], "bad_arguments", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }

    // /output: base64 by default; text (chunks of a stream joined) on request.
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "printf 'h\\303'; sleep 0.2; printf '\\251 \\377\\n'"]}),
        )
        .await;
    w.api.read_until(&sid, 0, |d| d.ends_with(b"\n")).await;
    let (status, v) = w
        .api
        .get(&format!("/api/connectors/processes/{sid}/output?since=0"))
        .await;
    assert_eq!(status, 200, "{v}");
    let mut all = Vec::new();
    for c in v["chunks"].as_array().unwrap() {
        assert!(c.get("text").is_none(), "{c}");
        all.extend(b64d(c["data_b64"].as_str().unwrap()));
    }
    assert_eq!(all, b"h\xc3\xa9 \xff\n");
    let (_, v) = w
        .api
        .get(&format!(
            "/api/connectors/processes/{sid}/output?since=0&encoding=utf-8"
        ))
        .await;
    let chunks = v["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 1, "{v}");
    assert_eq!(chunks[0]["text"], "hé \\xff\n", "{v}");
    assert_eq!(chunks[0]["encoding"], "utf-8-escaped", "{v}");
    assert!(chunks[0].get("data_b64").is_none(), "{v}");
    let (_, v) = w
        .api
        .get(&format!(
            "/api/connectors/processes/{sid}/output?since=0&encoding=auto"
        ))
        .await;
    assert!(v["chunks"][0]["data_b64"].is_string(), "{v}");
    let (status, v) = w
        .api
        .get(&format!(
            "/api/connectors/processes/{sid}/output?encoding=latin1"
        ))
        .await;
    assert_eq!(status, 400, "{v}");
}

/// REST `shell` keeps everything (up to its capture) unless the call gives
/// `max_output_bytes`; then a head, a tail and the exact count left out.
#[tokio::test]
async fn rest_shell_is_bounded_only_when_asked() {
    let w = World::start(&[]).await;
    let args = json!({"command": "seq 1 20000"});
    let r = w.api.call("laptop", "shell", args).await;
    let all = r["structuredContent"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(all.len(), 108_894, "{}", &all[..100]);
    assert!(r["structuredContent"].get("omitted_bytes").is_none(), "{r}");
    let r = w
        .api
        .call(
            "laptop",
            "shell",
            json!({"command": "seq 1 20000", "max_output_bytes": 1000}),
        )
        .await;
    let s = &r["structuredContent"];
    assert_eq!(s["omitted_bytes"], 108_894 - 1000, "{r}");
    assert_eq!(s["max_output_bytes"], 1000, "{r}");
    let stdout = s["stdout"].as_str().unwrap();
    assert!(stdout.starts_with(&all[..500]), "{stdout}");
    assert!(stdout.ends_with(&all[all.len() - 500..]), "{stdout}");
    assert!(
        stdout.contains("[... 107894 bytes of stdout omitted: 108894 bytes in all"),
        "{stdout}"
    );
    let (status, v) = w
        .api
        .call_raw(
            "laptop",
            "shell",
            json!({"command": "true", "max_output_bytes": 0}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("arguments.max_output_bytes"));
}

#[tokio::test]
async fn exec_command_with_stdin_output_and_terminate() {
    let w = World::start(&[]).await;
    let sid = w.api.exec("laptop", json!({"command": ["cat"]})).await;
    let (s, v) = w.api.stdin(&sid, b"hello\n", false).await;
    assert_eq!((s, &v), (200, &json!({"ok": true})));
    let (data, v) = w.api.read_until(&sid, 0, |d| d == b"hello\n").await;
    assert_eq!(data, b"hello\n");
    assert_eq!(v["session_alive"], true);
    assert_eq!(v["exit_code"], serde_json::Value::Null);
    assert_eq!(v["chunks"][0]["stream"], "stdout");

    let (s, v) = w
        .api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!((s, &v), (200, &json!({"ok": true})));
    // Still readable after terminate: not alive, with the kill's exit code.
    let (_, v) = w.api.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["session_alive"], false, "{v}");
    assert_eq!(v["exit_code"], 137, "{v}");
    let v = w.api.output(&sid, 0).await;
    assert_eq!(v["session_alive"], false);
    assert_eq!(
        b64d(v["chunks"][0]["data_b64"].as_str().unwrap()),
        b"hello\n"
    );
}

#[tokio::test]
async fn exec_command_stdin_eof_finishes_the_process() {
    let w = World::start(&[]).await;
    let sid = w.api.exec("laptop", json!({"command": ["wc", "-c"]})).await;
    assert_eq!(w.api.stdin(&sid, b"12345", false).await.0, 200);
    assert_eq!(w.api.stdin(&sid, b"678", true).await.0, 200);
    let (data, v) = w.api.read_until(&sid, 0, |_| false).await;
    assert_eq!(String::from_utf8_lossy(&data).trim(), "8");
    assert_eq!(v["exit_code"], 0);
    let (s, v) = w.api.stdin(&sid, b"more", false).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "stdin_closed");
}

#[tokio::test]
async fn lost_bytes_count_exactly_what_the_executor_dropped() {
    // Retain 1 MiB, spill nothing to disk; the process writes 5 MiB.
    let w = World::start(&["--retain-bytes", "1048576", "--spill-bytes", "0"]).await;
    let total: u64 = 5 * 1024 * 1024;
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["head", "-c", total.to_string(), "/dev/zero"], "pipe_stdin": false}),
        )
        .await;
    // Wait for the end without reading the output.
    eventually(30, "the process to finish", || {
        let api = w.api.clone();
        let sid = sid.clone();
        async move {
            let (_, v) = api
                .get(&format!(
                    "/api/connectors/processes/{sid}/output?since=999999999"
                ))
                .await;
            v["exit_code"] == 0
        }
    })
    .await;
    let v = w.api.output(&sid, 0).await;
    let retained: u64 = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| b64d(c["data_b64"].as_str().unwrap()).len() as u64)
        .sum();
    let lost = v["lost_bytes"].as_u64().unwrap();
    assert!(retained <= 1024 * 1024 + 65536, "{retained}");
    assert!(lost > 0);
    assert_eq!(retained + lost, total, "retained {retained} + lost {lost}");
    assert_eq!(v["truncated"], true);
    assert_eq!(v["session_alive"], false);

    // Reading on from the last seq loses nothing more.
    let last = v["chunks"].as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let v = w.api.output(&sid, last).await;
    assert_eq!(v["lost_bytes"], 0);
    assert_eq!(v["truncated"], false);
}
