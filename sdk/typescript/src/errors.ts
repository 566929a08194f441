/**
 * Typed errors that mirror the gateway's error codes.
 *
 * Every 4xx/5xx answer of the gateway is `{"error": {"code", "message"}}`
 * with a stable `code`; {@link errorFromResponse} turns it into the matching
 * subclass of {@link ExecgateError}. Catch the base class to handle
 * everything, or a subclass (`instanceof`) to handle one case.
 */

import type { ShellResult, ToolResult } from "./results.js";

export interface ErrorOptions {
  code?: string;
  status?: number | null;
  retryAfter?: number | null;
  cause?: unknown;
}

/** Base class of every error this SDK throws. */
export class ExecgateError extends Error {
  /** The gateway's stable error code (`"env_not_found"`…), or an SDK code
   * for errors that did not come from an error envelope (`"transport"`,
   * `"timeout"`, `"tool_error"`, `"command_failed"`, `"wait_timeout"`). */
  readonly code: string;
  /** The HTTP status, or `null` when there was no HTTP answer. */
  readonly status: number | null;
  /** Seconds from a `Retry-After` header, if any. */
  readonly retryAfter: number | null;
  /** The human-readable message, without the status and code prefix. */
  readonly detail: string;

  constructor(message: string, opts: ErrorOptions = {}) {
    const code = opts.code ?? "error";
    const status = opts.status ?? null;
    super(`${status !== null ? `${status} ` : ""}${code}: ${message}`, { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.retryAfter = opts.retryAfter ?? null;
    this.detail = message;
  }
}

/** No HTTP answer: connection refused or reset, a timeout (`code` `"timeout"`). */
export class TransportError extends ExecgateError {}
/** 401 `missing_bearer`, `invalid_token`. */
export class AuthError extends ExecgateError {}
/** 403 `forbidden`; the base of the policy refusals. */
export class Forbidden extends ExecgateError {}
/** 403 `policy_denied`: outside the executor's `--root`, a change on a `--read-only` one. */
export class PolicyDenied extends Forbidden {}
/** 403 `tool_not_allowed`: not in the executor's `--allow-tools`. */
export class ToolNotAllowed extends Forbidden {}
/** 404 without a more specific code. */
export class NotFound extends ExecgateError {}
/** 404 `env_not_found`. */
export class EnvNotFound extends NotFound {}
/** 404 `session_not_found` (also a session of another workspace). */
export class SessionNotFound extends NotFound {}
/** 404 `file_not_found` (`download`). */
export class FileNotFound extends NotFound {}
/** 400 (`bad_request`, `bad_json`, `bad_base64`…). */
export class BadRequest extends ExecgateError {}
/** 400 `bad_arguments`: the message names the field. */
export class BadArguments extends BadRequest {}
/** `unknown_tool`. */
export class UnknownTool extends BadRequest {}
/** 409. */
export class Conflict extends ExecgateError {}
/** 409 `stdin_closed`: after EOF, after exit, or without `pipeStdin`. */
export class StdinClosed extends Conflict {}
/** 409 `not_a_terminal`: resizing a process that has no pty. */
export class NotATerminal extends Conflict {}
/** 410: the process is gone from its executor. */
export class SessionGone extends ExecgateError {}
/** 410 `session_expired`: the executor forgot the exited process. */
export class SessionExpired extends SessionGone {}
/** 410 `executor_restarted`: the executor restarted; its processes are gone. */
export class ExecutorRestarted extends SessionGone {}
/** 413 `payload_too_large`: use `upload` for large files. */
export class PayloadTooLarge extends ExecgateError {}
/** 429: wait `retryAfter` seconds. */
export class RateLimited extends ExecgateError {}
/** 429 `too_many_processes`: the executor runs its `--max-processes` already. */
export class TooManyProcesses extends RateLimited {}
/** 429 `too_many_sessions`: the workspace's cap of live sessions is reached. */
export class TooManySessions extends RateLimited {}
/** 5xx without a more specific class (`internal`…). */
export class ServerError extends ExecgateError {}
/** 503 `auth_unavailable`: the token authority cannot answer; retry. */
export class AuthUnavailable extends ServerError {}
/** 503 `draining`: this gateway is shutting down; retry (a load balancer
 * sends the retry to another replica). */
export class Draining extends ServerError {}
/** 503 `store_unavailable`: the gateway cannot reach its store; retry. */
export class StoreUnavailable extends ServerError {}
/** 503 `audit_unavailable`: the audit record cannot be written; nothing ran. */
export class AuditUnavailable extends ServerError {}
/** 503 `executor_unavailable`: the environment's executor is not connected. */
export class ExecutorUnavailable extends ServerError {}
/** 502 `executor_error`: the executor answered something unexpected. */
export class ExecutorError extends ServerError {}
/** 504 `gateway_timeout`: the executor did not answer in time. */
export class GatewayTimeout extends ServerError {}
/** 501 `not_supported_by_executor` (e.g. closing stdin on a stock codex). */
export class NotSupported extends ExecgateError {}

/** A tool ran and failed (`isError: true`) and throwing was asked for. */
export class ToolError extends ExecgateError {
  readonly result: ToolResult;
  constructor(message: string, result: ToolResult) {
    super(message, { code: "tool_error", status: 200 });
    this.result = result;
  }
}

/** `shell(..., {check: true})`: a non-zero exit or a timeout. */
export class CommandFailed extends ExecgateError {
  readonly result: ShellResult;
  constructor(message: string, result: ShellResult) {
    super(message, { code: "command_failed", status: 200 });
    this.result = result;
  }
}

/** 422 `idempotency_key_reused`: the call's `Idempotency-Key` was used for a
 * different request. (The SDK makes a fresh key per call: this means a key
 * of your own was reused.) */
export class IdempotencyKeyReused extends ExecgateError {}

/** 409 `idempotency_key_in_doubt` (the first attempt was cut off by its
 * gateway's death: it may or may not have happened) or
 * `idempotency_answer_too_large` (it was done; its answer was not kept).
 * Not done again: check the result. */
export class IdempotencyConflict extends Conflict {}

/** `Process.wait({timeoutMs})` ran out; the process still runs. */
export class WaitTimeout extends ExecgateError {}

type ErrorClass = new (message: string, opts?: ErrorOptions) => ExecgateError;

/** The gateway's error codes this SDK maps to a class of its own. The
 * OpenAPI test checks that each is one the gateway documents. */
export const ERROR_CODES: Readonly<Record<string, ErrorClass>> = {
  missing_bearer: AuthError,
  invalid_token: AuthError,
  forbidden: Forbidden,
  policy_denied: PolicyDenied,
  tool_not_allowed: ToolNotAllowed,
  not_found: NotFound,
  env_not_found: EnvNotFound,
  session_not_found: SessionNotFound,
  file_not_found: FileNotFound,
  bad_request: BadRequest,
  bad_json: BadRequest,
  bad_base64: BadRequest,
  range_not_satisfiable: BadRequest,
  unsupported_media_type: BadRequest,
  method_not_allowed: BadRequest,
  bad_arguments: BadArguments,
  unknown_tool: UnknownTool,
  conflict: Conflict,
  stdin_closed: StdinClosed,
  not_a_terminal: NotATerminal,
  session_expired: SessionExpired,
  executor_restarted: ExecutorRestarted,
  payload_too_large: PayloadTooLarge,
  rate_limited: RateLimited,
  too_many_processes: TooManyProcesses,
  too_many_sessions: TooManySessions,
  auth_unavailable: AuthUnavailable,
  audit_unavailable: AuditUnavailable,
  executor_unavailable: ExecutorUnavailable,
  executor_error: ExecutorError,
  gateway_timeout: GatewayTimeout,
  internal: ServerError,
  not_supported_by_executor: NotSupported,
  idempotency_key_reused: IdempotencyKeyReused,
  idempotency_key_in_doubt: IdempotencyConflict,
  idempotency_answer_too_large: IdempotencyConflict,
  draining: Draining,
  store_unavailable: StoreUnavailable,
};

const BY_STATUS: Readonly<Record<number, ErrorClass>> = {
  400: BadRequest,
  401: AuthError,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  410: SessionGone,
  413: PayloadTooLarge,
  429: RateLimited,
  501: NotSupported,
  502: ExecutorError,
  503: ExecutorUnavailable,
  504: GatewayTimeout,
};

/** The error class for an error `code`, falling back on the HTTP `status`. */
export function errorClass(code: string, status: number | null): ErrorClass {
  const byCode = Object.hasOwn(ERROR_CODES, code) ? ERROR_CODES[code] : undefined;
  if (status === 429) {
    return byCode && byCode.prototype instanceof RateLimited ? byCode : RateLimited;
  }
  if (byCode) return byCode;
  if (status !== null) return BY_STATUS[status] ?? (status >= 500 ? ServerError : ExecgateError);
  return ExecgateError;
}

/** The error for a non-2xx answer (its body already read). */
export function errorFromResponse(status: number, body: string, headers: Headers): ExecgateError {
  let code = `http_${status}`;
  let message = body.trim() || `HTTP ${status}`;
  try {
    const env = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    if (env && typeof env.error === "object" && env.error && typeof env.error.code === "string") {
      code = env.error.code;
      message = String(env.error.message ?? "");
    }
  } catch {
    // not JSON: keep the body as the message
  }
  let retryAfter: number | null = null;
  const raw = headers.get("retry-after");
  if (raw !== null && raw.trim() !== "" && Number.isFinite(Number(raw))) retryAfter = Number(raw);
  const Cls = errorClass(code, status);
  return new Cls(message, { code, status, retryAfter });
}
