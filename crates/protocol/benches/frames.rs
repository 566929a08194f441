//! Criterion micro-benchmark of the JSON-RPC frames on the executor link:
//! every tool call encodes a request and decodes a response, and every chunk
//! of process output is one `process/output` notification that the executor
//! encodes and the gateway decodes (then decodes its params). These are pure
//! functions, so this is where per-frame allocation and re-encoding costs
//! show up without the noise of sockets and threads.
//!
//! `cargo bench -p execgate-protocol --bench frames`

use std::hint::black_box;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use execgate_protocol::exec::{OutputNotification, Stream};
use execgate_protocol::jsonrpc::{Id, Message};
use serde_json::json;

/// A `process/start` request as the shell tool sends it.
fn start_request() -> Message {
    Message::request(
        Id::Num(42),
        "process/start",
        json!({"processId": "sh-0123456789abcdef", "argv": ["true"], "cwd": "file:///tmp",
               "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"},
               "tty": false, "pipeStdin": false}),
    )
}

/// A `process/output` notification carrying `n` bytes of output.
fn output_notification(n: usize) -> Message {
    let chunk = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; n]);
    let params = OutputNotification {
        process_id: "sh-0123456789abcdef".into(),
        seq: 1234,
        stream: Stream::Stdout,
        chunk,
    };
    Message::notification("process/output", serde_json::to_value(params).unwrap())
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let req = start_request();
    let req_bytes = req.encode();
    g.throughput(Throughput::Bytes(req_bytes.len() as u64));
    g.bench_function("encode/process_start", |b| {
        b.iter(|| black_box(&req).encode())
    });
    g.bench_function("decode/process_start", |b| {
        b.iter(|| Message::decode(black_box(req_bytes.as_bytes())).unwrap())
    });

    // 8 KiB is the pipe read size on the executor, so the common chunk.
    for n in [64usize, 8 << 10, 64 << 10] {
        let note = output_notification(n);
        let bytes = note.encode();
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(format!("encode/process_output_{n}"), |b| {
            b.iter(|| black_box(&note).encode())
        });
        g.bench_function(format!("decode/process_output_{n}"), |b| {
            b.iter(|| {
                // What the gateway does per chunk: the frame, then the typed
                // params, then the base64 back to bytes.
                let Message::Notification { params, .. } =
                    Message::decode(black_box(bytes.as_bytes())).unwrap()
                else {
                    unreachable!()
                };
                let p: OutputNotification = serde_json::from_value(params).unwrap();
                base64::engine::general_purpose::STANDARD
                    .decode(p.chunk)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
