//! `list_dir` end to end with an execgate executor: over REST, over MCP
//! (the same result), and `execgate ls`. `--root` confinement is in
//! `policy.rs`, a stock codex in `codex.rs`.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::*;
use crate::mcp::Mcp;

/// In `dir`: `b.txt`, `A`, `a/` (with `inner`), `link_a` (to `a/`),
/// `dangling` (to nothing) and the FIFO `fifo`.
fn populate(dir: &std::path::Path) {
    std::fs::write(dir.join("b.txt"), "b").unwrap();
    std::fs::write(dir.join("A"), "A").unwrap();
    std::fs::create_dir(dir.join("a")).unwrap();
    std::fs::write(dir.join("a/inner"), "").unwrap();
    std::os::unix::fs::symlink(dir.join("a"), dir.join("link_a")).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
}

fn expected_entries() -> Value {
    json!([
        {"name": "A", "kind": "file"},
        {"name": "a", "kind": "directory"},
        {"name": "b.txt", "kind": "file"},
        {"name": "dangling", "kind": "other"},
        {"name": "fifo", "kind": "other"},
        {"name": "link_a", "kind": "directory"},
    ])
}

#[tokio::test]
async fn list_dir_over_rest_and_mcp() {
    let w = World::start(&[]).await;
    let dir = w.workdir.join("d");
    std::fs::create_dir(&dir).unwrap();
    populate(&dir);

    // Relative to the executor's working directory; sorted by name; links
    // followed (a dangling one and a FIFO are `other`).
    let r = w.api.call("laptop", "list_dir", json!({"path": "d"})).await;
    assert_eq!(r["isError"], false, "{r}");
    let s = &r["structuredContent"];
    assert_eq!(s["path"], "d");
    assert_eq!(s["entries"], expected_entries(), "{r}");
    assert_eq!(
        (s["total"].as_u64(), &s["truncated"]),
        (Some(6), &json!(false))
    );
    // The text is the same JSON.
    let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(&text, s);

    // Absolute, and through `..` and a link.
    let abs = dir.display().to_string();
    let r = w.api.call("laptop", "list_dir", json!({"path": abs})).await;
    assert_eq!(r["structuredContent"]["entries"], expected_entries());
    let r = w
        .api
        .call("laptop", "list_dir", json!({"path": "d/a/../link_a"}))
        .await;
    assert_eq!(
        r["structuredContent"]["entries"],
        json!([{"name": "inner", "kind": "file"}])
    );
    // An empty directory.
    std::fs::create_dir(dir.join("a/empty")).unwrap();
    let r = w
        .api
        .call("laptop", "list_dir", json!({"path": "d/a/empty"}))
        .await;
    assert_eq!(r["structuredContent"]["entries"], json!([]), "{r}");
    assert_eq!(r["structuredContent"]["total"], 0);

    // max_entries: the first ones by name, and the cut said.
    let r = w
        .api
        .call("laptop", "list_dir", json!({"path": "d", "max_entries": 2}))
        .await;
    let s = &r["structuredContent"];
    assert_eq!(
        s["entries"],
        json!(expected_entries().as_array().unwrap()[..2])
    );
    assert_eq!(
        (s["total"].as_u64(), &s["truncated"]),
        (Some(6), &json!(true))
    );

    // What is not a directory: a tool error (200, isError), not an HTTP one.
    for (path, needle) in [("d/missing", "no such file"), ("d/b.txt", "directory")] {
        let r = w
            .api
            .call("laptop", "list_dir", json!({ "path": path }))
            .await;
        assert_eq!(r["isError"], true, "{path}: {r}");
        let message = r["structuredContent"]["error"].as_str().unwrap();
        assert!(message.contains(needle), "{path}: {message}");
    }
    // Bad arguments: 400 naming the field.
    for (args, needle) in [
        (json!({}), "path"),
        (json!({"path": ""}), "arguments.path"),
        (
            json!({"path": "d", "max_entries": 0}),
            "arguments.max_entries",
        ),
        (json!({"path": "d", "max_entries": 10001}), "at most 10000"),
    ] {
        let (status, body) = w.api.call_raw("laptop", "list_dir", args.clone()).await;
        assert_eq!(status, 400, "{args}: {body}");
        assert_eq!(body["error"]["code"], "bad_arguments", "{args}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{args}: {message}");
    }
    // envs/list shows it.
    let envs = w.api.envs().await;
    let tools = envs["envs"][0]["tools"].as_array().unwrap();
    let t = tools
        .iter()
        .find(|t| t["name"] == "list_dir")
        .expect("listed");
    assert_eq!(t["kind"], "core");

    // MCP: the same tool, the same result; bad arguments are -32602.
    let mcp = Mcp::new(&w.gateway.url(), &w.api.token);
    let list = mcp.request("tools/list", json!({})).await;
    let tool = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "list_dir")
        .unwrap_or_else(|| panic!("no list_dir in {list}"))
        .clone();
    assert_eq!(tool["inputSchema"]["required"], json!(["path"]), "{tool}");
    assert_eq!(
        tool["inputSchema"]["properties"]["max_entries"]["maximum"],
        10000
    );
    let via_mcp = mcp.call("list_dir", json!({"path": "d"})).await;
    let via_rest = w.api.call("laptop", "list_dir", json!({"path": "d"})).await;
    assert_eq!(via_mcp, via_rest);
    let via_mcp = mcp
        .call(
            "list_dir",
            json!({"path": "d/missing", "environment_id": "laptop"}),
        )
        .await;
    assert_eq!(via_mcp["isError"], true, "{via_mcp}");
    let message = mcp
        .call_error("list_dir", json!({"path": "d", "max_entries": 0}), -32602)
        .await;
    assert!(message.contains("max_entries"), "{message}");
}

/// Runs `execgate ARGS` as a client of the world's gateway.
fn client(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("EXECGATE_URL", w.gateway.url())
        .env("EXECGATE_TOKEN", &w.api.token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn execgate_ls_lists_an_environment_directory() {
    let w = World::start(&[]).await;
    let dir = w.workdir.join("d");
    std::fs::create_dir(&dir).unwrap();
    populate(&dir);

    let (code, out, err) = client(&w, &["ls", "laptop:d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "A\na/\nb.txt\ndangling?\nfifo?\nlink_a/\n");
    assert_eq!(err, "");
    // ENV alone: the working directory.
    let (code, out, err) = client(&w, &["ls", "laptop"]);
    assert_eq!((code, out.as_str()), (0, "d/\n"), "{err}");
    // Truncated: said on stderr.
    let (code, out, err) = client(&w, &["ls", "--max-entries", "2", "laptop:d"]);
    assert_eq!((code, out.as_str()), (0, "A\na/\n"), "{err}");
    assert!(err.contains("2 of 6 entries"), "{err}");
    // --json: the structured result.
    let (code, out, _) = client(&w, &["ls", "--json", &format!("laptop:{}", dir.display())]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entries"], expected_entries());
    // A tool error exits 1 with its message; an unknown environment too.
    let (code, out, err) = client(&w, &["ls", "laptop:d/b.txt"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("error:") && err.contains("directory"), "{err}");
    let (code, _, err) = client(&w, &["ls", "nope:d"]);
    assert_eq!(code, 1);
    assert!(err.contains("env_not_found"), "{err}");
}
