//! Figure 3, process output: a process writes 256 MiB (`head -c N
//! /dev/zero`, 32 MiB with --quick) and the bench reads every byte (1)
//! by polling `/output?since=N&wait_ms=…` and (2) through the SSE stream
//! `GET /api/connectors/processes/{sid}/stream`, when the gateway has that
//! route (it is probed first; the figure is skipped with a note if not).
//! The baseline is `head -c N /dev/zero | cat` read through a local pipe,
//! measured in the same run: what moving the bytes costs with no network,
//! no JSON and no base64.
//!
//! The executor spills up to 320 MiB per process to disk (1 GiB in all, its
//! default, so the polled process's spill leaves room for SSE's), so a reader that
//! falls behind the writer should still get every byte. Polling fails on
//! any loss; SSE reports what its `lost` events say (a figure of its own,
//! and the speed counts only delivered bytes), since a loss there is a
//! finding about the stream, not a broken run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::harness::{http, local_pipe_mb_s, Gateway};
use crate::{Figure, Report};

pub async fn run(bin: &Path, quick: bool, codex: Option<&Path>) -> anyhow::Result<Report> {
    let bytes: u64 = if quick { 32 << 20 } else { 256 << 20 };
    let label = if quick { "32 MiB" } else { "256 MiB" };
    let budget = Duration::from_secs(if quick { 30 } else { 180 });
    let gw = crate::harness::gateway(bin, &[]);
    // Per process 320 MiB, in all 1 GiB: the polled process's spill stays
    // on disk (it is readable until its retention ends), and SSE's process
    // needs room of its own. (A total of 320 MiB made SSE lose 143 MiB.)
    let spill = (320u64 << 20).to_string();
    let total = (1024u64 << 20).to_string();
    let (_exe, _work) = gw
        .executor(
            "a",
            &["--spill-bytes", &spill, "--spill-total-bytes", &total],
        )
        .await;
    let client = http();
    let pipe = local_pipe_mb_s(bytes).await?;
    let base = format!("cat {label} through a local pipe");
    let mut report = Report::default();

    let mb = polling(&gw, &client, bytes, budget).await?;
    report.figures.push(
        Figure::new(
            "output.polling.mb_per_s",
            format!("output {label} via /output polling"),
            mb,
            "MB/s",
        )
        .vs(&base, pipe),
    );

    if sse_route_exists(&gw, &client).await? {
        let (mb, lost) = sse(&gw.url, &gw.token, &client, bytes, budget).await?;
        report.figures.push(
            Figure::new(
                "output.sse.mb_per_s",
                format!("output {label} via SSE"),
                mb,
                "MB/s",
            )
            .vs(&base, pipe),
        );
        report.figures.push(Figure::new(
            "output.sse.lost_mib",
            "  output the SSE stream reported lost",
            lost as f64 / (1 << 20) as f64,
            "MiB",
        ));
    } else {
        let why = "the gateway has no /processes/{sid}/stream route";
        println!("note: SSE output figure skipped: {why}");
        report
            .skipped
            .push(("output.sse.mb_per_s".into(), why.into()));
    }

    binary_figures(
        &gw,
        &client,
        bytes,
        label,
        budget,
        &base,
        pipe,
        codex,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// The binary stream's figures (issue 22): its MB/s beside the local pipe,
/// and with `--codex` beside codex-direct output measured right after it.
/// A gateway that answers SSE to `Accept: application/octet-stream` (one
/// older than the binary form) skips them with a note.
#[allow(clippy::too_many_arguments)]
async fn binary_figures(
    gw: &Gateway,
    client: &reqwest::Client,
    bytes: u64,
    label: &str,
    budget: Duration,
    base: &str,
    pipe: f64,
    codex: Option<&Path>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some((mb, lost)) = binary(&gw.url, &gw.token, client, bytes, budget).await? else {
        let why = "the gateway answered SSE to Accept: application/octet-stream";
        println!("note: binary output figure skipped: {why}");
        report
            .skipped
            .push(("output.binary.mb_per_s".into(), why.into()));
        if codex.is_some() {
            report
                .skipped
                .push(("output.binary.vs_codex".into(), why.into()));
        }
        return Ok(());
    };
    report.figures.push(
        Figure::new(
            "output.binary.mb_per_s",
            format!("output {label} via binary stream"),
            mb,
            "MB/s",
        )
        .vs(base, pipe),
    );
    report.figures.push(Figure::new(
        "output.binary.lost_mib",
        "  output the binary stream reported lost",
        lost as f64 / (1 << 20) as f64,
        "MiB",
    ));
    if let Some(codex) = codex {
        let direct = crate::peers::codex_output_mb_s(codex, bytes).await?;
        report.figures.push(
            Figure::new(
                "output.binary.vs_codex",
                format!("output {label} via binary stream (again)"),
                binary(&gw.url, &gw.token, client, bytes, budget)
                    .await?
                    .map_or(mb, |(again, _)| (mb + again) / 2.0),
                "MB/s",
            )
            .vs(format!("codex-direct output {label}, same run"), direct),
        );
    }
    Ok(())
}

/// The binary stream (`Accept: application/octet-stream`) of `bytes` of
/// output: MB/s of the bytes delivered and the bytes reported lost, or
/// `None` when the gateway answered SSE instead. The client does no work
/// per byte but one copy: it reads 13-byte headers and copies each payload
/// into one reused buffer, as a client writing the output somewhere would.
pub(crate) async fn binary(
    base: &str,
    token: &str,
    client: &reqwest::Client,
    bytes: u64,
    budget: Duration,
) -> anyhow::Result<Option<(f64, u64)>> {
    use execgate_protocol::output_frames as f;
    let t = Instant::now();
    let sid = start(base, token, client, bytes).await?;
    let resp = client
        .get(format!("{base}/api/connectors/processes/{sid}/stream"))
        .header("Accept", f::CONTENT_TYPE)
        .bearer_auth(token)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("binary stream: {} {}", resp.status(), resp.text().await?);
    }
    if resp.headers().get("content-type").map(|v| v.as_bytes()) != Some(f::CONTENT_TYPE.as_bytes())
    {
        return Ok(None);
    }
    let mut body = resp.bytes_stream();
    let mut sink = vec![0u8; 1 << 20];
    let mut header = [0u8; f::HEADER_LEN];
    let (mut have, mut left) = (0usize, 0usize);
    let (mut kind, mut control) = (0u8, Vec::new());
    let (mut got, mut lost) = (0u64, 0u64);
    let mut exited = false;
    while !exited {
        let chunk = tokio::time::timeout(budget.saturating_sub(t.elapsed()), body.next())
            .await
            .with_context(|| format!("binary: {got} of {bytes} bytes in {budget:?}"))?;
        let Some(chunk) = chunk else { break };
        let chunk = chunk?;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if left == 0 && have < f::HEADER_LEN {
                let n = (f::HEADER_LEN - have).min(rest.len());
                header[have..have + n].copy_from_slice(&rest[..n]);
                have += n;
                rest = &rest[n..];
                if have < f::HEADER_LEN {
                    break;
                }
                kind = header[0];
                left = u32::from_be_bytes([header[9], header[10], header[11], header[12]]) as usize;
                control.clear();
            }
            let n = left.min(rest.len());
            if matches!(kind, f::STDOUT | f::STDERR | f::PTY) {
                // The one copy: where a real client would write the bytes.
                let mut piece = &rest[..n];
                while !piece.is_empty() {
                    let m = piece.len().min(sink.len());
                    sink[..m].copy_from_slice(&piece[..m]);
                    piece = &piece[m..];
                }
                got += n as u64;
            } else {
                control.extend_from_slice(&rest[..n]);
            }
            left -= n;
            rest = &rest[n..];
            if left == 0 {
                have = 0;
                match kind {
                    f::LOST => {
                        let v: Value = serde_json::from_slice(&control)?;
                        lost += v["bytes"].as_u64().unwrap_or(0);
                    }
                    f::EXIT => exited = true,
                    f::ERROR => bail!("binary: error frame {}", String::from_utf8_lossy(&control)),
                    _ => {}
                }
            }
        }
    }
    if got + lost != bytes {
        bail!("binary read {got} and reported {lost} lost of {bytes} bytes");
    }
    Ok(Some((got as f64 / 1e6 / t.elapsed().as_secs_f64(), lost)))
}

