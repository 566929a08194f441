// The SSE parser on its own: events split anywhere across reads.

import assert from "node:assert/strict";
import { test } from "node:test";

import { LineSplitter, SseDecoder } from "../dist/sse.js";

function parse(pieces) {
  const lines = new LineSplitter();
  const dec = new SseDecoder();
  const events = [];
  for (const p of pieces) {
    for (const line of lines.push(p)) {
      const ev = dec.feed(line);
      if (ev) events.push(ev);
    }
  }
  return events;
}

const STREAM =
  ": keepalive\n\nevent: output\nid: 1\ndata: {\"a\":1}\n\n" +
  "event: lost\r\nid: 7\r\ndata: x\r\ndata:y\r\n\r\n" +
  "data: plain\rid:9\r\revent: exit\nid: 10\ndata: {}\n\n" +
  "event: output\nid: 11\ndata: {\"partial";

const WANT = [
  { event: "output", data: '{"a":1}', id: "1" },
  { event: "lost", data: "x\ny", id: "7" },
  { event: "message", data: "plain", id: "9" },
  { event: "exit", data: "{}", id: "10" },
];

test("events, comments, CRLF and CR line ends; an unfinished event is not delivered", () => {
  assert.deepEqual(parse([STREAM]), WANT);
});

test("the same events whatever the split points", () => {
  for (let i = 0; i <= STREAM.length; i++) {
    for (const j of [i, Math.min(STREAM.length, i + 1), Math.min(STREAM.length, i + 7)]) {
      assert.deepEqual(parse([STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)]), WANT, `split at ${i}, ${j}`);
    }
  }
});
