// The gateway's APIs, with the signed-in token. Every failure becomes an
// ApiError carrying the gateway's own {code, message} (or, when the gateway
// could not be reached at all, code "network_error").

const KEY = "execgate.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The token lives in this tab's sessionStorage only. */
export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set token(t) { if (t) sessionStorage.setItem(KEY, t); else sessionStorage.removeItem(KEY); },
};

function authHeaders(token, extra) {
  return { Authorization: `Bearer ${token ?? session.token}`, ...(extra || {}) };
}

/** An error answer as an ApiError: the envelope when there is one. */
export async function errorOf(resp) {
  let code = `http_${resp.status}`;
  let message = resp.statusText || "request failed";
  try {
    const body = await resp.json();
    if (body && body.error) { code = body.error.code; message = body.error.message; }
  } catch { /* not JSON: keep the status */ }
  return new ApiError(resp.status, code, message);
}

export async function raw(method, path, { body, headers, token, signal } = {}) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers: authHeaders(token, headers),
      body,
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network_error", `the gateway did not answer: ${err.message}`);
  }
  if (!resp.ok) {
    const err = await errorOf(resp);
    // The signed-in token stopped working (revoked, say): the page says so
    // once, whatever view asked.
    if (resp.status === 401 && !token) window.dispatchEvent(new CustomEvent("execgate:unauthorized", { detail: err }));
    throw err;
  }
  return resp;
}

export async function json(method, path, body, opts = {}) {
  const headers = body === undefined ? {} : { "Content-Type": "application/json" };
  const resp = await raw(method, path, { ...opts, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return resp.json();
}

const enc = encodeURIComponent;

export const connectors = {
  envs: (opts) => json("POST", "/api/connectors/envs/list", {}, opts),
  call: (env, tool, args) => json("POST", `/api/connectors/envs/${enc(env)}/tool/call`, { tool, arguments: args }),
  processes: () => json("GET", "/api/connectors/processes?limit=200"),
  stdin: (sid, data_b64, eof) => json("POST", `/api/connectors/processes/${enc(sid)}/stdin`, { data_b64, eof }),
  signal: (sid, signal) => json("POST", `/api/connectors/processes/${enc(sid)}/signal`, { signal }),
  resize: (sid, cols, rows) => json("POST", `/api/connectors/processes/${enc(sid)}/resize`, { cols, rows }),
  terminate: (sid) => json("POST", `/api/connectors/processes/${enc(sid)}/terminate`, {}),
  filesUrl: (env, path) => `/api/connectors/envs/${enc(env)}/files?path=${enc(path)}`,
};

const q = (params) => {
  const s = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  const t = s.toString();
  return t ? `?${t}` : "";
};

export const admin = {
  workspaces: (opts) => json("GET", "/api/admin/workspaces", undefined, opts),
  createWorkspace: (name) => json("POST", "/api/admin/workspaces", { name }),
  tokens: (workspace) => json("GET", `/api/admin/tokens${q({ workspace })}`),
  createToken: (workspace, user_id) => json("POST", "/api/admin/tokens", user_id ? { workspace, user_id } : { workspace }),
  revokeToken: (id) => json("POST", `/api/admin/tokens/${enc(id)}/revoke`, {}),
  executors: (workspace) => json("GET", `/api/admin/executors${q({ workspace })}`),
  addExecutor: (body) => json("POST", "/api/admin/executors", body),
  removeExecutor: (workspace, name) => json("DELETE", `/api/admin/executors/${enc(name)}${q({ workspace })}`),
  audit: (params) => json("GET", `/api/admin/audit${q(params)}`),
};

/**
 * Which token is this? The console tries the connectors API first
 * (POST envs/list: 200 for a live proxy token), then the admin API
 * (GET /api/admin/workspaces: 200 for the admin token). A 401 from both is
 * the connectors API's error (invalid_token); any other failure (429, the
 * gateway unreachable…) is reported as it is.
 */
export async function detect(token) {
  try {
    await connectors.envs({ token });
    return "proxy";
  } catch (err) {
    if (err.status !== 401) throw err;
    try {
      await admin.workspaces({ token });
      return "admin";
    } catch (err2) {
      if (err2.status !== 401) throw err2;
      throw err;
    }
  }
}

/**
 * GET or PUT with progress, through XMLHttpRequest: fetch() reports no
 * upload progress. onProgress(loaded, total|null). Resolves to the XHR.
 */
export function transfer(method, url, { body, headers, responseType, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [k, v] of Object.entries(authHeaders(undefined, headers))) xhr.setRequestHeader(k, v);
    xhr.responseType = responseType || "";
    const progress = (e) => onProgress && onProgress(e.loaded, e.lengthComputable ? e.total : null);
    if (method === "GET") xhr.onprogress = progress; else xhr.upload.onprogress = progress;
    xhr.onerror = () => reject(new ApiError(0, "network_error", "the transfer was cut off"));
    xhr.onload = async () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr);
      let text = "";
      try {
        text = xhr.responseType === "blob" || xhr.responseType === "arraybuffer"
          ? await new Response(xhr.response).text() : xhr.responseText;
      } catch { /* keep empty */ }
      let code = `http_${xhr.status}`;
      let message = xhr.statusText;
      try { const b = JSON.parse(text); code = b.error.code; message = b.error.message; } catch { /* not the envelope */ }
      reject(new ApiError(xhr.status, code, message));
    };
    xhr.send(body ?? null);
  });
}
