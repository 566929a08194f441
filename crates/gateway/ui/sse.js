// Server-Sent Events over fetch(). EventSource cannot send an
// Authorization header, and the gateway takes the token from that header
// only (never from the URL, where logs and history would keep it), so the
// console reads the stream with fetch() and parses the events itself.

import { raw } from "./api.js";

/**
 * Reads `url` as an event stream until it ends, the signal aborts, or the
 * connection breaks (then it throws). onEvent({event, id, data}).
 */
export async function readEvents(url, { lastEventId, signal, onEvent }) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId !== undefined && lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
  const resp = await raw("GET", url, { headers, signal });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { event: "message", data: [], id: undefined };
  try {
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (ev.data.length) onEvent({ event: ev.event, id: ev.id, data: ev.data.join("\n") });
        ev = { event: "message", data: [], id: undefined };
        continue;
      }
      if (line.startsWith(":")) continue; // keepalive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "event") ev.event = val;
      else if (field === "data") ev.data.push(val);
      else if (field === "id") ev.id = val;
    }
  }
  } finally {
    // An event handler that threw (an `error` event) ends the request too.
    reader.cancel().catch(() => {});
  }
}
