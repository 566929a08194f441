//! The admin API (`/api/admin/*`) against a real gateway: the admin token
//! (generated 0600 at first start, or `--admin-token-file`), and workspaces,
//! proxy tokens and executors created through it, then used for real.

use serde_json::{json, Value};

use crate::harness::*;

async fn status_of(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_creates_what_the_connectors_api_then_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let workdir = dir.path().join("work");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    let gateway = start_gateway(&data_dir, "127.0.0.1:0");
    let url = gateway.url();

    // Generated at first start, private.
    let token_file = data_dir.join("admin-token");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let admin = Api::new(&url, &admin_token(&data_dir));
    assert!(admin.token.len() > 40);

    // No token, a wrong one, a proxy token: all 401.
    let http = fresh_client();
    let (s, v) = status_of(http.get(format!("{url}/api/admin/workspaces"))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("missing_bearer"))
    );
    for bad in ["nope", &format!("{}x", admin.token)] {
        let (s, v) = status_of(
            http.get(format!("{url}/api/admin/workspaces"))
                .bearer_auth(bad),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("invalid_token"))
        );
    }

    // Workspaces.
    let (s, v) = admin
        .post("/api/admin/workspaces", json!({"name": "team"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "team");
    let (s, v) = admin
        .post("/api/admin/workspaces", json!({"name": "team"}))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, v) = admin
        .post("/api/admin/workspaces", json!({"name": "Bad Name"}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("lowercase"));
    let (s, v) = admin.get("/api/admin/workspaces").await;
    assert_eq!(s, 200);
    assert_eq!(v["workspaces"][0]["name"], "team");
    // The same store as the CLI.
    assert!(admin_stdout(&data_dir, &["workspace", "list"]).contains("team"));

    // A proxy token, shown once.
    let (s, v) = admin
        .post(
            "/api/admin/tokens",
            json!({"workspace": "team", "user_id": "alice"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let proxy_token = v["token"].as_str().unwrap().to_string();
    let token_id = v["id"].as_str().unwrap().to_string();
    let (_, v) = admin.get("/api/admin/tokens?workspace=team").await;
    assert_eq!(v["tokens"][0]["id"], token_id.as_str());
    assert_eq!(v["tokens"][0]["user_id"], "alice");
    assert!(!v.to_string().contains(&proxy_token));
    // The admin API does not take it.
    let (s, _) = status_of(
        http.get(format!("{url}/api/admin/workspaces"))
            .bearer_auth(&proxy_token),
    )
    .await;
    assert_eq!(s, 401);

    // An executor, then a real call through the connectors API.
    let (s, v) = admin
        .post(
            "/api/admin/executors",
            json!({"workspace": "team", "name": "box", "default": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("sigv4").is_none());
    let exe_token = v["token"].as_str().unwrap().to_string();
    let exe_id = v["exe_id"].as_str().unwrap().to_string();
    let _executor = start_executor(&url, &exe_token, &workdir, &[]);
    let api = Api::new(&url, &proxy_token);
    wait_for_env(&api, "box").await;
    let r = api
        .call(
            "box",
            "shell",
            json!({"command": ["echo", "via-admin-api"]}),
        )
        .await;
    assert_eq!(r["structuredContent"]["stdout"], "via-admin-api\n");
    let (_, v) = admin.get("/api/admin/executors?workspace=team").await;
    let e = &v["executors"][0];
    assert_eq!(
        (
            e["exe_id"].as_str(),
            e["name"].as_str(),
            e["online"].as_bool()
        ),
        (Some(exe_id.as_str()), Some("box"), Some(true))
    );
    assert_eq!(e["kind"], "execgate");
    assert_eq!(e["is_default"], true);

    // A SigV4 executor gets credentials instead of a token; a workspace
    // that does not exist yet is created.
    let (s, v) = admin
        .post(
            "/api/admin/executors",
            json!({"workspace": "other", "name": "codex", "sigv4": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("token").is_none());
    assert!(v["sigv4"]["access_key_id"]
        .as_str()
        .unwrap()
        .starts_with("AKEG"));
    assert!(v["sigv4"]["secret_access_key"].as_str().unwrap().len() >= 40);
    let (s, v) = admin
        .post(
            "/api/admin/executors",
            json!({"workspace": "other", "name": "codex"}),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, v) = admin
        .post("/api/admin/executors", json!({"workspace": "other"}))
        .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("name"));

    // The audit log has the call (written after the answer, so wait).
    eventually(10, "the shell call's audit record", || async {
        let (s, v) = admin.get("/api/admin/audit?workspace=team").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["lost_records"], 0);
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["method"] == "shell")
    })
    .await;

    // Revoking takes effect on the next request.
    let (s, v) = admin
        .post(&format!("/api/admin/tokens/{token_id}/revoke"), json!({}))
        .await;
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)));
    let (s, v) = api.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    let (s, _) = admin
        .post(&format!("/api/admin/tokens/{token_id}/revoke"), json!({}))
        .await;
    assert_eq!(s, 404);
    let (_, v) = admin.get("/api/admin/tokens?workspace=team").await;
    assert!(v["tokens"][0]["revoked_at"].is_string());

    // Removing an executor.
    let (s, v) = admin
        .send(
            admin
                .http
                .delete(format!("{url}/api/admin/executors/box?workspace=team")),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = admin
        .send(
            admin
                .http
                .delete(format!("{url}/api/admin/executors/box?workspace=team")),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    let (_, v) = admin.get("/api/admin/executors?workspace=team").await;
    assert_eq!(v["executors"], json!([]));
    let (s, v) = admin
        .send(admin.http.delete(format!("{url}/api/admin/executors/box")))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("workspace"));

    // The stats.
    let (s, v) = admin.get("/api/admin/stats").await;
    assert_eq!(s, 200);
    assert_eq!(v["audit"]["mode"], "best-effort");
    assert_eq!(v["audit"]["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_file_replaces_the_generated_token_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let file = dir.path().join("admin-secret");
    std::fs::write(&file, "chosen-admin-token-123\n").unwrap();
    let g = start_gateway_with(
        &data_dir,
        "127.0.0.1:0",
        &["--admin-token-file", file.to_str().unwrap()],
    );
    let admin = Api::new(&g.url(), "chosen-admin-token-123");
    let (s, v) = admin.get("/api/admin/workspaces").await;
    assert_eq!(s, 200, "{v}");
    assert!(!data_dir.join("admin-token").exists());
    drop(g);

    // Without the flag a token is generated, and kept across restarts.
    let g = start_gateway(&data_dir, "127.0.0.1:0");
    let generated = admin_token(&data_dir);
    assert_ne!(generated, "chosen-admin-token-123");
    let (s, _) = Api::new(&g.url(), "chosen-admin-token-123")
        .get("/api/admin/workspaces")
        .await;
    assert_eq!(s, 401);
    drop(g);
    let g = start_gateway(&data_dir, "127.0.0.1:0");
    assert_eq!(admin_token(&data_dir), generated);
    let (s, _) = Api::new(&g.url(), &generated)
        .get("/api/admin/workspaces")
        .await;
    assert_eq!(s, 200);

    // An empty token file refuses to start.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .arg("--admin-token-file")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--admin-token-file") && stderr.contains("empty"),
        "{stderr}"
    );
}
