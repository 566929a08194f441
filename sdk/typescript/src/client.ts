/**
 * The client: `Client`, `Env` and `Process`, on the platform's `fetch`.
 */

import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";

import {
  EnvNotFound,
  ExecgateError,
  SessionGone,
  SessionNotFound,
  TransportError,
  WaitTimeout,
  errorClass,
  errorFromResponse,
} from "./errors.js";
import {
  Chunk,
  LostOutput,
  ShellResult,
  ToolResult,
  copyResult,
  dirListing,
  patchResult,
  processInfo,
  toolFromJson,
  type CopyResult,
  type DirListing,
  type OutputItem,
  type PatchResult,
  type ProcessInfo,
  type Tool,
  type TransferResult,
} from "./results.js";
import { LineSplitter, SseDecoder } from "./sse.js";
import {
  ROUTES,
  routePath,
  type ApplyPatchArguments,
  type CallToolResult,
  type ConnectorEnv,
  type CopyPathArguments,
  type EnvsListRequest,
  type EnvsListResponse,
  type ExecCommandArguments,
  type ExecutorInfo,
  type ListDirArguments,
  type OutputResponse,
  type PolicyInfo,
  type ProcessListResponse,
  type ReadFileArguments,
  type ResizeRequest,
  type Route,
  type ShellArguments,
  type SignalRequest,
  type SseExit,
  type SseLost,
  type SseOutput,
  type StdinRequest,
  type ToolCallRequest,
  type UploadResponse,
  type WriteFileArguments,
} from "./wire.js";

export const VERSION = "0.1.0";

/** Default timeout of a request, in ms. Tools that run longer (`shell` with
 * a `timeoutMs`, `copyTo`, long-polls) get their own. */
export const DEFAULT_TIMEOUT_MS = 60_000;
/** How much one read_file call asks for (the gateway caps a call at 32 MiB). */
const READ_PAGE = 8 * 1024 * 1024;
/** Chunks of a streamed upload. */
const FILE_CHUNK = 1024 * 1024;
/** Long-poll wait of `/output` (the gateway caps it at 30 s). */
const POLL_WAIT_MS = 25_000;
/** The gateway sends a keepalive comment every 15 s; a stream silent for
 * this long is dead and gets reconnected. */
const SSE_IDLE_MS = 45_000;
/** Extra time on top of a tool's own timeout for the HTTP answer. */
const SLACK_MS = 30_000;
/** Attempts to reconnect a broken output stream before giving up. */
const RECONNECTS = 5;
/** Retries of a mutating call after a connection error, a timeout or a 503
 * (each with the same `Idempotency-Key`, so the gateway does it once). */
export const DEFAULT_RETRIES = 3;
/** Tools that change nothing: called without an idempotency key (a key
 * would make the gateway keep their answer, up to 1 MiB, for 24 h). */
const READ_ONLY_TOOLS = new Set(["read_file", "list_dir", "read_output", "list_environments"]);

/** A fresh `Idempotency-Key`: one per call, the same for its retries. */
export function newIdempotencyKey(): string {
  return `egk_${randomBytes(16).toString("hex")}`;
}

/** Ms before retry number `retry` (1, 2, …): 250 ms doubling to at most
 * 4 s, with jitter, and at least a 503's `Retry-After` (capped at 10 s). */
export function retryDelayMs(retry: number, retryAfter?: string | null): number {
  let ms = Math.min(250 * 2 ** (retry - 1), 4000) * (0.5 + Math.random() / 2);
  const after = retryAfter ? Number(retryAfter) : NaN;
  if (Number.isFinite(after)) ms = Math.max(ms, Math.min(after, 10) * 1000);
  return ms;
}

/** A command: an argv array, or a string run with `sh -c`. */
export type Command = string | readonly string[];
export type Data = string | Uint8Array;
export type SignalName = SignalRequest["signal"];

export interface ClientOptions {
  /** Default request timeout in ms (60 000). */
  timeoutMs?: number;
  /** The `fetch` to use (default: the platform's). */
  fetch?: typeof fetch;
  /** Retries of a mutating call (same `Idempotency-Key`) after a connection
   * error, a timeout or a 503 (default 3; 0 turns them off). */
  retries?: number;
}

interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  json?: unknown;
  headers?: Record<string, string>;
  /** ms; `null`: no timeout. */
  timeoutMs?: number | null;
  signal?: AbortSignal;
  /** A mutating request's `Idempotency-Key`: sent, and the request retried
   * with it after a connection error, a timeout or a 503. */
  idempotencyKey?: string;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function transportError(e: unknown): ExecgateError {
  if (e instanceof ExecgateError) return e;
  const err = e as { name?: string; message?: string; cause?: { message?: string; code?: string } };
  if (err?.name === "TimeoutError") return new TransportError("timed out", { code: "timeout", cause: e });
  const why = [err?.message, err?.cause?.code ?? err?.cause?.message].filter(Boolean).join(": ");
  return new TransportError(why || String(e), { code: "transport", cause: e });
}

function toBytes(data: Data): Uint8Array {
  return typeof data === "string" ? new TextEncoder().encode(data) : data;
}

function b64(data: Data): string {
  const b = toBytes(data);
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");
}

function unb64(s: string): Uint8Array {
  const b = Buffer.from(s, "base64");
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function command(cmd: Command): string | string[] {
  return typeof cmd === "string" ? cmd : cmd.map(String);
}

/** Drops `undefined` values (the gateway refuses unknown or null fields). */
function defined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

/** A client for an execgate gateway's connectors API.
 *
 * ```ts
 * const client = Client.fromEnv();          // EXECGATE_URL, EXECGATE_TOKEN
 * const env = await client.defaultEnv();
 * console.log((await env.shell("uname -a")).stdout);
 * ```
 */
export class Client {
  readonly url: string;
  readonly timeoutMs: number;
  readonly retries: number;
  readonly #token: string;
  readonly #fetch: typeof fetch;

  constructor(url: string, token: string, opts: ClientOptions = {}) {
    if (!url) throw new TypeError("url is required, e.g. http://127.0.0.1:6060");
    if (!token) throw new TypeError("token is required: a proxy token (egp_…)");
    this.url = url.replace(/\/+$/, "");
    this.#token = token;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retries = Math.max(0, opts.retries ?? DEFAULT_RETRIES);
    this.#fetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** A client for `$EXECGATE_URL` with the token `$EXECGATE_TOKEN` (as
   * `execgate up` prints them). */
  static fromEnv(opts: ClientOptions = {}): Client {
    const url = process.env.EXECGATE_URL ?? "";
    const token = process.env.EXECGATE_TOKEN ?? "";
    const missing = [url ? "" : "EXECGATE_URL", token ? "" : "EXECGATE_TOKEN"].filter(Boolean);
    if (missing.length) {
      throw new ExecgateError(`${missing.join(" and ")} not set; \`execgate up\` prints both`, { code: "not_configured" });
    }
    return new Client(url, token, opts);
  }

  // -- HTTP ------------------------------------------------------------------

  /** @internal Sends one request; the answer if 2xx, else the mapped
   * error. With `idempotencyKey`, retried (same key) after a connection
   * error, a timeout or a 503, up to `retries` times; a `body` that is a
   * function is called for each attempt. */
  async _fetch(
    method: string,
    path: string,
    opts: RequestOptions & { body?: RequestInit["body"] | (() => RequestInit["body"]); duplex?: "half" } = {},
  ): Promise<Response> {
    const url = new URL(this.url + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.#token}`,
      "user-agent": `execgate-typescript/${VERSION}`,
      ...opts.headers,
    };
    if (opts.idempotencyKey) headers["idempotency-key"] = opts.idempotencyKey;
    let json: string | undefined;
    if (opts.json !== undefined) {
      headers["content-type"] = "application/json";
      json = JSON.stringify(opts.json);
    }
    const timeout = opts.timeoutMs === undefined ? this.timeoutMs : opts.timeoutMs;
    const retries = opts.idempotencyKey ? this.retries : 0;
    for (let retry = 0; ; retry++) {
      const body = json ?? (typeof opts.body === "function" ? opts.body() : opts.body);
      const init: RequestInit & { duplex?: "half" } = { method, headers, body };
      if (opts.duplex) init.duplex = opts.duplex;
      const signals = [opts.signal, timeout !== null ? AbortSignal.timeout(timeout) : undefined].filter((x): x is AbortSignal => !!x);
      if (signals.length) init.signal = signals.length === 1 ? signals[0] : AbortSignal.any(signals);
      let res: Response;
      try {
        res = await this.#fetch(url, init);
      } catch (e) {
        // The caller's own abort is not retried.
        if (retry < retries && !opts.signal?.aborted) {
          await sleep(retryDelayMs(retry + 1));
          continue;
        }
        throw transportError(e);
      }
      if (res.status === 503 && retry < retries) {
        await res.body?.cancel().catch(() => {});
        await sleep(retryDelayMs(retry + 1, res.headers.get("retry-after")));
        continue;
      }
      if (res.status >= 400) {
        let text = "";
        try {
          text = await res.text();
        } catch (e) {
          throw transportError(e);
        }
        throw errorFromResponse(res.status, text, res.headers);
      }
      return res;
    }
  }

  /** @internal A JSON request on one of {@link ROUTES}. */
  async _call<T>(route: Route, params: Record<string, string>, opts: RequestOptions = {}): Promise<T> {
    const res = await this._fetch(route.method, routePath(route, params), opts);
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      throw transportError(e);
    }
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ExecgateError(`the gateway answered ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`, {
        code: "bad_response",
        status: res.status,
      });
    }
  }

  /** @internal */
  async _toolCall(env: string, tool: string, args: object, timeoutMs?: number | null): Promise<ToolResult> {
    const body: ToolCallRequest = { tool, arguments: defined(args) as Record<string, unknown> };
    const idempotencyKey = READ_ONLY_TOOLS.has(tool) ? undefined : newIdempotencyKey();
    const r = await this._call<CallToolResult>(ROUTES.toolCall, { name: env }, { json: body, timeoutMs, idempotencyKey });
    return new ToolResult(r);
  }

  /** @internal */
  async _envsList(): Promise<ConnectorEnv[]> {
    const r = await this._call<EnvsListResponse>(ROUTES.envsList, {}, { json: {} });
    return r.envs ?? [];
  }

  // -- the API ---------------------------------------------------------------

  /** The workspace's connected environments. */
  async envs(): Promise<Env[]> {
    return (await this._envsList()).map((e) => new Env(this, e));
  }

  /** A page of the connected environments, for a large workspace: at most
   * `limit` (1 to 1000) of those named after `after` (byte order of
   * names), and `next`, the `after` of the next page (`null` on the last).
   * `envsPage(500)`, then `envsPage(500, page.next)` until `next` is null. */
  async envsPage(limit: number, after?: string | null): Promise<{ envs: Env[]; next: string | null }> {
    const json: EnvsListRequest = { limit };
    if (after != null) json.after = after;
    const r = await this._call<EnvsListResponse>(ROUTES.envsList, {}, { json });
    return { envs: (r.envs ?? []).map((e) => new Env(this, e)), next: r.next ?? null };
  }

  /** The connected environment `name`; {@link EnvNotFound} if none is
   * connected. `{check: false}` skips the listing and returns a handle
   * without tool metadata (calls then fail as the gateway says). */
  async env(name: string, opts: { check?: boolean } = {}): Promise<Env> {
    if (opts.check === false) return new Env(this, { name, type: "executor", is_default: false, tools: [] });
    return new Env(this, pickEnv(await this._envsList(), name));
  }

  /** The workspace's default environment; {@link EnvNotFound} if it is not connected. */
  async defaultEnv(): Promise<Env> {
    return new Env(this, pickEnv(await this._envsList(), null));
  }

  /** The workspace's process sessions, newest first (`limit` ≤ 1000). */
  async processes(opts: { limit?: number } = {}): Promise<ProcessInfo[]> {
    const r = await this._call<ProcessListResponse>(ROUTES.processes, {}, { query: { limit: opts.limit } });
    return (r.processes ?? []).map(processInfo);
  }

  /** A handle on an existing process session (e.g. from another program);
   * its `output()` starts at the beginning. */
  process(sid: string, env: string | null = null): Process {
    return new Process(this, sid, env);
  }

  toString(): string {
    return `Client(${this.url})`;
  }
}

