// Audit (the admin token): GET /api/admin/audit, oldest first, paged by
// next_cursor. The API filters by workspace and time; tool and outcome
// are filtered here, over the pages loaded.

import { admin } from "./api.js";
import { h, clear, errorBox } from "./dom.js";

const OUTCOMES = ["", "ok", "tool_error", "error", "cancelled", "started"];
const PAGE = 500;

export default {
  id: "audit",
  title: "Audit",
  async render(root) {
    const ws = h("select", { id: "audit-workspace" }, h("option", { value: "" }, "all workspaces"));
    const since = h("input", { id: "audit-since", value: "24h", placeholder: "15m, 2h, 7d or 2026-01-01T00:00:00Z" });
    const tool = h("input", { id: "audit-tool", placeholder: "shell, stdin, files.put…" });
    const outcome = h("select", { id: "audit-outcome" }, OUTCOMES.map((o) => h("option", { value: o }, o || "any outcome")));
    const slot = h("div", {});
    const summary = h("p", { class: "muted", id: "audit-summary" });
    const body = h("tbody", {});
    const more = h("button", { type: "button", id: "audit-more", hidden: true }, "Load more");
    let records = [];
    let cursor = null;

    const show = () => {
      const t = tool.value.trim();
      const rows = records.filter((r) => (!t || r.method === t) && (!outcome.value || r.outcome === outcome.value));
      summary.textContent = `${rows.length} of ${records.length} records loaded match${cursor ? " (more to load)" : ""}.`;
      clear(body, rows.map((r) => h("tr", { "data-outcome": r.outcome },
        h("td", {}, new Date(r.at).toLocaleString()), h("td", {}, r.workspace), h("td", {}, r.environment || ""),
        h("td", { class: "mono" }, r.method), h("td", {}, r.via),
        h("td", {}, r.outcome, r.error_code ? ` (${r.error_code})` : ""),
        h("td", {}, r.exit_code ?? ""), h("td", {}, `${r.duration_ms} ms`),
        h("td", { class: "mono" }, r.session_id || ""), h("td", {}, r.user_id || ""))));
      more.hidden = !cursor;
    };
    const load = async (fresh) => {
      clear(slot);
      try {
        if (fresh) { records = []; cursor = null; }
        const page = await admin.audit({ workspace: ws.value, since: since.value.trim(), cursor: fresh ? undefined : cursor, limit: PAGE });
        records = records.concat(page.records);
        cursor = page.next_cursor ?? null;
        if (page.lost_records) slot.append(h("p", { class: "error" }, `${page.lost_records} records could not be written since the gateway started.`));
        show();
      } catch (err) {
        slot.append(errorBox(err));
      }
    };
    more.addEventListener("click", () => load(false));
    tool.addEventListener("input", show);
    outcome.addEventListener("change", show);
    const form = h("form", { class: "card", id: "audit-form", onsubmit: (e) => { e.preventDefault(); load(true); } },
      h("div", { class: "row" },
        h("label", {}, "Workspace ", ws), h("label", {}, "Since ", since),
        h("label", {}, "Tool or operation ", tool), h("label", {}, "Outcome ", outcome),
        h("button", { type: "submit" }, "Search")));
    root.append(h("h1", {}, "Audit log"), form, slot, summary,
      h("div", { class: "scroll" }, h("table", { id: "audit-table" },
        h("thead", {}, h("tr", {}, ["when", "workspace", "env", "tool / op", "via", "outcome", "exit", "duration", "session", "user"].map((t) => h("th", {}, t)))),
        body)), more);
    try {
      const { workspaces } = await admin.workspaces();
      ws.append(...workspaces.map((w) => h("option", { value: w.name }, w.name)));
    } catch (err) {
      slot.append(errorBox(err));
    }
    await load(true);
  },
};
