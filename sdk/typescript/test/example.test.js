// The README's example: the same text as examples/quickstart.ts (compiled by
// `npm run build`, so it type-checks against the package's declarations),
// run with node against a real gateway.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { startWorld } from "./world.js";

const PKG = join(dirname(fileURLToPath(import.meta.url)), "..");
const EXAMPLE = join(PKG, "examples", "quickstart.ts");
const COMPILED = join(PKG, "build", "examples", "quickstart.js");

let world;
before(async () => {
  world = await startWorld();
});
after(async () => {
  await world?.stop();
});

test("the README's example is examples/quickstart.ts", () => {
  const readme = readFileSync(join(PKG, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.includes(readFileSync(EXAMPLE, "utf8")), "README.md has examples/quickstart.ts verbatim in a ```ts block");
});

test("the example runs against a real gateway", async () => {
  assert.ok(existsSync(COMPILED), `${COMPILED} is missing: run \`npm run build\``);
  const { stdout } = await promisify(execFile)(process.execPath, [COMPILED], {
    cwd: PKG,
    env: { ...process.env, EXECGATE_URL: world.url, EXECGATE_TOKEN: world.token },
    timeout: 60_000,
  });
  const lines = stdout.split("\n");
  assert.ok(lines.includes("laptop default=true custom=echo_arg,add"), stdout);
  assert.ok(lines.includes('["Linux\\n","oops\\n",3,false]'), stdout);
  assert.ok(lines.includes("hello, world"), stdout);
  assert.ok(lines.includes("stdout: HELLO FROM TYPESCRIPT") && lines.includes("stderr: bye"), stdout);
  assert.ok(lines.includes("exit code: 0"), stdout);
  assert.ok(lines.includes("EnvNotFound: env_not_found (404)"), stdout);
  assert.equal(stdout.trimEnd().split("\n").pop(), "done");
  assert.ok(!existsSync(join(world.laptopDir, "execgate-demo")));
});
