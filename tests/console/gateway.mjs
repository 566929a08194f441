// Starts the real binaries for the console tests, as tests/execgate_fixtures.py
// does for the Python suites: `execgate admin` for the workspace, proxy token
// and executor token, `execgate serve` on a free port of 127.0.0.1 (the
// gateway says which), `execgate executor` in a scratch working directory.
// $EXECGATE_BIN, default target/debug/execgate of this checkout.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BIN = process.env.EXECGATE_BIN || join(ROOT, "target", "debug", "execgate");
const LISTENING = "execgate gateway listening on ";
const ENV = { ...process.env, EXECGATE_LOG: "info" };

/** `execgate admin --data-dir D ARGS…`: the last line of stdout. */
function admin(dataDir, ...args) {
  const out = execFileSync(BIN, ["admin", "--data-dir", dataDir, ...args], { encoding: "utf8", env: ENV });
  return out.trim().split("\n").pop();
}

export async function waitFor(what, poll, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await poll();
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A gateway with workspace `console`, its proxy token, and executors
 * `local` (default) and `tiny` connected: {url, proxyToken, adminToken, workdir, dir, stop()}.
 */
export async function startGateway() {
  const dir = mkdtempSync(join(tmpdir(), "execgate-console-"));
  const dataDir = join(dir, "data");
  const workdir = join(dir, "work");
  mkdirSync(workdir);
  admin(dataDir, "workspace", "create", "console");
  const proxyToken = admin(dataDir, "token", "create", "--workspace", "console");
  const exeToken = admin(dataDir, "executor", "add", "--workspace", "console", "--name", "local", "--default");
  // `tiny` keeps 16 KiB of output per process and nothing on disk, so that
  // a test can make it drop output.
  const tinyToken = admin(dataDir, "executor", "add", "--workspace", "console", "--name", "tiny");

  const procs = [];
  const gw = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir], {
    env: ENV, stdio: ["ignore", "pipe", openSync(join(dir, "gateway.log"), "a")],
  });
  procs.push(gw);
  const stop = () => { for (const p of procs) p.kill("SIGKILL"); };
  let url;
  try {
    url = await new Promise((resolveUrl, reject) => {
      const timer = setTimeout(() => reject(new Error(`the gateway did not start; see ${dir}/gateway.log`)), 30000);
      gw.on("exit", (code) => reject(new Error(`the gateway exited (${code}); see ${dir}/gateway.log`)));
      // Read to the end, so that the gateway never writes to a full pipe.
      createInterface({ input: gw.stdout }).on("line", (line) => {
        if (line.startsWith(LISTENING)) { clearTimeout(timer); resolveUrl(line.slice(LISTENING.length).trim()); }
      });
    });
    const adminToken = readFileSync(join(dataDir, "admin-token"), "utf8").trim();
    procs.push(spawn(BIN, ["executor", "--gateway", url, "--token", exeToken, "--workdir", workdir], {
      env: ENV, stdio: ["ignore", "ignore", openSync(join(dir, "executor.log"), "a")],
    }));
    const tinyDir = join(dir, "tiny");
    mkdirSync(tinyDir);
    procs.push(spawn(BIN, ["executor", "--gateway", url, "--token", tinyToken, "--workdir", tinyDir,
      "--retain-bytes", "16384", "--spill-bytes", "0"], {
      env: ENV, stdio: ["ignore", "ignore", openSync(join(dir, "tiny.log"), "a")],
    }));
    await waitFor("the executors to connect", async () => {
      const resp = await fetch(`${url}/api/connectors/envs/list`, {
        method: "POST", headers: { Authorization: `Bearer ${proxyToken}` }, body: "{}",
      });
      const body = await resp.json();
      const names = (body.envs || []).map((e) => e.name);
      return names.includes("local") && names.includes("tiny");
    });
    return { url, proxyToken, adminToken, workdir, dir, stop };
  } catch (err) {
    stop();
    throw err;
  }
}
