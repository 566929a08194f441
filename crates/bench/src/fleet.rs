//! Figure 9, fleet: three replicas on one store (`serve --advertise-url …
//! --cluster-secret-file …`; SQLite in a shared data dir, or PostgreSQL
//! with `--postgres`) and 30,000 idle executors in all (300 with
//! `--quick`), played by the in-bench [`lite_executor`]: three workspaces
//! (`bench`, `bench2`, `bench3`) of 10,000 executors each, every workspace
//! spread evenly over the three replicas (executor `e{i}` dials replica
//! `i % 3`), so that each replica holds 10,000 links and two thirds of a
//! workspace's executors are held by another replica than the one asked.
//!
//! - The gateways' RSS per executor: the three replicas' RSS with all
//!   connected and idle, less their RSS before the first one, over the
//!   executors connected then (target ≤ 30 KiB; on a loaded machine a few
//!   links may have been declared dead, reported beside). Beside it, the child processes' end of the
//!   same sockets.
//! - The replicas' CPU per second while the links idle (pings, lease
//!   renewals, `last_seen` writes), summed.
//! - `envs/list` of workspace `bench` through replica A, with its 10,000
//!   connected (a third on A, the rest on B and C, listed from the leases),
//!   beside the same call before any connected (target p50 ≤ 20 ms). Timed
//!   to the answer's last byte (the gateway's latency), read as curl reads
//!   it, from a kept-alive socket into one buffer ([`RawClient`]); beside,
//!   the same through reqwest keeping each chunk as it came (how it was
//!   taken up to session 11), the client's parse of the answer, and its
//!   size.
//!
//! The executors of each replica are held by a child process of the bench
//! (`--lite-host`, [`crate::lite_executor::host`]): 10,000 sockets in each of
//! them and in each replica fit a hard open-file limit of 20,000, which an
//! unprivileged process cannot raise. On one machine the 30,000
//! connections fit the ephemeral port range because they go to three
//! listening ports (Linux reuses a source port towards another
//! destination).
//!
//! Heavy (minutes): not part of a plain `--quick` run; `--only fleet` runs
//! it (at small sizes with `--quick`).
//!
//! [`lite_executor`]: crate::lite_executor

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use execgate_testkit::GatewayProc;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::harness::{cpu_time, http, rss_kib};
use crate::{latency_figures, Figure, Report};

const WORKSPACES: [&str; 3] = ["bench", "bench2", "bench3"];

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One envs/list: the time to the answer's last byte, the time to parse
/// it, the number of environments and the answer's size. The answer is
/// read into `buf` (see [`Read`]).
async fn envs_list(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    read: Read<'_>,
) -> anyhow::Result<(Duration, Duration, usize, usize)> {
    let (fetched, parsed, v, size) = envs_list_with(client, url, token, &json!({}), read).await?;
    let count = v["envs"]
        .as_array()
        .with_context(|| format!("envs/list: {v}"))?
        .len();
    Ok((fetched, parsed, count, size))
}

/// How the client keeps the answer as it arrives (the clock stops at its
/// last byte either way; the parse is timed apart).
enum Read<'a> {
    /// Copied into one buffer the client reuses from call to call: what a
    /// client that lists often does, and the gateway's latency.
    Into(&'a mut Vec<u8>),
    /// Each chunk kept as it came: every call's 19 MB lands in fresh
    /// memory, whose page faults the client pays (how the figure was taken
    /// up to session 11; reported beside).
    Chunks,
}

