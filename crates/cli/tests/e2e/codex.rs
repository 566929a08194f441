//! A stock `codex exec-server` (npm `@openai/codex@0.169.0`) as an executor:
//! the real binary in its outbound direct mode, SigV4-signed, against a real
//! gateway on 127.0.0.1.
//!
//! Gated: runs only with `EXECGATE_CODEX_TESTS=1` (`.ci/run` sets it and
//! installs codex); `EXECGATE_CODEX_BIN` names the binary. Otherwise each
//! test prints why it skipped and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::*;

/// Where `.ci/run` installs codex, under `$HOME`.
const DEFAULT_BIN: &str = ".cache/execgate/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex";

/// The codex binary, or `None` (with the reason printed) to skip.
pub(crate) fn codex_bin() -> Option<PathBuf> {
    if std::env::var("EXECGATE_CODEX_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set EXECGATE_CODEX_TESTS=1 (and EXECGATE_CODEX_BIN) to run the codex tests"
        );
        return None;
    }
    let bin = match std::env::var_os("EXECGATE_CODEX_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(DEFAULT_BIN),
    };
    if !bin.is_file() {
        eprintln!(
            "skipped: no codex binary at {} (install @openai/codex@0.169.0, set EXECGATE_CODEX_BIN)",
            bin.display()
        );
        return None;
    }
    Some(bin)
}

