//! The gateway on PostgreSQL (`--database-url`), end to end: a real
//! gateway and executor on a throwaway cluster (`execgate_testkit::pg`),
//! and `execgate admin migrate` from a SQLite data dir. Skipped, with a
//! line saying so, where PostgreSQL cannot start (a failure with
//! `EXECGATE_REQUIRE_POSTGRES=1`, as in CI).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// Polls until `f` answers true, at most `within`.
async fn within(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if f().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_gateway_on_postgres_serves_tools_processes_files_and_revocation() {
    let Some(url) = execgate_testkit::pg::database("postgres::a_gateway_on_postgres") else {
        return;
    };
    let eg = execgate();
    let token_line = |out: String| out.lines().last().unwrap_or_default().to_string();
    eg.admin_url(&url, &["workspace", "create", "w1"]);
    let created = eg.admin_url_stdout(&url, &["token", "create", "--workspace", "w1"]);
    let token = token_line(created.clone());
    let token_id = created
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .expect("the token's id")
        .to_string();
    let exe_token = eg.admin_url(
        &url,
        &[
            "executor",
            "add",
            "--workspace",
            "w1",
            "--name",
            "laptop",
            "--default",
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let gw = eg.serve(&data_dir, "127.0.0.1:0", &["--database-url", &url]);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let _executor = eg.executor(&gw.url(), &exe_token, &work, &[]);
    let api = Api::new(&gw.url(), &token);
    wait_for_env(&api, "laptop").await;

    // Tools.
    let r = api
        .call(
            "laptop",
            "shell",
            json!({"command": ["sh", "-c", "echo hi; exit 3"]}),
        )
        .await;
    assert!(r.to_string().contains("hi"), "{r}");
    let r = api
        .call(
            "laptop",
            "write_file",
            json!({"path": "a.txt", "content_b64": b64e(b"on postgres")}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = api
        .call("laptop", "read_file", json!({"path": "a.txt"}))
        .await;
    assert_eq!(
        b64d(r["content"][0]["text"].as_str().unwrap()),
        b"on postgres",
        "{r}"
    );

    // A process with output, through its session row in PostgreSQL.
    let sid = api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "for i in 1 2 3; do echo line$i; done"]}),
        )
        .await;
    let (out, _) = api
        .read_until(&sid, 0, |d| String::from_utf8_lossy(d).contains("line3"))
        .await;
    assert_eq!(String::from_utf8_lossy(&out), "line1\nline2\nline3\n");

    // Files: PUT then GET, streamed.
    let http = fresh_client();
    let files = format!("{}/api/connectors/envs/laptop/files", gw.url());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let resp = http
        .put(&files)
        .query(&[("path", "big.bin")])
        .bearer_auth(&token)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .get(&files)
        .query(&[("path", "big.bin")])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());

    // The audit log is in PostgreSQL too.
    let audit = eg.admin_url_stdout(&url, &["audit", "--json"]);
    let records: serde_json::Value = serde_json::from_str(&audit).unwrap();
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["method"] == "read_file"),
        "{audit}"
    );
    // Nothing durable in the data dir: no SQLite store, no secret files.
    for file in ["execgate.db", "audit.db", "admin-token", "cap-token-secret"] {
        assert!(!data_dir.join(file).exists(), "{file} in the data dir");
    }

    // Revocation by another process (admin on the database): refused
    // within 1 s, through the NOTIFY hint.
    let (s, _) = api.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(s, 200);
    eg.admin_url(&url, &["token", "revoke", &token_id]);
    let took = within(
        "the revoked token refused",
        Duration::from_secs(1),
        async || api.post("/api/connectors/envs/list", json!({})).await.0 == 401,
    )
    .await;
    println!("revocation took effect after {took:?}");
}

