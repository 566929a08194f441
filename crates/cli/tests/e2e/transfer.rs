//! File transfer end to end: copy_path between executors, the streaming
//! /files routes, and `execgate cp`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sha2::Digest;

use crate::harness::*;

/// Adds executor `name` to the world's workspace; returns its workdir.
async fn add_executor(w: &mut World, name: &str) -> PathBuf {
    let token = admin(
        &w.data_dir,
        &["executor", "add", "--workspace", "w1", "--name", name],
    );
    let work = w.dir.path().join(format!("work-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    w.executors
        .push(start_executor(&w.gateway.url(), &token, &work, &[]));
    wait_for_env(&w.api, name).await;
    work
}

/// A file of `len` pseudo-random bytes (so that a shifted copy cannot pass).
fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

fn sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test]
async fn copy_path_moves_64_mib_between_executors_byte_exact() {
    let mut w = World::start(&[]).await;
    let gpu = add_executor(&mut w, "gpu").await;
    let data = random_file(&w.workdir.join("big.bin"), 64 << 20);
    let r = w
        .api
        .call(
            "laptop",
            "copy_path",
            json!({
                "source_environment_id": "laptop", "source_path": "big.bin",
                "destination_environment_id": "gpu", "destination_path": "in/copy.bin",
            }),
        )
        .await;
    // The destination directory does not exist: the copy says so.
    assert_eq!(r["isError"], true, "{r}");
    std::fs::create_dir_all(gpu.join("in")).unwrap();
    let r = w
        .api
        .call(
            "laptop",
            "copy_path",
            json!({
                "source_environment_id": "laptop", "source_path": "big.bin",
                "destination_environment_id": "gpu", "destination_path": "in/copy.bin",
            }),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let sc = &r["structuredContent"];
    assert_eq!(sc["bytes"], 64 << 20);
    assert_eq!(sc["files"], 1);
    // Between two execgate executors the copy is verified by BLAKE3 (the
    // source hashes what it read, the destination what it wrote), and the
    // result names that digest.
    assert_eq!(sc["blake3"], blake3::hash(&data).to_hex().as_str(), "{r}");
    assert!(sc.get("sha256").is_none(), "{r}");
    assert!(sc["duration_ms"].is_u64());
    let copied = std::fs::read(gpu.join("in/copy.bin")).unwrap();
    assert_eq!(sha(&copied), sha(&data));
    assert_eq!(
        std::fs::read_dir(gpu.join("in")).unwrap().count(),
        1,
        "no staged file left behind"
    );
}

#[tokio::test]
async fn copy_path_copies_a_tree_with_a_symlink_and_modes() {
    let mut w = World::start(&[]).await;
    let gpu = add_executor(&mut w, "gpu").await;
    let src = w.workdir.join("tree");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha").unwrap();
    std::fs::write(src.join("sub/deeper/empty"), "").unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../a.txt", src.join("sub/link")).unwrap();
    let args = json!({
        "source_environment_id": "laptop", "source_path": "tree",
        "destination_environment_id": "gpu", "destination_path": "copied",
    });
    // Without recursive: refused.
    let r = w.api.call("laptop", "copy_path", args.clone()).await;
    assert_eq!(r["isError"], true);
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("recursive"),
        "{r}"
    );

    let mut rec = args.clone();
    rec["recursive"] = json!(true);
    let r = w.api.call("gpu", "copy_path", rec.clone()).await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["files"], 3);
    assert_eq!(r["structuredContent"]["bytes"], 5 + 18);
    let dst = gpu.join("copied");
    assert_eq!(std::fs::read_to_string(dst.join("a.txt")).unwrap(), "alpha");
    assert_eq!(std::fs::read(dst.join("sub/deeper/empty")).unwrap(), b"");
    let mode = std::fs::metadata(dst.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let link = dst.join("sub/link");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../a.txt"));

    // The destination exists now: no merge.
    let r = w.api.call("gpu", "copy_path", rec).await;
    assert_eq!(r["isError"], true);
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("does not merge"),
        "{r}"
    );
}

#[tokio::test]
async fn killing_the_destination_mid_copy_leaves_nothing_at_the_destination() {
    let mut w = World::start(&[]).await;
    let gpu = add_executor(&mut w, "gpu").await;
    random_file(&w.workdir.join("huge.bin"), 512 << 20);
    let api = w.api.clone();
    let copy = tokio::spawn(async move {
        api.call_raw(
            "laptop",
            "copy_path",
            json!({
                "source_environment_id": "laptop", "source_path": "huge.bin",
                "destination_environment_id": "gpu", "destination_path": "huge.bin",
            }),
        )
        .await
    });
    // Wait until the staged file exists and is growing, then kill the executor.
    let staged = || {
        std::fs::read_dir(&gpu)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().contains("execgate-part"))
            .map(|e| e.metadata().unwrap().len())
    };
    eventually(30, "the copy to start writing", || async {
        staged().unwrap_or(0) > 0
    })
    .await;
    w.executors[1].kill();
    let (s, v) = tokio::time::timeout(Duration::from_secs(20), copy)
        .await
        .expect("the copy must not hang")
        .unwrap();
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "executor_unavailable");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("gpu"),
        "{v}"
    );
    assert!(
        !gpu.join("huge.bin").exists(),
        "a partial file stands at the destination"
    );
}

