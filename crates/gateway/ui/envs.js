// Environments: what envs/list says of each connected environment, and the
// argument schema of each tool (a custom tool's from envs/list, a core
// tool's from /openapi.json, where `<Tool>Arguments` describes it).

import { connectors } from "./api.js";
import { h, clear, errorBox, badge, fmtTime } from "./dom.js";

let openapi = null;

async function coreSchemas() {
  if (!openapi) {
    try {
      const resp = await fetch("/openapi.json", { cache: "no-store" });
      openapi = resp.ok ? await resp.json() : {};
    } catch { openapi = {}; }
  }
  return (openapi.components && openapi.components.schemas) || {};
}

const schemaName = (tool) => tool.split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join("") + "Arguments";

function policyView(p) {
  if (!p) return h("span", { class: "muted" }, "no limits announced");
  const sb = p.sandbox;
  return h("dl", { class: "kv" },
    h("dt", {}, "root"), h("dd", {}, p.root || "—"),
    h("dt", {}, "allowed tools"), h("dd", {}, p.allow_tools ? p.allow_tools.join(", ") : "all"),
    h("dt", {}, "read-only"), h("dd", {}, p.read_only ? "yes" : "no"),
    h("dt", {}, "max processes"), h("dd", {}, p.max_processes ?? "—"),
    h("dt", {}, "sandbox"), h("dd", {}, sb
      ? `write: ${sb.write.join(", ") || "—"}; read: ${sb.read ? sb.read.join(", ") : "all"}; net: ${sb.net}; landlock ABI ${sb.landlock_abi}`
      : "none"));
}

function envCard(env, schemas) {
  const ex = env.executor;
  return h("div", { class: "card env", "data-env": env.name },
    h("h2", {}, env.name, " ", env.is_default ? badge("default", "ok") : null, " ", badge("connected", "ok")),
    h("dl", { class: "kv" },
      h("dt", {}, "last seen"), h("dd", {}, fmtTime(env.last_seen)),
      h("dt", {}, "executor"), h("dd", {}, ex ? `${ex.kind} ${ex.version} (${ex.os})` : "unknown"),
      h("dt", {}, "policy"), h("dd", {}, policyView(env.policy))),
    h("h3", {}, `Tools (${env.tools.length})`),
    h("div", { class: "scroll" }, h("table", { class: "tools" },
      h("thead", {}, h("tr", {}, h("th", {}, "tool"), h("th", {}, "kind"), h("th", {}, "description and arguments"))),
      h("tbody", {}, env.tools.map((t) => {
        const schema = t.input_schema || schemas[schemaName(t.name)];
        return h("tr", { "data-tool": t.name },
          h("td", { class: "mono" }, t.name),
          h("td", {}, t.kind),
          h("td", {}, t.description,
            schema ? h("details", {}, h("summary", {}, "argument schema"),
              h("pre", {}, JSON.stringify(schema, null, 2))) : null));
      })))));
}

export default {
  id: "envs",
  title: "Environments",
  async render(root) {
    const list = h("div", {});
    const slot = h("div", {});
    const refresh = async () => {
      clear(slot);
      try {
        const [{ envs }, schemas] = await Promise.all([connectors.envs(), coreSchemas()]);
        clear(list, envs.length
          ? envs.map((e) => envCard(e, schemas))
          : h("p", { class: "muted" }, "No environment of this workspace is connected. envs/list shows connected environments only; start an executor (the Admin view shows the command)."));
      } catch (err) {
        clear(list);
        clear(slot, errorBox(err));
      }
    };
    root.append(h("div", { class: "row" }, h("h1", {}, "Environments"),
      h("button", { type: "button", onclick: refresh }, "Refresh")), slot, list);
    await refresh();
  },
};