/// Starts `head -c bytes /dev/zero` on environment `a` through the
/// gateway at `base`; its session id.
async fn start(
    base: &str,
    token: &str,
    client: &reqwest::Client,
    bytes: u64,
) -> anyhow::Result<String> {
    let v: Value = client
        .post(format!("{base}/api/connectors/envs/a/tool/call"))
        .bearer_auth(token)
        .json(&json!({"tool": "exec_command", "arguments": {
            "command": ["head", "-c", bytes.to_string(), "/dev/zero"], "pipe_stdin": false}}))
        .send()
        .await?
        .json()
        .await?;
    v["structuredContent"]["session_id"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("exec_command gave no session_id: {v}"))
}

async fn polling(
    gw: &Gateway,
    client: &reqwest::Client,
    bytes: u64,
    budget: Duration,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let sid = start(&gw.url, &gw.token, client, bytes).await?;
    let url = format!("{}/api/connectors/processes/{sid}/output", gw.url);
    let (mut since, mut got) = (0u64, 0u64);
    let mut decoded = Vec::new();
    // Bounded: by time, and by a request count no honest run needs.
    for _ in 0..1_000_000 {
        if t.elapsed() > budget {
            bail!("polling: {got} of {bytes} bytes in {budget:?}");
        }
        let body = client
            .get(&url)
            .query(&[("since", since.to_string()), ("wait_ms", "10000".into())])
            .bearer_auth(&gw.token)
            .send()
            .await?
            .bytes()
            .await?;
        let (out, data) = parse_output(&body)?;
        if out.lost_bytes != 0 {
            bail!("polling lost output: {}", out.lost_bytes);
        }
        for text in data {
            decoded.clear();
            crate::decode_base64(text, &mut decoded)?;
            got += decoded.len() as u64;
        }
        since = out.next_since;
        if !out.session_alive {
            break;
        }
    }
    if got != bytes {
        bail!("polling read {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// Whether the gateway routes `/stream`: an unknown sid on a routed path is
/// an error about the sid, an unrouted path is the fallback's "no such route".
async fn sse_route_exists(gw: &Gateway, client: &reqwest::Client) -> anyhow::Result<bool> {
    let r = client
        .get(format!(
            "{}/api/connectors/processes/nosuchsid/stream",
            gw.url
        ))
        .bearer_auth(&gw.token)
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    Ok(!(status == 404 && text.contains("no such route")) && status != 405)
}

/// The SSE stream of `bytes` of output through the gateway at `base`:
/// MB/s of the bytes delivered, and the bytes reported lost (an SSE `lost`
/// event: reported, so counted and shown, not a failure).
pub(crate) async fn sse(
    base: &str,
    token: &str,
    client: &reqwest::Client,
    bytes: u64,
    budget: Duration,
) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let sid = start(base, token, client, bytes).await?;
    let resp = client
        .get(format!("{base}/api/connectors/processes/{sid}/stream"))
        .bearer_auth(token)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("SSE: {} {}", resp.status(), resp.text().await?);
    }
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut decoded = Vec::new();
    let blank_line = memchr::memmem::Finder::new(b"\n\n");
    let (mut got, mut lost) = (0u64, 0u64);
    let mut exited = false;
    while !exited {
        let chunk = tokio::time::timeout(budget.saturating_sub(t.elapsed()), body.next())
            .await
            .with_context(|| format!("SSE: {got} of {bytes} bytes in {budget:?}"))?;
        let Some(chunk) = chunk else { break };
        let chunk = chunk?;
        // Only the new bytes (and one before them) can complete an event.
        let scan_from = buf.len().saturating_sub(1);
        // With no partial event kept, the events are read from the chunk
        // itself, and only its incomplete tail is kept.
        let kept = !buf.is_empty();
        if kept {
            buf.extend_from_slice(&chunk);
        }
        let text: &[u8] = if kept { &buf } else { &chunk };
        // Events end with a blank line; parse the complete ones.
        let mut start = 0;
        let mut from = scan_from;
        while let Some(at) = blank_line.find(&text[from..]) {
            let end = from + at;
            let event = &text[start..end];
            start = end + 2;
            from = start;
            let (mut name, mut data) = ("message", &b""[..]);
            for line in lines(event) {
                if let Some(v) = line.strip_prefix(b"event:") {
                    name = std::str::from_utf8(v)?.trim();
                } else if let Some(v) = line.strip_prefix(b"data:") {
                    data = v.strip_prefix(b" ").unwrap_or(v);
                }
            }
            match name {
                "output" => {
                    decoded.clear();
                    crate::decode_base64(event_data_b64(data)?, &mut decoded)?;
                    got += decoded.len() as u64;
                }
                "lost" => {
                    let v: Value = serde_json::from_slice(data)?;
                    lost += v["bytes"].as_u64().unwrap_or(0);
                }
                "exit" => exited = true,
                "message" => {} // a keepalive comment
                other => bail!(
                    "SSE: unexpected {other} event: {}",
                    String::from_utf8_lossy(data)
                ),
            }
        }
        if kept {
            buf.drain(..start);
        } else {
            buf.extend_from_slice(&chunk[start..]);
        }
    }
    if got + lost != bytes {
        bail!("SSE read {got} and reported {lost} lost of {bytes} bytes");
    }
    Ok((got as f64 / 1e6 / t.elapsed().as_secs_f64(), lost))
}

/// The lines of an SSE event, found with memchr: the data line of an
/// output event is ~87 KB, and a byte-by-byte split showed in the profile.
pub(crate) fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(event);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr(b'\n', text) {
            Some(i) => {
                rest = Some(&text[i + 1..]);
                Some(&text[..i])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// A `/output` answer, as much of it as the figure needs. Borrowed: the
/// client should cost as little as it can, so the figure is the gateway's.
#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow)]
    chunks: Vec<Chunk<'a>>,
    lost_bytes: u64,
    next_since: u64,
    session_alive: bool,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    data_b64: &'a str,
}

/// An SSE `output` event's data.
#[derive(Deserialize)]
struct OutputEvent<'a> {
    data_b64: &'a str,
}

const DATA_B64: &[u8] = br#""data_b64":""#;

/// The base64 text of an SSE `output` event's data
/// `{"stream":…,"data_b64":"…"}`. Base64 holds no character JSON escapes,
/// so the string ends at the next `"`: found with memchr rather than by
/// serde's character-by-character scan for escapes, which was the largest
/// item of the bench's own profile (BENCHMARKS.md, issue 22). Anything
/// else is parsed by serde.
fn event_data_b64(data: &[u8]) -> anyhow::Result<&[u8]> {
    if let Some(at) = memchr::memmem::find(data, DATA_B64) {
        let text = &data[at + DATA_B64.len()..];
        if let Some(end) = memchr::memchr(b'"', text) {
            if !text[..end].contains(&b'\\') && data.ends_with(b"\"}") {
                return Ok(&text[..end]);
            }
        }
    }
    let v: OutputEvent = serde_json::from_slice(data)?;
    let at = v.data_b64.as_ptr() as usize - data.as_ptr() as usize;
    Ok(&data[at..at + v.data_b64.len()])
}

/// A `/output` answer and its chunks' base64 texts, found as in
/// [`event_data_b64`]: the gateway writes `{"chunks":[{"stream":…,
/// "data_b64":"…","seq":N},…],…}`, so the chunks are cut out with memchr
/// and the rest (`{"chunks":[]` and what follows the array) is parsed by
/// serde. An answer laid out otherwise is parsed by serde entirely.
fn parse_output(body: &[u8]) -> anyhow::Result<(Output<'_>, Vec<&[u8]>)> {
    const HEAD: &[u8] = br#"{"chunks":["#;
    let mut texts = Vec::new();
    if let Some(rest) = body.strip_prefix(HEAD) {
        let mut at = 0;
        let finder = memchr::memmem::Finder::new(DATA_B64);
        let mut end_of_chunks = None;
        // Each chunk: {"stream":"…","data_b64":"…","seq":N}
        while let Some(open) = finder.find(&rest[at..]) {
            let from = at + open + DATA_B64.len();
            let Some(len) = memchr::memchr(b'"', &rest[from..]) else {
                break;
            };
            texts.push(&rest[from..from + len]);
            at = from + len + 1;
            match memchr::memchr(b'}', &rest[at..]) {
                Some(close) if rest.get(at + close + 1) == Some(&b']') => {
                    end_of_chunks = Some(at + close + 2);
                    break;
                }
                Some(close) => at += close + 1,
                None => break,
            }
        }
        let tail = match (texts.is_empty(), end_of_chunks) {
            (true, _) => rest.strip_prefix(b"]"),
            (false, Some(end)) => rest.get(end..),
            (false, None) => None,
        };
        if let Some(tail) = tail {
            let mut head = br#"{"chunks":[]"#.to_vec();
            head.extend_from_slice(tail);
            let out: Output<'static> = serde_json::from_slice::<OutputHead>(&head)?.into();
            if texts.iter().all(|t| !t.contains(&b'\\')) {
                return Ok((out, texts));
            }
        }
    }
    let out: Output = serde_json::from_slice(body)?;
    let texts = out.chunks.iter().map(|c| c.data_b64.as_bytes()).collect();
    Ok((out, texts))
}

/// A `/output` answer without its chunks.
#[derive(Deserialize)]
struct OutputHead {
    lost_bytes: u64,
    next_since: u64,
    session_alive: bool,
}

impl From<OutputHead> for Output<'static> {
    fn from(h: OutputHead) -> Self {
        Output {
            chunks: Vec::new(),
            lost_bytes: h.lost_bytes,
            next_since: h.next_since,
            session_alive: h.session_alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_answers_are_cut_as_serde_reads_them() {
        let answers = [
            r#"{"chunks":[],"exit_code":null,"session_alive":true,"truncated":false,"lost_bytes":0,"next_since":3}"#,
            r#"{"chunks":[{"stream":"stdout","data_b64":"AAEC","seq":4}],"exit_code":0,"session_alive":false,"truncated":false,"lost_bytes":0,"next_since":4}"#,
            r#"{"chunks":[{"stream":"stdout","data_b64":"QQ==","seq":4},{"stream":"stderr","data_b64":"","seq":5},{"stream":"stdout","data_b64":"Yg==","seq":6}],"exit_code":null,"session_alive":true,"truncated":true,"lost_bytes":7,"next_since":6}"#,
            // Another layout: serde reads it.
            r#"{"exit_code":null,"chunks":[{"seq":1,"data_b64":"QQ==","stream":"stdout"}],"session_alive":true,"lost_bytes":0,"next_since":1}"#,
        ];
        for a in answers {
            let (out, texts) = parse_output(a.as_bytes()).unwrap();
            let serde: Output = serde_json::from_str(a).unwrap();
            let want: Vec<&[u8]> = serde.chunks.iter().map(|c| c.data_b64.as_bytes()).collect();
            assert_eq!(texts, want, "{a}");
            assert_eq!(
                (out.lost_bytes, out.next_since, out.session_alive),
                (serde.lost_bytes, serde.next_since, serde.session_alive)
            );
        }
        assert!(parse_output(b"{\"chunks\":[{\"data_b64\":\"QQ").is_err());
    }

    #[test]
    fn event_data_is_cut_as_serde_reads_it() {
        for data in [
            r#"{"stream":"stdout","data_b64":"AAEC"}"#,
            r#"{"stream":"stdout","data_b64":""}"#,
            r#"{"data_b64":"QQ==","stream":"pty"}"#,
        ] {
            let serde: OutputEvent = serde_json::from_str(data).unwrap();
            assert_eq!(
                event_data_b64(data.as_bytes()).unwrap(),
                serde.data_b64.as_bytes()
            );
        }
    }
}
