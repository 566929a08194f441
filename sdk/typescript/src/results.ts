/** Plain data the SDK returns: results, environment and process info, and
 * the items of a process's output. */

import { CommandFailed, ToolError } from "./errors.js";
import type { CallToolResult, ConnectorTool, ProcessInfoJson, ShellStructured } from "./wire.js";

type Obj = Record<string, unknown>;

/** One tool of an environment, as envs/list shows it. */
export interface Tool {
  name: string;
  description: string;
  /** `"core"` or `"custom"`. */
  kind: string;
  /** A custom tool's JSON Schema for its arguments. */
  inputSchema: unknown;
}

export function toolFromJson(t: ConnectorTool): Tool {
  return { name: t.name, description: t.description ?? "", kind: t.kind ?? "core", inputSchema: t.input_schema ?? null };
}

/** An MCP CallToolResult, as `tool/call` answers it. */
export class ToolResult {
  /** The text of the first content item. */
  readonly text: string;
  readonly structured: Obj | null;
  readonly isError: boolean;
  /** The whole answer. */
  readonly raw: CallToolResult;

  constructor(raw: CallToolResult) {
    this.raw = raw;
    this.text = raw.content?.[0]?.text ?? "";
    this.structured = raw.structuredContent && typeof raw.structuredContent === "object" ? (raw.structuredContent as Obj) : null;
    this.isError = Boolean(raw.isError);
  }

  /** Throws {@link ToolError} if the tool failed; returns `this`. */
  check(): this {
    if (this.isError) throw new ToolError(this.text || "the tool failed", this);
    return this;
  }
}

/** What `shell` (and every custom tool) answers. */
export class ShellResult {
  readonly stdout: string;
  readonly stderr: string;
  /** `null` when the process was killed before it exited normally. */
  readonly exitCode: number | null;
  readonly timedOut: boolean;
  readonly durationMs: number;
  /** Output the executor dropped before the gateway read it. */
  readonly lostBytes: number;
  /** Output beyond what `shell` captures (16 MiB). */
  readonly droppedBytes: number;
  readonly toolResult: ToolResult;

  constructor(r: ToolResult) {
    const s = (r.structured ?? {}) as ShellStructured;
    if (typeof s.stdout !== "string") {
      // The executor refused to start the command (no such program…).
      throw new ToolError(r.text || "the command could not be run", r);
    }
    this.stdout = s.stdout;
    this.stderr = s.stderr ?? "";
    this.exitCode = s.exit_code ?? null;
    this.timedOut = Boolean(s.timed_out);
    this.durationMs = Number(s.duration_ms ?? 0);
    this.lostBytes = Number(s.lost_bytes ?? 0);
    this.droppedBytes = Number(s.dropped_bytes ?? 0);
    this.toolResult = r;
  }

  /** Exit code 0 and no timeout. */
  get ok(): boolean {
    return this.exitCode === 0 && !this.timedOut;
  }

  /** Throws {@link CommandFailed} unless {@link ok}; returns `this`. */
  check(): this {
    if (!this.ok) {
      const why = this.timedOut ? "timed out" : `exited with code ${this.exitCode}`;
      const tail = this.stderr.trim().split("\n").pop() ?? "";
      throw new CommandFailed(`the command ${why}${tail ? `: ${tail}` : ""}`, this);
    }
    return this;
  }
}

/** One file of an `applyPatch`. */
export interface PatchFile {
  path: string;
  action: string;
  ok: boolean;
  error?: string;
  to?: string;
}

/** What `applyPatch` answers: one entry per file. */
export interface PatchResult {
  files: PatchFile[];
  applied: boolean;
  dryRun: boolean;
  text: string;
  toolResult: ToolResult;
}

export function patchResult(r: ToolResult): PatchResult {
  const s = r.structured ?? {};
  return {
    files: Array.isArray(s.files) ? (s.files as PatchFile[]) : [],
    applied: Boolean(s.applied),
    dryRun: Boolean(s.dry_run),
    text: r.text,
    toolResult: r,
  };
}

