// The client against a real gateway and executors (see world.js).

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import * as execgate from "../dist/index.js";
import { Chunk, Client, LostOutput } from "../dist/index.js";
import { eventually, startWorld } from "./world.js";

let world;
let client;
let laptop;
let gpu;
let scratch;

before(async () => {
  world = await startWorld();
  client = new Client(world.url, world.token);
  laptop = await client.env("laptop");
  gpu = await client.env("gpu");
  scratch = mkdtempSync(join(tmpdir(), "execgate-ts-local-"));
});

after(async () => {
  await world?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const dec = (b) => Buffer.from(b).toString("utf8");

/** Every item of an output iterator: { data (the chunks' bytes), items }. */
async function collect(iterable) {
  const items = [];
  const parts = [];
  for await (const item of iterable) {
    items.push(item);
    if (item instanceof Chunk) parts.push(item.data);
  }
  return { data: Buffer.concat(parts), items };
}

/** A fetch that records each request, and can cut the body of the
 * `nth` answer whose URL matches `match` after `cutAfter` bytes, as a
 * dropped connection would. */
function recordingFetch({ match = null, cutAfter = 0, nth = 1 } = {}) {
  const calls = [];
  let seen = 0;
  const f = async (url, init = {}) => {
    const headers = new Headers(init.headers);
    calls.push({ url: String(url), method: init.method ?? "GET", headers, body: init.body, duplex: init.duplex });
    const res = await fetch(url, init);
    if (!match || !String(url).match(match) || ++seen !== nth || !res.body) return res;
    const reader = res.body.getReader();
    let passed = 0;
    const body = new ReadableStream({
      async pull(ctrl) {
        const { value, done } = await reader.read();
        if (done) return ctrl.close();
        if (passed + value.length >= cutAfter) {
          ctrl.enqueue(value.subarray(0, cutAfter - passed));
          f.passedText += Buffer.from(value.subarray(0, cutAfter - passed)).toString();
          passed = cutAfter;
          reader.cancel().catch(() => {});
          ctrl.error(new TypeError("terminated", { cause: { code: "ECONNRESET" } }));
          return;
        }
        passed += value.length;
        f.passedText += Buffer.from(value).toString();
        ctrl.enqueue(value);
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  f.calls = calls;
  /** What the cut answer passed on before the cut. */
  f.passedText = "";
  return f;
}

// -- environments -------------------------------------------------------------

test("envs by pages", async () => {
  const all = (await client.envs()).map((e) => e.name);
  const byBytes = [...all].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const walked = [];
  let page = await client.envsPage(1);
  for (;;) {
    assert.ok(page.envs.length <= 1);
    walked.push(...page.envs.map((e) => e.name));
    if (page.next === null) break;
    assert.equal(page.next, page.envs[0].name);
    page = await client.envsPage(1, page.next);
  }
  assert.deepEqual(walked, byBytes);
  const whole = await client.envsPage(1000);
  assert.deepEqual([whole.envs.map((e) => e.name), whole.next], [byBytes, null]);
  assert.ok(whole.envs.every((e) => e.tools.length > 0));
  await assert.rejects(client.envsPage(0), (e) => e instanceof execgate.BadRequest && e.code === "bad_request");
});

test("envs and selection", async () => {
  const envs = Object.fromEntries((await client.envs()).map((e) => [e.name, e]));
  for (const n of ["laptop", "gpu", "tiny"]) assert.ok(envs[n], n);
  assert.equal(envs.offline, undefined); // envs/list shows connected ones
  const l = envs.laptop;
  assert.ok(l.isDefault && !envs.gpu.isDefault);
  assert.match(l.lastSeen ?? "", /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  const tools = Object.fromEntries(l.tools.map((t) => [t.name, t]));
  for (const core of ["shell", "read_file", "write_file", "apply_patch", "exec_command", "copy_path", "list_dir"]) {
    assert.equal(tools[core]?.kind, "core", core);
  }
  assert.equal(tools.echo_arg.kind, "custom");
  assert.deepEqual(tools.echo_arg.inputSchema.required, ["text"]);
  assert.deepEqual(l.customTools.map((t) => t.name), ["echo_arg", "add"]);
  assert.equal(l.executor?.kind, "execgate");
  assert.equal((await client.defaultEnv()).name, "laptop");
  assert.equal((await client.env("gpu")).name, "gpu");
  await assert.rejects(client.env("offline"), (e) => e instanceof execgate.EnvNotFound && /offline/.test(e.message));
  assert.match(String(l), /laptop, default/);
});

test("fromEnv reads EXECGATE_URL and EXECGATE_TOKEN", async () => {
  const saved = { url: process.env.EXECGATE_URL, token: process.env.EXECGATE_TOKEN };
  try {
    process.env.EXECGATE_URL = world.url;
    process.env.EXECGATE_TOKEN = world.token;
    assert.equal((await Client.fromEnv().defaultEnv()).name, "laptop");
    delete process.env.EXECGATE_TOKEN;
    assert.throws(() => Client.fromEnv(), (e) => e instanceof execgate.ExecgateError && /EXECGATE_TOKEN/.test(e.message));
  } finally {
    for (const [k, v] of [["EXECGATE_URL", saved.url], ["EXECGATE_TOKEN", saved.token]]) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});

test("custom tools and the generic call", async () => {
  const r = await laptop.custom("echo_arg", { text: "hello" });
  assert.equal(r.stdout, "hello");
  assert.equal(r.exitCode, 0);
  assert.equal((await laptop.custom("add", { a: 2, b: 3 })).stdout, "5\n");
  await assert.rejects(laptop.custom("echo_arg", {}), execgate.BadArguments);
  const raw = await laptop.call("echo_arg", { text: "hi" });
  assert.ok(raw instanceof execgate.ToolResult && !raw.isError);
});

// -- shell --------------------------------------------------------------------

test("shell", async () => {
  let r = await laptop.shell("echo out; echo err >&2; exit 3");
  assert.deepEqual([r.stdout, r.stderr, r.exitCode, r.timedOut], ["out\n", "err\n", 3, false]);
  assert.equal(r.ok, false);
  r = await laptop.shell(["printf", "%s|%s", "a b", "$HOME"]);
  assert.equal(r.stdout, "a b|$HOME");
  assert.ok(r.ok);
  r = await laptop.shell("pwd; echo $GREETING", { cwd: world.root, env: { GREETING: "hi" } });
  assert.equal(r.stdout, `${world.root}\nhi\n`);
  // Relative paths resolve against the executor's --workdir.
  assert.equal((await laptop.shell("pwd")).stdout.trim(), world.laptopDir);
});

test("shell check and timeout", async () => {
  await assert.rejects(laptop.shell("echo boom >&2; exit 4", { check: true }), (e) => {
    assert.ok(e instanceof execgate.CommandFailed);
    assert.equal(e.result.exitCode, 4);
    assert.match(e.message, /boom/);
    return true;
  });
  assert.equal((await laptop.shell("true", { check: true })).exitCode, 0);
  const started = Date.now();
  const r = await laptop.shell("sleep 30", { timeoutMs: 500 });
  assert.ok(r.timedOut && !r.ok);
  assert.ok(Date.now() - started < 10_000);
  await assert.rejects(laptop.shell("sleep 30", { timeoutMs: 300, check: true }), /timed out/);
});

test("a shell command that cannot start is a ToolError", async () => {
  await assert.rejects(laptop.shell(["/no/such/program"]), (e) => e instanceof execgate.ToolError && e.result.isError);
});

// -- files --------------------------------------------------------------------

test("writeFile and readFile", async () => {
  assert.equal(await laptop.writeFile("notes/hello.txt", "héllo\n"), Buffer.byteLength("héllo\n"));
  assert.equal(readFileSync(join(world.laptopDir, "notes/hello.txt"), "utf8"), "héllo\n");
  assert.equal(dec(await laptop.readFile("notes/hello.txt")), "héllo\n");
  assert.equal(await laptop.readText("notes/../notes/hello.txt"), "héllo\n");
  const blob = new Uint8Array(1024).map((_, i) => i % 256);
  await laptop.writeFile(join(world.root, "blob.bin"), blob);
  const back = await laptop.readFile(join(world.root, "blob.bin"));
  assert.ok(back instanceof Uint8Array);
  assert.deepEqual(Buffer.from(back), Buffer.from(blob));
  await assert.rejects(laptop.readFile("no/such/file"), execgate.ToolError);
});

test("listDir", async () => {
  const d = join(world.laptopDir, "listing");
  mkdirSync(join(d, "sub"), { recursive: true });
  for (const name of ["b.txt", "A", "c"]) writeFileSync(join(d, name), name);
  symlinkSync(join(d, "sub"), join(d, "link_sub"));
  symlinkSync(join(d, "nowhere"), join(d, "dangling"));

  const listing = await laptop.listDir("listing");
  assert.deepEqual(listing.entries, [
    { name: "A", kind: "file" },
    { name: "b.txt", kind: "file" },
    { name: "c", kind: "file" },
    { name: "dangling", kind: "other" },
    { name: "link_sub", kind: "directory" },
    { name: "sub", kind: "directory" },
  ]);
  assert.deepEqual([listing.path, listing.total, listing.truncated], ["listing", 6, false]);
  // Absolute paths, and the working directory by default.
  assert.deepEqual((await laptop.listDir(d)).entries, listing.entries);
  assert.ok((await laptop.listDir()).entries.some((e) => e.name === "listing" && e.kind === "directory"));

  const short = await laptop.listDir("listing", { maxEntries: 2 });
  assert.deepEqual(short.entries.map((e) => e.name), ["A", "b.txt"]);
  assert.deepEqual([short.total, short.truncated], [6, true]);

  await assert.rejects(laptop.listDir("listing/missing"), execgate.ToolError);
  await assert.rejects(laptop.listDir("listing/c"), execgate.ToolError);
  await assert.rejects(laptop.listDir("listing", { maxEntries: 0 }), (e) => e instanceof execgate.BadArguments && /max_entries/.test(e.message));
});

test("readFile reads a large file in 8 MiB pages", async () => {
  const size = 9 * 1024 * 1024 + 17;
  const src = join(scratch, "paged.bin");
  writeFileSync(src, randomBytes(size));
  await laptop.upload(src, "paged.bin");
  const f = recordingFetch();
  const env = await new Client(world.url, world.token, { fetch: f }).env("laptop");
  const data = await env.readFile("paged.bin");
  assert.equal(data.length, size);
  assert.ok(Buffer.from(data).equals(readFileSync(src)));
  const offsets = f.calls
    .filter((c) => c.url.endsWith("/tool/call"))
    .map((c) => JSON.parse(c.body))
    .filter((b) => b.tool === "read_file")
    .map((b) => b.arguments.offset);
  assert.deepEqual(offsets, [0, 8 * 1024 * 1024]);
});

test("applyPatch", async () => {
  await laptop.writeFile("p/a.txt", "one\ntwo\n");
  const patch =
    "*** Begin Patch\n*** Add File: p/b.txt\n+new\n" + "*** Update File: p/a.txt\n@@\n one\n-two\n+TWO\n*** End Patch";
  const dry = await laptop.applyPatch(patch, { dryRun: true });
  assert.ok(dry.dryRun && !existsSync(join(world.laptopDir, "p/b.txt")));
  const r = await laptop.applyPatch(patch);
  assert.ok(r.applied);
  assert.deepEqual(Object.fromEntries(r.files.map((f) => [f.path, f.action])), { "p/b.txt": "added", "p/a.txt": "updated" });
  assert.equal(await laptop.readText("p/a.txt"), "one\nTWO\n");
  // A hunk that does not apply: nothing changes, and it throws.
  const bad = "*** Begin Patch\n*** Add File: p/c.txt\n+c\n" + "*** Update File: p/a.txt\n@@\n-nope\n+x\n*** End Patch";
  await assert.rejects(laptop.applyPatch(bad), (e) => e instanceof execgate.ToolError && /p\/a\.txt/.test(e.message) && e.result.isError);
  assert.ok(!existsSync(join(world.laptopDir, "p/c.txt")));
  const unchecked = await laptop.applyPatch(bad, { check: false });
  assert.ok(!unchecked.applied && unchecked.files.some((f) => !f.ok));
  await assert.rejects(
    laptop.applyPatch(patch.replace("Add File: p/b.txt", "Add File: p/d.txt"), { expectedSha256: { "p/a.txt": "0".repeat(64) } }),
    execgate.ToolError,
  );
});

test("upload and download stream", async () => {
  const size = 6 * 1024 * 1024 + 123;
  const src = join(scratch, "big.bin");
  writeFileSync(src, randomBytes(size));
  const sha = createHash("sha256").update(readFileSync(src)).digest("hex");
  const f = recordingFetch();
  const env = await new Client(world.url, world.token, { fetch: f }).env("laptop");
  const up = await env.upload(src, "up/big.bin");
  assert.deepEqual(up, { path: "up/big.bin", bytes: size, sha256: sha });
  assert.equal(statSync(join(world.laptopDir, "up/big.bin")).size, size);
  // Streamed: the body handed to fetch is a stream, not the file's bytes.
  const put = f.calls.find((c) => c.method === "PUT");
  assert.ok(put.body instanceof ReadableStream && put.duplex === "half");
  assert.equal(put.headers.get("content-length"), String(size));

  const dst = join(scratch, "copy.bin");
  const down = await env.download("up/big.bin", dst);
  assert.deepEqual(down, { path: dst, bytes: size, sha256: sha });
  assert.equal(createHash("sha256").update(readFileSync(dst)).digest("hex"), sha);
  assert.deepEqual(readdirSync(scratch).filter((n) => n.endsWith(".part")), []);

  await assert.rejects(env.download("no/such.bin", join(scratch, "x")), execgate.FileNotFound);
  assert.ok(!existsSync(join(scratch, "x")));
  assert.deepEqual(readdirSync(scratch).filter((n) => n.endsWith(".part")), []);
  // create_parents: false refuses a missing directory.
  await assert.rejects(env.upload(src, "nodir/sub/big.bin", { createParents: false }), execgate.ExecgateError);
});

test("copyTo (copy_path) between environments", async () => {
  await laptop.writeFile("tree/a.txt", "A");
  await laptop.writeFile("tree/sub/b.txt", "B");
  await gpu.writeFile("copied/.keep", ""); // copy_path does not create parents
  let r = await laptop.copyTo(gpu, "tree/a.txt", "copied/a.txt");
  assert.deepEqual([r.bytes, r.files], [1, 1]);
  // Two execgate executors verify by BLAKE3 (the test vector of "A").
  assert.equal(r.blake3, "32684bfa28c0c84d6f210511aace0efc5171c7889148ba89208d5aa29705fa98");
  assert.equal(r.sha256, null);
  assert.equal(readFileSync(join(world.gpuDir, "copied/a.txt"), "utf8"), "A");
  r = await laptop.copyPath("gpu", "tree", "tree2", { recursive: true });
  assert.equal(r.files, 2);
  assert.equal(await gpu.readText("tree2/sub/b.txt"), "B");
  await assert.rejects(laptop.copyTo(gpu, "tree", "tree3"), (e) => e instanceof execgate.ToolError && /recursive/.test(e.message));
  await assert.rejects(laptop.copyTo(gpu, "no/such", "x"), execgate.ToolError);
});

// -- processes ----------------------------------------------------------------

test("spawn, stdin, output, wait", async () => {
  const p = await laptop.spawn(["sh", "-c", "cat | tr a-z A-Z; echo bye >&2"]);
  assert.match(p.sid, /^ps_/);
  assert.equal(p.env, "laptop");
  await p.write("hello ");
  await p.write(new TextEncoder().encode("from ts\n"));
  await p.closeStdin();
  const { data, items } = await collect(p.output());
  const byStream = {};
  for (const i of items) byStream[i.stream] = (byStream[i.stream] ?? "") + i.text;
  assert.deepEqual(byStream, { stdout: "HELLO FROM TS\n", stderr: "bye\n" });
  assert.equal(data.length, "HELLO FROM TS\nbye\n".length);
  const seqs = items.map((i) => i.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(p.exitCode, 0);
  assert.ok(p.exited);
  assert.equal(await p.wait({ timeoutMs: 5000 }), 0);
  assert.ok(p.cursor >= Math.max(...seqs));
  await assert.rejects(p.write("late"), execgate.StdinClosed);
});

test("output streams before the process exits", async () => {
  const p = await laptop.spawn(["sh", "-c", "echo first; sleep 1.5; echo second"]);
  const started = Date.now();
  const arrivals = [];
  for await (const item of p.output()) arrivals.push([dec(item.data), Date.now() - started]);
  assert.equal(arrivals.map(([d]) => d).join(""), "first\nsecond\n");
  assert.ok(arrivals[0][1] < 1200, JSON.stringify(arrivals));
  assert.equal(p.exitCode, 0);
});

for (const transport of ["sse", "poll"]) {
  test(`output is resumable (${transport})`, async () => {
    const p = await laptop.spawn(["sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.1; done"]);
    let first;
    for await (const item of p.output({ transport })) {
      first = item;
      break; // stop reading, as a crashed reader would
    }
    assert.ok(first instanceof Chunk);
    assert.equal(dec(first.data), "1\n");
    assert.equal(p.cursor, first.seq);
    const rest = await collect(p.output({ transport }));
    assert.equal(dec(first.data) + dec(rest.data), "1\n2\n3\n4\n5\n");
    // From the start again, and from another handle on the same session.
    const again = await collect(p.output({ since: 0, transport }));
    assert.equal(dec(again.data), "1\n2\n3\n4\n5\n");
    const other = client.process(p.sid);
    assert.equal(dec((await collect(other.output({ transport }))).data), "1\n2\n3\n4\n5\n");
    assert.equal(await other.wait({ timeoutMs: 5000 }), 0);
  });
}

test("a connection dropped mid-stream is resumed with Last-Event-ID: no duplicates, no gaps", async () => {
  // 200 numbered lines, written slowly enough to come as many events.
  const script = "for i in $(seq 1 200); do echo line-$i; [ $((i % 20)) = 0 ] && sleep 0.05; done";
  for (const cutAfter of [1, 150, 2000]) {
    // Cut the first stream answer after `cutAfter` bytes: mid-event for
    // most values, so the partial event must be dropped, not delivered.
    const f = recordingFetch({ match: /\/stream$/, cutAfter });
    const c = new Client(world.url, world.token, { fetch: f });
    const p = await (await c.env("laptop", { check: false })).spawn(["sh", "-c", script]);
    const { data, items } = await collect(p.output({ transport: "sse" }));
    const want = Array.from({ length: 200 }, (_, i) => `line-${i + 1}\n`).join("");
    assert.equal(dec(data), want, `cut after ${cutAfter} bytes`);
    const seqs = items.map((i) => i.seq);
    assert.equal(new Set(seqs).size, seqs.length, "no seq twice");
    assert.ok(items.every((i) => i instanceof Chunk), "nothing reported lost");
    const streams = f.calls.filter((x) => x.url.endsWith("/stream"));
    assert.ok(streams.length >= 2, `reconnected (${streams.length} stream requests)`);
    assert.equal(streams[0].headers.get("last-event-id"), "0");
    // The second request resumed after the last event complete before the
    // cut (what was delivered), not before it (duplicates) or after it.
    const complete = f.passedText.split("\n\n").slice(0, -1).join("\n");
    const ids = [...complete.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
    const lastComplete = ids.length ? Math.max(...ids) : 0;
    if (cutAfter >= 2000) assert.ok(lastComplete > 0, "the cut came after some events");
    assert.equal(streams[1].headers.get("last-event-id"), String(lastComplete));
    assert.equal(p.exitCode, 0);
  }
});

for (const transport of ["sse", "poll"]) {
  test(`lost output is surfaced as an item (${transport})`, async () => {
    const tiny = await client.env("tiny");
    // 40 KB through a 4 KiB buffer with nothing on disk: most is dropped.
    const script = "for i in $(seq 20); do head -c 2000 /dev/zero | tr '\\0' x; sleep 0.01; done; echo end";
    const p = await tiny.spawn(["sh", "-c", script]);
    assert.equal(await p.wait({ timeoutMs: 10_000 }), 0);
    const { data, items } = await collect(p.output({ transport }));
    const lost = items.filter((i) => i instanceof LostOutput);
    assert.equal(lost.length, 1, JSON.stringify(items.map((i) => i.kind)));
    assert.ok(items[0] instanceof LostOutput && items[0].kind === "lost");
    assert.equal(lost[0].fromSeq, 1);
    assert.ok(lost[0].bytes > 0);
    assert.ok(dec(data).endsWith("end\n"));
    assert.equal(lost[0].bytes + data.length, 40000 + 4);
    // Items come in seq order, the lost range just before the first chunk.
    const chunks = items.filter((i) => i instanceof Chunk);
    assert.equal(chunks[0].seq, lost[0].toSeq + 1);
  });
}

test("wait timeout, poll, terminate and the process list", async () => {
  const p = await laptop.spawn("sleep 60");
  assert.equal(await p.poll(), null);
  await assert.rejects(p.wait({ timeoutMs: 500 }), (e) => e instanceof execgate.WaitTimeout && e.code === "wait_timeout");
  await p.terminate();
  const code = await p.wait({ timeoutMs: 10_000 });
  assert.ok(p.exited);
  assert.equal(code, p.exitCode);
  const info = (await client.processes()).find((i) => i.sid === p.sid);
  assert.deepEqual([info.status, info.env, info.command], ["exited", "laptop", ["sh", "-c", "sleep 60"]]);
  assert.equal((await client.processes({ limit: 1 })).length, 1);
});

test("Symbol.asyncDispose (await using) terminates the process", async () => {
  // Node 20 has no `await using` syntax; TypeScript compiles it to this call.
  const p = await laptop.spawn(["sleep", "60"]);
  const sid = p.sid;
  await p[Symbol.asyncDispose]();
  // It was terminated: it ends well before its 60 s.
  await client.process(sid).wait({ timeoutMs: 10_000 });
  const info = (await client.processes()).find((i) => i.sid === sid);
  assert.equal(info.status, "exited");
});

test("tty, resize and signal", async () => {
  const script = "stty size; read x; stty size; echo got $x";
  const p = await laptop.spawn(["sh", "-c", script], { tty: true, cols: 100, rows: 30 });
  let seen = "";
  for await (const item of p.output()) {
    assert.ok(item instanceof Chunk && item.stream === "pty");
    seen += item.text;
    if (seen.includes("30 100")) break;
  }
  await p.resize(120, 40);
  await p.write("abc\n");
  const { data, items } = await collect(p.output());
  assert.deepEqual(new Set(items.map((i) => i.stream)), new Set(["pty"]));
  assert.ok(dec(data).includes("40 120") && dec(data).includes("got abc"), dec(data));
  const q = await laptop.spawn(["sleep", "60"]);
  await assert.rejects(q.resize(80, 24), execgate.NotATerminal);
  await q.signal("interrupt");
  assert.notEqual(await q.wait({ timeoutMs: 10_000 }), undefined);
  assert.ok(q.exited);
});

// -- errors -------------------------------------------------------------------

test("auth errors", async () => {
  const bad = new Client(world.url, "egp_wrong");
  await assert.rejects(bad.envs(), (e) => e instanceof execgate.AuthError && e.code === "invalid_token" && e.status === 401);
  const noHeader = (url, init) => {
    const h = new Headers(init.headers);
    h.delete("authorization");
    return fetch(url, { ...init, headers: h });
  };
  await assert.rejects(new Client(world.url, "unused", { fetch: noHeader }).envs(), (e) => e instanceof execgate.AuthError && e.code === "missing_bearer");
});

test("environment errors", async () => {
  await assert.rejects((await client.env("offline", { check: false })).shell("true"), (e) => {
    assert.ok(e instanceof execgate.ExecutorUnavailable && e instanceof execgate.ServerError);
    assert.deepEqual([e.status, e.code], [503, "executor_unavailable"]);
    assert.ok(e.retryAfter > 0);
    assert.match(e.detail, /offline/);
    return true;
  });
  await assert.rejects((await client.env("nowhere", { check: false })).shell("true"), (e) => {
    assert.ok(e instanceof execgate.EnvNotFound && e instanceof execgate.NotFound);
    assert.deepEqual([e.status, e.code], [404, "env_not_found"]);
    return true;
  });
});

test("request errors", async () => {
  await assert.rejects(laptop.call("no_such_tool"), (e) => e instanceof execgate.UnknownTool && e.code === "unknown_tool");
  await assert.rejects(laptop.call("shell", { command: 5 }), (e) => {
    assert.ok(e instanceof execgate.BadArguments && e instanceof execgate.BadRequest);
    assert.equal(e.status, 400);
    assert.match(e.message, /command/);
    return true;
  });
});

test("a transport error is a TransportError", async () => {
  const dead = new Client("http://127.0.0.1:1", world.token);
  await assert.rejects(dead.envs(), (e) => e instanceof execgate.TransportError && e.status === null && e.code === "transport");
  const slow = new Client(world.url, world.token, { timeoutMs: 200 });
  await assert.rejects((await slow.env("laptop", { check: false })).call("shell", { command: "sleep 5" }), (e) => e instanceof execgate.TransportError && e.code === "timeout");
});

test("session errors", async () => {
  await assert.rejects(client.process("ps_nosuchsession").wait({ timeoutMs: 1000 }), execgate.SessionNotFound);
  const p = await laptop.spawn(["sleep", "60"]);
  // Another workspace's session answers exactly as an unknown one: 404.
  await assert.rejects(new Client(world.url, world.otherToken).process(p.sid).terminate(), execgate.SessionNotFound);
  await p.terminate();
  // An exited process is forgotten after its retention (2 s on `tiny`).
  const q = await (await client.env("tiny")).spawn(["true"]);
  assert.equal(await q.wait({ timeoutMs: 10_000 }), 0);
  const expired = await eventually(15_000, "the session to expire", async () => {
    try {
      await client.process(q.sid).poll();
    } catch (e) {
      if (e instanceof execgate.SessionExpired) return e;
      throw e;
    }
    return null;
  }, 300);
  assert.equal(expired.status, 410);
  await assert.rejects(collect(client.process(q.sid).output()), execgate.SessionExpired);
});

test("an executor restart is reported (runs last: restarts gpu)", async () => {
  const p = await gpu.spawn(["sleep", "20"]);
  await world.restartGpu();
  const e = await eventually(30_000, "the new executor to connect", async () => {
    try {
      await p.poll();
    } catch (e) {
      if (e instanceof execgate.ExecutorRestarted) return e;
      if (!(e instanceof execgate.ExecutorUnavailable)) throw e;
    }
    return null;
  }, 200);
  assert.equal(e.code, "executor_restarted");
  await assert.rejects(p.terminate(), (e) => e instanceof execgate.ExecutorRestarted && e.status === 410);
  await assert.rejects(collect(p.output()), execgate.ExecutorRestarted);
  await assert.rejects(collect(p.output({ transport: "poll" })), execgate.ExecutorRestarted);
});
