// The console's shell: sign-in (by #token=… or the form), the token in
// sessionStorage, the navigation between views, sign-out.

import { detect, session } from "./api.js";
import { h, clear, errorBox } from "./dom.js";
import envs from "./envs.js";
import run from "./run.js";
import processes from "./processes.js";
import files from "./files.js";
import adminView from "./admin.js";
import audit from "./audit.js";

/** Views by the kind of token that can use them. */
const VIEWS = {
  proxy: [envs, run, processes, files],
  admin: [adminView, audit],
};

const $ = (id) => document.getElementById(id);
const state = { kind: null, view: null, params: {} };

/** Shows a view; `params` are handed to it (e.g. the process to open). */
function go(id, params = {}) {
  const views = VIEWS[state.kind] || [];
  const view = views.find((v) => v.id === id) || views[0];
  if (state.view && state.view.leave) state.view.leave();
  state.view = view;
  state.params = params;
  for (const b of $("nav").querySelectorAll("button")) {
    if (b.dataset.view === view.id) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (location.hash !== `#${view.id}`) history.replaceState(null, "", `#${view.id}`);
  const container = clear($("view"));
  container.dataset.view = view.id;
  Promise.resolve(view.render(container, { go, params, kind: state.kind })).catch((err) => {
    container.append(errorBox(err));
  });
}

function showSignedIn(kind) {
  state.kind = kind;
  $("signin").hidden = true;
  $("signout").hidden = false;
  $("who").textContent = kind === "admin" ? "admin token: all workspaces" : "proxy token: one workspace";
  clear($("nav"), VIEWS[kind].map((v) =>
    h("button", { type: "button", "data-view": v.id, onclick: () => go(v.id) }, v.title)));
  const wanted = location.hash.slice(1);
  go(VIEWS[kind].some((v) => v.id === wanted) ? wanted : VIEWS[kind][0].id);
}

function showSignIn(err) {
  state.kind = null;
  if (state.view && state.view.leave) state.view.leave();
  state.view = null;
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("who").textContent = "";
  clear($("nav"));
  clear($("view"));
  clear($("signin-error"), err ? errorBox(err) : null);
  $("signin-token").value = "";
}

async function signIn(token) {
  clear($("signin-error"));
  try {
    const kind = await detect(token);
    session.token = token;
    showSignedIn(kind);
  } catch (err) {
    session.token = null;
    showSignIn(err);
  }
}

function signOut() {
  session.token = null;
  $("banner").hidden = true;
  history.replaceState(null, "", location.pathname);
  showSignIn(null);
}

function start() {
  // #token=… signs in at once; the token then leaves the address bar (and
  // the tab's history) before anything else happens. A fragment is never
  // sent to the server.
  const m = /^#token=([^&]*)/.exec(location.hash);
  if (m) {
    history.replaceState(null, "", location.pathname + location.search);
    signIn(decodeURIComponent(m[1]));
  } else if (session.token) {
    signIn(session.token);
  } else {
    showSignIn(null);
  }
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("signin-token").value.trim();
    if (t) signIn(t);
  });
  $("signout").addEventListener("click", signOut);
  window.addEventListener("execgate:unauthorized", (e) => {
    if (!state.kind) return;
    clear($("banner"), errorBox(e.detail),
      h("button", { type: "button", id: "banner-signout", onclick: () => { $("banner").hidden = true; signOut(); } }, "Sign in again"));
    $("banner").hidden = false;
  });
}

start();
