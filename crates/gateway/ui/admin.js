// Admin (the admin token): workspaces, proxy tokens (create, shown once;
// revoke), executors (add, with the exact command to start one; remove).

import { admin } from "./api.js";
import { h, clear, errorBox, guarded, fmtTime, badge, confirmButton } from "./dom.js";

/** Single-quoted for a POSIX shell. */
const sh = (s) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`);

function secretBox(title, lines, note) {
  return h("div", { class: "secret", role: "status" },
    h("strong", {}, title), h("pre", { class: "mono" }, lines.join("\n")),
    h("span", { class: "muted" }, note || "Shown once: copy it now."));
}

/** How to start the executor just added, with its secret filled in. */
function startCommand(added) {
  const gw = location.origin;
  if (added.token) {
    return secretBox(`Executor '${added.name}' added. Start it on its machine:`, [
      `execgate executor --gateway ${sh(gw)} --token ${sh(added.token)} --workdir ~`,
    ]);
  }
  const c = added.sigv4;
  return secretBox(`Executor '${added.name}' added, for a stock codex. On its machine:`, [
    "npm install @openai/codex@0.169.0",
    `AWS_ACCESS_KEY_ID=${sh(c.access_key_id)} AWS_SECRET_ACCESS_KEY=${sh(c.secret_access_key)} AWS_EC2_METADATA_DISABLED=true \\`,
    "CODEX_HOME=~/.codex-executor \\",
    `  npx codex exec-server --remote ${sh(gw)} --environment-id ${sh(added.exe_id)} \\`,
    "    --remote-transport direct --aws-sigv4 --aws-region us-east-1",
  ]);
}

function workspaceSection(refreshAll) {
  const slot = h("div", {});
  const body = h("div", {});
  const name = h("input", { id: "ws-name", required: true, placeholder: "team" });
  const load = () => guarded(slot, async () => {
    const { workspaces } = await admin.workspaces();
    clear(body, h("div", { class: "scroll" }, h("table", { id: "ws-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "workspace"), h("th", {}, "created"))),
      h("tbody", {}, workspaces.map((w) => h("tr", { "data-workspace": w.name }, h("td", {}, w.name), h("td", {}, fmtTime(w.created_at))))))));
    return workspaces;
  });
  const form = h("form", { class: "row", id: "ws-form", onsubmit: (e) => {
    e.preventDefault();
    guarded(slot, async () => { await admin.createWorkspace(name.value.trim()); name.value = ""; await refreshAll(); });
  } }, h("label", {}, "New workspace ", name), h("button", { type: "submit" }, "Create"));
  return { el: h("div", { class: "card" }, h("h2", {}, "Workspaces"), slot, body, form), load };
}

function tokenSection(refreshAll) {
  const slot = h("div", {});
  const body = h("div", {});
  const shown = h("div", { id: "token-created" });
  const ws = h("input", { id: "token-workspace", required: true, placeholder: "workspace", list: "admin-workspaces" });
  const user = h("input", { id: "token-user", placeholder: "user id (optional)" });
  const load = () => guarded(slot, async () => {
    const { tokens } = await admin.tokens();
    clear(body, h("div", { class: "scroll" }, h("table", { id: "token-table" },
      h("thead", {}, h("tr", {}, ["id", "workspace", "user", "created", "state", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, tokens.map((t) => h("tr", { "data-token-id": t.id },
        h("td", { class: "mono" }, t.id), h("td", {}, t.workspace), h("td", {}, t.user_id || ""),
        h("td", {}, fmtTime(t.created_at)),
        h("td", {}, t.revoked_at ? badge(`revoked ${fmtTime(t.revoked_at)}`, "bad") : badge("live", "ok")),
        h("td", {}, t.revoked_at ? null : confirmButton("Revoke", "Click again to revoke", () =>
          guarded(slot, async () => { await admin.revokeToken(t.id); await load(); })))))))));
  });
  const form = h("form", { class: "row", id: "token-form", onsubmit: (e) => {
    e.preventDefault();
    guarded(slot, async () => {
      const t = await admin.createToken(ws.value.trim(), user.value.trim());
      clear(shown, secretBox(`Proxy token for workspace '${t.workspace}' (id ${t.id}):`, [t.token],
        "Shown once: the gateway keeps only its hash. An agent sends it as Authorization: Bearer; this console signs in with it too."));
      await load();
    });
  } }, h("label", {}, "Workspace ", ws), h("label", {}, "User ", user), h("button", { type: "submit" }, "Create token"));
  return { el: h("div", { class: "card" }, h("h2", {}, "Proxy tokens"), slot, shown, body, form), load };
}

function executorSection() {
  const slot = h("div", {});
  const body = h("div", {});
  const shown = h("div", { id: "executor-created" });
  const ws = h("input", { id: "exe-workspace", required: true, placeholder: "workspace", list: "admin-workspaces" });
  const name = h("input", { id: "exe-name", required: true, placeholder: "laptop" });
  const isDefault = h("input", { type: "checkbox", id: "exe-default" });
  const kind = h("select", { id: "exe-kind" },
    h("option", { value: "execgate" }, "execgate executor (token)"),
    h("option", { value: "codex" }, "stock codex (SigV4 keys)"));
  const load = () => guarded(slot, async () => {
    const { executors } = await admin.executors();
    clear(body, h("div", { class: "scroll" }, h("table", { id: "exe-table" },
      h("thead", {}, h("tr", {}, ["workspace", "name", "state", "executor", "last seen", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, executors.map((x) => h("tr", { "data-exe": `${x.workspace}/${x.name}` },
        h("td", {}, x.workspace),
        h("td", {}, x.name, x.is_default ? [" ", badge("default")] : null),
        h("td", {}, x.online ? badge("online", "ok") : badge("offline", "bad")),
        h("td", {}, x.kind ? `${x.kind} ${x.version || ""} ${x.os ? `(${x.os})` : ""}` : h("span", { class: "muted" }, "never connected")),
        h("td", {}, fmtTime(x.last_seen)),
        h("td", {}, confirmButton("Remove", "Click again to remove", () =>
          guarded(slot, async () => { await admin.removeExecutor(x.workspace, x.name); await load(); })))))))));
  });
  const form = h("form", { id: "exe-form", onsubmit: (e) => {
    e.preventDefault();
    guarded(slot, async () => {
      const added = await admin.addExecutor({ workspace: ws.value.trim(), name: name.value.trim(), default: isDefault.checked, sigv4: kind.value === "codex" });
      clear(shown, startCommand(added));
      await load();
    });
  } },
  h("div", { class: "row" }, h("label", {}, "Workspace ", ws), h("label", {}, "Name ", name), h("label", {}, "Kind ", kind),
    h("label", { class: "inline" }, isDefault, "default")),
  h("button", { type: "submit" }, "Add executor"));
  return { el: h("div", { class: "card" }, h("h2", {}, "Executors"), slot, shown, body, form), load };
}

export default {
  id: "admin",
  title: "Admin",
  async render(root) {
    const datalist = h("datalist", { id: "admin-workspaces" });
    const sections = [];
    const refreshAll = async () => {
      const [workspaces] = await Promise.all(sections.map((s) => s.load()));
      if (workspaces) clear(datalist, workspaces.map((w) => h("option", { value: w.name })));
    };
    sections.push(workspaceSection(() => refreshAll()), tokenSection(() => refreshAll()), executorSection());
    root.append(h("div", { class: "row" }, h("h1", {}, "Admin"), h("button", { type: "button", onclick: refreshAll }, "Refresh")),
      datalist, ...sections.map((s) => s.el));
    await refreshAll();
  },
};
