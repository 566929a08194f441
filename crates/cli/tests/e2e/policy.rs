//! The executor policy end to end (issue 4): `--root` escape attempts
//! through every file tool (`..`, absolute paths, symlinks, apply_patch,
//! copy_path, cwd), `--read-only`, `--allow-tools` (core and custom tools),
//! `--max-processes`, envs/list's `policy` field, and options refused at
//! start. Each escape test checks that nothing outside the root changed.
//!
//! The World's `laptop` executor has no policy; `box` is a second executor
//! of the same workspace started with the options under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::*;

/// `box`'s directories: `root` (its --root and workdir) and, beside it,
/// `outside` with `secret`. The root holds `inside.txt` and three links
/// out: `link_out` (to the secret), `dir_out` (to outside/) and
/// `dangling_out` (to outside/created, which does not exist).
struct BoxDirs {
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
}

fn box_dirs(w: &World) -> BoxDirs {
    let base = std::fs::canonicalize(w.dir.path()).unwrap().join("box");
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "top secret\n").unwrap();
    std::fs::write(root.join("inside.txt"), "inside\n").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("link_out")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dir_out")).unwrap();
    std::os::unix::fs::symlink(outside.join("created"), root.join("dangling_out")).unwrap();
    BoxDirs {
        base,
        root,
        outside,
    }
}

/// Starts executor `box` in workspace w1 with `args` and waits for it.
async fn start_box(w: &mut World, workdir: &Path, args: &[&str]) {
    let token = admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w1", "--name", "box"],
    );
    w.executors
        .push(start_executor(&w.gateway.url(), &token, workdir, args));
    wait_for_env(&w.api, "box").await;
}

/// Everything under `dir` (and `dir`'s own entries), with contents, so that
/// a change anywhere shows.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
                all.insert(path, None);
            } else if meta.is_file() {
                all.insert(path.clone(), Some(std::fs::read(&path).unwrap()));
            } else {
                let target = std::fs::read_link(&path).unwrap();
                all.insert(path, Some(target.into_os_string().into_encoded_bytes()));
            }
        }
    }
    all
}

/// The outside of the root: the `outside` directory, and the entries
/// beside the root.
fn outside_state(d: &BoxDirs) -> (BTreeMap<PathBuf, Option<Vec<u8>>>, Vec<String>) {
    let mut beside: Vec<String> = std::fs::read_dir(&d.base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The executors' own state directory (the harness puts it there).
        .filter(|name| name != "state")
        .collect();
    beside.sort();
    (snapshot(&d.outside), beside)
}

/// Asserts a 403 `policy_denied` whose message names the root.
fn assert_denied(what: &str, d: &BoxDirs, (status, body): (u16, Value)) {
    assert_eq!(status, 403, "{what}: {body}");
    assert_eq!(body["error"]["code"], "policy_denied", "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("root {}", d.root.display())),
        "{what}: the message names the root: {message}"
    );
}

fn env<'a>(envs: &'a Value, name: &str) -> &'a Value {
    envs["envs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {envs}"))
}

