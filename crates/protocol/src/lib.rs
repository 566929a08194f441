//! Wire types shared by every execgate crate, and nothing else: no I/O, no
//! runtime. If a type crosses a process boundary, it is defined here.
//!
//! - [`jsonrpc`]: the framing of the gateway⇄executor link.
//! - [`blob`]: bytes in a message, as base64 text or in a binary frame [ext].
//! - [`exec`]: the executor protocol's methods (compatible with codex `exec-server`).
//! - [`register`]: how an executor asks the gateway for a link.
//! - [`connectors`]: the connectors REST API that agents call.
//! - [`admin`]: the admin API (`/api/admin/*`) and `execgate admin --json`.
//! - [`custom_tool`]: custom tools an executor announces [ext].
//! - [`policy`]: an executor's policy (`--root`, `--allow-tools`, …) [ext].
//! - [`uri`]: `file://` URIs for paths.

#![forbid(unsafe_code)]

pub mod admin;
pub mod blob;
pub mod connectors;
pub mod custom_tool;
pub mod exec;
pub mod jsonrpc;
pub mod output_frames;
pub mod policy;
pub mod register;
pub mod uri;

/// The version every execgate binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
