//! The audit log against a real gateway and executor: one record per tool
//! call (REST and MCP), process operation and file transfer, with the
//! arguments' SHA-256 and size but never their bytes; `execgate admin
//! audit`'s filters; and fail-closed against best-effort when the audit
//! table cannot be written (a trigger makes every insert fail).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::*;

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The workspace's audit records once `ready` holds for them.
pub(crate) async fn records_until(
    admin: &Api,
    what: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    eventually(20, what, || async {
        let (s, v) = admin.get("/api/admin/audit?workspace=w1&limit=1000").await;
        assert_eq!(s, 200, "{v}");
        let records = v["records"].as_array().unwrap().clone();
        if ready(&records) {
            Ok(records)
        } else {
            Err(format!("{records:#?}"))
        }
    })
    .await
}

fn find(records: &[Value], f: impl Fn(&Value) -> bool) -> Vec<&Value> {
    records.iter().filter(|r| f(r)).collect()
}

/// Makes every insert into the audit table fail (or, with `false`, work
/// again), under the running gateway.
pub(crate) async fn block_audit(data_dir: &Path, blocked: bool) {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("audit.db"))
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let sql = if blocked {
        "CREATE TRIGGER block_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit blocked by the test'); END"
    } else {
        "DROP TRIGGER block_audit"
    };
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

