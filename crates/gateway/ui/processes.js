// Processes: the workspace's sessions (GET /processes) and one process
// opened live: its output as it arrives (the SSE stream, read with fetch;
// see sse.js), lost output marked where it happened, stdin, signals,
// terminate. A `tty: true` process (its output is stream `pty`) opens in a
// terminal emulator instead (terminal.js): keys go to its stdin, and the
// terminal's size to the process (resize).

import { connectors, ApiError } from "./api.js";
import { readEvents } from "./sse.js";
import { h, clear, errorBox, guarded, fmtTime, badge, b64ToBytes, bytesToB64 } from "./dom.js";
import { openTerminal } from "./terminal.js";

/** Stream errors after which reconnecting cannot help. */
const FINAL = new Set(["session_expired", "executor_restarted", "session_not_found", "invalid_token", "missing_bearer", "env_not_found", "forbidden"]);
const RETRIES = 5;

let current = null; // the open process: {abort(), term}

function closeCurrent() {
  if (!current) return;
  current.abort();
  if (current.term) current.term.dispose();
  current = null;
}

function statusBadge(p) {
  const kind = p.status === "running" ? "ok" : p.status === "exited" ? "" : "bad";
  return badge(p.status, kind);
}

function table(procs, open) {
  if (!procs.length) return h("p", { class: "muted" }, "No processes yet. Start one from the Run view.");
  return h("div", { class: "scroll" }, h("table", { id: "process-table" },
    h("thead", {}, h("tr", {}, ["session", "env", "command", "started", "status", "exit", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, procs.map((p) => h("tr", { "data-sid": p.sid },
      h("td", { class: "mono" }, p.sid),
      h("td", {}, p.env),
      h("td", { class: "mono" }, p.command.join(" ")),
      h("td", {}, fmtTime(p.started_at)),
      h("td", {}, statusBadge(p)),
      h("td", {}, p.exit_code ?? ""),
      h("td", {}, h("button", { type: "button", onclick: () => open(p.sid) }, "Open")))))));
}

/** The live pane of one process. */
function openProcess(pane, sid, onChange, { tty } = {}) {
  closeCurrent();
  const ctl = new AbortController();
  current = { abort: () => ctl.abort(), term: null };
  const out = h("pre", { class: "out", id: "proc-output", "aria-live": "polite" });
  const state = h("span", { class: "status", id: "proc-state" }, "connecting…");
  const slot = h("div", {});
  const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder(), pty: new TextDecoder() };
  let lastId = null;
  let ended = false;

  // The terminal, once the process shows it has one: output waits in
  // `pending` while xterm.js loads.
  const termBox = h("div", { class: "term", id: "proc-term", hidden: true });
  let term = null;
  let pending = null;
  let stdinChain = Promise.resolve();
  const sendKeys = (data) => {
    const b64 = bytesToB64(new TextEncoder().encode(data));
    stdinChain = stdinChain.then(() => connectors.stdin(sid, b64, false)).catch((err) => clear(slot, errorBox(err)));
  };
  const startTerminal = () => {
    if (pending) return;
    pending = [];
    termBox.hidden = false;
    out.hidden = true;
    lineInput.hidden = true;
    openTerminal(termBox, {
      onData: sendKeys,
      onResize: (cols, rows) => {
        termBox.dataset.size = `${rows} ${cols}`;
        guarded(slot, () => connectors.resize(sid, cols, rows));
      },
    }).then((t) => {
      term = t;
      for (const b of pending) t.write(b);
      pending = [];
      current.term = t;
      t.focus();
    }).catch((err) => clear(slot, errorBox(err)));
  };
  const toTerminal = (bytes) => { if (term) term.write(bytes); else pending.push(bytes); };

  const put = (text, cls) => {
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.append(cls ? h("span", { class: cls }, text) : text);
    if (atBottom) out.scrollTop = out.scrollHeight;
  };

  const onEvent = ({ event, id, data }) => {
    if (id !== undefined) lastId = id;
    const d = JSON.parse(data || "{}");
    if (event === "output" && (d.stream === "pty" || pending)) {
      startTerminal();
      toTerminal(b64ToBytes(d.data_b64));
    } else if (event === "output") {
      const dec = decoders[d.stream] || decoders.stdout;
      put(dec.decode(b64ToBytes(d.data_b64), { stream: true }), d.stream === "stderr" ? "stderr" : null);
    } else if (event === "lost") {
      const bytes = d.bytes === null || d.bytes === undefined ? "an unknown number of" : d.bytes;
      if (pending) toTerminal(new TextEncoder().encode(`\r\n\x1b[7m[${bytes} bytes of output lost here]\x1b[0m\r\n`));
      else put(`[${bytes} bytes of output lost here (seq ${d.from_seq}–${d.to_seq}): the executor dropped them before they were read]`, "lost");
    } else if (event === "exit") {
      ended = true;
      state.textContent = `exited with code ${d.exit_code ?? "none (killed by a signal)"}`;
      state.dataset.exit = d.exit_code ?? "";
      onChange();
    } else if (event === "error") {
      throw new ApiError(0, d.code, d.message);
    }
  };

  const follow = async () => {
    let tries = 0;
    while (!ended && !ctl.signal.aborted) {
      try {
        state.textContent = "live";
        await readEvents(`/api/connectors/processes/${encodeURIComponent(sid)}/stream`, { lastEventId: lastId, signal: ctl.signal, onEvent });
        tries = 0;
        if (!ended) {
          put("[the stream ended; reconnecting]", "sys");
          await new Promise((r) => setTimeout(r, 1000));
        }
      } catch (err) {
        if (ctl.signal.aborted) return;
        if (FINAL.has(err.code) || ++tries > RETRIES) {
          state.textContent = "not live";
          clear(slot, errorBox(err), h("button", { type: "button", onclick: () => { tries = 0; clear(slot); follow(); } }, "Reconnect"));
          return;
        }
        put(`[${err.code}: ${err.message}; resuming after seq ${lastId ?? 0}]`, "sys");
        await new Promise((r) => setTimeout(r, 1000 * tries));
      }
    }
  };

  const stdin = h("input", { id: "proc-stdin", placeholder: "a line for stdin (Enter sends it with a newline)", spellcheck: "false" });
  const eof = h("input", { type: "checkbox", id: "proc-eof" });
  const sendStdin = (e) => {
    e.preventDefault();
    const bytes = new TextEncoder().encode(stdin.value + (stdin.value || !eof.checked ? "\n" : ""));
    guarded(slot, async () => {
      await connectors.stdin(sid, bytesToB64(eof.checked && !stdin.value ? new Uint8Array() : bytes), eof.checked);
      stdin.value = "";
    });
  };
  const signal = h("select", { id: "proc-signal" }, ["interrupt", "terminate", "kill", "hangup"].map((s) => h("option", { value: s }, s)));

  const lineInput = h("form", { class: "row", id: "proc-stdin-form", onsubmit: sendStdin },
    h("label", {}, "stdin ", stdin),
    h("label", { class: "inline" }, eof, "then close stdin (EOF)"),
    h("button", { type: "submit" }, "Send"));
  clear(pane,
    h("div", { class: "card", "data-sid": sid },
      h("h2", {}, "Process ", h("span", { class: "mono" }, sid), state),
      slot,
      out,
      termBox,
      lineInput,
      h("div", { class: "row" },
        h("label", { class: "inline" }, "signal ", signal),
        h("button", { type: "button", id: "proc-send-signal", onclick: () => guarded(slot, () => connectors.signal(sid, signal.value)) }, "Send signal"),
        h("button", { type: "button", class: "danger", id: "proc-terminate", onclick: () => guarded(slot, async () => { await connectors.terminate(sid); onChange(); }) }, "Terminate"),
        h("button", { type: "button", onclick: () => { closeCurrent(); clear(pane); } }, "Close"))));
  if (tty) startTerminal();
  follow();
}

export default {
  id: "processes",
  title: "Processes",
  leave() { closeCurrent(); },
  async render(root, { params }) {
    const list = h("div", {});
    const slot = h("div", {});
    const pane = h("div", { id: "proc-pane" });
    const refresh = async () => {
      await guarded(slot, async () => {
        const { processes } = await connectors.processes();
        clear(list, table(processes, (sid) => openProcess(pane, sid, refresh)));
      });
    };
    root.append(h("div", { class: "row" }, h("h1", {}, "Processes"),
      h("button", { type: "button", id: "proc-refresh", onclick: refresh }, "Refresh")), slot, pane, list);
    if (params.open) openProcess(pane, params.open, refresh, { tty: params.tty });
    await refresh();
  },
};