function pickEnv(envs: ConnectorEnv[], name: string | null): ConnectorEnv {
  const found = envs.find((e) => (name === null ? e.is_default : e.name === name));
  if (found) return found;
  const connected = envs.map((e) => e.name).join(", ") || "none";
  const what = name === null ? "no connected environment is the default" : `no connected environment named '${name}'`;
  throw new EnvNotFound(`${what} (connected: ${connected})`, { code: "env_not_found" });
}

export interface ShellOptions {
  /** Working directory (default: the executor's `--workdir`). */
  cwd?: string;
  /** Environment variables set on top of the executor's. */
  env?: Record<string, string>;
  /** Time limit in ms (default 60 000); kills the whole process group. */
  timeoutMs?: number;
  /** Throw {@link CommandFailed} on a non-zero exit or a timeout. */
  check?: boolean;
}

export interface SpawnOptions {
  /** Run under a pseudo-terminal (output stream `pty`). */
  tty?: boolean;
  cwd?: string;
  env?: Record<string, string>;
  /** Keep stdin open for `write` (default true). */
  pipeStdin?: boolean;
  cols?: number;
  rows?: number;
  /** The gateway terminates it after this long (ms). */
  maxRuntimeMs?: number;
}

export interface ApplyPatchOptions {
  /** Only check that it applies. */
  dryRun?: boolean;
  /** path → SHA-256 (hex) the file must have, else nothing is changed. */
  expectedSha256?: Record<string, string>;
  /** Throw {@link ToolError} when it does not apply (default true). */
  check?: boolean;
}

