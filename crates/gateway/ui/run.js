// Run: one command on an environment, as `shell` (wait for it: stdout,
// stderr, exit code, duration) or as a live process (exec_command; it
// opens in the Processes view).

import { connectors } from "./api.js";
import { h, clear, errorBox, envSelect } from "./dom.js";

/** A command line: run with `sh -c` (the tools take a string that way). */
function argsOf(form) {
  const args = { command: form.command.value };
  if (form.cwd.value.trim()) args.cwd = form.cwd.value.trim();
  return args;
}

function shellResult(result) {
  const s = result.structuredContent || {};
  const text = (result.content || []).map((c) => c.text).join("\n");
  if (s.stdout === undefined) {
    // An error result (e.g. a refused tool): its text says why.
    return h("div", { class: "error", "data-code": "tool_error" }, text || "the tool failed");
  }
  return h("div", { class: "result" },
    h("dl", { class: "kv" },
      h("dt", {}, "exit code"), h("dd", { class: "exit-code" }, s.exit_code ?? "none (killed)"),
      h("dt", {}, "duration"), h("dd", { class: "duration" }, `${s.duration_ms} ms`),
      s.timed_out ? [h("dt", {}, "timed out"), h("dd", {}, "yes: the process group was killed")] : null,
      s.dropped_bytes ? [h("dt", {}, "dropped"), h("dd", {}, `${s.dropped_bytes} bytes past the capture limit`)] : null,
      s.lost_bytes ? [h("dt", {}, "lost"), h("dd", {}, `${s.lost_bytes} bytes`)] : null),
    h("h3", {}, "stdout"), h("pre", { class: "out stdout" }, s.stdout),
    h("h3", {}, "stderr"), h("pre", { class: "out stderr-out" }, s.stderr));
}

export default {
  id: "run",
  title: "Run",
  async render(root, { go }) {
    const slot = h("div", {});
    const out = h("div", {});
    root.append(h("h1", {}, "Run a command"), slot);
    let envs;
    try {
      ({ envs } = await connectors.envs());
    } catch (err) {
      slot.append(errorBox(err));
      return;
    }
    if (!envs.length) {
      slot.append(h("p", { class: "muted" }, "No environment is connected."));
      return;
    }
    const form = h("form", { class: "card", id: "run-form" },
      h("div", { class: "row" },
        h("label", {}, "Environment ", envSelect(envs, "run-env")),
        h("label", {}, "Working directory ", h("input", { name: "cwd", placeholder: "the executor's own" }))),
      h("label", {}, "Command (run with sh -c) ",
        h("input", { name: "command", id: "run-command", required: true, spellcheck: "false", placeholder: "echo hello" })),
      h("div", { class: "row" },
        h("button", { type: "submit", name: "shell", value: "shell" }, "Run (shell)"),
        h("button", { type: "button", id: "run-process" }, "Start as a process"),
        h("label", { class: "inline" }, h("input", { type: "checkbox", id: "run-tty", name: "tty" }), "in a terminal (tty)"),
        h("span", { class: "status muted", id: "run-status" })));
    root.append(form, out);
    const status = form.querySelector("#run-status");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clear(out);
      status.textContent = "running…";
      try {
        const result = await connectors.call(form.env.value, "shell", argsOf(form));
        out.append(shellResult(result));
      } catch (err) {
        out.append(errorBox(err));
      } finally {
        status.textContent = "";
      }
    });
    form.querySelector("#run-process").addEventListener("click", async () => {
      if (!form.reportValidity()) return;
      clear(out);
      try {
        const tty = form.tty.checked;
        const args = tty ? { ...argsOf(form), tty: true, cols: 80, rows: 24 } : argsOf(form);
        const result = await connectors.call(form.env.value, "exec_command", args);
        const sid = result.structuredContent && result.structuredContent.session_id;
        if (result.isError || !sid) {
          out.append(h("div", { class: "error" }, (result.content || []).map((c) => c.text).join("\n")));
          return;
        }
        go("processes", { open: sid, tty });
      } catch (err) {
        out.append(errorBox(err));
      }
    });
  },
};
