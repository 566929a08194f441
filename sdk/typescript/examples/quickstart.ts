import { Client, ExecgateError } from "execgate";

const client = Client.fromEnv(); // EXECGATE_URL, EXECGATE_TOKEN (`execgate up` prints both)
for (const env of await client.envs()) {
  console.log(`${env.name} default=${env.isDefault} custom=${env.customTools.map((t) => t.name)}`);
}

// Run a command: a non-zero exit is a result, not an exception.
const env = await client.defaultEnv();
const r = await env.shell("uname -s; echo oops >&2; exit 3");
console.log(JSON.stringify([r.stdout, r.stderr, r.exitCode, r.timedOut]));

// Files: write, patch, read.
await env.writeFile("execgate-demo/hello.txt", "hello\n");
await env.applyPatch(
  "*** Begin Patch\n*** Update File: execgate-demo/hello.txt\n@@\n-hello\n+hello, world\n*** End Patch",
);
console.log(await env.readText("execgate-demo/hello.txt"));

// A long-running process: stdin, EOF, streamed output (resumed after a
// dropped connection; output the executor had to drop is an item).
{
  await using p = await env.spawn(["sh", "-c", "tr a-z A-Z; echo bye >&2"]);
  await p.write("hello from typescript\n");
  await p.closeStdin();
  for await (const item of p.output()) {
    if (item.kind === "lost") console.log(`[${item.bytes ?? "?"} bytes of output were lost]`);
    else process.stdout.write(`${item.stream}: ${item.text}`);
  }
  console.log("exit code:", await p.wait({ timeoutMs: 10_000 }));
}

// Errors are typed by the gateway's error code.
try {
  await (await client.env("no-such-env", { check: false })).shell("true");
} catch (e) {
  if (!(e instanceof ExecgateError)) throw e;
  console.log(`${e.name}: ${e.code} (${e.status})`);
}

await env.shell("rm -rf execgate-demo", { check: true });
console.log("done");
