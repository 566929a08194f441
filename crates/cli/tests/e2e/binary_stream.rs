//! The binary form of `GET /processes/{sid}/stream` (`Accept:
//! application/octet-stream`), end to end: the bytes the process wrote,
//! raw and exact, resumable by seq, loss reported as the SSE stream reports
//! it, and the negotiation itself. The frames are parsed here by hand (not
//! with the protocol crate's decoder), so these tests check the wire.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::sse::{SseEvent, SseReader};

const BIN: &str = "application/octet-stream";

/// One frame as it came: type, seq, payload.
#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    seq: u64,
    payload: Vec<u8>,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("a control frame's payload is JSON")
    }
}

async fn open(
    api: &Api,
    sid: &str,
    accept: &str,
    query: &str,
    last_id: Option<&str>,
) -> reqwest::Response {
    let mut req = stream_request(api, sid, query).header("Accept", accept);
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.expect("the request is answered")
}

/// Reads frames until `exit` or `error` (or until `stop_after` output
/// bytes, at a frame boundary); asserts the framing on the way.
async fn frames(resp: &mut reqwest::Response, stop_after: Option<usize>) -> Vec<Frame> {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], BIN);
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut bytes = 0;
    loop {
        while buf.len() >= 13 {
            let len = u32::from_be_bytes(buf[9..13].try_into().unwrap()) as usize;
            if buf.len() < 13 + len {
                break;
            }
            let f = Frame {
                kind: buf[0],
                seq: u64::from_be_bytes(buf[1..9].try_into().unwrap()),
                payload: buf[13..13 + len].to_vec(),
            };
            buf.drain(..13 + len);
            if (1..=3).contains(&f.kind) {
                bytes += f.payload.len();
            }
            let end = f.kind == 5 || f.kind == 6;
            out.push(f);
            if end || stop_after.is_some_and(|n| bytes >= n) {
                return out;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
            .await
            .expect("a frame within 30 s")
            .expect("the stream reads");
        match chunk {
            Some(c) => buf.extend_from_slice(&c),
            None => {
                assert!(buf.is_empty(), "the stream ended inside a frame");
                return out;
            }
        }
    }
}

/// Output by stream name, from frames.
fn by_stream(frames: &[Frame]) -> HashMap<&'static str, Vec<u8>> {
    let mut m: HashMap<&str, Vec<u8>> = HashMap::new();
    for f in frames {
        let name = match f.kind {
            1 => "stdout",
            2 => "stderr",
            3 => "pty",
            _ => continue,
        };
        m.entry(name).or_default().extend_from_slice(&f.payload);
    }
    m
}

/// Output by stream name, from SSE events.
fn sse_by_stream(events: &[SseEvent]) -> HashMap<String, Vec<u8>> {
    let mut m: HashMap<String, Vec<u8>> = HashMap::new();
    for e in events.iter().filter(|e| e.event == "output") {
        m.entry(e.data["stream"].as_str().unwrap().to_string())
            .or_default()
            .extend(b64d(e.data["data_b64"].as_str().unwrap()));
    }
    m
}

async fn sse_all(api: &Api, sid: &str) -> Vec<SseEvent> {
    let mut r = SseReader::open(api, sid, None, None).await;
    let mut events = Vec::new();
    while let Some(e) = r.next().await {
        let end = e.event == "exit" || e.event == "error";
        events.push(e);
        if end {
            break;
        }
    }
    events
}

fn assert_seqs_increase(frames: &[Frame]) {
    let seqs: Vec<u64> = frames
        .iter()
        .filter(|f| f.kind != 0)
        .map(|f| f.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "seqs not increasing: {seqs:?}"
    );
}

