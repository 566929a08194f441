/**
 * The gateway's JSON on the wire, as this SDK reads and sends it: written
 * by hand (see the README, "Types"), and checked against `/openapi.json`
 * by test/openapi.test.js.
 *
 * Each interface names the OpenAPI component it stands for in a JSDoc tag:
 * `@response X` (the SDK reads it: it must accept everything the document
 * allows, e.g. `null` where the document allows null, and a property the
 * document does not require must be optional), `@request X` (the SDK sends
 * it: only properties the document has, of types it allows, and every
 * property it requires), or `@sse EVENT` (the JSON `data` of a
 * `/stream` event, checked against that event's `contentSchema`).
 * Interfaces without a tag are not in the document (the
 * `structuredContent` of a tool's result is schemaless there).
 */

/** @response ErrorBody */
export interface ErrorBody {
  code: string;
  message: string;
}

/** @response ErrorResponse */
export interface ErrorResponse {
  error: ErrorBody;
}

/** @response ExecutorInfo */
export interface ExecutorInfo {
  kind: string;
  version: string;
  os: string;
}

/** @response SandboxInfo */
export interface SandboxInfo {
  write: string[];
  devices: string[];
  read: string[] | null;
  net: string;
  landlock_abi: number;
  scopes: string[];
}

/** @response PolicyInfo */
export interface PolicyInfo {
  root: string | null;
  allow_tools: string[] | null;
  read_only: boolean;
  max_processes: number | null;
  sandbox: SandboxInfo | null;
}

/** @response ConnectorTool */
export interface ConnectorTool {
  name: string;
  description: string;
  /** `"core"` or `"custom"`. */
  kind: string;
  /** A custom tool's JSON Schema for its arguments. */
  input_schema?: unknown;
}

/** @response ConnectorEnv */
export interface ConnectorEnv {
  name: string;
  type: string;
  is_default: boolean;
  tools: ConnectorTool[];
  last_seen?: string | null;
  executor?: ExecutorInfo | null;
  policy?: PolicyInfo | null;
}

/** @response EnvsListResponse */
export interface EnvsListResponse {
  envs: ConnectorEnv[];
  /** With a `limit`, while more follow: the `after` of the next page. */
  next?: string | null;
}

/** @request EnvsListRequest */
export interface EnvsListRequest {
  /** At most this many environments (1 to 1000), in byte order of names. */
  limit?: number;
  /** Only environments named after this one (the previous page's `next`). */
  after?: string;
}

/** @request ToolCallRequest */
export interface ToolCallRequest {
  tool: string;
  arguments?: Record<string, unknown>;
}

/** @response Content */
export interface Content {
  type: string;
  text: string;
}

/** @response CallToolResult */
export interface CallToolResult {
  content: Content[];
  isError?: boolean;
  structuredContent?: unknown;
}

/** @request ShellArguments */
export interface ShellArguments {
  command: string | string[];
  cwd?: string;
  env?: Record<string, string>;
  timeout_ms?: number;
}

/** @request ReadFileArguments */
export interface ReadFileArguments {
  path: string;
  offset?: number;
  limit?: number;
}

/** @request ListDirArguments */
export interface ListDirArguments {
  path: string;
  max_entries?: number;
}

/** @request WriteFileArguments */
export interface WriteFileArguments {
  path: string;
  content_b64: string;
}

/** @request ApplyPatchArguments */
export interface ApplyPatchArguments {
  patch: string;
  dry_run?: boolean;
  expected_sha256?: Record<string, string>;
}

/** @request CopyPathArguments */
export interface CopyPathArguments {
  source_environment_id: string;
  source_path: string;
  destination_environment_id: string;
  destination_path: string;
  recursive?: boolean;
  timeout_ms?: number;
}

/** @request ExecCommandArguments */
export interface ExecCommandArguments {
  command: string | string[];
  cwd?: string;
  env?: Record<string, string>;
  tty?: boolean;
  pipe_stdin?: boolean;
  cols?: number;
  rows?: number;
  max_runtime_ms?: number;
}

/** @response UploadResponse */
export interface UploadResponse {
  path: string;
  bytes: number;
  sha256: string;
}

