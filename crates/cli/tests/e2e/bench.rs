//! Benchmark, not a test (ignored): output throughput of a process writing
//! 256 MiB, read through `/output` polling and through the SSE stream, as a
//! ratio against `cat` of the same bytes through a local pipe, measured in
//! the same run. Results go in BENCHMARKS.md, "Process output".
//!
//! ```sh
//! cargo test --release -p execgate --test e2e bench_process_output -- --ignored --nocapture
//! ```
//!
//! `EXECGATE_BENCH_MIB` changes the size (default 256). The executor spills
//! up to 320 MiB per process here, so a reader that falls behind the writer
//! still gets every byte (the run asserts lost_bytes 0).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;

use crate::harness::*;
use crate::sse::SseReader;

fn mib() -> u64 {
    std::env::var("EXECGATE_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

/// `head -c N /dev/zero | cat`, read by us through a pipe: the local floor.
fn local_pipe(bytes: u64) -> f64 {
    let started = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", &format!("head -c {bytes} /dev/zero | cat")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    child.wait().unwrap();
    assert_eq!(got, bytes);
    started.elapsed().as_secs_f64()
}

async fn via_polling(w: &World, bytes: u64) -> f64 {
    let started = Instant::now();
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["head", "-c", bytes.to_string(), "/dev/zero"], "pipe_stdin": false}),
        )
        .await;
    let mut since = 0;
    let mut got = 0u64;
    loop {
        let (s, v) = w
            .api
            .get(&format!(
                "/api/connectors/processes/{sid}/output?since={since}&wait_ms=10000"
            ))
            .await;
        assert_eq!(s, 200);
        assert_eq!(v["lost_bytes"], 0);
        for c in v["chunks"].as_array().unwrap() {
            got += b64d(c["data_b64"].as_str().unwrap()).len() as u64;
        }
        since = v["next_since"].as_u64().unwrap();
        if v["session_alive"] == false {
            break;
        }
    }
    assert_eq!(got, bytes);
    started.elapsed().as_secs_f64()
}

async fn via_sse(w: &World, bytes: u64) -> f64 {
    let started = Instant::now();
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["head", "-c", bytes.to_string(), "/dev/zero"], "pipe_stdin": false}),
        )
        .await;
    let mut reader = SseReader::open(&w.api, &sid, None, None).await;
    let mut got = 0u64;
    while let Some(e) = reader.next().await {
        match e.event.as_str() {
            "output" => got += b64d(e.data["data_b64"].as_str().unwrap()).len() as u64,
            "exit" => break,
            other => panic!("unexpected {other} event: {:?}", e.data),
        }
    }
    assert_eq!(got, bytes);
    started.elapsed().as_secs_f64()
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture, in release mode"]
async fn bench_process_output() {
    let bytes = mib() << 20;
    let w = World::start(&["--spill-bytes", &(320u64 << 20).to_string()]).await;
    let rate = |secs: f64| (bytes as f64 / (1 << 20) as f64) / secs;
    let pipe = local_pipe(bytes);
    let poll = via_polling(&w, bytes).await;
    let sse = via_sse(&w, bytes).await;
    println!("process output, {} MiB:", mib());
    println!(
        "  local pipe (cat)   {:8.1} MiB/s  ({pipe:.2} s)",
        rate(pipe)
    );
    println!(
        "  /output polling    {:8.1} MiB/s  ({poll:.2} s)  {:.3} of cat",
        rate(poll),
        pipe / poll
    );
    println!(
        "  SSE stream         {:8.1} MiB/s  ({sse:.2} s)  {:.3} of cat",
        rate(sse),
        pipe / sse
    );
}
