//! The operations layer: what a call does, callable where no HTTP request
//! exists (REST, MCP, the bridge, and later a peer replica call the same
//! functions). It names no `http` and no axum; it fails with [`Error`]
//! (a stable code, a message, an [`ErrorKind`]), which `http::error` alone turns
//! into a status and the envelope.
//!
//! - [`tools`]: every core tool, one file each, and the one registry;
//!   custom tools. [`processes`]: exec_command sessions (stdin, output,
//!   terminate, signal, resize, listing, restart detection);
//!   [`deadlines`]: `max_runtime_ms`; [`tasks`]: MCP tasks, `shell` calls
//!   run as process sessions.
//! - [`files`]: a caller's file bytes in and out (`/files`), over
//!   [`transfer`]: streamed, verified transfers (copy_path too);
//!   [`patch`]: the apply_patch grammar.
//! - [`environment`]: a caller's environments and their live links;
//!   [`envs_list`]: the environments a workspace lists (kept while they
//!   stand) and envs/list's answer;
//!   [`bridge`]: who may open a bridge session.
//! - [`policy`], [`limits`], [`revocation`]: an executor's policy, a
//!   workspace's rate and session cap, long requests re-checking their token.
//! - [`idempotency`]: `Idempotency-Key`s, a mutating request done at most
//!   once per key (claimed in the store, answers kept for replays).
//! - [`admin`], [`captoken`]: what `execgate admin` shares with the admin
//!   API. [`audit`]: audit records opened for a caller, on a link.
//! - [`drain`]: draining on SIGTERM, and readiness (`/readyz`).
//! - [`state`]: the gateway's shared state and its config ([`state::AppState`]
//!   also serves the link layer as its `LinkHost`).

pub mod admin;
pub mod audit;
pub mod bridge;
pub mod captoken;
pub mod deadlines;
pub mod drain;
pub mod environment;
pub mod envs_list;
pub mod error;
pub mod files;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod patch;
pub mod policy;
pub mod processes;
pub mod revocation;
pub mod state;
pub mod tasks;
pub mod tools;
pub mod transfer;

pub use error::{Error, ErrorKind};
