//! Criterion micro-benchmark of the JSON-RPC frames on the executor link:
//! every tool call encodes a request and decodes a response, and every chunk
//! of process output is one `process/output` notification that the executor
//! encodes and the gateway decodes (then decodes its params), as base64 text
//! (codex's way) or in a binary frame (between execgate peers). These are pure
//! functions, so this is where per-frame allocation and re-encoding costs
//! show up without the noise of sockets and threads.
//!
//! `cargo bench -p execgate-protocol --bench frames`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use execgate_protocol::blob::{self, Blob};
use execgate_protocol::exec::{OutputNotification, Stream};
use execgate_protocol::jsonrpc::{Encoded, Envelope, Id, Message};
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

/// What the executor does per chunk of output: the `process/output`
/// notification for `n` bytes, serialised for a peer that reads binary
/// frames or for one that reads only text (base64).
fn encode_output(data: &Bytes, binary: bool) -> Encoded {
    let params = OutputNotification {
        process_id: "sh-0123456789abcdef".into(),
        seq: 1234,
        stream: Stream::Stdout,
        chunk: Blob::Raw(data.clone()),
    };
    let (params, payload) = blob::to_value(&params, binary).unwrap();
    Envelope {
        message: Message::notification("process/output", params),
        payload,
    }
    .encode()
}

/// What the gateway does per chunk: the frame, then the typed params, then
/// the bytes.
fn decode_output(frame: &Encoded) -> Bytes {
    let envelope = match frame {
        Encoded::Text(text) => Envelope::text(Message::decode(text.as_bytes()).unwrap()),
        Encoded::Binary(data) => Envelope::decode_binary(Bytes::from(data.clone())).unwrap(),
    };
    let Message::Notification { params, .. } = envelope.message else {
        unreachable!()
    };
    let p: OutputNotification = blob::from_value(params, &envelope.payload).unwrap();
    p.chunk.to_bytes().unwrap()
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

    // 64 KiB is the pipe read size on the executor, so the common chunk of
    // bulk output. (The binary decode includes copying the frame into
    // `Bytes`, which the socket's reader does once in real life.)
    for n in [64usize, 8 << 10, 64 << 10] {
        let data = Bytes::from(vec![b'x'; n]);
        g.throughput(Throughput::Bytes(n as u64));
        for (kind, binary) in [("text", false), ("binary", true)] {
            let frame = encode_output(&data, binary);
            g.bench_function(format!("encode/process_output_{n}/{kind}"), |b| {
                b.iter(|| encode_output(black_box(&data), binary))
            });
            g.bench_function(format!("decode/process_output_{n}/{kind}"), |b| {
                b.iter(|| decode_output(black_box(&frame)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
