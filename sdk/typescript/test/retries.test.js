// Retries of mutating calls with an Idempotency-Key, against the real
// gateway, through a fetch that loses answers (the request reaches the
// gateway, the client sees a broken connection) or answers 503 once.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Client, ExecgateError, retryDelayMs } from "../dist/index.js";
import { startWorld } from "./world.js";

let world;
let scratch;

before(async () => {
  world = await startWorld();
  scratch = mkdtempSync(join(tmpdir(), "execgate-ts-retries-"));
});

after(async () => {
  await world?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** A fetch that records each request and fails the first attempt of each
 * request with an idempotency key: "lost" sends it, then throws as a
 * broken connection does; "503" answers 503 without sending it. */
function flakyFetch(mode) {
  const calls = [];
  const failed = new Set();
  const f = async (url, init = {}) => {
    const key = new Headers(init.headers).get("idempotency-key");
    calls.push({ url: String(url), key });
    if (key && !failed.has(key)) {
      failed.add(key);
      if (mode === "503") {
        return new Response(JSON.stringify({ error: { code: "executor_unavailable", message: "flaky" } }), {
          status: 503,
          headers: { "content-type": "application/json", "retry-after": "0" },
        });
      }
      const res = await fetch(url, init);
      await res.arrayBuffer();
      throw new TypeError("fetch failed", { cause: new Error("the answer was lost") });
    }
    return fetch(url, init);
  };
  return { f, calls };
}

const keysOf = (calls, end) => calls.filter((c) => new URL(c.url).pathname.endsWith(end)).map((c) => c.key);

for (const mode of ["lost", "503"]) {
  test(`a ${mode} answer is retried with the same key and done once`, async () => {
    const { f, calls } = flakyFetch(mode);
    const client = new Client(world.url, world.token, { fetch: f });
    const env = await client.env("laptop");
    const marker = `retry-${mode}-${randomBytes(4).toString("hex")}`;

    const r = await env.shell(`echo x >> ${marker}.txt; cat ${marker}.txt`);
    assert.equal(r.stdout, "x\n", "the shell ran once");
    const sent = keysOf(calls, "/tool/call");
    assert.equal(sent.length, 2);
    assert.equal(sent[0], sent[1]);
    assert.match(sent[0], /^egk_[0-9a-f]{32}$/);

    const p = await env.spawn(["sh", "-c", `sleep 30 # ${marker}`]);
    try {
      const listed = (await client.processes()).filter((x) => x.command.join(" ").includes(marker));
      assert.deepEqual(
        listed.map((x) => x.sid),
        [p.sid],
        "one process started",
      );
      await p.write("data");
      assert.equal(keysOf(calls, "/stdin").length, 2);
    } finally {
      await p.terminate();
    }
    assert.equal(new Set(keysOf(calls, "/terminate")).size, 1);

    // Every call has its own key; reads have none.
    await env.writeFile(`${marker}.bin`, "one");
    await env.writeFile(`${marker}.bin`, "two");
    const w = keysOf(calls, "/tool/call").slice(-4);
    assert.equal(w[0], w[1]);
    assert.equal(w[2], w[3]);
    assert.notEqual(w[1], w[2]);
    assert.equal(Buffer.from(await env.readFile(`${marker}.bin`)).toString(), "two");
    assert.equal(calls.at(-1).key, null);
  });
}

test("an upload is retried whole", async () => {
  const { f, calls } = flakyFetch("lost");
  const client = new Client(world.url, world.token, { fetch: f });
  const env = await client.env("laptop");
  const local = join(scratch, "up.bin");
  writeFileSync(local, Buffer.alloc(300_000, "z"));
  const r = await env.upload(local, "ts-retries/up.bin");
  assert.equal(r.bytes, 300_000);
  const sent = keysOf(calls, "/files");
  assert.equal(sent.length, 2);
  assert.equal(sent[0], sent[1]);
  assert.equal(readFileSync(join(world.laptopDir, "ts-retries/up.bin")).length, 300_000);
});

test("retries are bounded", async () => {
  let n = 0;
  const f = async () => {
    n++;
    return new Response(JSON.stringify({ error: { code: "unavailable", message: "x" } }), { status: 503 });
  };
  const client = new Client(world.url, world.token, { fetch: f, retries: 2 });
  const env = await client.env("laptop", { check: false });
  await assert.rejects(env.writeFile("x", "x"), (e) => e instanceof ExecgateError && e.code === "unavailable");
  assert.equal(n, 3);
});

test("retry delays back off and honour Retry-After", () => {
  const d1 = retryDelayMs(1);
  assert.ok(d1 >= 125 && d1 <= 250, String(d1));
  const d5 = retryDelayMs(5);
  assert.ok(d5 >= 2000 && d5 <= 4000, String(d5));
  assert.equal(retryDelayMs(1, "3"), 3000);
  assert.equal(retryDelayMs(1, "999"), 10000);
  assert.ok(retryDelayMs(1, "soon") <= 250);
});