/// The permission bits of `path` (through links).
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `PUT /files` and `copy_path` onto a symlink write through it, as
/// `write_file` does: the link stays, the file it points to gets the bytes
/// and keeps its mode. Before issue 16 a PUT replaced the link with a
/// regular file of mode 0777 (the link's own), and a copy replaced the link.
#[tokio::test]
async fn put_and_copy_path_onto_a_symlink_write_through_it() {
    let w = World::start(&[]).await;
    let work = &w.workdir;
    std::fs::write(work.join("target.txt"), "old").unwrap();
    std::fs::set_permissions(work.join("target.txt"), PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("target.txt", work.join("link.txt")).unwrap();
    // A dangling link: writing through it creates the file it names.
    std::os::unix::fs::symlink("made.txt", work.join("dangling.txt")).unwrap();
    let is_link = |name: &str| {
        std::fs::symlink_metadata(work.join(name))
            .unwrap()
            .file_type()
            .is_symlink()
    };
    let http = fresh_client();
    let files = format!("{}/api/connectors/envs/laptop/files", w.api.url);
    let put = |path: &'static str, body: &'static str| {
        http.put(&files)
            .query(&[("path", path)])
            .bearer_auth(&w.api.token)
            .body(body)
            .send()
    };

    let resp = put("link.txt", "put through").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(is_link("link.txt"), "the link stays a link");
    assert_eq!(
        std::fs::read_to_string(work.join("target.txt")).unwrap(),
        "put through"
    );
    assert_eq!(
        mode(&work.join("target.txt")),
        0o600,
        "the target keeps its mode"
    );

    // A new file is never wider than write_file makes one (0666 - umask).
    let r = w
        .api
        .call(
            "laptop",
            "write_file",
            json!({"path": "ref.txt", "content_b64": b64e(b"x")}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let resp = put("dangling.txt", "made").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(is_link("dangling.txt"));
    assert_eq!(
        std::fs::read_to_string(work.join("made.txt")).unwrap(),
        "made"
    );
    assert_eq!(mode(&work.join("made.txt")), mode(&work.join("ref.txt")));
    assert_eq!(mode(&work.join("made.txt")) & 0o022, 0);

    // copy_path onto the link: through it too, with the source's mode
    // (a copy keeps modes).
    std::fs::write(work.join("src.txt"), "copied").unwrap();
    std::fs::set_permissions(work.join("src.txt"), PermissionsExt::from_mode(0o640)).unwrap();
    let r = w
        .api
        .call(
            "laptop",
            "copy_path",
            json!({
                "source_environment_id": "laptop", "source_path": "src.txt",
                "destination_environment_id": "laptop", "destination_path": "link.txt",
            }),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert!(is_link("link.txt"));
    assert_eq!(
        std::fs::read_to_string(work.join("target.txt")).unwrap(),
        "copied"
    );
    assert_eq!(mode(&work.join("target.txt")), 0o640);

    let leftovers: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("execgate"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn put_and_get_64_mib_and_ranges() {
    let w = World::start(&[]).await;
    let dir = w.dir.path();
    let data = random_file(&dir.join("up.bin"), 64 << 20);
    let http = fresh_client();
    let files = format!("{}/api/connectors/envs/laptop/files", w.api.url);

    let resp = http
        .put(&files)
        .query(&[("path", "sub/up.bin")])
        .bearer_auth(&w.api.token)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["bytes"], 64 << 20);
    assert_eq!(v["sha256"], sha(&data));
    assert_eq!(
        sha(&std::fs::read(w.workdir.join("sub/up.bin")).unwrap()),
        sha(&data)
    );

    let resp = http
        .get(&files)
        .query(&[("path", "sub/up.bin")])
        .bearer_auth(&w.api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(64 << 20));
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha(&body), sha(&data));

    for (range, start, end) in [
        ("bytes=10-19", 10usize, 20usize),
        ("bytes=-5", data.len() - 5, data.len()),
        ("bytes=67108000-", 67108000, data.len()),
    ] {
        let resp = http
            .get(&files)
            .query(&[("path", "sub/up.bin")])
            .header("Range", range)
            .bearer_auth(&w.api.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        let cr = resp.headers()["content-range"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(cr, format!("bytes {start}-{}/{}", end - 1, data.len()));
        assert_eq!(resp.bytes().await.unwrap(), &data[start..end], "{range}");
    }
    let resp = http
        .get(&files)
        .query(&[("path", "sub/up.bin")])
        .header("Range", "bytes=99999999-")
        .bearer_auth(&w.api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);

    let (s, v) = w
        .api
        .get("/api/connectors/envs/laptop/files?path=nope.bin")
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("file_not_found"))
    );
    let (s, v) = w.api.get("/api/connectors/envs/laptop/files").await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn the_cp_command_copies_both_ways_and_between_environments() {
    let mut w = World::start(&[]).await;
    let gpu = add_executor(&mut w, "gpu").await;
    let dir = w.dir.path().to_owned();
    let data = random_file(&dir.join("local.bin"), 3 << 20);
    let cp = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("cp")
            .args(args)
            .env("EXECGATE_URL", &w.api.url)
            .env("EXECGATE_TOKEN", &w.api.token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let local = dir.join("local.bin");
    cp(&[local.to_str().unwrap(), "laptop:remote.bin"]);
    assert_eq!(std::fs::read(w.workdir.join("remote.bin")).unwrap(), data);
    cp(&["laptop:remote.bin", "gpu:there.bin"]);
    assert_eq!(std::fs::read(gpu.join("there.bin")).unwrap(), data);
    let back = dir.join("back.bin");
    cp(&["gpu:there.bin", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), data);
}

/// Byte ranges at the edges (RFC 9110 §14): a last position past the end is
/// clamped (u64::MAX once wrapped to an empty 206), an unsatisfiable range is
/// 416 with `bytes */size`, an invalid or multiple range is served whole. A
/// partial PUT (`Content-Range`) is refused, and the file is left as it was.
#[tokio::test]
async fn ranges_at_the_edges_and_partial_put_refused() {
    let w = World::start(&[]).await;
    std::fs::write(w.workdir.join("ten.bin"), b"0123456789").unwrap();
    let http = fresh_client();
    let files = format!("{}/api/connectors/envs/laptop/files", w.api.url);
    let get = |range: &'static str| {
        let req = http
            .get(&files)
            .query(&[("path", "ten.bin")])
            .header("Range", range)
            .bearer_auth(&w.api.token);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let cr = resp
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            (status, cr, resp.bytes().await.unwrap().to_vec())
        }
    };
    for (range, status, cr, body) in [
        (
            "bytes=0-18446744073709551615",
            206,
            Some("bytes 0-9/10"),
            &b"0123456789"[..],
        ),
        (
            "bytes=4-99999999999999999999999",
            206,
            Some("bytes 4-9/10"),
            b"456789",
        ),
        ("bytes=-3", 206, Some("bytes 7-9/10"), b"789"),
        ("bytes=8-", 206, Some("bytes 8-9/10"), b"89"),
        ("bytes=-100", 206, Some("bytes 0-9/10"), b"0123456789"),
        ("bytes=5-2", 200, None, b"0123456789"),
        ("bytes=0-1,4-5", 200, None, b"0123456789"),
        ("bytes=+1-2", 200, None, b"0123456789"),
        ("lines=1-2", 200, None, b"0123456789"),
    ] {
        let (s, got_cr, got) = get(range).await;
        assert_eq!(s, status, "{range}");
        assert_eq!(got_cr.as_deref(), cr, "{range}");
        assert_eq!(got, body, "{range}");
    }
    for range in ["bytes=10-", "bytes=18446744073709551615-", "bytes=-0"] {
        let (s, cr, body) = get(range).await;
        assert_eq!(s, 416, "{range}");
        assert_eq!(cr.as_deref(), Some("bytes */10"), "{range}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "range_not_satisfiable", "{range}");
    }

    let resp = http
        .put(&files)
        .query(&[("path", "ten.bin")])
        .header("Content-Range", "bytes 0-2/10")
        .bearer_auth(&w.api.token)
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Content-Range"),
        "{v}"
    );
    assert_eq!(
        std::fs::read(w.workdir.join("ten.bin")).unwrap(),
        b"0123456789"
    );
}

/// read_file of a FIFO (or anything that is not a regular file) is refused
/// at once, as `GET /files` refuses it; it once waited 60 s for a writer and
/// answered 504.
#[tokio::test]
async fn read_file_of_a_fifo_is_refused_at_once() {
    let w = World::start(&[]).await;
    let fifo = w.workdir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let started = std::time::Instant::now();
    let (s, v) = w
        .api
        .call_raw("laptop", "read_file", serde_json::json!({"path": "fifo"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["isError"], true, "{v}");
    assert!(
        v["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{v}"
    );
    let (s, v) = w
        .api
        .get("/api/connectors/envs/laptop/files?path=fifo")
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