#[tokio::test]
async fn binary_stream_is_exactly_what_the_process_wrote() {
    let w = World::start(&[]).await;
    let data = noise(24 << 20);
    std::fs::write(w.workdir.join("big.bin"), &data).unwrap();
    // 24 MiB of binary on stdout, then stdout and stderr taking turns.
    let script = "cat big.bin; i=0; while [ $i -lt 300 ]; do printf 'o%d\\n' $i; \
                  printf 'e%d\\377\\n' $i >&2; i=$((i+1)); done; exit 3";
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", script], "pipe_stdin": false}),
        )
        .await;
    let mut resp = open(&w.api, &sid, BIN, "", None).await;
    assert_eq!(resp.headers()["vary"], "accept");
    let got = frames(&mut resp, None).await;
    assert!(
        resp.chunk().await.unwrap().is_none(),
        "the stream ends after exit"
    );
    assert_seqs_increase(&got);
    let streams = by_stream(&got);
    let mut want_out = data.clone();
    let mut want_err = Vec::new();
    for i in 0..300 {
        want_out.extend(format!("o{i}\n").bytes());
        want_err.extend(format!("e{i}").bytes());
        want_err.extend(b"\xff\n");
    }
    assert!(
        streams["stdout"] == want_out,
        "stdout differs ({} bytes)",
        streams["stdout"].len()
    );
    assert_eq!(streams["stderr"], want_err);
    assert!(got.iter().all(|f| f.kind != 4), "nothing lost");
    let exit = got.last().unwrap();
    assert_eq!(exit.kind, 5);
    assert_eq!(exit.json(), json!({"exit_code": 3}));

    // The same session through SSE: the same bytes per stream, the same exit.
    let events = sse_all(&w.api, &sid).await;
    let sse = sse_by_stream(&events);
    assert!(sse["stdout"] == want_out);
    assert_eq!(sse["stderr"], want_err);
    let sse_exit = events.last().unwrap();
    assert_eq!(sse_exit.event, "exit");
    assert_eq!(
        sse_exit.id,
        Some(exit.seq),
        "the exit frame's seq is the SSE exit's id"
    );
    assert_eq!(sse_exit.data, exit.json());
    // Big frames: coalesced, not one per 64 KiB chunk.
    let out_frames = got.iter().filter(|f| f.kind == 1).count();
    assert!(
        out_frames < 24 * 16,
        "{out_frames} stdout frames for 24 MiB"
    );
    // A frame's seq is the last seq it carries: the SSE events up to that
    // id hold exactly the bytes of the frames up to this one.
    let mut sse_upto = HashMap::new();
    let mut n = 0;
    for e in events.iter().filter(|e| e.event == "output") {
        n += b64d(e.data["data_b64"].as_str().unwrap()).len();
        sse_upto.insert(e.id.unwrap(), n);
    }
    let mut m = 0;
    for f in got.iter().filter(|f| (1..=3).contains(&f.kind)) {
        m += f.payload.len();
        assert_eq!(sse_upto.get(&f.seq), Some(&m), "frame with seq {}", f.seq);
    }
    // Resuming after a coalesced frame of the backlog: nothing doubled.
    let mut part = open(&w.api, &sid, BIN, "", None).await;
    let part1 = frames(&mut part, Some(5 << 20)).await;
    drop(part);
    let last = part1.last().unwrap().seq;
    let mut rest = open(&w.api, &sid, BIN, &format!("?since={last}"), None).await;
    let mut all = part1;
    all.extend(frames(&mut rest, None).await);
    assert!(by_stream(&all)["stdout"] == want_out);
    assert_eq!(by_stream(&all)["stderr"], want_err);
}

#[tokio::test]
async fn binary_stream_resumes_after_a_seq_without_duplicates_or_gaps() {
    let w = World::start(&[]).await;
    let lines = "i=1; while [ $i -le 20000 ]; do echo $i; \
                 [ $((i % 4000)) -eq 0 ] && sleep 0.1; i=$((i+1)); done";
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", lines], "pipe_stdin": false}),
        )
        .await;
    let want: Vec<u8> = (1..=20000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    // Drop the connection part of the way, while the process still writes.
    let mut first = open(&w.api, &sid, BIN, "", None).await;
    let part1 = frames(&mut first, Some(30_000)).await;
    drop(first);
    let last = part1.last().unwrap().seq;
    let mut second = open(&w.api, &sid, BIN, &format!("?since={last}"), None).await;
    let part2 = frames(&mut second, None).await;
    assert!(part2.iter().find(|f| f.kind == 1).unwrap().seq > last);
    let mut all = part1.clone();
    all.extend(part2.iter().cloned());
    assert_seqs_increase(&all);
    assert_eq!(by_stream(&all)["stdout"], want);
    assert_eq!(all.last().unwrap().kind, 5);

    // Last-Event-ID does the same, and wins over ?since=.
    let mut third = open(&w.api, &sid, BIN, "?since=0", Some(&last.to_string())).await;
    let again = frames(&mut third, None).await;
    assert_eq!(by_stream(&again)["stdout"], by_stream(&part2)["stdout"]);
    // From the end: only the exit.
    let end = all.last().unwrap().seq;
    let mut fourth = open(&w.api, &sid, BIN, &format!("?since={end}"), None).await;
    let tail = frames(&mut fourth, None).await;
    assert_eq!(tail.len(), 1, "{tail:?}");
    assert_eq!(tail[0].kind, 5);
}