const SECRET: &str = "s3cr3t-in-the-arguments-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_is_recorded_with_digests_not_bytes() {
    let w = World::start(&[]).await;
    let admin = w.admin_api();
    let api = &w.api;

    // shell, with a secret in its arguments.
    let shell_args = json!({
        "command": ["sh", "-c", "printf out; exit 3"],
        "env": {"TOKEN": SECRET},
    });
    let r = api.call("laptop", "shell", shell_args.clone()).await;
    assert_eq!(r["structuredContent"]["exit_code"], 3);
    let shell_json = serde_json::to_vec(&shell_args).unwrap();

    // exec_command + stdin + output + terminate.
    let sid = api
        .exec("laptop", json!({"command": ["cat"], "env": {"X": SECRET}}))
        .await;
    let (s, v) = api.stdin(&sid, b"hello\n", false).await;
    assert_eq!(s, 200, "{v}");
    let (out, _) = api.read_until(&sid, 0, |d| d.ends_with(b"hello\n")).await;
    assert_eq!(out, b"hello\n");
    let (s, v) = api
        .post(
            &format!("/api/connectors/processes/{sid}/resize"),
            json!({"cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("not_a_terminal"))
    );
    let (s, v) = api
        .post(
            &format!("/api/connectors/processes/{sid}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The SSE stream of another process, to its end.
    let quick = api
        .exec("laptop", json!({"command": ["printf", "abc"]}))
        .await;
    let url = &w.gateway.url();
    let body = api
        .http
        .get(format!("{url}/api/connectors/processes/{quick}/stream"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("event: exit"), "{body}");

    // PUT, GET, copy_path.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let resp = api
        .http
        .put(format!(
            "{url}/api/connectors/envs/laptop/files?path=in.bin"
        ))
        .bearer_auth(&api.token)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = api
        .http
        .get(format!(
            "{url}/api/connectors/envs/laptop/files?path=in.bin"
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), data.len());
    let copy_args = json!({
        "source_environment_id": "laptop", "source_path": "in.bin",
        "destination_environment_id": "laptop", "destination_path": "copy.bin",
    });
    let r = api.call("laptop", "copy_path", copy_args.clone()).await;
    assert_eq!(r["isError"], false, "{r}");

    // A refused one: an unknown session.
    let (s, _) = api
        .post("/api/connectors/processes/ps_nope/terminate", json!({}))
        .await;
    assert_eq!(s, 404);

    // One over MCP.
    let resp = api
        .http
        .post(format!("{url}/mcp"))
        .bearer_auth(&api.token)
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "shell", "arguments": {"command": ["true"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let records = records_until(&admin, "every record", |rs| {
        rs.iter().any(|r| r["via"] == "mcp")
            && rs.iter().any(|r| r["session_id"] == "ps_nope")
            && rs.iter().any(|r| r["method"] == "files.get")
            && rs.iter().any(|r| r["method"] == "stream")
    })
    .await;

    let shell = find(&records, |r| r["method"] == "shell" && r["via"] == "rest");
    let shell = shell[0];
    assert_eq!(shell["kind"], "tool");
    assert_eq!(shell["workspace"], "w1");
    assert_eq!(shell["environment"], "laptop");
    assert!(shell["exe_id"].as_str().unwrap().starts_with("exe_"));
    assert_eq!(shell["args_sha256"], sha256(&shell_json).as_str());
    assert_eq!(shell["args_bytes"], shell_json.len());
    assert_eq!(shell["bytes_in"], shell_json.len());
    assert!(shell["bytes_out"].as_i64().unwrap() >= 3, "{shell}");
    assert_eq!(shell["outcome"], "ok");
    assert_eq!(shell["exit_code"], 3);
    assert!(shell["error_code"].is_null());
    assert!(shell["at"].as_str().unwrap().ends_with('Z'));

    let ops = |method: &str| {
        find(&records, |r| {
            r["method"] == method && r["session_id"] == sid.as_str()
        })
    };
    let exec = find(&records, |r| r["method"] == "exec_command");
    assert_eq!(exec.len(), 2);
    assert!(exec.iter().all(|r| r["outcome"] == "ok"), "{exec:?}");
    let stdin = ops("stdin");
    assert_eq!(stdin.len(), 1);
    assert_eq!(stdin[0]["kind"], "process");
    assert_eq!(stdin[0]["args_sha256"], sha256(b"hello\n").as_str());
    assert_eq!(stdin[0]["bytes_in"], 6);
    assert_eq!(stdin[0]["environment"], "laptop");
    assert_eq!(stdin[0]["outcome"], "ok");
    let outputs = ops("output");
    assert!(!outputs.is_empty());
    let read: i64 = outputs
        .iter()
        .map(|r| r["bytes_out"].as_i64().unwrap())
        .sum();
    assert_eq!(read, 6, "{outputs:?}");
    let terminate = ops("terminate");
    assert_eq!(terminate.len(), 1);
    assert_eq!(terminate[0]["outcome"], "ok");

    let resize = ops("resize");
    assert_eq!(resize[0]["outcome"], "error");
    assert_eq!(resize[0]["error_code"], "not_a_terminal");
    assert_eq!(
        resize[0]["args_sha256"],
        sha256(br#"{"cols":80,"rows":24}"#).as_str()
    );
    let stream = find(&records, |r| r["method"] == "stream");
    assert_eq!(stream[0]["session_id"], quick.as_str());
    assert_eq!(stream[0]["bytes_out"], 3);
    assert_eq!(stream[0]["exit_code"], 0);
    assert_eq!(stream[0]["outcome"], "ok");

    let put = find(&records, |r| r["method"] == "files.put");
    assert_eq!(put[0]["kind"], "file");
    assert_eq!(put[0]["args_sha256"], sha256(&data).as_str());
    assert_eq!(put[0]["args_bytes"], data.len());
    assert_eq!(put[0]["bytes_in"], data.len());
    assert_eq!(put[0]["outcome"], "ok");
    let get = find(&records, |r| r["method"] == "files.get");
    assert_eq!(get[0]["bytes_out"], data.len());
    assert_eq!(get[0]["outcome"], "ok");
    assert_eq!(
        get[0]["args_sha256"],
        sha256(br#"{"path":"in.bin"}"#).as_str()
    );
    let copy = find(&records, |r| r["method"] == "copy_path");
    assert_eq!(
        copy[0]["args_sha256"],
        sha256(&serde_json::to_vec(&copy_args).unwrap()).as_str()
    );
    assert_eq!(
        (copy[0]["bytes_in"].as_u64(), copy[0]["bytes_out"].as_u64()),
        (Some(data.len() as u64), Some(data.len() as u64))
    );

    let refused = find(&records, |r| r["session_id"] == "ps_nope");
    assert_eq!(refused[0]["outcome"], "error");
    assert_eq!(refused[0]["error_code"], "session_not_found");
    let mcp = find(&records, |r| r["via"] == "mcp");
    assert_eq!(mcp[0]["method"], "shell");
    assert_eq!(mcp[0]["exit_code"], 0);

    // Never the arguments' bytes: not in the databases, their WALs or indexes.
    for file in [
        "execgate.db",
        "execgate.db-wal",
        "execgate.db-shm",
        "audit.db",
        "audit.db-wal",
        "audit.db-shm",
    ] {
        if let Ok(bytes) = std::fs::read(w.data_dir.join(file)) {
            assert!(
                !bytes
                    .windows(SECRET.len())
                    .any(|win| win == SECRET.as_bytes()),
                "{file} holds the secret"
            );
        }
    }

    // The CLI reads the same records, with its filters.
    let out = admin_stdout(
        &w.data_dir,
        &["audit", "--workspace", "w1", "--since", "1h", "--json"],
    );
    let cli: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(cli.len(), records.len());
    assert_eq!(cli[0], records[0]);
    let out = admin_stdout(&w.data_dir, &["audit", "--workspace", "other", "--json"]);
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&out).unwrap(),
        Vec::<Value>::new()
    );
    let later = records.last().unwrap()["at_ms"].as_i64().unwrap() + 1;
    let out = admin_stdout(
        &w.data_dir,
        &["audit", "--since", &later.to_string(), "--json"],
    );
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&out).unwrap(),
        Vec::<Value>::new()
    );
    let out = admin_stdout(&w.data_dir, &["audit", "--workspace", "w1"]);
    assert!(
        out.contains("files.put") && out.contains("copy_path"),
        "{out}"
    );

    // The API pages with a cursor, and filters by time too.
    let (_, page) = admin.get("/api/admin/audit?workspace=w1&limit=2").await;
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_i64().unwrap();
    assert_eq!(cursor, records[1]["id"].as_i64().unwrap());
    let (_, page) = admin
        .get(&format!(
            "/api/admin/audit?workspace=w1&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(page["records"][0], records[2]);
    let (_, page) = admin.get(&format!("/api/admin/audit?since={later}")).await;
    assert_eq!(page["records"], json!([]));
    assert!(page.get("next_cursor").is_none());
    let (s, v) = admin.get("/api/admin/audit?since=yesterday").await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("RFC 3339"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_a_call_it_cannot_record_before_it_runs() {
    let w = World::start_with(&["--audit", "fail-closed"], &[]).await;
    let admin = w.admin_api();
    let r = w
        .api
        .call("laptop", "shell", json!({"command": ["touch", "first"]}))
        .await;
    assert_eq!(r["isError"], false);
    assert!(w.workdir.join("first").exists());
    records_until(&admin, "the completed record", |rs| {
        rs.iter()
            .any(|r| r["method"] == "shell" && r["outcome"] == "ok")
    })
    .await;

    block_audit(&w.data_dir, true).await;
    let resp = w
        .api
        .http
        .post(format!(
            "{}/api/connectors/envs/laptop/tool/call",
            w.api.url
        ))
        .bearer_auth(&w.api.token)
        .json(&json!({"tool": "shell", "arguments": {"command": ["touch", "second"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "audit_unavailable", "{v}");
    // Refused before it ran.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.workdir.join("second").exists());
    // Process operations too.
    let (s, v) = w
        .api
        .post("/api/connectors/processes/ps_x/terminate", json!({}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("audit_unavailable"))
    );
    let (_, stats) = admin.get("/api/admin/stats").await;
    assert_eq!(stats["audit"]["mode"], "fail-closed");
    assert_eq!(stats["audit"]["refused"], 2);
    assert_eq!(stats["audit"]["lost"], 0);
    assert_eq!(stats["audit"]["healthy"], false);

    // Writable again: calls go through again, without a restart.
    block_audit(&w.data_dir, false).await;
    let r = w
        .api
        .call("laptop", "shell", json!({"command": ["touch", "third"]}))
        .await;
    assert_eq!(r["isError"], false);
    assert!(w.workdir.join("third").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_goes_on_and_counts_the_records_it_loses() {
    let w = World::start(&[]).await;
    let admin = w.admin_api();
    block_audit(&w.data_dir, true).await;
    for name in ["a", "b"] {
        let r = w
            .api
            .call("laptop", "shell", json!({"command": ["touch", name]}))
            .await;
        assert_eq!(r["isError"], false);
        assert!(w.workdir.join(name).exists());
    }
    eventually(10, "two lost records", || async {
        let (_, stats) = admin.get("/api/admin/stats").await;
        stats["audit"]["lost"] == 2
    })
    .await;
    let (_, page) = admin.get("/api/admin/audit").await;
    assert_eq!(page["lost_records"], 2);
    assert_eq!(page["records"], json!([]));
    let (_, stats) = admin.get("/api/admin/stats").await;
    assert_eq!(stats["audit"]["healthy"], false);
    assert_eq!(stats["audit"]["refused"], 0);
    let log = std::fs::read_to_string(w.data_dir.join("gateway.log")).unwrap();
    assert!(log.contains("audit records lost"), "{log}");

    block_audit(&w.data_dir, false).await;
    w.api
        .call("laptop", "shell", json!({"command": ["true"]}))
        .await;
    records_until(&admin, "a record again", |rs| rs.len() == 1).await;
    let (_, stats) = admin.get("/api/admin/stats").await;
    assert_eq!(stats["audit"]["healthy"], true);
}
