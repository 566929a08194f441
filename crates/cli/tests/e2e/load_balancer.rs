//! A stock codex behind a real load balancer (#18): HAProxy (Debian's
//! package; `execgate_testkit::haproxy`, the configuration of
//! docs/replicas.md with faster health checks) on 127.0.0.1 in front of two
//! replicas on one PostgreSQL database. codex registers and links through
//! HAProxy; each replica in turn is restarted (SIGTERM, drained, started
//! again on its address): codex re-links through HAProxy to the other one
//! and never exits, tool calls through HAProxy keep working, and
//! registrations sent through HAProxy while a replica drains are all
//! answered 200 (HAProxy resends the ones the draining replica refuses
//! with 503 to the healthy one).
//!
//! Gated three ways: codex (`EXECGATE_CODEX_TESTS=1`, as in codex.rs),
//! PostgreSQL (skipped when it cannot start, a failure with
//! `EXECGATE_REQUIRE_POSTGRES=1`) and HAProxy (skipped when missing, a
//! failure with `EXECGATE_REQUIRE_HAPROXY=1`; `.ci/run` sets both).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use execgate_testkit::haproxy::{Checks, Haproxy};
use serde_json::{json, Value};

use crate::harness::*;

/// Health checks every 250 ms; three failures to take a replica out, so
/// that the registrations sent right after a SIGTERM surely meet the
/// draining replica before HAProxy has noticed.
const CHECKS: Checks = Checks {
    inter_ms: 250,
    fall: 3,
    rise: 2,
    maxconn: 1000,
};

/// Two replicas on fixed addresses (so that one can come back where
/// HAProxy expects it), sharing a PostgreSQL database.
struct Pair {
    prepared: Prepared,
    database_url: String,
    secret_file: PathBuf,
    addrs: Vec<SocketAddr>,
    replicas: Vec<Option<GatewayProc>>,
}

impl Pair {
    fn start_replica(&self, i: usize) -> GatewayProc {
        let listen = self.addrs[i].to_string();
        let advertise = format!("http://{listen}");
        execgate().serve(
            &self.prepared.data_dir,
            &listen,
            &[
                "--database-url",
                &self.database_url,
                "--advertise-url",
                &advertise,
                "--cluster-secret-file",
                self.secret_file.to_str().unwrap(),
                "--drain-timeout",
                "20s",
            ],
        )
    }

    fn exe_id(&self, name: &str) -> String {
        let out = execgate().admin_url_stdout(&self.database_url, &["executor", "list"]);
        out.lines()
            .find(|l| l.split_whitespace().nth(2) == Some(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no executor {name}: {out}"))
            .to_string()
    }

    /// The epoch of `name`'s lease (`admin replicas --leases`).
    fn epoch(&self, name: &str) -> i64 {
        let exe_id = self.exe_id(name);
        let out = execgate().admin_url_stdout(&self.database_url, &["replicas", "--leases"]);
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&exe_id.as_str()))
            .and_then(|cols| cols.get(2)?.parse().ok())
            .unwrap_or_else(|| panic!("no lease of {name}: {out}"))
    }