/** One environment (a machine running an executor). */
export class Env {
  readonly #client: Client;
  #info: ConnectorEnv;

  constructor(client: Client, info: ConnectorEnv) {
    this.#client = client;
    this.#info = info;
  }

  /** Its name (`laptop`, `gpu-1`…). */
  get name(): string {
    return this.#info.name;
  }
  /** Whether this is the workspace's default environment. */
  get isDefault(): boolean {
    return this.#info.is_default;
  }
  /** Its tools, core and custom, as of the last listing. */
  get tools(): Tool[] {
    return (this.#info.tools ?? []).map(toolFromJson);
  }
  /** The tools of kind `custom` (call them with {@link custom}). */
  get customTools(): Tool[] {
    return this.tools.filter((t) => t.kind === "custom");
  }
  /** When the gateway last heard from its executor (RFC 3339, UTC). */
  get lastSeen(): string | null {
    return this.#info.last_seen ?? null;
  }
  /** `{kind: "execgate" | "codex", version, os}`. */
  get executor(): ExecutorInfo | null {
    return this.#info.executor ?? null;
  }
  /** The executor's limits, or `null` when it has none. */
  get policy(): PolicyInfo | null {
    return this.#info.policy ?? null;
  }
  /** The tool called `name`, or `undefined`. */
  tool(name: string): Tool | undefined {
    return this.tools.find((t) => t.name === name);
  }

  /** Reloads tools and `lastSeen` from the gateway; returns `this`. */
  async refresh(): Promise<this> {
    this.#info = pickEnv(await this.#client._envsList(), this.name);
    return this;
  }

  /** Calls any tool by name with raw `arguments`. With `check: true` a
   * result with `isError` throws {@link ToolError}. */
  async call(tool: string, args: Record<string, unknown> = {}, opts: { check?: boolean; timeoutMs?: number } = {}): Promise<ToolResult> {
    const r = await this.#client._toolCall(this.name, tool, args, opts.timeoutMs);
    return opts.check ? r.check() : r;
  }

  /** Calls a custom tool of this environment (its arguments are checked
   * against its JSON Schema by the gateway); a {@link ShellResult}. */
  async custom(tool: string, args: Record<string, unknown> = {}): Promise<ShellResult> {
    return new ShellResult(await this.#client._toolCall(this.name, tool, args));
  }

  /** Runs a command to completion. A non-zero exit does not throw unless
   * `check: true`; a command that cannot be started throws {@link ToolError}. */
  async shell(cmd: Command, opts: ShellOptions = {}): Promise<ShellResult> {
    const args: ShellArguments = { command: command(cmd), cwd: opts.cwd, env: opts.env, timeout_ms: opts.timeoutMs };
    const r = await this.#client._toolCall(this.name, "shell", args, (opts.timeoutMs ?? 60_000) + SLACK_MS);
    const result = new ShellResult(r);
    return opts.check ? result.check() : result;
  }

  /** The file's bytes, read in pages of 8 MiB (for very large files prefer
   * {@link download}). A missing file throws {@link ToolError}. */
  async readFile(path: string): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let offset = 0;
    for (;;) {
      const args: ReadFileArguments = { path, offset, limit: READ_PAGE };
      const r = (await this.#client._toolCall(this.name, "read_file", args)).check();
      const data = unb64(r.text);
      parts.push(data);
      offset += data.length;
      const eof = r.structured?.eof;
      if (eof === undefined || eof === true || data.length === 0) break;
    }
    return parts.length === 1 ? parts[0]! : new Uint8Array(Buffer.concat(parts));
  }

  /** The file as UTF-8 text. */
  async readText(path: string): Promise<string> {
    return new TextDecoder().decode(await this.readFile(path));
  }

  /** The directory's entries, sorted by name, each with a `kind` (`file`,
   * `directory` or `other`; links are followed). Relative paths resolve
   * against the executor's working directory. At most `maxEntries` (the
   * gateway's default 1000, at most 10000) come back; beyond that
   * `truncated` is true and `total` counts them all. A missing path or a
   * file throws {@link ToolError}. */
  async listDir(path = ".", opts: { maxEntries?: number } = {}): Promise<DirListing> {
    const args: ListDirArguments = { path, max_entries: opts.maxEntries };
    const r = await this.#client._toolCall(this.name, "list_dir", args);
    return dirListing(r.check());
  }

  /** Writes the file atomically (a string as UTF-8), creating parents;
   * the bytes written. The gateway's body limit (16 MiB by default)
   * applies: use {@link upload} for large files. */
  async writeFile(path: string, data: Data): Promise<number> {
    const args: WriteFileArguments = { path, content_b64: b64(data) };
    const r = (await this.#client._toolCall(this.name, "write_file", args)).check();
    return Number(r.structured?.bytes ?? 0);
  }

  /** Applies a patch in Codex's grammar (`*** Begin Patch` …), atomically
   * across files. One that does not apply throws {@link ToolError}
   * (nothing was changed) unless `check: false`. */
  async applyPatch(patch: string, opts: ApplyPatchOptions = {}): Promise<PatchResult> {
    const args: ApplyPatchArguments = { patch, dry_run: opts.dryRun || undefined, expected_sha256: opts.expectedSha256 };
    const r = await this.#client._toolCall(this.name, "apply_patch", args);
    if (opts.check !== false) r.check();
    return patchResult(r);
  }

  /** Copies `src` here to `dst` on `other` (an Env or a name; may be this
   * one) with the `copy_path` tool: streamed, verified by SHA-256, nothing
   * at `dst` unless complete. A failure throws {@link ToolError}. */
  async copyTo(other: Env | string, src: string, dst: string, opts: { recursive?: boolean; timeoutMs?: number } = {}): Promise<CopyResult> {
    const args: CopyPathArguments = {
      source_environment_id: this.name,
      source_path: src,
      destination_environment_id: typeof other === "string" ? other : other.name,
      destination_path: dst,
      recursive: opts.recursive || undefined,
      timeout_ms: opts.timeoutMs,
    };
    const r = await this.#client._toolCall(this.name, "copy_path", args, (opts.timeoutMs ?? 600_000) + SLACK_MS);
    return copyResult(r.check());
  }

  /** {@link copyTo} under the tool's name. */
  copyPath(other: Env | string, src: string, dst: string, opts: { recursive?: boolean; timeoutMs?: number } = {}): Promise<CopyResult> {
    return this.copyTo(other, src, dst, opts);
  }

  /** Streams the local file `local` to `remote` (any size; constant
   * memory). The remote file appears atomically, verified by SHA-256. */
  async upload(local: string, remote: string, opts: { createParents?: boolean } = {}): Promise<TransferResult> {
    const size = (await stat(local)).size;
    let hash = createHash("sha256");
    const files: ReturnType<typeof createReadStream>[] = [];
    // A fresh stream (and hash) for each attempt: a retry sends the whole file again.
    const body = () => {
      hash = createHash("sha256");
      const file = createReadStream(local, { highWaterMark: FILE_CHUNK });
      files.push(file);
      const it = file[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      return new ReadableStream<Uint8Array>({
        async pull(ctrl) {
          const { value, done } = await it.next();
          if (done) {
            ctrl.close();
            return;
          }
          hash.update(value);
          ctrl.enqueue(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
        },
        cancel() {
          file.destroy();
        },
      });
    };
    let r: UploadResponse;
    try {
      const res = await this.#client._fetch(ROUTES.filePut.method, routePath(ROUTES.filePut, { name: this.name }), {
        query: { path: remote, create_parents: opts.createParents === false ? "false" : undefined },
        headers: { "content-type": "application/octet-stream", "content-length": String(size) },
        body,
        duplex: "half",
        timeoutMs: null,
        idempotencyKey: newIdempotencyKey(),
      });
      r = (await res.json()) as UploadResponse;
    } finally {
      for (const file of files) file.destroy();
    }
    const local256 = hash.digest("hex");
    if (r.sha256 !== local256) {
      throw new ExecgateError(
        `upload of ${local} to ${remote}: the gateway stored SHA-256 ${r.sha256} but the local file had ${local256} (did it change while it was sent?)`,
        { code: "checksum_mismatch" },
      );
    }
    return { path: remote, bytes: Number(r.bytes), sha256: r.sha256 };
  }

  /** Streams `remote` into the local file `local` (any size; constant
   * memory), written under a temporary name and renamed into place once
   * complete. */
  async download(remote: string, local: string): Promise<TransferResult> {
    const res = await this.#client._fetch(ROUTES.fileGet.method, routePath(ROUTES.fileGet, { name: this.name }), {
      query: { path: remote },
      timeoutMs: null,
    });
    const abs = resolve(local);
    const tmp = join(dirname(abs), `.${basename(abs)}.${randomBytes(4).toString("hex")}.part`);
    const hash = createHash("sha256");
    let n = 0;
    const fh = await open(tmp, "wx");
    try {
      try {
        if (res.body) {
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
            hash.update(chunk);
            n += chunk.length;
            await fh.write(chunk);
          }
        }
      } catch (e) {
        throw transportError(e);
      } finally {
        await fh.close();
      }
      const expected = res.headers.get("content-length");
      if (expected !== null && Number(expected) !== n) {
        throw new TransportError(`the download ended after ${n} of ${expected} bytes`, { code: "transport" });
      }
      await rename(tmp, abs);
    } catch (e) {
      await unlink(tmp).catch(() => {});
      throw e;
    }
    return { path: local, bytes: n, sha256: hash.digest("hex") };
  }

