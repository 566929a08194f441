// Starts the real `execgate` gateway and executors on 127.0.0.1 with a
// temporary data dir: the Node twin of tests/execgate_fixtures.py and
// sdk/python/tests/conftest.py, with the same world.
//
// The binary is $EXECGATE_BIN, by default target/debug/execgate of this
// checkout (`cargo build -p execgate`).
//
// Workspace w1 with environments `laptop` (default, with the custom tools of
// tests/fixtures/custom-tools.toml), `gpu` (a second executor), `tiny` (4 KiB
// of output per process, nothing on disk, exited processes forgotten after
// 2 s), plus `offline` (added but never started); workspace w2 with its own
// token.

import { execFileSync, spawn } from "node:child_process";
import { accessSync, constants, mkdirSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const BIN = process.env.EXECGATE_BIN || join(ROOT, "target", "debug", "execgate");
export const CUSTOM_TOOLS = join(ROOT, "tests", "fixtures", "custom-tools.toml");
const LISTENING = "execgate gateway listening on ";

export function requireBin() {
  try {
    accessSync(BIN, constants.X_OK);
  } catch {
    throw new Error(`no execgate binary at ${BIN}: run \`cargo build -p execgate\` or set EXECGATE_BIN`);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Calls `poll` every `interval` ms until it returns something other than
 * null/undefined/false, and returns that; fails naming `what` after `timeoutMs`. */
export async function eventually(timeoutMs, what, poll, interval = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await poll();
    if (got !== null && got !== undefined && got !== false) return got;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(interval);
  }
}

/** `execgate admin --data-dir D ARGS…`: the last line of stdout. */
export function admin(dataDir, ...args) {
  const out = execFileSync(BIN, ["admin", "--data-dir", dataDir, ...args], { encoding: "utf8", timeout: 60_000 });
  return out.trim().split("\n").pop();
}

function addExecutor(dataDir, workspace, name, isDefault = false) {
  return admin(dataDir, "executor", "add", "--workspace", workspace, "--name", name, ...(isDefault ? ["--default"] : []));
}

const childEnv = () => ({ ...process.env, EXECGATE_LOG: "info" });

/** `execgate serve` on a free port: { proc, url } once it listens. */
export async function startGateway(dataDir, ...args) {
  const log = openSync(join(dataDir, "gateway.log"), "a");
  const proc = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, ...args], {
    stdio: ["ignore", "pipe", log],
    env: childEnv(),
  });
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error("the gateway did not start in 30 s; see gateway.log")), 30_000);
    proc.once("exit", (code) => reject(new Error(`the gateway exited (${code}); see ${dataDir}/gateway.log`)));
    // Read to the end, so that the gateway never writes to a full pipe.
    createInterface({ input: proc.stdout }).on("line", (line) => {
      if (line.startsWith(LISTENING)) {
        clearTimeout(timer);
        resolveUrl(line.slice(LISTENING.length).trim());
      }
    });
  });
  return { proc, url };
}

export function startExecutor(url, token, workdir, ...extra) {
  const log = openSync(`${workdir}-executor.log`, "a");
  return spawn(BIN, ["executor", "--gateway", url, "--token", token, "--workdir", workdir, ...extra], {
    stdio: ["ignore", "ignore", log],
    env: childEnv(),
  });
}

async function kill(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const gone = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGKILL");
  await gone;
}

/** The names of the connected environments (envs/list). */
export async function envNames(url, token) {
  const r = await fetch(`${url}/api/connectors/envs/list`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: "{}",
  });
  const body = await r.json();
  return new Set((body.envs ?? []).map((e) => e.name));
}

/** Starts a gateway alone (no executors): { url, stop() }. */
export async function startBareGateway() {
  requireBin();
  const root = mkdtempSync(join(tmpdir(), "execgate-ts-"));
  const data = join(root, "data");
  mkdirSync(data);
  const { proc, url } = await startGateway(data);
  return {
    url,
    async stop() {
      await kill(proc);
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** Starts the world described at the top; `await world.stop()` ends it. */
export async function startWorld() {
  requireBin();
  const root = mkdtempSync(join(tmpdir(), "execgate-ts-"));
  const dirs = Object.fromEntries(["data", "laptop", "gpu", "tiny"].map((d) => [d, join(root, d)]));
  for (const d of Object.values(dirs)) mkdirSync(d);
  const data = dirs.data;
  admin(data, "workspace", "create", "w1");
  const token = admin(data, "token", "create", "--workspace", "w1");
  const laptopToken = addExecutor(data, "w1", "laptop", true);
  const gpuToken = addExecutor(data, "w1", "gpu");
  const tinyToken = addExecutor(data, "w1", "tiny");
  addExecutor(data, "w1", "offline");
  admin(data, "workspace", "create", "w2");
  const otherToken = admin(data, "token", "create", "--workspace", "w2");

  const { proc: gateway, url } = await startGateway(data);
  const procs = [gateway];
  const world = {
    url,
    token,
    otherToken,
    root,
    laptopDir: dirs.laptop,
    gpuDir: dirs.gpu,
    tinyDir: dirs.tiny,
    procs,
    async stop() {
      for (const p of procs) await kill(p);
      rmSync(root, { recursive: true, force: true });
    },
    /** Kills the `gpu` executor and starts a fresh one. */
    async restartGpu() {
      await kill(procs[2]);
      procs[2] = startExecutor(url, gpuToken, dirs.gpu);
    },
  };
  try {
    procs.push(startExecutor(url, laptopToken, dirs.laptop, "--tools", CUSTOM_TOOLS));
    procs.push(startExecutor(url, gpuToken, dirs.gpu));
    procs.push(
      startExecutor(url, tinyToken, dirs.tiny, "--retain-bytes", "4096", "--spill-bytes", "0", "--exited-retention-secs", "2"),
    );
    await eventually(40_000, "laptop, gpu and tiny to connect", async () => {
      const names = await envNames(url, token);
      return ["laptop", "gpu", "tiny"].every((n) => names.has(n));
    });
  } catch (e) {
    await world.stop();
    throw e;
  }
  return world;
}