#[tokio::test]
async fn admin_migrate_moves_a_sqlite_store_to_postgres() {
    let Some(url) = execgate_testkit::pg::database("postgres::admin_migrate") else {
        return;
    };
    let eg = execgate();
    // A single-machine installation with a token, an executor and audit
    // records, its gateway stopped.
    let prepared = Prepared::new(&eg, "w1");
    let exe_token = prepared.add_executor("laptop", true);
    let data_dir = prepared.data_dir.clone();
    let token = prepared.token.clone();
    let g = prepared.serve(&[]);
    let admin = admin_token(&g.data_dir);
    let work = g.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut executor = eg.executor(&g.url, &exe_token, &work, &[]);
    wait_for_env(&g.api(), "laptop").await;
    g.api()
        .call("laptop", "shell", json!({"command": ["true"]}))
        .await;
    // The call's audit record is written in the background: wait for it.
    let mut before = String::new();
    within(
        "the call's audit record",
        Duration::from_secs(10),
        async || {
            before = admin_stdout(&data_dir, &["audit", "--json"]);
            before.contains("\"shell\"")
        },
    )
    .await;
    executor.kill();
    let dir = g.dir;
    drop(g.process);

    let out = eg.admin_url_stdout(
        &url,
        &[
            "migrate",
            "--from",
            data_dir.to_str().unwrap(),
            "--to",
            &url,
        ],
    );
    assert!(
        out.contains("copied 1 workspaces, 1 proxy tokens, 1 executors"),
        "{out}"
    );
    // A second migrate into the now non-empty store is refused.
    let again = eg.admin_url_output(
        &url,
        &[
            "migrate",
            "--from",
            data_dir.to_str().unwrap(),
            "--to",
            &url,
        ],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The audit log came along, ids kept.
    assert_eq!(eg.admin_url_stdout(&url, &["audit", "--json"]), before);

    // A gateway on PostgreSQL serves the same token, executor token and
    // admin token.
    let pg_data = dir.path().join("pg-data");
    std::fs::create_dir_all(&pg_data).unwrap();
    let gw = eg.serve(&pg_data, "127.0.0.1:0", &["--database-url", &url]);
    let _executor = eg.executor(&gw.url(), &exe_token, &work, &[]);
    let api = Api::new(&gw.url(), &token);
    wait_for_env(&api, "laptop").await;
    let r = api
        .call("laptop", "shell", json!({"command": ["echo", "moved"]}))
        .await;
    assert!(r.to_string().contains("moved"), "{r}");
    let admin_api = Api::new(&gw.url(), &admin);
    let (s, v) = admin_api.get("/api/admin/workspaces").await;
    assert_eq!(
        s, 200,
        "the data dir's admin token works on PostgreSQL: {v}"
    );
}

/// A first look at the cost of the PostgreSQL store on the hot path:
/// `read_file` of 1 KiB at 16 clients for 3 s, one gateway on SQLite then
/// one on PostgreSQL (the bench's figure, with release builds and a quiet
/// machine, is the one to trust). Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn read_file_throughput_sqlite_vs_postgres() {
    let Some(url) = execgate_testkit::pg::database("postgres::read_file_throughput") else {
        return;
    };
    let eg = execgate().quiet();
    let mut rates = Vec::new();
    for pg in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let (token, exe_token, args): (String, String, Vec<&str>) = if pg {
            eg.admin_url(&url, &["workspace", "create", "w1"]);
            (
                eg.admin_url(&url, &["token", "create", "--workspace", "w1"]),
                eg.admin_url(
                    &url,
                    &[
                        "executor",
                        "add",
                        "--workspace",
                        "w1",
                        "--name",
                        "laptop",
                        "--default",
                    ],
                ),
                vec!["--database-url", &url],
            )
        } else {
            eg.admin(&data_dir, &["workspace", "create", "w1"]);
            (
                eg.admin(&data_dir, &["token", "create", "--workspace", "w1"]),
                eg.admin(
                    &data_dir,
                    &[
                        "executor",
                        "add",
                        "--workspace",
                        "w1",
                        "--name",
                        "laptop",
                        "--default",
                    ],
                ),
                vec![],
            )
        };
        let gw = eg.serve(&data_dir, "127.0.0.1:0", &args);
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("k.txt"), vec![b'x'; 1024]).unwrap();
        let _executor = eg.executor(&gw.url(), &exe_token, &work, &[]);
        let api = Api::new(&gw.url(), &token);
        wait_for_env(&api, "laptop").await;
        let until = Instant::now() + Duration::from_secs(3);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let api = Api::new(&gw.url(), &token);
            tasks.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    api.call("laptop", "read_file", json!({"path": "k.txt"}))
                        .await;
                    n += 1;
                }
                n
            });
        }
        let total: u64 = tasks.join_all().await.into_iter().sum();
        let rate = total as f64 / 3.0;
        println!(
            "read_file 1 KiB, 16 clients, debug build, {}: {rate:.0}/s",
            if pg { "PostgreSQL" } else { "SQLite" }
        );
        rates.push(rate);
    }
    println!("PostgreSQL / SQLite: {:.2}", rates[1] / rates[0]);
}