/// What `execgate admin executor add --sigv4` printed last.
pub(crate) struct Credentials {
    pub(crate) environment_id: String,
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

pub(crate) fn add_codex_executor(data_dir: &Path, name: &str) -> Credentials {
    add_codex_executor_on(&["--data-dir".as_ref(), data_dir.as_os_str()], name)
}

/// As [`add_codex_executor`], with the store given by `store` (`--data-dir D`
/// or `--database-url URL`).
pub(crate) fn add_codex_executor_on(store: &[&std::ffi::OsStr], name: &str) -> Credentials {
    let out = Command::new(bin())
        .arg("admin")
        .args(store)
        .args([
            "executor",
            "add",
            "--workspace",
            "w1",
            "--name",
            name,
            "--sigv4",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: Vec<&str> = stdout.lines().rev().take(3).collect();
    let value = |line: &str, name: &str| {
        line.strip_prefix(&format!("{name}="))
            .unwrap_or_else(|| panic!("expected {name}=… in {stdout:?}"))
            .to_string()
    };
    Credentials {
        environment_id: value(last[2], "EXECGATE_ENVIRONMENT_ID"),
        key_id: value(last[1], "AWS_ACCESS_KEY_ID"),
        secret: value(last[0], "AWS_SECRET_ACCESS_KEY"),
    }
}

pub(crate) fn start_codex(
    bin: &Path,
    gateway: &str,
    creds: &Credentials,
    dir: &Path,
    tag: &str,
) -> Proc {
    let home = dir.join(format!("codex-home-{tag}"));
    let work = dir.join("codex-work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let log = std::fs::File::create(dir.join(format!("codex-{tag}.log"))).unwrap();
    let child = Command::new(bin)
        .args(["exec-server", "--remote", gateway, "--environment-id"])
        .arg(&creds.environment_id)
        .args([
            "--remote-transport",
            "direct",
            "--aws-sigv4",
            "--aws-region",
            "us-east-1",
        ])
        .current_dir(&work)
        .env("AWS_ACCESS_KEY_ID", &creds.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("CODEX_HOME", &home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start codex");
    Proc(child)
}

/// Workspace `w1` with a codex executor `codex`, and the gateway's proxy token.
struct CodexWorld {
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    gateway: GatewayProc,
    codex: Proc,
    api: Api,
    bin: PathBuf,
}

impl CodexWorld {
    async fn start(bin: PathBuf) -> CodexWorld {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        admin(&data_dir, &["workspace", "create", "w1"]);
        let token = admin(&data_dir, &["token", "create", "--workspace", "w1"]);
        let creds = add_codex_executor(&data_dir, "codex");
        let gateway = start_gateway(&data_dir, "127.0.0.1:0");
        let codex = start_codex(&bin, &gateway.url(), &creds, dir.path(), "a");
        let api = Api::new(&gateway.url(), &token);
        wait_for_env(&api, "codex").await;
        CodexWorld {
            dir,
            data_dir,
            gateway,
            codex,
            api,
            bin,
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("codex-work")
    }
}

fn text(v: &Value) -> &str {
    v["content"][0]["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn codex_serves_the_connectors_api() {
    let Some(bin) = codex_bin() else { return };
    let w = CodexWorld::start(bin).await;
    let api = &w.api;

    // envs/list: a codex executor with its kind and version.
    let envs = api.envs().await;
    let env = envs["envs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "codex")
        .unwrap()
        .clone();
    assert_eq!(env["executor"]["kind"], "codex", "{env}");
    assert_eq!(env["executor"]["version"], "0.169.0", "{env}");
    let tools: Vec<&str> = env["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in ["shell", "read_file", "write_file", "exec_command"] {
        assert!(tools.contains(&t), "{tools:?}");
    }

    // shell: stdout, stderr, exit code…
    let r = api
        .call(
            "codex",
            "shell",
            json!({"command": ["sh", "-c", "echo out; echo err >&2; exit 3"], "env": {"X": "y"}}),
        )
        .await;
    let s = &r["structuredContent"];
    assert_eq!(s["stdout"], "out\n", "{r}");
    assert_eq!(s["stderr"], "err\n", "{r}");
    assert_eq!(s["exit_code"], 3, "{r}");
    assert_eq!(r["isError"], false);
    // …the caller's env on top of the inherited one, and a string command…
    let r = api
        .call(
            "codex",
            "shell",
            json!({"command": "echo $X; test -n \"$PATH\" && echo path", "env": {"X": "y"}}),
        )
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "y\npath\n", "{r}");
    // …and a timeout that kills.
    let started = Instant::now();
    let r = api
        .call(
            "codex",
            "shell",
            json!({"command": ["sleep", "30"], "timeout_ms": 500}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["timed_out"], true, "{r}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // write_file / read_file, relative to codex's cwd, parents created.
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let r = api
        .call(
            "codex",
            "write_file",
            json!({"path": "sub/dir/f.bin", "content_b64": b64e(&data)}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(std::fs::read(w.work().join("sub/dir/f.bin")).unwrap(), data);
    let r = api
        .call(
            "codex",
            "read_file",
            json!({"path": "sub/dir/f.bin", "offset": 0, "limit": 0}),
        )
        .await;
    assert_eq!(b64d(text(&r)), data);
    let r = api
        .call(
            "codex",
            "read_file",
            json!({"path": w.work().join("sub/dir/f.bin"), "offset": 1000, "limit": 10}),
        )
        .await;
    assert_eq!(b64d(text(&r)), &data[1000..1010]);
    assert_eq!(r["structuredContent"]["size"], 70_000);
    let r = api
        .call("codex", "read_file", json!({"path": "missing.txt"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    // A FIFO: refused at once (codex's own read would wait for a writer).
    let fifo = std::ffi::CString::new(w.work().join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    let r = api
        .call("codex", "read_file", json!({"path": "fifo"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(text(&r).contains("not a regular file"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // exec_command: stdin, output, terminate.
    let sid = api.exec("codex", json!({"command": ["cat"]})).await;
    assert_eq!(api.stdin(&sid, b"hello\n", false).await.0, 200);
    assert_eq!(api.stdin(&sid, b"again\n", false).await.0, 200);
    let (got, _) = api.read_until(&sid, 0, |d| d == b"hello\nagain\n").await;
    assert_eq!(got, b"hello\nagain\n");
    // codex cannot close stdin: a clear 501 naming its version.
    let (status, v) = api.stdin(&sid, b"", true).await;
    assert_eq!(status, 501, "{v}");
    assert_eq!(v["error"]["code"], "not_supported_by_executor");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("0.169.0"),
        "{v}"
    );
    let (status, v) = api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = api.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["session_alive"], false, "{v}");
    assert_eq!(v["exit_code"], 137, "{v}");
}

#[tokio::test]
async fn codex_output_beyond_its_retention_is_counted_as_lost_bytes() {
    let Some(bin) = codex_bin() else { return };
    let w = CodexWorld::start(bin).await;
    let api = &w.api;
    const TOTAL: usize = 3 * 1024 * 1024;
    let sid = api
        .exec(
            "codex",
            json!({"command": ["sh", "-c", format!("head -c {TOTAL} /dev/zero | tr '\\0' x")]}),
        )
        .await;
    // Wait for the end without reading any output (a cursor past the end).
    eventually(30, "the process to end", || async {
        api.output(&sid, 1 << 40).await["session_alive"] == false
    })
    .await;
    // codex kept only its last 1 MiB: the rest is lost, counted exactly.
    let v = api.output(&sid, 0).await;
    assert_eq!(v["truncated"], true, "{}", v["lost_bytes"]);
    let (data, last) = api.read_until(&sid, 0, |_| false).await;
    if v.get("lost_bytes_unknown") == Some(&json!(true)) {
        // codex drops notifications when its queue is full (this happens
        // on a loaded machine): the gateway then did not see every seq go
        // by and must say it cannot count, not guess.
        assert_eq!(v["lost_bytes"], 0, "{}", v["lost_bytes"]);
        assert!(data.len() < TOTAL && data.iter().all(|b| *b == b'x'));
        eprintln!("codex dropped notifications: loss reported as unknown");
        return;
    }
    let lost = v["lost_bytes"].as_u64().unwrap() as usize;
    assert!(lost >= TOTAL - 1024 * 1024 - 64 * 1024, "{lost}");
    assert_eq!(
        lost + data.len(),
        TOTAL,
        "lost {lost} + read {}",
        data.len()
    );
    assert!(data.iter().all(|b| *b == b'x'));
    assert_eq!(last["exit_code"], 0);
    // Reading on from the first retained chunk loses nothing more.
    let first = v["chunks"][0]["seq"].as_u64().unwrap();
    let v = api.output(&sid, first).await;
    assert_eq!(v["lost_bytes"], 0);
    assert_eq!(v["truncated"], false);
}

#[tokio::test]
async fn codex_processes_survive_a_gateway_restart() {
    let Some(bin) = codex_bin() else { return };
    let mut w = CodexWorld::start(bin).await;
    let sid = w.api.exec("codex", json!({"command": ["cat"]})).await;
    assert_eq!(w.api.stdin(&sid, b"before\n", false).await.0, 200);
    w.api.read_until(&sid, 0, |d| d == b"before\n").await;
    // A process whose output codex partly dropped before the restart.
    let big = w
        .api
        .exec(
            "codex",
            json!({"command": ["sh", "-c", "head -c 3145728 /dev/zero"]}),
        )
        .await;
    eventually(30, "the big process to end", || async {
        w.api.output(&big, 1 << 40).await["session_alive"] == false
    })
    .await;

    // SIGKILL the gateway and start it again on the same address: codex
    // re-dials the same URL, signed afresh, and the gateway resumes its session.
    let addr = w.gateway.addr;
    w.gateway.proc.kill();
    w.gateway = start_gateway(&w.data_dir, &addr.to_string());
    wait_for_env(&w.api, "codex").await;

    assert_eq!(w.api.stdin(&sid, b"after\n", false).await.0, 200);
    let (data, v) = w.api.read_until(&sid, 0, |d| d == b"before\nafter\n").await;
    assert_eq!(data, b"before\nafter\n");
    assert_eq!(v["session_alive"], true);
    assert_eq!(v["lost_bytes"], 0);
    // The new gateway never saw the big process's output go by: it says
    // output was lost, and that it cannot tell how much, not a number.
    let v = w.api.output(&big, 0).await;
    assert_eq!(v["truncated"], true, "{}", v["lost_bytes"]);
    assert_eq!(v["lost_bytes_unknown"], true);
    assert_eq!(v["lost_bytes"], 0);
    let (status, _) = w
        .api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, v) = w.api.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["exit_code"], 137, "{v}");
    assert!(w.codex.0.try_wait().unwrap().is_none(), "codex is still up");
}

#[tokio::test]
async fn a_wrong_sigv4_secret_is_refused_and_codex_gives_up() {
    let Some(bin) = codex_bin() else { return };
    let w = CodexWorld::start(bin).await;
    let mut creds = add_codex_executor(&w.data_dir, "intruder");
    // Change the last character to one it is not: replacing it with a fixed
    // 'x' left the secret intact whenever it already ended in 'x' (a flake).
    let last = creds.secret.pop().unwrap();
    creds.secret.push(if last == 'x' { 'y' } else { 'x' });
    let mut codex = start_codex(&w.bin, &w.gateway.url(), &creds, w.dir.path(), "bad");
    // codex exits for good on the 401 to its register.
    let status = codex.exits_within(30, "codex to give up").await;
    assert!(!status.success());
    let log = std::fs::read_to_string(w.dir.path().join("codex-bad.log")).unwrap();
    assert!(log.contains("401"), "{log}");
    let envs = w.api.envs().await;
    let names: Vec<&str> = envs["envs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["codex"]);
}

/// apply_patch, copy_path (both directions, files and trees) and the /files
/// routes on codex, which has none of execgate's file extensions: the gateway
/// falls back to plain writes and to sh/tail/head/cat/tar.
#[tokio::test]
async fn codex_applies_patches_and_copies_files_both_ways() {
    let Some(bin) = codex_bin() else { return };
    let w = CodexWorld::start(bin).await;
    let api = &w.api;
    let cwork = w.work();

    // apply_patch: every operation, and a failing file changes nothing.
    std::fs::write(cwork.join("a.txt"), "one\ntwo\n").unwrap();
    std::fs::write(cwork.join("gone.txt"), "x\n").unwrap();
    let r = api
        .call(
            "codex",
            "apply_patch",
            json!({"patch": "*** Begin Patch\n*** Add File: sub/new.txt\n+hi\n*** Update File: a.txt\n*** Move to: b.txt\n@@\n one\n-two\n+TWO\n*** Delete File: gone.txt\n*** End Patch"}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        std::fs::read_to_string(cwork.join("sub/new.txt")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(cwork.join("b.txt")).unwrap(),
        "one\nTWO\n"
    );
    assert!(!cwork.join("a.txt").exists() && !cwork.join("gone.txt").exists());
    let r = api
        .call(
            "codex",
            "apply_patch",
            json!({"patch": "*** Begin Patch\n*** Update File: b.txt\n@@\n-one\n+ONE\n*** Update File: nope.txt\n@@\n-x\n+y\n*** End Patch"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        std::fs::read_to_string(cwork.join("b.txt")).unwrap(),
        "one\nTWO\n"
    );

    // An execgate executor beside it.
    let exe = admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w1", "--name", "laptop"],
    );
    let lwork = w.dir.path().join("laptop-work");
    std::fs::create_dir_all(&lwork).unwrap();
    let _laptop = start_executor(&w.gateway.url(), &exe, &lwork, &[]);
    wait_for_env(api, "laptop").await;

    // A 3 MiB file, codex -> execgate and back.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(cwork.join("big.bin"), &data).unwrap();
    let copy = |src: &str, sp: &str, dst: &str, dp: &str, rec: bool| {
        json!({"source_environment_id": src, "source_path": sp,
               "destination_environment_id": dst, "destination_path": dp, "recursive": rec})
    };
    let r = api
        .call(
            "codex",
            "copy_path",
            copy("codex", "big.bin", "laptop", "big.bin", false),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["bytes"], data.len());
    // A codex end: verified by SHA-256 (here hashed by the gateway, codex
    // having no readRange), never BLAKE3.
    let sha = hex::encode(sha2::Sha256::digest(&data));
    assert_eq!(r["structuredContent"]["sha256"], sha, "{r}");
    assert!(r["structuredContent"].get("blake3").is_none(), "{r}");
    assert_eq!(std::fs::read(lwork.join("big.bin")).unwrap(), data);
    let r = api
        .call(
            "codex",
            "copy_path",
            copy("laptop", "big.bin", "codex", "back.bin", false),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    // Our executor as the source hashes what it read with SHA-256, which
    // codex's commit (sha256sum) checks.
    assert_eq!(r["structuredContent"]["sha256"], sha, "{r}");
    assert_eq!(std::fs::read(cwork.join("back.bin")).unwrap(), data);

    // A tree with an executable and a symlink, both ways (through tar).
    use std::os::unix::fs::PermissionsExt;
    let tree = lwork.join("tree");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("d/run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        tree.join("d/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("d/run.sh", tree.join("link")).unwrap();
    let r = api
        .call(
            "codex",
            "copy_path",
            copy("laptop", "tree", "codex", "tree", true),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["files"], 1);
    let ctree = cwork.join("tree");
    let mode = std::fs::metadata(ctree.join("d/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(ctree.join("link")).unwrap(),
        Path::new("d/run.sh")
    );
    let r = api
        .call(
            "codex",
            "copy_path",
            copy("codex", "tree", "laptop", "tree2", true),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        std::fs::read_link(lwork.join("tree2/link")).unwrap(),
        Path::new("d/run.sh")
    );
    // No staged leftovers on either side.
    for dir in [&cwork, &lwork] {
        let stray: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("execgate-part"))
            .collect();
        assert!(stray.is_empty(), "{stray:?} in {}", dir.display());
    }

    // The /files routes on codex: PUT, GET and a range.
    let http = fresh_client();
    let files = format!("{}/api/connectors/envs/codex/files", api.url);
    let resp = http
        .put(&files)
        .query(&[("path", "put.bin")])
        .bearer_auth(&api.token)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(std::fs::read(cwork.join("put.bin")).unwrap(), data);
    let resp = http
        .get(&files)
        .query(&[("path", "put.bin")])
        .header("Range", "bytes=1000-1999")
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap(), &data[1000..2000]);
}

/// Issue 5 on a stock codex: the SSE stream and the listing work; what
/// codex cannot do (resize, signals other than interrupt) is a clear 501
/// naming its version, and `kill` works as terminate.
#[tokio::test]
async fn codex_live_processes_stream_list_and_refuse_what_it_lacks() {
    let Some(bin) = codex_bin() else { return };
    let w = CodexWorld::start(bin).await;
    let api = &w.api;
    let exec = |args: Value| async move {
        let r = api.call("codex", "exec_command", args).await;
        r["structuredContent"]["session_id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // The stream: every line, in order, then exit.
    let sid =
        exec(json!({"command": ["sh", "-c", "for i in $(seq 1 200); do echo $i; done"]})).await;
    let mut reader = crate::sse::SseReader::open(api, &sid, None, None).await;
    let mut out = Vec::new();
    let mut exit = None;
    while let Some(e) = reader.next().await {
        match e.event.as_str() {
            "output" => out.extend(b64d(e.data["data_b64"].as_str().unwrap())),
            "exit" => {
                exit = Some(e.data["exit_code"].clone());
                break;
            }
            other => panic!("unexpected {other}: {:?}", e.data),
        }
    }
    let expected: String = (1..=200).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    assert_eq!(exit, Some(json!(0)));

    let sid = exec(json!({"command": ["sleep", "30"], "tty": true})).await;
    let (s, v) = api
        .post(
            &format!("/api/connectors/processes/{sid}/resize"),
            json!({"cols": 100, "rows": 30}),
        )
        .await;
    assert_eq!(s, 501, "{v}");
    assert_eq!(v["error"]["code"], "not_supported_by_executor");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("0.169.0"),
        "{v}"
    );
    let (s, v) = api
        .post(
            &format!("/api/connectors/processes/{sid}/signal"),
            json!({"signal": "hangup"}),
        )
        .await;
    assert_eq!(s, 501, "{v}");
    let (s, _) = api
        .post(
            &format!("/api/connectors/processes/{sid}/signal"),
            json!({"signal": "kill"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = api.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["session_alive"], false, "{v}");

    let sid = exec(json!({"command": ["sleep", "30"]})).await;
    let (s, _) = api
        .post(
            &format!("/api/connectors/processes/{sid}/signal"),
            json!({"signal": "interrupt"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = api.read_until(&sid, 0, |_| false).await;
    assert_eq!(v["exit_code"], 130, "{v}");

    let (s, v) = api.get("/api/connectors/processes").await;
    assert_eq!(s, 200, "{v}");
    let list = v["processes"].as_array().unwrap();
    assert!(
        list.iter()
            .any(|p| p["sid"] == sid.as_str() && p["status"] == "exited" && p["env"] == "codex"),
        "{v}"
    );
}

#[tokio::test]
async fn codex_lists_directories_sorted_by_name() {
    let Some(bin) = codex_bin() else { return };
    let w = CodexWorld::start(bin).await;
    let api = &w.api;
    let tools = api.envs().await["envs"][0]["tools"].clone();
    assert!(
        tools
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "list_dir"),
        "{tools}"
    );

    // codex answers in readdir order: the gateway sorts. Many names, so
    // that readdir order is unlikely to be sorted by chance.
    let dir = w.work().join("d");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut names: Vec<String> = (0..40).map(|i| format!("f{:02}", (i * 7) % 40)).collect();
    for n in &names {
        std::fs::write(dir.join(n), n).unwrap();
    }
    std::os::unix::fs::symlink(dir.join("sub"), dir.join("link_sub")).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    names.sort();

    let r = api.call("codex", "list_dir", json!({"path": "d"})).await;
    assert_eq!(r["isError"], false, "{r}");
    let s = &r["structuredContent"];
    let mut expected: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "kind": "file"}))
        .collect();
    expected.insert(40, json!({"name": "fifo", "kind": "other"}));
    expected.push(json!({"name": "link_sub", "kind": "directory"}));
    // codex 0.169.0 leaves a dangling link out of its answer (an execgate
    // executor lists it as `other`): recorded here, and in the docs.
    expected.push(json!({"name": "sub", "kind": "directory"}));
    expected.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    assert_eq!(s["entries"], json!(expected), "{r}");
    assert_eq!(
        (s["total"].as_u64(), &s["truncated"]),
        (Some(43), &json!(false))
    );

    let r = api
        .call("codex", "list_dir", json!({"path": "d", "max_entries": 3}))
        .await;
    let s = &r["structuredContent"];
    assert_eq!(s["entries"], json!(expected[..3]), "{r}");
    assert_eq!(
        (s["total"].as_u64(), &s["truncated"]),
        (Some(43), &json!(true))
    );

    for path in ["d/missing", "d/f00"] {
        let r = api.call("codex", "list_dir", json!({ "path": path })).await;
        assert_eq!(r["isError"], true, "{path}: {r}");
    }
}

/// With metrics and traces on, a stock codex is counted as `codex`, and it
/// still serves calls: the trace context (`params._meta`) goes only to
/// executors that announce `traceContext`, which codex does not.
#[tokio::test]
async fn codex_is_counted_as_codex_and_untouched_by_traces() {
    let Some(bin) = codex_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    admin(&data_dir, &["workspace", "create", "w1"]);
    let token = admin(&data_dir, &["token", "create", "--workspace", "w1"]);
    let creds = add_codex_executor(&data_dir, "codex");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    // A collector that is not there: export fails quietly, calls go on.
    let gateway = start_gateway_with(
        &data_dir,
        "127.0.0.1:0",
        &[
            "--metrics-listen",
            &metrics,
            "--otlp-endpoint",
            "http://127.0.0.1:9",
        ],
    );
    let _codex = start_codex(&bin, &gateway.url(), &creds, dir.path(), "m");
    let api = Api::new(&gateway.url(), &token);
    wait_for_env(&api, "codex").await;
    let r = fresh_client()
        .post(format!(
            "{}/api/connectors/envs/codex/tool/call",
            gateway.url()
        ))
        .bearer_auth(&token)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"tool": "shell", "arguments": {"command": ["echo", "traced"]}}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["structuredContent"]["stdout"], "traced\n", "{v}");
    let text = fresh_client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l == "execgate_executors_connected{kind=\"codex\"} 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "execgate_tool_calls_total{tool=\"shell\",outcome=\"ok\"} 1"),
        "{text}"
    );
}
