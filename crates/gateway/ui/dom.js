// Small DOM helpers: elements are built with h(), never from HTML strings,
// so nothing the gateway or a process sends is ever parsed as markup.

/** h("button", {class: "x", onclick: f}, "text", child…) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" || k === "checked") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An error as the gateway said it: its code and its message. */
export function errorBox(err) {
  const code = err && err.code ? err.code : "error";
  const message = err && err.message ? err.message : String(err);
  const status = err && err.status ? ` (HTTP ${err.status})` : "";
  return h("div", { class: "error", role: "alert", "data-code": code },
    h("code", {}, code), status, ": ", message);
}

/** Runs an async action, showing its error (if any) in `slot`. */
export async function guarded(slot, fn) {
  clear(slot);
  try {
    return await fn();
  } catch (err) {
    clear(slot, errorBox(err));
    return undefined;
  }
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

export function fmtTime(s) {
  if (!s) return "";
  const d = new Date(s);
  return isNaN(d) ? s : d.toLocaleString();
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || ""}` }, text);
}

/** A two-step button: the first click arms it, the second acts. */
export function confirmButton(label, confirmLabel, action) {
  const btn = h("button", { type: "button", class: "danger" }, label);
  let armed = false;
  btn.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      btn.textContent = confirmLabel;
      setTimeout(() => { armed = false; btn.textContent = label; }, 5000);
      return;
    }
    btn.disabled = true;
    try { await action(); } finally { btn.disabled = false; armed = false; btn.textContent = label; }
  });
  return btn;
}

export function b64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function bytesToB64(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** An <select> of the connected environments, default first. */
export function envSelect(envs, id) {
  const sorted = [...envs].sort((a, b) => (b.is_default - a.is_default) || a.name.localeCompare(b.name));
  return h("select", { id, name: "env" },
    sorted.map((e) => h("option", { value: e.name }, e.is_default ? `${e.name} (default)` : e.name)));
}