/// One envs/list with `body` (a page: `limit`, `after`): the time to the
/// answer's last byte, the time to parse it, the answer and its size.
async fn envs_list_with(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
    read: Read<'_>,
) -> anyhow::Result<(Duration, Duration, Value, usize)> {
    let t = Instant::now();
    let res = client
        .post(format!("{url}/api/connectors/envs/list"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("envs/list: {}", res.status());
    }
    // Never reqwest's `bytes()`: it joins 19 MB into one fresh buffer
    // before it returns (a copy, and the page faults of the new buffer).
    let mut res = res;
    let mut chunks = Vec::new();
    let mut own = Vec::new();
    let buf = match read {
        Read::Into(buf) => {
            buf.clear();
            buf.reserve(res.content_length().unwrap_or(0) as usize);
            while let Some(chunk) = res.chunk().await? {
                buf.extend_from_slice(&chunk);
            }
            buf
        }
        Read::Chunks => {
            while let Some(chunk) = res.chunk().await? {
                chunks.push(chunk);
            }
            &mut own
        }
    };
    let fetched = t.elapsed();
    if !chunks.is_empty() {
        *buf = chunks.concat();
    }
    let t = Instant::now();
    let v: Value = serde_json::from_slice(buf)?;
    Ok((fetched, t.elapsed(), v, buf.len()))
}

/// envs/list over one kept-alive socket, read as curl reads it (no client
/// library between the socket and the buffer): the gateway's latency at
/// the least client cost. Through reqwest, each chunk of the 19 MB answer
/// crosses from hyper's connection task to the caller's (a wake-up each),
/// which on this machine added more than the gateway's own work.
struct RawClient {
    stream: tokio::net::TcpStream,
    request: Vec<u8>,
    /// The last answer, head and body; reused from call to call.
    buf: Vec<u8>,
    /// Where its body starts in `buf`.
    body_at: usize,
}

impl RawClient {
    async fn connect(url: &str, token: &str) -> anyhow::Result<RawClient> {
        let host = url
            .strip_prefix("http://")
            .with_context(|| format!("not an http:// URL: {url}"))?
            .trim_end_matches('/');
        let stream = tokio::net::TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "POST /api/connectors/envs/list HTTP/1.1\r\nHost: {host}\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        )
        .into_bytes();
        Ok(RawClient {
            stream,
            request,
            buf: Vec::new(),
            body_at: 0,
        })
    }

    /// One envs/list: the time to the answer's last byte, and its size.
    async fn envs_list(&mut self) -> anyhow::Result<(Duration, usize)> {
        use tokio::io::AsyncReadExt;
        let t = Instant::now();
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        let (head, length) = loop {
            if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("envs/list: the gateway closed the connection");
            }
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buf[..end])?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("envs/list: {}", head.lines().next().unwrap_or_default());
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .context("envs/list: no Content-Length")?;
            break (end + 4, length);
        };
        self.buf
            .reserve((head + length).saturating_sub(self.buf.len()));
        while self.buf.len() < head + length {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("envs/list: the answer ended early");
            }
        }
        self.body_at = head;
        Ok((t.elapsed(), length))
    }

    /// The last answer's body.
    fn body(&self) -> &[u8] {
        &self.buf[self.body_at..]
    }
}

/// A whole walk of envs/list by pages of `limit` (following `next`): its
/// time (each page's time to its last byte, summed: no parse), and the
/// environments and pages it saw.
async fn envs_walk(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    limit: usize,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(Duration, usize, usize)> {
    let (mut total, mut count, mut pages) = (Duration::ZERO, 0, 0);
    let mut after = Value::Null;
    loop {
        let body = json!({"limit": limit, "after": after});
        let (d, _, v, _) = envs_list_with(client, url, token, &body, Read::Into(buf)).await?;
        total += d;
        pages += 1;
        count += v["envs"].as_array().map_or(0, Vec::len);
        match v.get("next") {
            Some(next) => after = next.clone(),
            None => return Ok((total, count, pages)),
        }
        if pages > 100_000 {
            bail!("envs/list pages do not end");
        }
    }
}

/// Loopback's throughput here and now: `size` bytes written through a
/// 127.0.0.1 TCP socket (64 KiB writes) and read on the other end, as the
/// best of `rounds` (MB/s): what moving envs/list's answer costs at least.
async fn loopback_mb_per_s(size: usize, rounds: usize) -> anyhow::Result<f64> {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut best = 0f64;
    for _ in 0..rounds {
        let writer = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n]).await?;
                left -= n;
            }
            s.shutdown().await?;
            anyhow::Ok(())
        });
        let (mut conn, _) = listener.accept().await?;
        let t = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let secs = t.elapsed().as_secs_f64();
        writer.await??;
        if got != size {
            bail!("loopback: read {got} of {size} bytes");
        }
        best = best.max(size as f64 / 1e6 / secs);
    }
    Ok(best)
}

