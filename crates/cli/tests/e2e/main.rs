//! End-to-end tests: real `execgate` gateway and executor processes on
//! 127.0.0.1, driven over HTTP. One test binary, so it links once.

mod bad_input;
mod basics;
mod cli;
mod codex;
mod custom_tools;
mod harness;
mod isolation;
mod patches;
mod restart;
mod transfer;