/** What `copyTo` answers. */
export interface CopyResult {
  bytes: number;
  files: number;
  durationMs: number;
  /** The file's SHA-256 (single files only), when it was verified by
   * SHA-256: an end was a stock codex. */
  sha256: string | null;
  /** The file's BLAKE3 (single files only), when it was verified by BLAKE3:
   * both ends were execgate executors. */
  blake3: string | null;
}

export function copyResult(r: ToolResult): CopyResult {
  const s = r.structured ?? {};
  return {
    bytes: Number(s.bytes ?? 0),
    files: Number(s.files ?? 0),
    durationMs: Number(s.duration_ms ?? 0),
    sha256: typeof s.sha256 === "string" ? s.sha256 : null,
    blake3: typeof s.blake3 === "string" ? s.blake3 : null,
  };
}

/** One entry of a directory listing (`listDir`). Symbolic links are
 * followed; a dangling one (or one out of the executor's root), a FIFO, a
 * socket or a device is `"other"`. */
export interface DirEntry {
  name: string;
  kind: "file" | "directory" | "other";
}

/** What `listDir` answers: entries sorted by name. */
export interface DirListing {
  path: string;
  entries: DirEntry[];
  /** Every entry of the directory, returned or not. */
  total: number;
  /** Whether entries were left out (`maxEntries`). */
  truncated: boolean;
}

export function dirListing(r: ToolResult): DirListing {
  const s = r.structured ?? {};
  const entries: DirEntry[] = Array.isArray(s.entries)
    ? (s.entries as Array<Record<string, unknown>>).map((e) => ({ name: String(e.name), kind: String(e.kind) as DirEntry["kind"] }))
    : [];
  return {
    path: String(s.path ?? ""),
    entries,
    total: Number(s.total ?? entries.length),
    truncated: Boolean(s.truncated),
  };
}

/** What `upload` and `download` answer. */
export interface TransferResult {
  /** The path written (remote for upload, local for download). */
  path: string;
  bytes: number;
  sha256: string;
}

/** One process session of the workspace (`client.processes()`). */
export interface ProcessInfo {
  sid: string;
  env: string;
  command: string[];
  startedAt: string;
  /** `null` when the executor is not connected. */
  sessionAlive: boolean | null;
  exitCode: number | null;
  /** `running`, `exited`, `expired`, `executor_restarted` or `executor_unavailable`. */
  status: string;
}

export function processInfo(p: ProcessInfoJson): ProcessInfo {
  return {
    sid: p.sid,
    env: p.env,
    command: [...p.command],
    startedAt: p.started_at,
    sessionAlive: p.session_alive,
    exitCode: p.exit_code,
    status: p.status,
  };
}

/** A piece of a process's output. */
export class Chunk {
  readonly kind = "chunk" as const;
  constructor(
    /** `"stdout"`, `"stderr"` or `"pty"`. */
    readonly stream: string,
    readonly data: Uint8Array,
    /** Its sequence number; `output({since: seq})` resumes after it. */
    readonly seq: number,
  ) {}

  /** `data` decoded as UTF-8 (invalid bytes replaced). */
  get text(): string {
    return new TextDecoder().decode(this.data);
  }
}

/** Output the executor had to drop (its buffers were full): seqs `fromSeq`
 * to `toSeq` will never be delivered. `bytes` is how many bytes that was,
 * or `null` when the gateway cannot know. Never a silent gap: the iterator
 * yields this item where the gap is. */
export class LostOutput {
  readonly kind = "lost" as const;
  constructor(
    readonly fromSeq: number,
    readonly toSeq: number,
    readonly bytes: number | null,
  ) {}

  /** The last lost seq (the cursor moves past it). */
  get seq(): number {
    return this.toSeq;
  }
}

/** What `Process.output()` yields. */
export type OutputItem = Chunk | LostOutput;