/** @request StdinRequest */
export interface StdinRequest {
  data_b64: string;
  eof?: boolean;
}

/** @request SignalRequest */
export interface SignalRequest {
  signal: "interrupt" | "terminate" | "kill" | "hangup";
}

/** @request ResizeRequest */
export interface ResizeRequest {
  cols: number;
  rows: number;
}

/** @response OkResponse */
export interface OkResponse {
  ok: boolean;
}

/** @response OutputChunk */
export interface OutputChunk {
  stream: string;
  /** Always present with the default encoding (`base64`), which this SDK uses. */
  data_b64?: string | null;
  text?: string | null;
  encoding?: string | null;
  seq: number;
}

/** @response OutputResponse */
export interface OutputResponse {
  chunks: OutputChunk[];
  exit_code: number | null;
  session_alive: boolean;
  truncated: boolean;
  lost_bytes: number;
  lost_bytes_unknown?: boolean;
  next_since?: number | null;
  error?: ErrorBody | null;
}

/** @response ProcessInfo */
export interface ProcessInfoJson {
  sid: string;
  env: string;
  command: string[];
  started_at: string;
  session_alive: boolean | null;
  exit_code: number | null;
  status: string;
}

/** @response ProcessListResponse */
export interface ProcessListResponse {
  processes: ProcessInfoJson[];
}

/** @sse output */
export interface SseOutput {
  stream: "stdout" | "stderr" | "pty";
  data_b64: string;
}

/** @sse lost */
export interface SseLost {
  from_seq: number;
  to_seq: number;
  bytes: number | null;
}

/** @sse exit */
export interface SseExit {
  exit_code: number | null;
}

/** @sse error */
export interface SseError {
  code: string;
  message: string;
}

/** The `structuredContent` of `shell` (and of custom tools). */
export interface ShellStructured {
  stdout?: string;
  stderr?: string;
  exit_code?: number | null;
  timed_out?: boolean;
  duration_ms?: number;
  lost_bytes?: number;
  dropped_bytes?: number;
}

/** A route the SDK calls: its method, path template, and the components of
 * its JSON request body and its 200 answer (`null`: none, or not JSON). */
export interface Route {
  method: "GET" | "POST" | "PUT";
  path: string;
  request: string | null;
  response: string | null;
}

const API = "/api/connectors";

/** Every route the SDK calls. The OpenAPI test checks each against the
 * document: the path and method exist, with these request and response
 * components. */
export const ROUTES = {
  envsList: { method: "POST", path: `${API}/envs/list`, request: "EnvsListRequest", response: "EnvsListResponse" },
  toolCall: { method: "POST", path: `${API}/envs/{name}/tool/call`, request: "ToolCallRequest", response: "CallToolResult" },
  fileGet: { method: "GET", path: `${API}/envs/{name}/files`, request: null, response: null },
  filePut: { method: "PUT", path: `${API}/envs/{name}/files`, request: null, response: "UploadResponse" },
  processes: { method: "GET", path: `${API}/processes`, request: null, response: "ProcessListResponse" },
  output: { method: "GET", path: `${API}/processes/{sid}/output`, request: null, response: "OutputResponse" },
  stream: { method: "GET", path: `${API}/processes/{sid}/stream`, request: null, response: null },
  stdin: { method: "POST", path: `${API}/processes/{sid}/stdin`, request: "StdinRequest", response: "OkResponse" },
  terminate: { method: "POST", path: `${API}/processes/{sid}/terminate`, request: null, response: "OkResponse" },
  signal: { method: "POST", path: `${API}/processes/{sid}/signal`, request: "SignalRequest", response: "OkResponse" },
  resize: { method: "POST", path: `${API}/processes/{sid}/resize`, request: "ResizeRequest", response: "OkResponse" },
} as const satisfies Record<string, Route>;

/** The path of `route` with its `{param}`s filled in (URL-encoded). */
export function routePath(route: Route, params: Record<string, string> = {}): string {
  return route.path.replace(/\{(\w+)\}/g, (_, k: string) => {
    const v = params[k];
    if (v === undefined) throw new Error(`route ${route.path}: no value for {${k}}`);
    return encodeURIComponent(v);
  });
}