pub async fn run(bin: &Path, quick: bool, nofile: u64) -> anyhow::Result<Report> {
    let per_ws: usize = if quick { 100 } else { 10_000 };
    let n = per_ws * WORKSPACES.len();
    let mut report = Report::default();
    // Each replica and each child host: n / 3 sockets, plus room.
    if per_ws as u64 + 1024 > nofile {
        let why = format!("needs {per_ws} sockets per process; the open-file limit is {nofile}");
        println!("note: fleet skipped: {why}");
        report
            .skipped
            .push((format!("fleet.n{n}.gateway_rss_kib_per_conn"), why));
        return Ok(report);
    }
    let t0 = Instant::now();
    let prepared = crate::harness::prepare(bin);
    let store =
        execgate_gateway::Store::open_either(prepared.database_url.as_deref(), &prepared.data_dir)
            .await?;
    for ws in &WORKSPACES[1..] {
        store.create_workspace(ws).await?;
    }
    // (replica index, exe_id, token)
    let mut exes = Vec::with_capacity(n);
    for ws in WORKSPACES {
        for i in 0..per_ws {
            let (id, token) = store.add_executor(ws, &format!("e{i}"), false).await?;
            exes.push((i % 3, id, token));
        }
    }
    drop(store);
    eprintln!(
        "fleet: {n} executors in the store in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let secret = prepared.dir.path().join("cluster-secret");
    std::fs::write(&secret, "bench-cluster-secret-0123456789abcdef")?;
    let mut replicas: Vec<GatewayProc> = Vec::new();
    for _ in 0..3 {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let url = format!("http://{listen}");
        let mut args = vec![
            "--advertise-url",
            &url,
            "--cluster-secret-file",
            secret.to_str().unwrap_or_default(),
        ];
        if let Some(db) = &prepared.database_url {
            args.extend(["--database-url", db]);
        }
        replicas.push(prepared.eg.serve(&prepared.data_dir, &listen, &args));
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let pids: Vec<u32> = replicas.iter().map(|r| r.pid()).collect();
    let (a, token) = (&urls[0], &prepared.token);
    let client = http();
    let samples = if quick { 20 } else { 50 };
    // The client's one buffer for envs/list's answers (see `Read`).
    let mut buf = Vec::new();

    let mut before = Vec::new();
    let mut raw = RawClient::connect(a, token).await?;
    for _ in 0..samples {
        before.push(raw.envs_list().await?.0);
    }
    drop(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0: u64 = pids.iter().map(|&p| rss_kib(p)).sum();

    // The executors of replica r are held by child process r (each under
    // the open-file limit), started now so that their own RSS before any
    // connection is known.
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(
            tokio::process::Command::new(std::env::current_exe()?)
                .arg("--lite-host")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting a --lite-host child")?,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let host_rss = |hosts: &[tokio::process::Child]| -> u64 {
        hosts.iter().filter_map(|h| h.id()).map(rss_kib).sum()
    };
    let me_rss0 = host_rss(&hosts);
    let t_connect = Instant::now();
    let mut readers = Vec::new();
    for (r, host) in hosts.iter_mut().enumerate() {
        let mut lines = String::new();
        for (_, id, token) in exes.iter().filter(|(to, ..)| *to == r) {
            lines.push_str(&format!("{}\t{id}\t{token}\n", urls[r]));
        }
        lines.push('\n');
        let stdin = host.stdin.as_mut().context("the host's stdin")?;
        stdin.write_all(lines.as_bytes()).await?;
        stdin.flush().await?;
        readers.push(tokio::io::BufReader::new(
            host.stdout.take().context("the host's stdout")?,
        ));
    }
    for reader in &mut readers {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(600), reader.read_line(&mut line))
            .await
            .context("the in-bench executors did not connect within 600 s")??;
        if !line.starts_with("ready ") {
            bail!("a --lite-host child: {}", line.trim());
        }
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    // The links alone, before any envs/list: what listing keeps (the
    // descriptions of executors held elsewhere, freed answer buffers the
    // allocator keeps) shows as the difference with the figure below.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_links: u64 = pids.iter().map(|&p| rss_kib(p)).sum();
    // Every replica lists the workspace's executors alike once the
    // leases are in. Under a heavy load (this machine is shared) a few
    // links can be declared dead when their end here answers no ping in
    // time (the lite executors do not re-dial): so wait for the count to
    // settle rather than for all of them, and divide by what is connected.
    let counts = || async {
        let mut counts = Vec::new();
        for url in &urls {
            counts.push(envs_list(&client, url, token, Read::Chunks).await?.2);
        }
        anyhow::Ok(counts)
    };
    let settle = Instant::now();
    let mut last = counts().await?;
    let mut stable = 0;
    while stable < 3 && settle.elapsed() < Duration::from_secs(240) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = counts().await?;
        let alike = now.iter().all(|c| *c == now[0]);
        stable = if alike && now == last { stable + 1 } else { 0 };
        if now[0] == per_ws && alike {
            break;
        }
        last = now;
    }
    let listed = counts().await?;
    if listed.iter().any(|c| *c < per_ws * 9 / 10) {
        bail!("envs/list through the replicas shows {listed:?} of {per_ws}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1: u64 = pids.iter().map(|&p| rss_kib(p)).sum();
    let me_rss1 = host_rss(&hosts);
    // How many links are still up, as their ends here see them.
    let mut connected = 0usize;
    for (host, reader) in hosts.iter_mut().zip(readers.iter_mut()) {
        let stdin = host.stdin.as_mut().context("the host's stdin")?;
        stdin.write_all(b"count\n").await?;
        stdin.flush().await?;
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        connected += line
            .trim()
            .strip_prefix("alive ")
            .and_then(|k| k.parse::<usize>().ok())
            .with_context(|| format!("a --lite-host child: {line:?}"))?;
    }
    let per_replica_mib: Vec<f64> = pids.iter().map(|&p| rss_kib(p) as f64 / 1024.0).collect();

    let idle_for = Duration::from_secs(if quick { 2 } else { 5 });
    let cpu = || -> Duration { pids.iter().map(|&p| cpu_time(p)).sum() };
    let host_cpu = || -> Duration { hosts.iter().filter_map(|h| h.id()).map(cpu_time).sum() };
    let (gw_cpu0, me_cpu0, store_cpu0, t_idle) = (
        cpu(),
        host_cpu(),
        crate::harness::store_cpu_time(),
        Instant::now(),
    );
    tokio::time::sleep(idle_for).await;
    let idle_secs = t_idle.elapsed().as_secs_f64();
    let ms_per_s = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1e3 / idle_secs;
    let gw_idle_cpu = ms_per_s(cpu(), gw_cpu0);
    let me_idle_cpu = ms_per_s(host_cpu(), me_cpu0);
    let store_idle_cpu = store_cpu0
        .zip(crate::harness::store_cpu_time())
        .map(|(before, after)| ms_per_s(after, before));

    // For profiling (BENCHMARKS.md, "envs/list of 10,000"): with
    // EXECGATE_BENCH_FLEET_HOLD_SECS=N the fleet stays up, idle, for N s
    // here, and how to list through replica A is printed (its pid, URL and
    // token), e.g. for `perf record -p` beside a loop of curl calls.
    if let Some(hold) = std::env::var("EXECGATE_BENCH_FLEET_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        eprintln!(
            "fleet: holding {hold} s: replica A pid {} url {a} token {token}",
            pids[0]
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }

    let (mut after, mut parse, mut size, mut shown) = (Vec::new(), Vec::new(), 0, 0);
    let mut raw = RawClient::connect(a, token).await?;
    for _ in 0..samples {
        let (d, bytes) = raw.envs_list().await?;
        let t = Instant::now();
        let v: Value = serde_json::from_slice(raw.body())?;
        parse.push(t.elapsed());
        shown = v["envs"].as_array().map_or(0, Vec::len);
        after.push(d);
        size = bytes;
    }
    let mut kept_chunks = Vec::new();
    for _ in 0..samples {
        kept_chunks.push(envs_list(&client, a, token, Read::Chunks).await?.0);
    }

    // Pages of the same workspace (issue 18): the first page of 500, and
    // whole walks by pages of 1,000; then loopback's throughput, for the
    // floor under the whole answer.
    let page = if quick { 50 } else { 500 };
    let (mut paged, mut page_size) = (Vec::new(), 0);
    for _ in 0..samples {
        let body = json!({"limit": page});
        let (d, _, v, bytes) =
            envs_list_with(&client, a, token, &body, Read::Into(&mut buf)).await?;
        if v["envs"].as_array().map_or(0, Vec::len) != page.min(shown) {
            bail!("a page of {page}: {} environments", v["envs"]);
        }
        paged.push(d);
        page_size = bytes;
    }
    let walk_by = if quick { 10 } else { 1000 };
    let (mut walks, mut walked, mut walk_pages) = (Vec::new(), 0, 0);
    for _ in 0..(samples / 5).max(5) {
        let (d, count, pages) = envs_walk(&client, a, token, walk_by, &mut buf).await?;
        walks.push(d);
        (walked, walk_pages) = (count, pages);
    }
    let loopback = loopback_mb_per_s(size.max(1), 5).await?;

    // Closing their stdin stops the hosts.
    for mut host in hosts {
        drop(host.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), host.wait()).await;
    }
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / connected.max(1) as f64;
    let k = format!("fleet.n{n}");
    let mut figures = vec![
        Figure::new(
            format!("{k}.gateway_rss_kib_per_conn"),
            format!("3 replicas: RSS per idle executor, N={n}"),
            per(rss1, rss0),
            "KiB",
        )
        .vs("in-bench executor side, per conn", per(me_rss1, me_rss0)),
        Figure::new(
            format!("{k}.gateway_rss_kib_per_conn_before_listing"),
            "  the same, measured before any envs/list",
            rss_links.saturating_sub(rss0) as f64 / n as f64,
            "KiB",
        ),
        Figure::new(
            format!("{k}.gateway_rss_mib"),
            format!(
                "  replicas' RSS with N={n} connected ({})",
                per_replica_mib
                    .iter()
                    .map(|m| format!("{m:.0}"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
            rss1 as f64 / 1024.0,
            "MiB",
        )
        .vs("before any connected", rss0 as f64 / 1024.0),
        Figure::new(
            format!("{k}.gateway_idle_cpu_ms_per_s"),
            format!("  replicas' CPU with N={n} idle, per s"),
            gw_idle_cpu,
            "ms/s",
        )
        .vs("in-bench executor side", me_idle_cpu),
    ];
    if let Some(store_idle_cpu) = store_idle_cpu {
        figures.push(
            Figure::new(
                format!("{k}.store_idle_cpu_ms_per_s"),
                format!("  PostgreSQL's CPU with N={n} idle, per s"),
                store_idle_cpu,
                "ms/s",
            )
            .vs("the replicas'", gw_idle_cpu),
        );
    }
    figures.extend([
        Figure::new(
            format!("{k}.connected"),
            format!("  executors connected at the measure, of N={n}"),
            connected as f64,
            "",
        ),
        Figure::new(
            format!("{k}.connects_per_s"),
            format!("  executor connects/s, N={n}"),
            n as f64 / connect_secs,
            "conn/s",
        ),
    ]);
    figures.extend(latency_figures(
        &format!("{k}.envs_list"),
        &format!("  envs/list, {shown} connected of {per_ws} in the workspace"),
        &after,
        "none connected",
        &before,
    ));
    let [after_p50, ..] = crate::percentiles(&after);
    let [kept_p50, ..] = crate::percentiles(&kept_chunks);
    figures.push(
        Figure::new(
            format!("{k}.envs_list.kept_chunks_p50_ms"),
            "  the same through reqwest, each chunk kept as it came (as up to session 11), p50",
            kept_p50,
            "ms",
        )
        .vs("over a raw socket, p50", after_p50),
    );
    let [parse_p50, ..] = crate::percentiles(&parse);
    figures.push(Figure::new(
        format!("{k}.envs_list.client_parse_p50_ms"),
        "  the client's parse of that answer, p50",
        parse_p50,
        "ms",
    ));
    figures.push(Figure::new(
        format!("{k}.envs_list.answer_kib"),
        "  the answer's size",
        size as f64 / 1024.0,
        "KiB",
    ));
    figures.extend(latency_figures(
        &format!("{k}.envs_list.page{page}"),
        &format!("  envs/list, a page of {page} (the first)"),
        &paged,
        "the whole answer",
        &after,
    ));
    figures.push(Figure::new(
        format!("{k}.envs_list.page{page}.answer_kib"),
        format!("  the page of {page}'s size"),
        page_size as f64 / 1024.0,
        "KiB",
    ));
    figures.extend(latency_figures(
        &format!("{k}.envs_list.walk{walk_by}"),
        &format!("  envs/list, a whole walk by pages of {walk_by} ({walk_pages} pages, {walked} environments)"),
        &walks,
        "the whole answer",
        &after,
    ));
    figures.push(
        Figure::new(
            format!("{k}.loopback_mb_per_s"),
            "  loopback TCP here and now (best of 5), MB/s",
            loopback,
            "MB/s",
        )
        .vs(
            "the whole answer's size over it, ms",
            size as f64 / 1e6 / loopback * 1e3,
        ),
    );
    eprintln!("fleet N={n}: {:.1} s", t0.elapsed().as_secs_f64());
    Ok(Report {
        figures,
        skipped: vec![],
    })
}