  /** Starts a long-running process (`exec_command`). */
  async spawn(cmd: Command, opts: SpawnOptions = {}): Promise<Process> {
    const args: ExecCommandArguments = {
      command: command(cmd),
      cwd: opts.cwd,
      env: opts.env,
      tty: opts.tty || undefined,
      pipe_stdin: opts.pipeStdin === false ? false : undefined,
      cols: opts.cols,
      rows: opts.rows,
      max_runtime_ms: opts.maxRuntimeMs,
    };
    const r = (await this.#client._toolCall(this.name, "exec_command", args)).check();
    let sid = r.structured?.session_id;
    if (typeof sid !== "string") sid = (JSON.parse(r.text) as { session_id: string }).session_id;
    return new Process(this.#client, String(sid), this.name);
  }

  toString(): string {
    return `Env(${this.name}${this.isDefault ? ", default" : ""})`;
  }
}

export interface OutputOptions {
  /** Start after this seq (default: after the last item an earlier
   * `output()` of this object delivered; 0: from the start). */
  since?: number;
  /** `"sse"` (the event stream), `"poll"` (long-polling `/output`), or
   * `"auto"` (SSE, falling back to polling on a gateway without it). */
  transport?: "auto" | "sse" | "poll";
}

/** A process started by {@link Env.spawn} (or attached with
 * {@link Client.process}). With `await using`, it is terminated when the
 * block ends unless it has exited. */
export class Process {
  readonly #client: Client;
  /** The session id (`ps_…`); `client.process(sid)` attaches to it again. */
  readonly sid: string;
  /** The environment's name, when known. */
  readonly env: string | null;
  #cursor = 0;
  #waitCursor = 0;
  #exitCode: number | null = null;
  #exited = false;
  #closed = false;
  #noSse = false;

  constructor(client: Client, sid: string, env: string | null) {
    this.#client = client;
    this.sid = sid;
    this.env = env;
  }

  /** The last seq `output()` delivered (or reported lost); `output()` resumes after it. */
  get cursor(): number {
    return this.#cursor;
  }
  /** The exit code once known; `null` while it runs or before anyone asked. */
  get exitCode(): number | null {
    return this.#exitCode;
  }
  /** Whether the process is known to have exited. */
  get exited(): boolean {
    return this.#exited;
  }

  #post<T>(route: Route, body: object, idempotencyKey?: string): Promise<T> {
    return this.#client._call<T>(route, { sid: this.sid }, { json: body, idempotencyKey });
  }

  /** Writes to its stdin (a string as UTF-8). */
  async write(data: Data): Promise<void> {
    const body: StdinRequest = { data_b64: b64(data) };
    await this.#post(ROUTES.stdin, body, newIdempotencyKey());
  }

  /** Closes its stdin (EOF). */
  async closeStdin(): Promise<void> {
    const body: StdinRequest = { data_b64: "", eof: true };
    await this.#post(ROUTES.stdin, body, newIdempotencyKey());
  }

  /** Terminates it (its whole process group). */
  async terminate(): Promise<void> {
    await this.#post(ROUTES.terminate, {}, newIdempotencyKey());
  }

  /** Sends a signal to its process group. */
  async signal(name: SignalName): Promise<void> {
    const body: SignalRequest = { signal: name };
    await this.#post(ROUTES.signal, body, newIdempotencyKey());
  }

  /** Sets the terminal size of a `tty` process. */
  async resize(cols: number, rows: number): Promise<void> {
    const body: ResizeRequest = { cols, rows };
    await this.#post(ROUTES.resize, body);
  }

  async #readOutput(since: number, waitMs: number): Promise<OutputResponse> {
    const r = await this.#client._call<OutputResponse>(
      ROUTES.output,
      { sid: this.sid },
      { query: { since, wait_ms: waitMs }, timeoutMs: waitMs + SLACK_MS },
    );
    if (r.exit_code !== null && r.exit_code !== undefined) {
      this.#exitCode = r.exit_code;
      this.#exited = true;
    }
    if (r.session_alive === false) this.#exited = true;
    if (r.error) {
      const Cls = errorClass(r.error.code, 410);
      throw new Cls(r.error.message, { code: r.error.code, status: 200 });
    }
    return r;
  }

  /** Its output until the process has exited and all of it was delivered:
   * {@link Chunk} items and, where the executor had to drop output,
   * {@link LostOutput} items (never a silent gap).
   *
   * Resumable: it starts after `since` (default: after the last item an
   * earlier `output()` of this object delivered), and a broken connection
   * is resumed with `Last-Event-ID` where it stopped, with nothing doubled
   * or skipped. */
  async *output(opts: OutputOptions = {}): AsyncGenerator<OutputItem, void, undefined> {
    const transport = opts.transport ?? "auto";
    if (transport === "poll" || (transport === "auto" && this.#noSse)) {
      yield* this.#outputPoll(opts.since);
      return;
    }
    if (transport !== "sse" && transport !== "auto") throw new TypeError(`transport must be auto, sse or poll, not ${String(transport)}`);
    try {
      yield* this.#outputSse(opts.since);
    } catch (e) {
      // Only a gateway without the route at all (its fallback 404).
      if (transport === "sse" || !(e instanceof ExecgateError) || e.code !== "not_found") throw e;
      this.#noSse = true;
      yield* this.#outputPoll(opts.since);
    }
  }

  async *#outputPoll(since: number | undefined): AsyncGenerator<OutputItem, void, undefined> {
    let cursor = since ?? this.#cursor;
    let failures = 0;
    for (;;) {
      let r: OutputResponse;
      try {
        r = await this.#readOutput(cursor, POLL_WAIT_MS);
      } catch (e) {
        if (!(e instanceof TransportError) || ++failures > RECONNECTS) throw e;
        await sleep(Math.min(200 * 2 ** failures, 5000));
        continue;
      }
      failures = 0;
      const chunks = r.chunks ?? [];
      const lostUnknown = Boolean(r.lost_bytes_unknown);
      const lost = Number(r.lost_bytes ?? 0);
      if (lost > 0 || lostUnknown) {
        const first = chunks.length ? Number(chunks[0]!.seq) : Number(r.next_since ?? cursor) + 1;
        if (first > cursor + 1) {
          const item = new LostOutput(cursor + 1, first - 1, lostUnknown ? null : lost);
          cursor = this.#cursor = item.toSeq;
          yield item;
        }
      }
      for (const c of chunks) {
        const seq = Number(c.seq);
        if (seq <= cursor) continue;
        cursor = this.#cursor = seq;
        yield new Chunk(c.stream, unb64(c.data_b64 ?? ""), seq);
      }
      cursor = this.#cursor = Math.max(cursor, Number(r.next_since ?? cursor));
      if (r.session_alive === false) return;
    }
  }

  async *#outputSse(since: number | undefined): AsyncGenerator<OutputItem, void, undefined> {
    let cursor = since ?? this.#cursor;
    let failures = 0;
    const path = routePath(ROUTES.stream, { sid: this.sid });
    for (;;) {
      const abort = new AbortController();
      let res: Response;
      // The connect and the answer's head, then each read, get SSE_IDLE_MS.
      const head = setTimeout(() => abort.abort(), SSE_IDLE_MS);
      try {
        res = await this.#client._fetch("GET", path, {
          headers: { accept: "text/event-stream", "last-event-id": String(cursor) },
          timeoutMs: null,
          signal: abort.signal,
        });
      } catch (e) {
        if (!(e instanceof TransportError) || ++failures > RECONNECTS) throw e;
        await sleep(Math.min(200 * 2 ** failures, 5000));
        continue;
      } finally {
        clearTimeout(head);
      }
      if (!res.body) throw new TransportError("the output stream has no body", { code: "transport" });
      const reader = res.body.getReader();
      const text = new TextDecoder();
      const lines = new LineSplitter();
      const decoder = new SseDecoder();
      let gotEvent = false;
      try {
        for (;;) {
          let step: Awaited<ReturnType<typeof reader.read>>;
          const idle = setTimeout(() => {
            abort.abort();
            reader.cancel(new Error("the output stream was silent too long")).catch(() => {});
          }, SSE_IDLE_MS);
          try {
            step = await reader.read();
          } catch (e) {
            throw transportError(e);
          } finally {
            clearTimeout(idle);
          }
          if (step.done) {
            // Ended without `exit`: resume, but not forever if the gateway
            // keeps ending it with nothing.
            if (!gotEvent && ++failures > RECONNECTS) {
              throw new TransportError(`the output stream of ${this.sid} keeps ending without events`, { code: "transport" });
            }
            break;
          }
          for (const line of lines.push(text.decode(step.value, { stream: true }))) {
            const ev = decoder.feed(line);
            if (!ev) continue;
            gotEvent = true;
            failures = 0;
            const data = (ev.data ? JSON.parse(ev.data) : {}) as Record<string, unknown>;
            if (ev.event === "output") {
              const d = data as unknown as SseOutput;
              const seq = ev.id ? Number(ev.id) : cursor + 1;
              if (seq <= cursor) continue;
              cursor = this.#cursor = seq;
              yield new Chunk(d.stream ?? "stdout", unb64(d.data_b64 ?? ""), seq);
            } else if (ev.event === "lost") {
              const d = data as unknown as SseLost;
              const item = new LostOutput(Number(d.from_seq), Number(d.to_seq), d.bytes === null || d.bytes === undefined ? null : Number(d.bytes));
              if (item.toSeq <= cursor) continue;
              cursor = this.#cursor = item.toSeq;
              yield item;
            } else if (ev.event === "exit") {
              const d = data as unknown as SseExit;
              if (ev.id) cursor = this.#cursor = Math.max(cursor, Number(ev.id));
              this.#exited = true;
              if (d.exit_code !== null && d.exit_code !== undefined) this.#exitCode = d.exit_code;
              return;
            } else if (ev.event === "error") {
              const code = String(data.code ?? "error");
              const Cls = errorClass(code, null);
              throw new Cls(String(data.message ?? ""), { code, status: 200 });
            }
          }
        }
      } catch (e) {
        if (!(e instanceof TransportError) || ++failures > RECONNECTS) throw e;
      } finally {
        abort.abort();
        reader.cancel().catch(() => {});
      }
      await sleep(failures ? Math.min(100 * 2 ** failures, 5000) : 50);
    }
  }

  /** Waits until it exits; its exit code (`null` if it has none, e.g.
   * killed). Throws {@link WaitTimeout} after `timeoutMs`. */
  async wait(opts: { timeoutMs?: number } = {}): Promise<number | null> {
    const deadline = opts.timeoutMs === undefined ? null : Date.now() + opts.timeoutMs;
    let cursor = Math.max(this.#waitCursor, this.#cursor);
    for (;;) {
      if (this.#exited && (this.#exitCode !== null || this.#closed)) return this.#exitCode;
      let waitMs = POLL_WAIT_MS;
      if (deadline !== null) {
        const left = deadline - Date.now();
        if (left <= 0) throw new WaitTimeout(`process ${this.sid} still runs after ${opts.timeoutMs} ms`, { code: "wait_timeout" });
        waitMs = Math.min(waitMs, Math.max(1, left));
      }
      const r = await this.#readOutput(cursor, waitMs);
      const chunks = r.chunks ?? [];
      if (chunks.length) cursor = Math.max(cursor, Number(chunks[chunks.length - 1]!.seq));
      cursor = this.#waitCursor = Math.max(cursor, Number(r.next_since ?? cursor));
      if (this.#exitCode !== null) return this.#exitCode;
      if (r.session_alive === false) {
        this.#closed = true;
        return this.#exitCode;
      }
    }
  }

  /** Its exit code if it has exited, else `null`, without waiting. */
  async poll(): Promise<number | null> {
    if (this.#exitCode !== null) return this.#exitCode;
    let cursor = Math.max(this.#waitCursor, this.#cursor);
    for (;;) {
      const r = await this.#readOutput(cursor, 0);
      if (this.#exitCode !== null || r.session_alive === false) return this.#exitCode;
      const chunks = r.chunks ?? [];
      if (!chunks.length) return null;
      cursor = this.#waitCursor = Math.max(Number(chunks[chunks.length - 1]!.seq), Number(r.next_since ?? 0));
    }
  }

  /** Terminates it unless it has exited (for `await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#exited) return;
    try {
      await this.terminate();
    } catch (e) {
      if (!(e instanceof SessionGone || e instanceof SessionNotFound)) throw e;
    }
  }

  toString(): string {
    return `Process(${this.sid} on ${this.env ?? "?"}, ${this.#exited ? `exited ${this.#exitCode}` : "running"})`;
  }
}
