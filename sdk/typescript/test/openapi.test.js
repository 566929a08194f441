// The SDK's hand-written types, routes and error codes against the
// gateway's own /openapi.json (a real gateway, started here), and the
// checker against wrong types, to show it can fail.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { ERROR_CODES, ROUTES } from "../dist/index.js";
import { checkRoutes, checkWire } from "./openapi-check.js";
import { ROOT, startBareGateway } from "./world.js";

const WIRE = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "src", "wire.ts"), "utf8");

let gateway;
let doc;

before(async () => {
  gateway = await startBareGateway();
  const res = await fetch(`${gateway.url}/openapi.json`);
  assert.equal(res.status, 200);
  doc = await res.json();
});

after(async () => {
  await gateway?.stop();
});

test("every wire type of the SDK matches its component in /openapi.json", () => {
  assert.deepEqual(checkWire(doc, WIRE), []);
});

test("every route the SDK calls is in /openapi.json with its request and answer", () => {
  assert.deepEqual(checkRoutes(doc, ROUTES), []);
  assert.ok(Object.keys(ROUTES).length >= 11);
});

/** `code`-looking words in backticks. */
const backticked = (text) => new Set([...text.matchAll(/`([a-z][a-z0-9]*(?:_[a-z0-9]+)*)`/g)].map((m) => m[1]));

test("every error code the SDK names is one the gateway documents", (t) => {
  const inDoc = backticked(JSON.stringify(doc).replaceAll("\\n", " "));
  const inReadme = backticked(readFileSync(join(ROOT, "README.md"), "utf8"));
  // The gateway's list of stable codes ("Clients match on these").
  const protocol = readFileSync(join(ROOT, "crates", "protocol", "src", "connectors.rs"), "utf8");
  const listed = new Set([...protocol.matchAll(/pub const [A-Z_]+: &str = "([a-z_]+)";/g)].map((m) => m[1]));
  assert.ok(listed.size > 20, "the error_code list was found");
  const unknown = Object.keys(ERROR_CODES).filter((c) => !inDoc.has(c) && !inReadme.has(c) && !listed.has(c));
  assert.deepEqual(unknown, [], "codes the SDK maps that the gateway never answers");
  const onlyInCode = Object.keys(ERROR_CODES).filter((c) => !inDoc.has(c) && !inReadme.has(c));
  if (onlyInCode.length) t.diagnostic(`documented only in crates/protocol (not in /openapi.json or README.md): ${onlyInCode.join(", ")}`);
  // And the other way: every code the document names for the connectors
  // API has a class of its own or falls back on its status sensibly.
  const connectorCodes = [...inDoc].filter((c) => listed.has(c));
  const unmapped = connectorCodes.filter((c) => !(c in ERROR_CODES));
  assert.deepEqual(unmapped, [], "codes /openapi.json names that the SDK does not map");
});

// -- the checker can fail --------------------------------------------------------

/** `WIRE` with `from` replaced by `to` (which must occur). */
function mutate(from, to) {
  assert.ok(WIRE.includes(from), `the source has ${from}`);
  return WIRE.replace(from, to);
}

const broken = [
  ["a field the document does not have", "  next_since?: number | null;", "  next_sinc?: number | null;", /OutputResponse\.next_sinc: not in the document/],
  ["null not accepted where the document allows it", "  exit_code: number | null;\n  session_alive: boolean;", "  exit_code: number;\n  session_alive: boolean;", /OutputResponse\.exit_code: the document allows null/],
  ["an optional field read as required", "  lost_bytes_unknown?: boolean;", "  lost_bytes_unknown: boolean;", /OutputResponse\.lost_bytes_unknown: the document does not require it/],
  ["a request field the document refuses", "  timeout_ms?: number;\n}\n\n/** @request ReadFileArguments", "  timeout_ms?: number;\n  timeout?: number;\n}\n\n/** @request ReadFileArguments", /ShellArguments\.timeout: not in the document/],
  ["a request field of the wrong type", "  pipe_stdin?: boolean;", "  pipe_stdin?: string;", /ExecCommandArguments\.pipe_stdin: the SDK sends string/],
  ["a required request field made optional", "  data_b64: string;\n  eof?: boolean;", "  data_b64?: string;\n  eof?: boolean;", /StdinRequest\.data_b64: the document requires it/],
  ["a signal the document does not have", '"interrupt" | "terminate"', '"interrupt" | "stop"', /SignalRequest\.signal: the SDK sends "stop"/],
  ["an SSE stream name narrower than the document", 'stream: "stdout" | "stderr" | "pty";', 'stream: "stdout" | "stderr";', /SseOutput\.stream: the document allows pty/],
  ["a component that does not exist", "/** @response UploadResponse */", "/** @response UploadAnswer */", /no component UploadAnswer/],
  ["a nested interface of the wrong component", "  chunks: OutputChunk[];", "  chunks: ProcessInfoJson[];", /OutputResponse\.chunks\[\]: the SDK's ProcessInfoJson is ProcessInfo, the document has OutputChunk/],
];

for (const [what, from, to, expected] of broken) {
  test(`the check finds ${what}`, () => {
    const problems = checkWire(doc, mutate(from, to));
    assert.ok(problems.some((p) => expected.test(p)), problems.join("\n") || "no problem found");
  });
}

test("the route check finds a route or a body that is not in the document", () => {
  const wrong = {
    ...ROUTES,
    stdin: { ...ROUTES.stdin, path: "/api/connectors/processes/{sid}/input" },
    output: { ...ROUTES.output, response: "OkResponse" },
  };
  const problems = checkRoutes(doc, wrong);
  assert.ok(problems.some((p) => /stdin: POST .*\/input is not in the document/.test(p)), problems.join("\n"));
  assert.ok(problems.some((p) => /output: 200 answer is OutputResponse, the SDK says OkResponse/.test(p)), problems.join("\n"));
});