#[tokio::test]
async fn binary_stream_reports_dropped_output_exactly_as_sse_does() {
    // 256 KiB in memory and no spill: most of 3 MiB is dropped.
    let w = World::start(&["--retain-bytes", "262144", "--spill-bytes", "0"]).await;
    let data = noise(3 << 20);
    let (sid, v) = w.cat_unread(&data).await;
    assert_eq!(v["exit_code"], 0);

    let mut resp = open(&w.api, &sid, BIN, "", None).await;
    let got = frames(&mut resp, None).await;
    let lost = &got[0];
    assert_eq!(lost.kind, 4, "{lost:?}");
    let info = lost.json();
    let lost_bytes = info["bytes"].as_u64().unwrap() as usize;
    assert!(lost_bytes > 2 << 20, "{info}");
    assert_eq!(info["from_seq"], 1);
    assert_eq!(info["to_seq"].as_u64(), Some(lost.seq));
    assert_eq!(got.iter().filter(|f| f.kind == 4).count(), 1);
    // Delivered: exactly the tail after the lost bytes.
    assert!(by_stream(&got)["stdout"] == data[lost_bytes..]);
    assert_eq!(got.last().unwrap().kind, 5);

    // The SSE stream of the same session says the same.
    let events = sse_all(&w.api, &sid).await;
    assert_eq!(events[0].event, "lost");
    assert_eq!(events[0].data, info);
    assert_eq!(events[0].id, Some(lost.seq));
}

#[tokio::test]
async fn the_answer_follows_the_accept_header() {
    let w = World::start(&[]).await;
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", "echo hi"], "pipe_stdin": false}),
        )
        .await;
    for (accept, binary) in [
        (BIN, true),
        ("application/octet-stream, text/event-stream", true),
        ("text/event-stream;q=0.5, application/octet-stream", true),
        ("application/octet-stream, */*", true),
        ("Application/Octet-Stream", true),
        ("text/event-stream, application/octet-stream", false),
        ("application/octet-stream;q=0.5, text/event-stream", false),
        ("application/octet-stream;q=0.5, */*", false),
        ("application/octet-stream;q=0", false),
        ("text/event-stream", false),
        ("*/*", false),
        ("application/json", false),
        ("application/*", false),
    ] {
        let resp = open(&w.api, &sid, accept, "", None).await;
        assert_eq!(resp.status(), 200, "{accept}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body = resp.bytes().await.unwrap();
        if binary {
            assert_eq!(ct, BIN, "{accept}");
            assert_eq!(body[0], 1, "{accept}: a stdout frame first");
            assert_eq!(&body[13..16], b"hi\n");
        } else {
            assert!(ct.starts_with("text/event-stream"), "{accept}: {ct}");
            assert!(body.starts_with(b"event: output\n"), "{accept}");
        }
    }
}

#[tokio::test]
async fn hostile_accept_and_since_are_4xx_envelopes() {
    let w = World::start(&[]).await;
    let sid = w.api.exec("laptop", json!({"command": ["true"]})).await;
    let check = |resp: reqwest::Response, status: u16, what: String| async move {
        assert_eq!(resp.status(), status, "{what}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}"
        );
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"]["code"].is_string(), "{what}: {v}");
        v["error"]["code"].as_str().unwrap().to_string()
    };
    for accept in [
        "application/octet-stream;q=abc",
        "application/octet-stream;q=1.5",
        "application/octet-stream;q=0.1234",
        "octet-stream",
        "/",
        "text/event-stream, application/",
    ] {
        let resp = open(&w.api, &sid, accept, "", None).await;
        let code = check(resp, 400, format!("Accept: {accept}")).await;
        assert_eq!(code, "bad_request");
    }
    // Not visible ASCII.
    let resp = stream_request(&w.api, &sid, "")
        .header(
            "Accept",
            reqwest::header::HeaderValue::from_bytes(b"application/\xffoctet").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        check(resp, 400, "non-ASCII Accept".into()).await,
        "bad_request"
    );
    for query in ["?since=abc", "?since=-1", "?since=99999999999999999999999"] {
        let resp = open(&w.api, &sid, BIN, query, None).await;
        check(resp, 400, query.to_string()).await;
    }
    let resp = open(&w.api, &sid, BIN, "", Some("abc")).await;
    check(resp, 400, "Last-Event-ID abc".into()).await;
    let resp = open(&w.api, "ps_nope", BIN, "", None).await;
    assert_eq!(
        check(resp, 404, "unknown sid".into()).await,
        "session_not_found"
    );
}

/// `execgate exec` streams through the binary form (the default) and
/// through SSE (`EXECGATE_STREAM=sse`, as against an older gateway): the
/// same bytes on stdout and stderr, not UTF-8, and the exit code.
#[tokio::test]
async fn execgate_exec_copies_raw_output_in_either_form() {
    let w = World::start(&[]).await;
    let data = noise(5 << 20);
    std::fs::write(w.workdir.join("big.bin"), &data).unwrap();
    for form in ["binary", "sse"] {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["exec", "laptop", "--", "sh", "-c"])
            .arg("cat big.bin; printf 'e\\377\\000' >&2; exit 5")
            .env("EXECGATE_URL", &w.api.url)
            .env("EXECGATE_TOKEN", &w.api.token)
            .stdin(std::process::Stdio::null());
        if form == "sse" {
            cmd.env("EXECGATE_STREAM", "sse");
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(5),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == data,
            "{form}: stdout of {} bytes",
            out.stdout.len()
        );
        assert_eq!(out.stderr, b"e\xff\x00", "{form}");
    }
}