    fn direct(&self, i: usize) -> Api {
        Api::new(&format!("http://{}", self.addrs[i]), &self.prepared.token)
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `shell echo word` on codex through `api`: its stdout, or why not.
async fn echo(api: &Api, word: &str) -> Result<String, String> {
    let (status, v) = api
        .call_raw("codex", "shell", json!({"command": ["echo", word]}))
        .await;
    if status != 200 || v["isError"] != false {
        return Err(format!("{status} {v}"));
    }
    Ok(v["structuredContent"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// One registration through the load balancer: its status and body.
async fn register(client: &reqwest::Client, lb: &str, exe_id: &str, token: &str) -> (u16, String) {
    match client
        .post(format!("{lb}/cloud/environment/{exe_id}/direct/register"))
        .bearer_auth(token)
        .json(&json!({"transport": "direct_jsonrpc_v1"}))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// HAProxy's log lines of registrations it resent to another replica (the
/// `retries` field of the log line is `+N` after a redispatch).
fn redispatched_registrations(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("/direct/register"))
        .filter(|l| {
            l.split_whitespace().any(|f| {
                let parts: Vec<&str> = f.split('/').collect();
                parts.len() == 5 && parts[4].starts_with('+')
            })
        })
        .count()
}

#[tokio::test]
async fn a_stock_codex_behind_haproxy_survives_restarting_each_replica() {
    const TEST: &str = "a_stock_codex_behind_haproxy_survives_restarting_each_replica";
    let Some(codex_bin) = crate::codex::codex_bin() else {
        return;
    };
    let Some(haproxy_bin) = execgate_testkit::haproxy::haproxy(TEST) else {
        return;
    };
    let Some(cluster) = execgate_testkit::pg::cluster(TEST) else {
        return;
    };
    let database_url = cluster.create_database();
    let prepared = Prepared::new_on(&execgate(), "w1", Some(&database_url));
    let secret_file = prepared.dir.path().join("cluster-secret");
    std::fs::write(&secret_file, "a-shared-cluster-secret-of-32-bytes\n").unwrap();
    let mut pair = Pair {
        prepared,
        database_url,
        secret_file,
        addrs: vec![free_addr(), free_addr()],
        replicas: Vec::new(),
    };
    for i in 0..2 {
        let g = pair.start_replica(i);
        pair.replicas.push(Some(g));
    }
    let lb = Haproxy::start(&haproxy_bin, &pair.addrs, CHECKS)
        .unwrap_or_else(|e| panic!("HAProxy does not start: {e}"));
    let up = |lb: &Haproxy, name: &str| lb.status(name).is_some_and(|s| s == "UP");
    eventually(10, "HAProxy to see both replicas up", || async {
        up(&lb, "r1") && up(&lb, "r2")
    })
    .await;

    // A stock codex whose only URL is HAProxy's.
    let store = ["--database-url".as_ref(), pair.database_url.as_ref()];
    let creds = crate::codex::add_codex_executor_on(&store, "codex");
    let codex_log = pair.prepared.dir.path().join("codex-lb.log");
    let mut codex = crate::codex::start_codex(
        &codex_bin,
        &lb.url(),
        &creds,
        pair.prepared.dir.path(),
        "lb",
    );
    let api = Api::new(&lb.url(), &pair.prepared.token);
    wait_for_env(&api, "codex").await;
    assert_eq!(echo(&api, "first").await.as_deref(), Ok("first\n"));

    // An executor that only registers (it never links), to probe the
    // registration route through HAProxy while a replica drains.
    let probe_token = pair.prepared.add_executor("probe", false);
    let probe_id = pair.exe_id("probe");
    let client = fresh_client();

    let codex_alive = |codex: &mut Proc, when: &str| {
        if let Some(status) = codex.0.try_wait().unwrap() {
            panic!(
                "codex exited ({status}) {when}: {}\nHAProxy log:\n{}",
                std::fs::read_to_string(&codex_log).unwrap_or_default(),
                lb.log()
            );
        }
    };

    let mut registrations = 0;
    let mut late_codex: Option<Proc> = None;
    for i in 0..2 {
        let name = format!("r{}", i + 1);
        // The first time, a call in flight on replica i (directly, not
        // through HAProxy) keeps it draining for a while after the signal,
        // still in HAProxy's rotation at first: requests meet its 503. The
        // second time nothing is in flight: it exits at once, while HAProxy
        // still counts it up, so requests meet a refused connection.
        let started = pair.prepared.dir.path().join("codex-work/slow-started");
        let slow = (i == 0).then(|| {
            let direct = pair.direct(i);
            tokio::spawn(async move {
                let script = "touch slow-started; sleep 2";
                direct
                    .call_raw("codex", "shell", json!({"command": ["sh", "-c", script]}))
                    .await
            })
        });
        if slow.is_some() {
            eventually(20, "the slow call to start", || async { started.exists() }).await;
        }
        let pid = pair.replicas[i].as_ref().unwrap().pid();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        // A second stock codex starts now, registering through HAProxy
        // while replica i drains (the case where codex used to get a 503
        // and exit).
        let late = (i == 0).then(|| {
            let creds = crate::codex::add_codex_executor_on(&store, "late");
            crate::codex::start_codex(
                &codex_bin,
                &lb.url(),
                &creds,
                pair.prepared.dir.path(),
                "late",
            )
        });
        if let Some(late) = late {
            late_codex = Some(late);
        }
        // Registrations through HAProxy during the drain, a few at a time:
        // every one is answered 200, none with the draining replica's 503.
        let until = Instant::now() + Duration::from_millis(1500);
        let lb_url = lb.url();
        while Instant::now() < until {
            let batch: Vec<_> = (0..4)
                .map(|_| register(&client, &lb_url, &probe_id, &probe_token))
                .collect();
            for (status, body) in futures_util::future::join_all(batch).await {
                registrations += 1;
                assert_eq!(
                    status,
                    200,
                    "a registration through HAProxy while {name} drains: {body}\nHAProxy log:\n{}",
                    lb.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // The drain waited for the call in flight.
        if let Some(slow) = slow {
            let (status, v) = slow.await.unwrap();
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["isError"], false, "{v}");
        }
        let mut old = pair.replicas[i].take().unwrap();
        let exit = old.proc.exits_within(25, "the replica to drain").await;
        assert!(exit.success(), "{exit:?}");
        codex_alive(&mut codex, &format!("while {name} was down"));
        // codex re-links to the other replica (if it was on this one), and
        // calls through HAProxy work with one replica.
        eventually(30, "a call through HAProxy with one replica", || async {
            echo(&api, "one-replica").await.is_ok()
        })
        .await;

        // The replica comes back where HAProxy expects it.
        let g = pair.start_replica(i);
        pair.replicas[i] = Some(g);
        eventually(15, "HAProxy to see the replica back", || async {
            up(&lb, &name)
        })
        .await;
        codex_alive(&mut codex, &format!("after {name} came back"));
        eventually(30, "a call through HAProxy after the restart", || async {
            echo(&api, "after").await.is_ok()
        })
        .await;
        // Through the restarted replica directly too (forwarded, or its own
        // link).
        let again = pair.direct(i);
        eventually(15, "a call through the restarted replica", || async {
            echo(&again, "direct")
                .await
                .is_ok_and(|out| out == "direct\n")
        })
        .await;
    }
    // codex held a link the whole time, across two restarts, without exiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    codex_alive(&mut codex, "at the end");
    assert_eq!(echo(&api, "last").await.as_deref(), Ok("last\n"));
    // Its link moved at least once (the replica that held it was
    // restarted): a new lease epoch each time.
    // A file of 4 MiB up and down through HAProxy (streamed both ways).
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let files = format!("{}/api/connectors/envs/codex/files?path=lb.bin", api.url);
    let put = api
        .http
        .put(&files)
        .bearer_auth(&api.token)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{:?}", put.text().await);
    let got = api
        .http
        .get(&files)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let got = got.bytes().await.unwrap();
    assert!(
        got[..] == data[..],
        "the file came back different ({} bytes)",
        got.len()
    );
    let epoch = pair.epoch("codex");
    assert!(epoch >= 2, "codex's lease is at epoch {epoch}");
    // The codex that registered during the first drain serves calls too.
    let mut late = late_codex.expect("the late codex");
    if let Some(status) = late.0.try_wait().unwrap() {
        panic!(
            "the codex that registered during a drain exited ({status}): {}",
            std::fs::read_to_string(pair.prepared.dir.path().join("codex-late.log"))
                .unwrap_or_default()
        );
    }
    eventually(30, "the late codex to serve a call", || async {
        let (status, v) = api
            .call_raw("late", "shell", json!({"command": ["echo", "late"]}))
            .await;
        status == 200 && v["structuredContent"]["stdout"] == "late\n"
    })
    .await;
    let log = lb.log();
    let resent = redispatched_registrations(&log);
    eprintln!(
        "registrations through HAProxy during the drains: {registrations}, \
         of which resent to the healthy replica: {resent}"
    );
    // The test met the case it is about: some registrations reached a
    // draining replica, which refused them, and HAProxy resent them.
    assert!(
        resent >= 1,
        "no registration met a draining replica:\n{log}"
    );
    let envs: Value = api.envs().await;
    assert!(
        envs["envs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "codex"),
        "{envs}"
    );
}
