//! `GET /processes/{sid}/stream` (Server-Sent Events), end to end: complete
//! and in order, resumable without duplicates or gaps, and honest about
//! dropped output.

use serde_json::json;

use crate::harness::*;
use crate::sse::{SseEvent, SseReader};

fn expected_lines(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Reads events until `exit` (or until `stop_after_bytes` of output), and
/// returns them.
async fn collect(reader: &mut SseReader, stop_after_bytes: Option<usize>) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut bytes = 0;
    while let Some(e) = reader.next().await {
        if e.event == "output" {
            bytes += b64d(e.data["data_b64"].as_str().unwrap()).len();
        }
        let done = e.event == "exit";
        events.push(e);
        if done || stop_after_bytes.is_some_and(|n| bytes >= n) {
            break;
        }
    }
    events
}

fn output_of(events: &[SseEvent]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e.event == "output")
        .flat_map(|e| b64d(e.data["data_b64"].as_str().unwrap()))
        .collect()
}

fn assert_ids_increase(events: &[SseEvent]) {
    let ids: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "output")
        .map(|e| e.id.unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "ids not increasing: {ids:?}"
    );
}

const LINES: &str = "i=1; while [ $i -le 10000 ]; do echo $i; \
                     [ $((i % 2000)) -eq 0 ] && sleep 0.1; i=$((i+1)); done";

#[tokio::test]
async fn ten_thousand_lines_arrive_complete_and_in_order() {
    let w = World::start(&[]).await;
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", LINES], "pipe_stdin": false}),
        )
        .await;
    let mut reader = SseReader::open(&w.api, &sid, None, None).await;
    let events = collect(&mut reader, None).await;
    assert_ids_increase(&events);
    assert_eq!(output_of(&events), expected_lines(10_000));
    assert!(events.iter().all(|e| e.event != "lost"));
    let exit = events.last().unwrap();
    assert_eq!(exit.event, "exit");
    assert_eq!(exit.data, json!({"exit_code": 0}));
    assert!(reader.next().await.is_none(), "the stream ends after exit");
    for e in &events {
        if e.event == "output" {
            assert_eq!(e.data["stream"], "stdout");
        }
    }
}

#[tokio::test]
async fn a_resumed_stream_has_no_duplicates_and_no_gaps() {
    let w = World::start(&[]).await;
    let sid = w
        .api
        .exec(
            "laptop",
            json!({"command": ["sh", "-c", LINES], "pipe_stdin": false}),
        )
        .await;
    // Disconnect half way, while the process is still writing.
    let mut first = SseReader::open(&w.api, &sid, None, None).await;
    let part1 = collect(&mut first, Some(20_000)).await;
    drop(first);
    let last_id = part1.last().unwrap().id.unwrap();

    let mut second = SseReader::open(&w.api, &sid, Some(last_id), None).await;
    let part2 = collect(&mut second, None).await;
    assert!(part2.first().unwrap().id.unwrap() > last_id);
    let mut all = part1.clone();
    all.extend(part2);
    assert_ids_increase(&all);
    assert_eq!(output_of(&all), expected_lines(10_000));
    assert_eq!(all.last().unwrap().event, "exit");

    // ?since= works the same, and Last-Event-ID wins over it.
    let mut third = SseReader::open(&w.api, &sid, Some(last_id), Some(0)).await;
    let again = collect(&mut third, None).await;
    assert_eq!(
        output_of(&part1).len() + output_of(&again).len(),
        expected_lines(10_000).len()
    );
    let mut from_since = SseReader::open(&w.api, &sid, None, Some(last_id)).await;
    assert_eq!(
        output_of(&collect(&mut from_since, None).await),
        output_of(&again)
    );
}

#[tokio::test]
async fn dropped_output_is_reported_as_lost_never_as_delivered() {
    // 256 KiB in memory and no spill: most of 3 MiB is dropped.
    let w = World::start(&["--retain-bytes", "262144", "--spill-bytes", "0"]).await;
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (sid, v) = w.cat_unread(&data).await;
    assert_eq!(v["exit_code"], 0);

    let mut reader = SseReader::open(&w.api, &sid, None, None).await;
    let events = collect(&mut reader, None).await;
    let lost = &events[0];
    assert_eq!(lost.event, "lost", "{lost:?}");
    let lost_bytes = lost.data["bytes"].as_u64().unwrap() as usize;
    assert_eq!(lost.data["from_seq"], 1);
    let first_output = events[1].id.unwrap();
    assert_eq!(lost.data["to_seq"].as_u64().unwrap(), first_output - 1);
    assert_eq!(lost.id, Some(first_output - 1));
    // What was delivered is exactly the tail after the lost bytes.
    assert_eq!(output_of(&events), &data[lost_bytes..]);
    assert_eq!(events.iter().filter(|e| e.event == "lost").count(), 1);
    assert_eq!(events.last().unwrap().event, "exit");
}

#[tokio::test]
async fn stream_errors_are_the_api_envelope() {
    let w = World::start(&[]).await;
    let (s, v) = w.api.get("/api/connectors/processes/ps_nope/stream").await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "session_not_found");
    let sid = w.api.exec("laptop", json!({"command": ["true"]})).await;
    let resp = stream_request(&w.api, &sid, "")
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
