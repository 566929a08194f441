//! End-to-end tests: real `execgate` gateway and executor processes on
//! 127.0.0.1, driven over HTTP. One test binary, so it links once.

mod admin_api;
mod audit;
mod bad_input;
mod basics;
mod bridge;
mod cli;
mod codex;
mod custom_tools;
mod harness;
mod hostile_executor;
mod isolation;
mod leaks;
mod limits;
mod list_dir;
mod listener;
mod live;
mod mcp;
mod mcp_stdio;
mod metrics;
mod openapi;
mod patches;
mod policy;
mod proxy_auth;
mod pty;
mod restart;
mod revocation;
mod sandbox;
mod spill;
mod sse;
mod streaming;
mod traces;
mod transfer;