/// Two gateways on one database, the executor linked to the first: the
/// admin token is the store's, the same on both; a token revoked through
/// the second's admin API ends a long-poll open on the first and is
/// refused there within 1 s; an executor removed through the second loses
/// its link to the first within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_gateway_takes_effect_on_another() {
    let Some(cluster) = execgate_testkit::pg::cluster("postgres::two_gateways") else {
        return;
    };
    let url = cluster.create_database();
    let eg = execgate();
    let a = Prepared::new_on(&eg, "w1", Some(&url));
    let exe_token = a.add_executor("laptop", true);
    let token = a.token.clone();
    let a = a.serve(&[]);
    let b_dir = tempfile::tempdir().unwrap();
    let b = eg.serve(b_dir.path(), "127.0.0.1:0", &["--database-url", &url]);
    let work = a.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let _executor = eg.executor(&a.url, &exe_token, &work, &[]);
    let api_a = Api::new(&a.url, &token);
    wait_for_env(&api_a, "laptop").await;

    let admin_token = cluster
        .psql_on(
            &url,
            "SELECT value FROM shared_secrets WHERE name = 'admin-token'",
        )
        .trim()
        .to_string();
    assert!(admin_token.starts_with("ega_"), "{admin_token:?}");
    let admin_b = Api::new(&b.url(), &admin_token);
    let (s, v) = Api::new(&a.url, &admin_token)
        .get("/api/admin/workspaces")
        .await;
    assert_eq!(s, 200, "{v}");

    // A second token, whose long-poll waits on gateway A.
    let (s, v) = admin_b
        .post("/api/admin/tokens", json!({"workspace": "w1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (id2, token2) = (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    );
    let api2 = Api::new(&a.url, &token2);
    let sid = api2
        .exec("laptop", json!({"command": ["sleep", "60"]}))
        .await;
    let poll = {
        let api2 = api2.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = api2
                .get(&format!(
                    "/api/connectors/processes/{sid}/output?since=0&wait_ms=30000"
                ))
                .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let revoked_at = Instant::now();
    let (s, v) = admin_b
        .post(&format!("/api/admin/tokens/{id2}/revoke"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let took = within("A refuses the token", Duration::from_secs(1), async || {
        api2.post("/api/connectors/envs/list", json!({})).await.0 == 401
    })
    .await;
    println!("a revocation through B refused on A after {took:?}");
    let ((status, v), _) = poll.await.unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
    println!(
        "the long-poll on A ended {:?} after the revocation through B",
        revoked_at.elapsed()
    );
    // The first token is untouched.
    assert_eq!(
        api_a.post("/api/connectors/envs/list", json!({})).await.0,
        200
    );

    // A removal through B ends what is open on A for that executor.
    let sid = api_a
        .exec("laptop", json!({"command": ["sleep", "60"]}))
        .await;
    let poll = {
        let api_a = api_a.clone();
        tokio::spawn(async move {
            api_a
                .get(&format!(
                    "/api/connectors/processes/{sid}/output?since=0&wait_ms=30000"
                ))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let removed_at = Instant::now();
    let (s, v) = admin_b
        .send(fresh_client().delete(format!(
            "{}/api/admin/executors/laptop?workspace=w1",
            b.url()
        )))
        .await;
    assert_eq!(s, 200, "{v}");
    let (status, v) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll on A ends within 5 s of the removal through B")
        .unwrap();
    assert!(matches!(status, 404 | 503), "{status} {v}");
    println!(
        "a removal through B ended the long-poll on A after {:?} ({status} {})",
        removed_at.elapsed(),
        v["error"]["code"]
    );
}

/// The store goes away under a gateway (its own cluster, stopped with
/// `pg_ctl stop -m fast`): calls with a token it verified recently
/// keep working on the link it holds, past the lookups' 1 s; a token it
/// never verified gets 503 `store_unavailable`, at once; when the server
/// is back, the gateway serves the new token without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_keeps_recent_tokens_and_recovers_by_itself() {
    if execgate_testkit::pg::cluster("postgres::store_outage").is_none() {
        return;
    }
    let own = execgate_testkit::pg::Cluster::start().expect("a cluster of the test's own");
    let url = own.create_database();
    let eg = execgate();
    let p = Prepared::new_on(&eg, "w1", Some(&url));
    let fresh_token = eg.admin_url(&url, &["token", "create", "--workspace", "w1"]);
    let g = p.serve(&[]);
    let (_executor, _work) = g.executor("laptop", &[]).await;
    let api = g.api();
    let shell = |api: Api, text: &'static str| async move {
        api.call_raw(
            "laptop",
            "shell",
            json!({"command": format!("echo {text}")}),
        )
        .await
    };
    let (s, v) = shell(api.clone(), "before").await;
    assert_eq!(s, 200, "{v}");

    own.stop_server();
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(3) {
        let (s, v) = shell(api.clone(), "during").await;
        assert_eq!(s, 200, "a recently verified token during the outage: {v}");
        assert_eq!(v["structuredContent"]["stdout"], "during\n", "{v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let fresh = Api::new(&g.url, &fresh_token);
    let asked = Instant::now();
    let (s, v) = fresh.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    // Not ready while the store is away: a load balancer sends new work
    // elsewhere.
    let readyz = format!("{}/readyz", g.url);
    let r = fresh_client().get(&readyz).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );

    own.start_server();
    let took = within(
        "the gateway to serve a new token again",
        Duration::from_secs(20),
        async || {
            let (s, v) = fresh.post("/api/connectors/envs/list", json!({})).await;
            if s != 200 {
                eprintln!("after the restart: {s} {v}");
            }
            s == 200
        },
    )
    .await;
    println!("the gateway served a new token {took:?} after the store came back");
    within(
        "/readyz to answer 200 again",
        Duration::from_secs(5),
        async || {
            fresh_client()
                .get(&readyz)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        },
    )
    .await;
    let (s, v) = shell(api.clone(), "after").await;
    assert_eq!(s, 200, "{v}");
}
