//! Rules that hold across replicas as on one gateway (#18's leftovers,
//! docs/replicas.md): one live link per executor token, what a store
//! outage does to replicas holding links (fencing past the lease), and a
//! SigV4-signed request replayed on another replica. Real replicas on
//! PostgreSQL (`replicas::Replicas`); skipped where PostgreSQL cannot
//! start, a failure with `EXECGATE_REQUIRE_POSTGRES=1`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::replicas::Replicas;

/// `pwd` of executor `env` through `api`, when the call is served.
async fn pwd(api: &Api, env: &str) -> Option<PathBuf> {
    let (s, v) = api
        .call_raw(env, "shell", json!({"command": ["pwd"]}))
        .await;
    let out = v["structuredContent"]["stdout"].as_str()?;
    (s == 200).then(|| PathBuf::from(out.trim()))
}

/// A second executor process with the token of an executor whose link
/// replica 0 holds dials replica 1. Replica 1 asks replica 0, which
/// confirms its link: the second one is refused with 409
/// `executor_already_connected`, as on one gateway, instead of taking the
/// lease (before, the two took it from each other forever, the epoch
/// moving at every re-dial). The lease stays replica 0's at epoch 1 for
/// several heartbeats while the second keeps retrying without exiting;
/// once the first is gone, the second links (epoch 2).
#[tokio::test]
async fn two_executors_with_one_token_on_two_replicas_do_not_swap_the_lease() {
    let Some(mut c) = Replicas::start(2, &[]) else {
        return;
    };
    let work1 = c.executor("x", 0).await.canonicalize().unwrap();
    let r0 = c.replica_id(0);
    assert_eq!(c.lease_of("x"), (r0.clone(), 1));

    let token = c.tokens["x"].clone();
    let second_dir = c.prepared.dir.path().join("second");
    let work2 = second_dir.join("work");
    std::fs::create_dir_all(&work2).unwrap();
    let work2 = work2.canonicalize().unwrap();
    let mut second = execgate().executor(&c.replicas[1].url(), &token, &work2, &[]);
    let second_log = second_dir.join("executor.log");
    eventually(30, "the second executor to be refused with 409", || async {
        std::fs::read_to_string(&second_log)
            .unwrap_or_default()
            .contains("executor_already_connected")
    })
    .await;

    // Several heartbeats (1 s each): the lease does not move, and calls
    // through either replica run on the first executor.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(6) {
        assert_eq!(c.lease_of("x"), (r0.clone(), 1), "the lease moved");
        for i in 0..2 {
            assert_eq!(pwd(&c.api(i), "x").await.as_deref(), Some(&*work1));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let refusals = std::fs::read_to_string(&second_log)
        .unwrap()
        .matches("executor_already_connected")
        .count();
    assert!(refusals >= 2, "the second executor stopped retrying");
    assert!(
        second.0.try_wait().unwrap().is_none(),
        "the second executor exited"
    );
    let log = std::fs::read_to_string(c.prepared.data_dir.join("gateway.log")).unwrap();
    assert!(
        log.contains("the first is connected to another replica"),
        "replica 1 did not say why it refused"
    );
    assert!(
        !log.contains("no longer holds the executor's lease"),
        "a link was fenced"
    );

    // The first goes away: its link closes, its lease is released, and the
    // second links through replica 1 at its next try.
    c.executors[0].kill();
    let r1 = c.replica_id(1);
    eventually(60, "the second executor to take over", || async {
        c.lease_of("x") == (r1.clone(), 2)
    })
    .await;
    eventually(10, "calls to reach the second executor", || async {
        pwd(&c.api(0), "x").await.as_deref() == Some(&*work2)
    })
    .await;
    second.kill();
}

/// `shell` `command` on `env` through `api`: the status and the answer.
async fn shell(api: &Api, env: &str, command: &str) -> (u16, Value) {
    api.call_raw(env, "shell", json!({ "command": command }))
        .await
}

/// The store goes away (a cluster of the test's own, `pg_ctl stop -m
/// fast`) under two replicas holding one executor each, with channels open
/// between them (docs/replicas.md, "Store outage"):
/// - within the lease, calls on held links (and through an open channel to
///   the holder) go on with recently verified tokens; a token never
///   verified gets 503 `store_unavailable` on every replica;
/// - past the lease, no replica serves the executors it could not renew:
///   calls are refused and run nothing on the executors, although the
///   token is still within its 60 s grace;
/// - when the server is back, the executors re-link (a new epoch) and both
///   replicas serve every call and the new token, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fences_replicas_past_their_lease_and_they_recover() {
    if execgate_testkit::pg::cluster("cluster_rules::store_outage").is_none() {
        return;
    }
    // The test stops this cluster; leaked so that the replicas can borrow
    // it for the test's life (its watchdog stops it when the test binary
    // ends).
    let own: &'static execgate_testkit::pg::Cluster = Box::leak(Box::new(
        execgate_testkit::pg::Cluster::start().expect("a cluster of the test's own"),
    ));
    let url = own.create_database();
    let prepared = Prepared::new_on(&execgate(), "w1", Some(&url));
    // The default lease (10 s).
    const LEASE: Duration = Duration::from_secs(10);
    let mut c = Replicas::start_on(prepared, Some(own), 2, &[]);
    let work_x = c.executor("x", 0).await;
    let work_y = c.executor("y", 1).await;
    let fresh_token = execgate().admin_url(&url, &["token", "create", "--workspace", "w1"]);
    assert_eq!((c.lease_of("x").1, c.lease_of("y").1), (1, 1));
    // Verified on both replicas; channels opened both ways.
    for i in 0..2 {
        for env in ["x", "y"] {
            let (s, v) = shell(&c.api(i), env, "echo before").await;
            assert_eq!(s, 200, "replica {i} {env}: {v}");
        }
    }

    let stopping = Instant::now();
    own.stop_server();
    println!("the store stopped in {:?}", stopping.elapsed());
    // Within the lease: the last renewal was at most a heartbeat (1 s)
    // before `stopping`, and a call may wait 3 s for the store.
    let within_lease = LEASE / 2;
    let mut slowest = Duration::ZERO;
    while stopping.elapsed() < within_lease {
        for i in 0..2 {
            for env in ["x", "y"] {
                let asked = Instant::now();
                let (s, v) = shell(&c.api(i), env, "echo during").await;
                slowest = slowest.max(asked.elapsed());
                assert_eq!(
                    (s, &v["structuredContent"]["stdout"]),
                    (200, &json!("during\n")),
                    "replica {i} {env} at {:?} into the outage: {v}",
                    stopping.elapsed()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A read waits at most 3 s for the store before the grace answers it
    // (it waited for the pool's 10 s, past a lease, before).
    println!("the slowest call within the lease took {slowest:?}");
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    for i in 0..2 {
        let fresh = Api::new(&c.replicas[i].url(), &fresh_token);
        let (s, v) = fresh.post("/api/connectors/envs/list", json!({})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (503, Some("store_unavailable")),
            "replica {i}: {v}"
        );
    }

    // Past the lease (and a heartbeat to notice): fenced.
    let past = LEASE + Duration::from_millis(1500);
    tokio::time::sleep(past.saturating_sub(stopping.elapsed())).await;
    for i in 0..2 {
        for (env, work) in [("x", &work_x), ("y", &work_y)] {
            let mark = format!("ran-after-the-lease-through-{i}");
            let asked = Instant::now();
            let (s, v) = shell(&c.api(i), env, &format!("touch {mark}")).await;
            println!(
                "past the lease, replica {i} {env}: {s} {} in {:?}",
                v["error"]["code"],
                asked.elapsed()
            );
            assert_ne!(s, 200, "replica {i} served {env} past its lease: {v}");
            assert!(!work.join(&mark).exists(), "replica {i} ran it on {env}");
        }
    }
    // Each replica closed the link it could not renew (at its heartbeat,
    // or at the first call that found the lease lapsed).
    let gateway_log = c.prepared.data_dir.join("gateway.log");
    let fenced = || {
        std::fs::read_to_string(&gateway_log)
            .unwrap()
            .lines()
            .filter(|l| {
                l.contains("executor disconnected") && l.contains("lease on the executor lapsed")
            })
            .count()
    };
    eventually(10, "both links to be closed", || async { fenced() >= 2 }).await;
    assert_eq!(fenced(), 2);
    let outage = stopping.elapsed();

    let restarting = Instant::now();
    own.start_server();
    println!(
        "the store was down for {outage:?} (restarted in {:?})",
        restarting.elapsed()
    );
    let fresh: Vec<Api> = (0..2)
        .map(|i| Api::new(&c.replicas[i].url(), &fresh_token))
        .collect();
    eventually(60, "both replicas to serve every call again", || async {
        for (i, fresh) in fresh.iter().enumerate() {
            if fresh.post("/api/connectors/envs/list", json!({})).await.0 != 200 {
                return false;
            }
            for env in ["x", "y"] {
                if shell(&c.api(i), env, "true").await.0 != 200 {
                    return false;
                }
            }
        }
        true
    })
    .await;
    println!(
        "every call served {:?} after the store came back",
        restarting.elapsed()
    );
    // Re-linked, with the next epoch, on the replicas they dial.
    for (name, i) in [("x", 0), ("y", 1)] {
        let (holder, epoch) = c.lease_of(name);
        assert_eq!(holder, c.replica_id(i), "{name}");
        assert!(epoch >= 2, "{name} did not re-link: epoch {epoch}");
    }
    for i in 0..2 {
        let r = fresh_client()
            .get(format!("{}/readyz", c.replicas[i].url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "replica {i} /readyz");
    }
    c.replicas.clear();
    own.stop_server();
}

/// The SigV4 headers of a request as codex signs it (`host` included; the
/// signer adds `x-amz-date` and `authorization`).
fn sigv4_headers(
    creds: &crate::codex::Credentials,
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let identity =
        aws_credential_types::Credentials::new(&creds.key_id, &creds.secret, None, None, "test")
            .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("execute-api")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut headers = vec![("host", host)];
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    let signable = SignableRequest::new(
        method,
        format!("http://{host}{path}"),
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    headers
        .iter()
        .copied()
        .chain(instructions.headers())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sends a signed request (its `headers`, `Host` included) to `replica`:
/// the status and the error message.
async fn send_signed(
    replica: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &'static [u8],
) -> (u16, String) {
    let mut req = fresh_client().request(method.parse().unwrap(), format!("{replica}{path}"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if method == "GET" {
        // The link's WebSocket upgrade.
        req = req
            .header("Connection", "upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    } else {
        req = req.body(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 101 {
        // The link opened: drop it (the handshake then fails on its own).
        return (status, String::new());
    }
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v["error"]["message"].as_str().unwrap_or("").into())
}

/// A SigV4-signed register and link upgrade (a stock codex's requests),
/// captured and replayed on another replica, are refused there as on the
/// replica that saw them (401 "already used"): the spent signatures are in
/// the store. Both replicas see one `Host`, as behind a load balancer, so
/// that the replayed signature is otherwise valid on either; a request
/// signed afresh is accepted on the other replica (the control).
#[tokio::test]
async fn a_sigv4_request_replayed_on_another_replica_is_refused() {
    let Some(c) = Replicas::start(2, &[]) else {
        return;
    };
    let store_args = [
        "--database-url",
        c.prepared.database_url.as_deref().unwrap(),
    ];
    let store: Vec<&std::ffi::OsStr> = store_args.iter().map(|s| s.as_ref()).collect();
    let creds = crate::codex::add_codex_executor_on(&store, "codex");
    let (a, b) = (c.replicas[0].url(), c.replicas[1].url());
    const HOST: &str = "lb.example:6060";
    const BODY: &[u8] = br#"{"transport":"direct_jsonrpc_v1"}"#;
    let exe = &creds.environment_id;
    let register = format!("/cloud/environment/{exe}/direct/register");
    let connect = format!("/cloud/environment/{exe}/direct/connect");

    for (method, path, body) in [("POST", &register, BODY), ("GET", &connect, &b""[..])] {
        let captured = sigv4_headers(&creds, method, HOST, path, body);
        let (s, why) = send_signed(&a, method, path, &captured, BODY).await;
        let accepted = if method == "GET" { 101 } else { 200 };
        assert_eq!(s, accepted, "{method} on A: {why}");
        for (replica, name) in [(&b, "B"), (&a, "A")] {
            let (s, why) = send_signed(replica, method, path, &captured, BODY).await;
            assert_eq!(s, 401, "{method} replayed on {name}: {why}");
            assert!(why.contains("already used"), "{method} on {name}: {why}");
        }
        if method == "POST" {
            // Signed afresh: B accepts it (same Host, same key).
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let fresh = sigv4_headers(&creds, method, HOST, path, body);
            let (s, why) = send_signed(&b, method, path, &fresh, BODY).await;
            assert_eq!(s, 200, "a fresh signature on B: {why}");
        }
    }
}
