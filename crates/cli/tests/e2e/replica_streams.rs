//! Output read through a replica that does not hold the executor (the peer
//! channel, with the owner reading ahead on it: `link::relay_ahead`) is
//! the owner's, byte for byte: non-UTF-8 output of which the executor lost
//! the first part (forced by small retain and spill limits), by SSE and by
//! the binary stream, whole and resumed mid-way.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::replicas::Replicas;
use crate::sse::SseReader;

/// What a stream said: (seq, output bytes) per output event or frame, the
/// `lost` event's data, and the exit code.
#[derive(Debug, Default, PartialEq)]
struct Read {
    output: Vec<(u64, Vec<u8>)>,
    lost: Vec<Value>,
    exit: Option<Value>,
}

impl Read {
    fn bytes(&self) -> Vec<u8> {
        self.output.iter().flat_map(|(_, b)| b.clone()).collect()
    }
}

async fn sse(api: &Api, sid: &str, since: Option<u64>) -> Read {
    let mut r = SseReader::open(api, sid, None, since).await;
    let mut read = Read::default();
    while let Some(e) = r.next_within(Duration::from_secs(60)).await {
        match e.event.as_str() {
            "output" => {
                assert_eq!(e.data["stream"], "stdout");
                let bytes = b64d(e.data["data_b64"].as_str().unwrap());
                read.output.push((e.id.unwrap(), bytes));
            }
            "lost" => read.lost.push(e.data),
            "exit" => {
                read.exit = Some(e.data);
                break;
            }
            other => panic!("unexpected {other} event: {}", e.data),
        }
    }
    read
}

/// The binary form (`Accept: application/octet-stream`), parsed by hand:
/// `[u8 type][u64 BE seq][u32 BE length][payload]`.
async fn binary(api: &Api, sid: &str) -> Read {
    let mut resp = api
        .http
        .get(format!("{}/api/connectors/processes/{sid}/stream", api.url))
        .bearer_auth(&api.token)
        .header("Accept", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let (mut buf, mut read) = (Vec::new(), Read::default());
    loop {
        while buf.len() >= 13 {
            let len = u32::from_be_bytes(buf[9..13].try_into().unwrap()) as usize;
            if buf.len() < 13 + len {
                break;
            }
            let (kind, seq) = (buf[0], u64::from_be_bytes(buf[1..9].try_into().unwrap()));
            let payload = buf[13..13 + len].to_vec();
            buf.drain(..13 + len);
            match kind {
                1 => read.output.push((seq, payload)),
                4 => read.lost.push(serde_json::from_slice(&payload).unwrap()),
                5 => {
                    read.exit = Some(serde_json::from_slice(&payload).unwrap());
                    return read;
                }
                k => panic!("unexpected frame type {k}: {payload:?}"),
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
            .await
            .expect("a frame within 60 s")
            .expect("the stream reads");
        match chunk {
            Some(c) => buf.extend_from_slice(&c),
            None => panic!("the stream ended before its exit frame"),
        }
    }
}

/// Executor `a` on replica 0 keeps 1 MiB in memory and spills 12 MiB per
/// process: of 24 MiB of noise, the first ~11 MiB are lost. Read through
/// replica 1 (which forwards every `process/read`, ~4 MiB each, to replica
/// 0) and on replica 0, by SSE and binary, the streams are the same: the
/// same `lost` report, the same bytes (the tail of the file after the lost
/// ones), the same seqs and exit; a stream resumed mid-way through replica
/// 1 gets exactly what follows.
#[tokio::test]
async fn output_through_a_non_owner_is_the_owners_byte_for_byte() {
    let Some(mut c) = Replicas::start(2, &[]) else {
        return;
    };
    let limits = ["--retain-bytes", "1048576", "--spill-bytes", "12582912"];
    let work = c.executor_with("a", 0, &limits).await;
    wait_for_env(&c.api(1), "a").await;
    let data = noise_from(24 << 20, 0x2545f4914f6cdd1d);
    std::fs::write(work.join("big.bin"), &data).unwrap();
    let sid = c
        .api(1)
        .exec(
            "a",
            json!({"command": ["cat", "big.bin"], "pipe_stdin": false}),
        )
        .await;
    // Done before any stream opens: the loss is what it is.
    let (_, v) = c.api(0).read_until(&sid, 999_999, |_| false).await;
    assert_eq!(v["exit_code"], 0, "{v}");

    let forwarded = sse(&c.api(1), &sid, None).await;
    assert_eq!(forwarded.lost.len(), 1, "{:?}", forwarded.lost);
    let lost = forwarded.lost[0]["bytes"].as_u64().unwrap() as usize;
    assert!(lost > 8 << 20 && lost < 16 << 20, "{:?}", forwarded.lost);
    let got = forwarded.bytes();
    assert_eq!(got.len(), data.len() - lost);
    assert!(got == data[lost..], "the bytes through replica 1 differ");
    assert_eq!(forwarded.exit, Some(json!({"exit_code": 0})));

    let owner = sse(&c.api(0), &sid, None).await;
    assert!(
        owner == forwarded,
        "SSE on the owner and through replica 1 differ"
    );
    for i in [1, 0] {
        let b = binary(&c.api(i), &sid).await;
        assert_eq!(b.lost, forwarded.lost, "binary through replica {i}");
        assert_eq!(b.exit, forwarded.exit);
        assert!(b.bytes() == got, "binary bytes through replica {i} differ");
    }

    // Resumed mid-way through replica 1 (a read from another seq than the
    // one the owner read ahead for, if any): exactly what follows.
    let (mid, _) = forwarded.output[forwarded.output.len() / 2];
    let rest = sse(&c.api(1), &sid, Some(mid)).await;
    assert!(rest.lost.is_empty(), "{:?}", rest.lost);
    let want: Vec<(u64, Vec<u8>)> = forwarded
        .output
        .iter()
        .filter(|(seq, _)| *seq > mid)
        .cloned()
        .collect();
    assert!(rest.output == want, "the resumed stream differs");
    assert_eq!(rest.exit, forwarded.exit);
}
