/**
 * execgate: the TypeScript SDK for the execgate gateway between AI agents
 * and real machines.
 *
 * ```ts
 * import { Client } from "execgate";
 * const env = await Client.fromEnv().defaultEnv();   // EXECGATE_URL, EXECGATE_TOKEN
 * console.log((await env.shell("echo hi")).stdout);
 * ```
 */

export {
  Client,
  Env,
  Process,
  VERSION,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_RETRIES,
  newIdempotencyKey,
  retryDelayMs,
  type ClientOptions,
  type Command,
  type Data,
  type ShellOptions,
  type SpawnOptions,
  type ApplyPatchOptions,
  type OutputOptions,
  type SignalName,
} from "./client.js";
export {
  Chunk,
  LostOutput,
  ShellResult,
  ToolResult,
  type OutputItem,
  type PatchResult,
  type PatchFile,
  type CopyResult,
  type DirEntry,
  type DirListing,
  type TransferResult,
  type ProcessInfo,
  type Tool,
} from "./results.js";
export * from "./errors.js";
export { ROUTES, type Route } from "./wire.js";
export type * as wire from "./wire.js";
