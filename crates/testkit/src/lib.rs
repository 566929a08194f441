//! The test kit of execgate: starts the real `execgate` binary as gateway
//! and executors on 127.0.0.1, sets up workspaces, tokens and executors
//! through `execgate admin`, and waits for conditions. Used by the
//! end-to-end tests (`crates/cli/tests/e2e`) and the benchmark suite
//! (`crates/bench`); the Python suites have their twin in
//! `tests/execgate_fixtures.py`.
//!
//! - [`Execgate`]: one `execgate` binary; `admin`, `serve`, `executor`.
//! - [`Prepared`] / [`Gateway`]: a temporary data dir with a workspace and
//!   its proxy token, then the gateway serving it; executors added and
//!   started by name.
//! - [`Proc`]: a child process killed (SIGKILL) when dropped, so a failing
//!   test or bench leaves nothing running; [`alive`].
//! - [`eventually`] / [`eventually_blocking`]: the one poll loop.
//! - [`Api`]: a small JSON client of the connectors REST API.
//! - [`pg`]: throwaway PostgreSQL clusters for the PostgreSQL store's tests.
//! - [`haproxy`]: HAProxy in front of replicas (the load-balancer tests).
//! - [`CUSTOM_TOOLS_TOML`]: the shared custom-tools fixture
//!   (`tests/fixtures/custom-tools.toml`).
//!
//! Ports: gateways listen on `127.0.0.1:0` ([`ANY_PORT`]) and the kit
//! reads back the address the gateway prints, so no port is guessed.
//! Setup failures panic with what went wrong (and the gateway's log).

mod api;
mod deploy;
mod eventually;
mod execgate;
pub mod haproxy;
pub mod pg;
mod process;

pub use api::{b64d, b64e, fresh_client, wait_for_env, Api};
pub use deploy::{Gateway, Prepared};
pub use eventually::{eventually, eventually_blocking, Ready, Within, POLL};
pub use execgate::{admin_token, Execgate, GatewayProc, ANY_PORT, LISTENING};
pub use process::{alive, Proc};

/// The custom tools every suite shares (`tests/fixtures/custom-tools.toml`):
/// `echo_arg` (the contract form) and `add`. A suite that needs more
/// appends its own `[[tool]]` tables; see [`write_tools_file`].
pub const CUSTOM_TOOLS_TOML: &str = include_str!("../../../tests/fixtures/custom-tools.toml");

/// Writes [`CUSTOM_TOOLS_TOML`] followed by `extra` (more `[[tool]]`
/// tables, or "") to `dir/tools.toml`, for `execgate executor --tools`.
pub fn write_tools_file(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("tools.toml");
    std::fs::write(&path, format!("{CUSTOM_TOOLS_TOML}\n{extra}"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
