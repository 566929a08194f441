// Files: list a directory (the list_dir tool) and browse it, view a text
// file, download one, upload one, through GET/PUT
// /api/connectors/envs/{env}/files (raw bytes, streamed by the gateway),
// with progress. A download is held in memory as a Blob before the
// browser saves it.

import { connectors, transfer } from "./api.js";
import { h, clear, errorBox, fmtBytes, envSelect } from "./dom.js";

/** The most of a file the viewer shows. */
const VIEW_BYTES = 1024 * 1024;

function progressRow(id) {
  const bar = h("progress", { id: `${id}-progress`, max: 1, value: 0 });
  const text = h("span", { class: "status muted", id: `${id}-text` });
  const update = (loaded, total) => {
    if (total) { bar.max = total; bar.value = loaded; } else bar.removeAttribute("value");
    text.textContent = total ? `${fmtBytes(loaded)} of ${fmtBytes(total)}` : fmtBytes(loaded);
  };
  return { el: h("span", {}, bar, text), update, done: (msg) => { bar.max = 1; bar.value = 1; text.textContent = msg; } };
}

const basename = (p) => p.split("/").filter(Boolean).pop() || "download";

/** `name` inside directory `dir` ("" or "." being the working directory). */
const join = (dir, name) => (!dir || dir === "." ? name : `${dir.replace(/\/+$/, "") || ""}/${name}`);

export default {
  id: "files",
  title: "Files",
  async render(root) {
    root.append(h("h1", {}, "Files"));
    let envs;
    try {
      ({ envs } = await connectors.envs());
    } catch (err) {
      root.append(errorBox(err));
      return;
    }
    if (!envs.length) {
      root.append(h("p", { class: "muted" }, "No environment is connected."));
      return;
    }
    const env = envSelect(envs, "files-env");
    root.append(h("div", { class: "card" }, h("label", {}, "Environment ", env)));

    // View and download.
    const path = h("input", { id: "files-path", placeholder: "/path/on/the/machine (relative: the executor's working directory)", spellcheck: "false" });
    const viewSlot = h("div", {});
    const dl = progressRow("download");
    const view = async () => {
      clear(viewSlot);
      try {
        const xhr = await transfer("GET", connectors.filesUrl(env.value, path.value), {
          headers: { Range: `bytes=0-${VIEW_BYTES - 1}` }, responseType: "arraybuffer",
        });
        const bytes = new Uint8Array(xhr.response);
        const range = xhr.getResponseHeader("Content-Range");
        const total = range ? Number(range.split("/")[1]) : bytes.length;
        if (bytes.includes(0)) {
          viewSlot.append(h("p", { class: "muted" }, `${fmtBytes(total)}, not text (it has NUL bytes): download it instead.`));
          return;
        }
        viewSlot.append(
          h("p", { class: "muted" }, total > bytes.length ? `The first ${fmtBytes(bytes.length)} of ${fmtBytes(total)}:` : `${fmtBytes(total)}`),
          h("pre", { class: "out", id: "files-content" }, new TextDecoder().decode(bytes)));
      } catch (err) {
        viewSlot.append(errorBox(err));
      }
    };
    // A directory's entries, by name: a directory opens, a file is viewed.
    const list = async () => {
      clear(viewSlot);
      const dir = path.value || ".";
      try {
        const result = await connectors.call(env.value, "list_dir", { path: dir });
        const s = result.structuredContent || {};
        if (result.isError) {
          viewSlot.append(h("div", { class: "error", role: "alert", "data-code": "tool_error" },
            s.error || (result.content || []).map((c) => c.text).join("\n")));
          return;
        }
        const open = (name, kind) => {
          path.value = join(dir, name);
          if (kind === "directory") list(); else if (kind === "file") view();
        };
        const row = (name, kind) => h("tr", { dataset: { name, kind } },
          h("td", {}, kind === "other" ? h("span", { class: "mono" }, name)
            : h("a", { href: "#", class: "mono", onclick: (e) => { e.preventDefault(); open(name, kind); } },
              kind === "directory" ? `${name}/` : name)),
          h("td", { class: "muted" }, kind));
        viewSlot.append(
          h("p", { class: "muted", id: "files-listing-count" }, s.truncated
            ? `The first ${s.entries.length} of ${s.total} entries:`
            : `${s.total} ${s.total === 1 ? "entry" : "entries"}`),
          h("div", { class: "scroll" }, h("table", { id: "files-listing" },
            h("tr", {}, h("th", {}, "name"), h("th", {}, "kind")),
            row("..", "directory"),
            (s.entries || []).map((e) => row(e.name, e.kind)))));
      } catch (err) {
        viewSlot.append(errorBox(err));
      }
    };
    const download = async () => {
      clear(viewSlot);
      try {
        const xhr = await transfer("GET", connectors.filesUrl(env.value, path.value), { responseType: "blob", onProgress: dl.update });
        const url = URL.createObjectURL(xhr.response);
        const a = h("a", { href: url, download: basename(path.value) });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        dl.done(`downloaded ${fmtBytes(xhr.response.size)}`);
      } catch (err) {
        dl.done("");
        viewSlot.append(errorBox(err));
      }
    };
    root.append(h("div", { class: "card" },
      h("h2", {}, "Browse, view or download"),
      h("form", { id: "files-get-form", onsubmit: (e) => { e.preventDefault(); view(); } },
        h("label", {}, "Path ", path),
        h("div", { class: "row" },
          h("button", { type: "submit", id: "files-view" }, "View"),
          h("button", { type: "button", id: "files-list", onclick: list }, "List"),
          h("button", { type: "button", id: "files-download", onclick: () => { if (path.reportValidity() && path.value) download(); } }, "Download"),
          dl.el)),
      viewSlot));

    // Upload.
    const file = h("input", { type: "file", id: "files-upload-file", required: true });
    const dest = h("input", { id: "files-upload-path", required: true, placeholder: "/destination/path/name", spellcheck: "false" });
    file.addEventListener("change", () => {
      if (file.files[0] && (!dest.value || dest.value.endsWith("/"))) dest.value = (dest.value || "") + file.files[0].name;
    });
    const up = progressRow("upload");
    const upSlot = h("div", {});
    const upload = async (e) => {
      e.preventDefault();
      clear(upSlot);
      const f = file.files[0];
      if (!f) return;
      try {
        const xhr = await transfer("PUT", connectors.filesUrl(env.value, dest.value), {
          body: f, headers: { "Content-Type": "application/octet-stream" }, onProgress: up.update,
        });
        const r = JSON.parse(xhr.responseText);
        up.done(`uploaded ${fmtBytes(r.bytes)}`);
        upSlot.append(h("dl", { class: "kv", id: "files-upload-result" },
          h("dt", {}, "path"), h("dd", { class: "mono" }, r.path),
          h("dt", {}, "bytes"), h("dd", {}, r.bytes),
          h("dt", {}, "sha256"), h("dd", { class: "mono" }, r.sha256)));
      } catch (err) {
        up.done("");
        upSlot.append(errorBox(err));
      }
    };
    root.append(h("div", { class: "card" },
      h("h2", {}, "Upload"),
      h("form", { id: "files-put-form", onsubmit: upload },
        h("div", { class: "row" }, h("label", {}, "File ", file), h("label", {}, "Destination ", dest)),
        h("div", { class: "row" }, h("button", { type: "submit", id: "files-upload" }, "Upload"), up.el)),
      upSlot));
  },
};
