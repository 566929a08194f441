//! Nothing leaks, nothing is left behind: descriptors of finished processes,
//! processes of a SIGKILLed executor, staged files of a crashed transfer.

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Lowers the executor's descriptor limit, as `ulimit -n` would have.
fn limit_descriptors(pid: u32, limit: u64) {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit with a valid new limit and no old-limit pointer.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Before the fix the executor kept each finished process's stdin pipe (or
/// pty master and writer) for the whole retention: 11 → 61 descriptors after
/// 50 sessions, and under `ulimit -n 256` the 240th `exec_command` failed
/// with "Too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_processes_give_back_their_descriptors() {
    let w = World::start(&[]).await;
    let pid = w.executors[0].0.id();
    limit_descriptors(pid, 256);
    // One session first, so that whatever the first one opens for good
    // (the runtime's blocking threads, the spill directory) is counted.
    let sid = w.api.exec("laptop", json!({"command": ["true"]})).await;
    w.api.read_until(&sid, 0, |_| false).await;
    let before = descriptors(pid);

    for i in 0..500 {
        // Every fifth under a terminal, the rest with a stdin pipe.
        let args = if i % 5 == 0 {
            json!({"command": ["true"], "tty": true})
        } else {
            json!({"command": ["true"]})
        };
        let r = w.api.call("laptop", "exec_command", args).await;
        assert_eq!(r["isError"], false, "session {i}: {r}");
    }
    eventually(60, "the descriptors to be given back", || async {
        descriptors(pid) <= before + 4
    })
    .await;
    eprintln!(
        "descriptors: {before} before, {} after 500 sessions",
        descriptors(pid)
    );
}

/// The pid of the shell and of its background `sleep`, which the command
/// prints as `<sleep> <shell>`.
async fn pids_of(w: &World, sid: &str) -> (u32, u32) {
    let (out, _) = w
        .api
        .read_until(sid, 0, |d| {
            String::from_utf8_lossy(d)
                .split_whitespace()
                .filter(|t| t.parse::<u32>().is_ok())
                .count()
                >= 2
        })
        .await;
    let text = String::from_utf8_lossy(&out);
    let pids: Vec<u32> = text
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    (pids[0], pids[1])
}

/// Before the fix the processes of a SIGKILLed executor kept running,
/// unreachable; now its reaper kills their whole groups at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_executor_takes_its_processes_with_it() {
    let mut w = World::start(&[]).await;
    let script = "sleep 1000 & echo $! $$; wait";
    let piped = w
        .api
        .exec("laptop", json!({"command": ["sh", "-c", script]}))
        .await;
    let tty = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", script], "tty": true}),
        )
        .await;
    let mut pids = Vec::new();
    for sid in [&piped, &tty] {
        let (sleep, shell) = pids_of(&w, sid).await;
        pids.extend([sleep, shell]);
    }
    for &pid in &pids {
        assert!(alive(pid), "{pid} runs");
    }
    w.executors[0].kill();
    eventually(5, "the executor's processes to die with it", || async {
        pids.iter().all(|&pid| !alive(pid))
    })
    .await;
}

/// A gateway killed in the middle of a `PUT /files` left the hidden staged
/// file on the executor for ever; now the executor removes it once nobody
/// wrote it for `--stale-staged-secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_by_a_gateway_crash_leaves_nothing_behind() {
    let mut w = World::start(&["--stale-staged-secs", "2"]).await;
    let dir = w.workdir.join("uploads");
    std::fs::create_dir_all(&dir).unwrap();
    // An upload that announces 64 MiB, sends 1 MiB, and stalls.
    let addr = w.gateway.addr;
    let token = w.api.token.clone();
    let upload = std::thread::spawn(move || {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "PUT /api/connectors/envs/laptop/files?path=uploads/big.bin HTTP/1.1\r\n\
             Host: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            64 << 20
        );
        conn.write_all(head.as_bytes()).unwrap();
        let _ = conn.write_all(&vec![b'x'; 1 << 20]);
        // Held open until the gateway dies.
        std::thread::sleep(Duration::from_secs(30));
    });
    let staged = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".execgate-part-"))
            .collect::<Vec<_>>()
    };
    eventually(20, "the staged file to appear", || async {
        !staged().is_empty()
    })
    .await;
    w.gateway.proc.kill();
    // Stale 2 s after its last write; swept every second.
    eventually(20, "the staged file to be swept", || async {
        staged().is_empty()
    })
    .await;
    assert!(!dir.join("big.bin").exists());
    drop(upload);
}