fn tool_names(env: &Value) -> Vec<String> {
    env["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn patch(body: &str) -> Value {
    json!({ "patch": format!("*** Begin Patch\n{body}*** End Patch") })
}

#[tokio::test]
async fn root_confines_every_file_tool_and_the_cwd() {
    let mut w = World::start(&[]).await;
    let d = box_dirs(&w);
    let root = d.root.to_str().unwrap().to_string();
    start_box(&mut w, &d.root, &["--root", &root]).await;
    std::fs::write(w.workdir.join("from_laptop.txt"), "laptop data\n").unwrap();
    let before = outside_state(&d);
    let secret = d.outside.join("secret").display().to_string();

    // envs/list: the policy beside the seed fields; none for laptop.
    let envs = w.api.envs().await;
    assert_eq!(
        env(&envs, "box")["policy"],
        json!({"root": root, "allow_tools": null, "read_only": false, "max_processes": null, "sandbox": null})
    );
    assert!(env(&envs, "laptop").get("policy").is_none(), "{envs}");
    assert_eq!(tool_names(env(&envs, "box")).len(), 7, "all core tools");

    // list_dir: inside works (a link out of the root is listed as `other`,
    // not followed); the root's parent, `..`, an absolute path outside and
    // a link to a directory outside are refused.
    let r = w.api.call("box", "list_dir", json!({ "path": "." })).await;
    assert_eq!(
        r["structuredContent"]["entries"],
        json!([
            {"name": "dangling_out", "kind": "other"},
            {"name": "dir_out", "kind": "other"},
            {"name": "inside.txt", "kind": "file"},
            {"name": "link_out", "kind": "other"},
            {"name": "sub", "kind": "directory"},
        ]),
        "{r}"
    );
    for path in [
        "..",
        "../outside",
        d.outside.to_str().unwrap(),
        "dir_out",
        "sub/../../outside",
        "/",
    ] {
        let r = w
            .api
            .call_raw("box", "list_dir", json!({ "path": path }))
            .await;
        assert_denied(&format!("list_dir {path}"), &d, r);
    }

    // read_file: `..`, an absolute path, a link to a file, a link to a dir.
    for path in [
        "../outside/secret",
        secret.as_str(),
        "link_out",
        "dir_out/secret",
        "sub/../../outside/secret",
    ] {
        let r = w
            .api
            .call_raw("box", "read_file", json!({ "path": path }))
            .await;
        assert_denied(&format!("read_file {path}"), &d, r);
    }
    let r = w
        .api
        .call_raw("box", "read_file", json!({ "path": "../outside/secret" }))
        .await;
    let message = r.1["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains(&secret), "the path is named: {message}");

    // write_file: the same, plus a dangling link and a new dir through a link.
    for path in [
        "../outside/new.txt",
        &d.outside.join("abs.txt").display().to_string(),
        "link_out",
        "dangling_out",
        "dir_out/new.txt",
        "dir_out/newdir/new.txt",
    ] {
        let r = w
            .api
            .call_raw(
                "box",
                "write_file",
                json!({ "path": path, "content_b64": b64e(b"pwned") }),
            )
            .await;
        assert_denied(&format!("write_file {path}"), &d, r);
    }

    // apply_patch: add and update outside, through `..` and through links.
    for body in [
        "*** Add File: ../outside/added.txt\n+pwned\n",
        "*** Add File: dir_out/added.txt\n+pwned\n",
        "*** Add File: dangling_out\n+pwned\n",
        "*** Update File: link_out\n@@\n-top secret\n+pwned\n",
        "*** Update File: ../outside/secret\n@@\n-top secret\n+pwned\n",
        "*** Update File: inside.txt\n*** Move to: ../outside/moved.txt\n@@\n-inside\n+moved\n",
        "*** Delete File: dir_out/secret\n",
    ] {
        let r = w.api.call_raw("box", "apply_patch", patch(body)).await;
        assert_denied(&format!("apply_patch {body}"), &d, r);
    }

    // copy_path: a source outside box's root, a destination outside it.
    let copy = |src_env: &str, src: &str, dst_env: &str, dst: &str| {
        json!({
            "source_environment_id": src_env, "source_path": src,
            "destination_environment_id": dst_env, "destination_path": dst,
        })
    };
    for args in [
        copy("box", "../outside/secret", "laptop", "stolen.txt"),
        copy("box", "dir_out/secret", "laptop", "stolen.txt"),
        copy("box", &secret, "laptop", "stolen.txt"),
        copy("laptop", "from_laptop.txt", "box", "../outside/copied.txt"),
        copy("laptop", "from_laptop.txt", "box", "dir_out/copied.txt"),
    ] {
        let r = w.api.call_raw("laptop", "copy_path", args.clone()).await;
        assert_denied(&format!("copy_path {args}"), &d, r);
    }
    assert!(!w.workdir.join("stolen.txt").exists());
    // A link out, as a copy source, is described as a link, not followed.
    let r = w
        .api
        .call(
            "laptop",
            "copy_path",
            copy("box", "link_out", "laptop", "stolen.txt"),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(!w.workdir.join("stolen.txt").exists());
    // A copy onto a link writes through it, as write_file does (issue 16);
    // onto a link out, that is refused like write_file's, and the link
    // stays as it was.
    let r = w
        .api
        .call_raw(
            "laptop",
            "copy_path",
            copy("laptop", "from_laptop.txt", "box", "link_out"),
        )
        .await;
    assert_denied("copy_path onto link_out", &d, r);
    assert!(std::fs::symlink_metadata(d.root.join("link_out"))
        .unwrap()
        .file_type()
        .is_symlink());

    // The cwd of shell and exec_command.
    for cwd in ["..", "/", "dir_out", &d.outside.display().to_string()] {
        let r = w
            .api
            .call_raw(
                "box",
                "shell",
                json!({"command": "touch escaped", "cwd": cwd}),
            )
            .await;
        assert_denied(&format!("shell cwd {cwd}"), &d, r);
        let r = w
            .api
            .call_raw(
                "box",
                "exec_command",
                json!({"command": "touch escaped", "cwd": cwd}),
            )
            .await;
        assert_denied(&format!("exec_command cwd {cwd}"), &d, r);
    }
    // A refused exec_command leaves no session behind.
    let (s, list) = w.api.get("/api/connectors/processes").await;
    assert_eq!(s, 200);
    assert_eq!(list["processes"], json!([]), "{list}");

    assert_eq!(
        outside_state(&d),
        before,
        "nothing changed outside the root"
    );
    assert_eq!(
        std::fs::read_to_string(d.root.join("inside.txt")).unwrap(),
        "inside\n"
    );

    // Inside the root everything works, and the default cwd is the root.
    let r = w
        .api
        .call(
            "box",
            "write_file",
            json!({"path": "sub/new/ok.txt", "content_b64": b64e(b"ok")}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = w
        .api
        .call("box", "read_file", json!({"path": "sub/new/ok.txt"}))
        .await;
    assert_eq!(b64d(r["content"][0]["text"].as_str().unwrap()), b"ok");
    let r = w
        .api
        .call(
            "box",
            "apply_patch",
            patch("*** Update File: inside.txt\n@@\n-inside\n+patched\n"),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        std::fs::read_to_string(d.root.join("inside.txt")).unwrap(),
        "patched\n"
    );
    let r = w
        .api
        .call(
            "laptop",
            "copy_path",
            copy("laptop", "from_laptop.txt", "box", "sub/copied.txt"),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        std::fs::read_to_string(d.root.join("sub/copied.txt")).unwrap(),
        "laptop data\n"
    );
    let r = w
        .api
        .call("box", "shell", json!({"command": "pwd", "cwd": "sub"}))
        .await;
    assert_eq!(
        r["structuredContent"]["stdout"],
        format!("{}\n", d.root.join("sub").display())
    );
    let r = w.api.call("box", "shell", json!({"command": "pwd"})).await;
    assert_eq!(r["structuredContent"]["stdout"], format!("{root}\n"));
    assert_eq!(outside_state(&d), before);
}

#[tokio::test]
async fn read_only_refuses_writes_and_processes_with_403_and_serves_reads() {
    let mut w = World::start(&[]).await;
    let d = box_dirs(&w);
    start_box(&mut w, &d.root, &["--read-only"]).await;
    std::fs::write(w.workdir.join("from_laptop.txt"), "laptop data\n").unwrap();
    let before = (snapshot(&d.root), snapshot(&d.outside));

    let envs = w.api.envs().await;
    let b = env(&envs, "box");
    assert_eq!(
        b["policy"],
        json!({"root": null, "allow_tools": null, "read_only": true, "max_processes": null, "sandbox": null})
    );
    assert_eq!(tool_names(b), ["read_file", "copy_path", "list_dir"]);

    let r = w
        .api
        .call("box", "read_file", json!({"path": "inside.txt"}))
        .await;
    assert_eq!(b64d(r["content"][0]["text"].as_str().unwrap()), b"inside\n");
    let r = w
        .api
        .call("box", "list_dir", json!({"path": "sub/.."}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["entries"][2]["name"], "inside.txt");

    for (tool, args) in [
        (
            "write_file",
            json!({"path": "inside.txt", "content_b64": b64e(b"x")}),
        ),
        (
            "apply_patch",
            patch("*** Update File: inside.txt\n@@\n-inside\n+x\n"),
        ),
        ("shell", json!({"command": "touch made"})),
        ("exec_command", json!({"command": "touch made"})),
    ] {
        let (status, body) = w.api.call_raw("box", tool, args).await;
        assert_eq!(status, 403, "{tool}: {body}");
        assert_eq!(body["error"]["code"], "policy_denied", "{tool}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--read-only"), "{tool}: {message}");
    }
    // copy_path into it is refused; out of it works.
    let (status, body) = w
        .api
        .call_raw(
            "laptop",
            "copy_path",
            json!({
                "source_environment_id": "laptop", "source_path": "from_laptop.txt",
                "destination_environment_id": "box", "destination_path": "copied.txt",
            }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("policy_denied")),
        "{body}"
    );
    let r = w
        .api
        .call(
            "laptop",
            "copy_path",
            json!({
                "source_environment_id": "box", "source_path": "inside.txt",
                "destination_environment_id": "laptop", "destination_path": "got.txt",
            }),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        std::fs::read_to_string(w.workdir.join("got.txt")).unwrap(),
        "inside\n"
    );
    // PUT /files too.
    let (status, body) = w
        .api
        .send(
            w.api
                .http
                .put(format!(
                    "{}/api/connectors/envs/box/files?path=up.txt",
                    w.api.url
                ))
                .body("x"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("policy_denied")),
        "{body}"
    );
    assert_eq!(
        (snapshot(&d.root), snapshot(&d.outside)),
        before,
        "nothing changed on box"
    );
}

/// After the shared custom tools (`tests/fixtures/custom-tools.toml`; `echo_arg`'s
/// command line is fixed but for one argument), one that is not allowed.
fn more_tools_toml() -> &'static str {
    r#"
[[tool]]
name = "hidden_tool"
description = "not allowed"
argv = ["true"]
[tool.schema]
type = "object"
"#
}

#[tokio::test]
async fn allow_tools_hides_and_refuses_the_others() {
    let mut w = World::start(&[]).await;
    let d = box_dirs(&w);
    let tools = write_tools_file(&d.base, more_tools_toml());
    start_box(
        &mut w,
        &d.root,
        &[
            "--tools",
            tools.to_str().unwrap(),
            "--allow-tools",
            "read_file,echo_arg",
        ],
    )
    .await;

    let envs = w.api.envs().await;
    let b = env(&envs, "box");
    assert_eq!(tool_names(b), ["read_file", "echo_arg"]);
    assert_eq!(b["policy"]["allow_tools"], json!(["read_file", "echo_arg"]));

    let r = w
        .api
        .call("box", "read_file", json!({"path": "inside.txt"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    // The allowed custom tool runs: the executor lets exactly its command
    // line through, although it refuses process/start for anything else.
    let r = w
        .api
        .call("box", "echo_arg", json!({"text": "hello; id"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["stdout"], "hello; id");

    for (tool, args) in [
        ("shell", json!({"command": "touch made"})),
        ("exec_command", json!({"command": "touch made"})),
        (
            "write_file",
            json!({"path": "made", "content_b64": b64e(b"x")}),
        ),
        ("apply_patch", patch("*** Add File: made\n+x\n")),
        ("list_dir", json!({"path": "."})),
        ("hidden_tool", json!({})),
    ] {
        let (status, body) = w.api.call_raw("box", tool, args).await;
        assert_eq!(status, 403, "{tool}: {body}");
        assert_eq!(body["error"]["code"], "tool_not_allowed", "{tool}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("read_file, echo_arg") && message.contains(tool),
            "{tool}: {message}"
        );
    }
    // An unknown name is still unknown, and says what there is.
    let (status, body) = w.api.call_raw("box", "frobnicate", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_tool"))
    );
    assert!(!d.root.join("made").exists());

    // copy_path needs to be allowed at both ends.
    let (status, body) = w
        .api
        .call_raw(
            "laptop",
            "copy_path",
            json!({
                "source_environment_id": "box", "source_path": "inside.txt",
                "destination_environment_id": "laptop", "destination_path": "got.txt",
            }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tool_not_allowed")),
        "{body}"
    );
}

#[tokio::test]
async fn max_processes_answers_429_and_frees_a_place_when_one_exits() {
    let mut w = World::start(&[]).await;
    let d = box_dirs(&w);
    start_box(&mut w, &d.root, &["--max-processes", "2"]).await;
    assert_eq!(
        env(&w.api.envs().await, "box")["policy"]["max_processes"],
        2
    );
    let first = w.api.exec("box", json!({"command": ["sleep", "60"]})).await;
    let _second = w.api.exec("box", json!({"command": ["sleep", "60"]})).await;
    for tool in ["exec_command", "shell"] {
        let (status, body) = w
            .api
            .call_raw("box", tool, json!({"command": ["true"]}))
            .await;
        assert_eq!(status, 429, "{tool}: {body}");
        assert_eq!(body["error"]["code"], "too_many_processes", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("at most 2") && message.contains("--max-processes"),
            "{message}"
        );
    }
    // The refused exec_command left no session.
    let (_, list) = w.api.get("/api/connectors/processes").await;
    assert_eq!(list["processes"].as_array().unwrap().len(), 2, "{list}");
    // Other executors are not limited.
    w.api.exec("laptop", json!({"command": ["true"]})).await;

    let (status, body) = w
        .api
        .post(
            &format!("/api/connectors/processes/{first}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let api = w.api.clone();
    eventually(20, "a place to free up", || {
        let api = api.clone();
        async move {
            let (status, body) = api
                .call_raw("box", "exec_command", json!({"command": ["true"]}))
                .await;
            assert!(status == 200 || status == 429, "{status}: {body}");
            status == 200
        }
    })
    .await;
    // `true` exits at once: its place is free again for shell.
    let api = w.api.clone();
    eventually(20, "the short process to exit", || {
        let api = api.clone();
        async move {
            let (status, _) = api
                .call_raw("box", "shell", json!({"command": ["true"]}))
                .await;
            status == 200
        }
    })
    .await;
}

#[tokio::test]
async fn bad_policy_options_refuse_to_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let root = root.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--root", root, "--workdir", elsewhere.to_str().unwrap()],
            "outside --root",
        ),
        (
            vec!["--allow-tools", "read_file,bogus"],
            "unknown tool \"bogus\"",
        ),
        (vec!["--max-processes", "0"], "--max-processes"),
        (vec!["--root", "/definitely/not/here"], "--root"),
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
