//! Output beyond the in-memory ring spills to disk: a late reader gets all
//! of it, byte-exact; beyond the disk bound the loss is reported exactly.

use crate::harness::*;

/// Writes `data` quickly (cat of a file), waits for the exit without reading
/// the output, then reads it all from the start. Returns (bytes, lost_bytes
/// of the first answer, sum of lost_bytes).
async fn late_read(w: &World, data: &[u8]) -> (Vec<u8>, u64, u64) {
    let (sid, v) = w.cat_unread(data).await;
    assert_eq!(v["exit_code"], 0);
    let mut since = 0;
    let mut out = Vec::new();
    let mut first_lost = None;
    let mut total_lost = 0;
    loop {
        let v = w.api.output(&sid, since).await;
        let lost = v["lost_bytes"].as_u64().unwrap();
        assert_eq!(v["truncated"], lost > 0);
        first_lost.get_or_insert(lost);
        total_lost += lost;
        for c in v["chunks"].as_array().unwrap() {
            out.extend(b64d(c["data_b64"].as_str().unwrap()));
        }
        since = v["next_since"].as_u64().unwrap();
        if v["session_alive"] == false {
            return (out, first_lost.unwrap(), total_lost);
        }
    }
}

#[tokio::test]
async fn twenty_mib_written_quickly_are_read_back_whole() {
    let w = World::start(&["--retain-bytes", "1048576"]).await;
    let data = noise(20 << 20);
    let (out, _, lost) = late_read(&w, &data).await;
    assert_eq!(lost, 0);
    assert_eq!(out.len(), data.len());
    assert!(out == data, "the bytes differ");
}

/// A poll answer cut at its size limit leaves a read ahead for the next
/// poll (`read_ahead`); a poll that asks for something else (here: the
/// same answer again, as a client retrying would) must not get it.
#[tokio::test]
async fn a_poll_that_goes_back_gets_what_it_asked_for() {
    let w = World::start(&[]).await;
    let data = noise(20 << 20);
    let (sid, _) = w.cat_unread(&data).await;
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| b64d(c["data_b64"].as_str().unwrap()))
            .collect()
    };
    let first = w.api.output(&sid, 0).await;
    let again = w.api.output(&sid, 0).await;
    let first_bytes = bytes(&first);
    assert!(first_bytes.len() > 4 << 20, "cut at the size limit");
    assert_eq!(bytes(&again), first_bytes);
    assert_eq!(again["next_since"], first["next_since"]);
    // Then on to the end, through the read-aheads.
    let mut out = first_bytes;
    let mut since = first["next_since"].as_u64().unwrap();
    loop {
        let v = w.api.output(&sid, since).await;
        assert_eq!(v["lost_bytes"], 0);
        out.extend(bytes(&v));
        since = v["next_since"].as_u64().unwrap();
        if v["session_alive"] == false {
            break;
        }
    }
    assert!(out == data, "the bytes differ");
}

#[tokio::test]
async fn beyond_the_disk_bound_the_loss_is_exact() {
    // 1 MiB in memory, 4 MiB on disk, 20 MiB written.
    let w = World::start(&["--retain-bytes", "1048576", "--spill-bytes", "4194304"]).await;
    let data = noise(20 << 20);
    let (out, first_lost, total_lost) = late_read(&w, &data).await;
    assert_eq!(
        first_lost, total_lost,
        "all the loss is before the first chunk"
    );
    let lost = total_lost as usize;
    assert!((15 << 20..19 << 20).contains(&lost), "{lost}");
    assert_eq!(out.len() + lost, data.len());
    assert!(out == data[lost..], "what is delivered is exactly the tail");
}
