//! Child processes that die with their handle.

use std::process::{Child, ExitStatus};

use crate::eventually::{eventually, eventually_blocking, Within};

/// A child process killed (SIGKILL, as a crash would) when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits for it to exit by itself; panics (killing it) if it still runs
    /// after `within`. `what` names the wait, e.g. "the executor to refuse".
    pub async fn exits_within(&mut self, within: impl Within, what: &str) -> ExitStatus {
        eventually(within, what, || {
            let status = self.0.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    /// [`Proc::exits_within`] without a runtime.
    pub fn exits_within_blocking(&mut self, within: impl Within, what: &str) -> ExitStatus {
        eventually_blocking(within, what, || self.0.try_wait().expect("try_wait"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process is alive (exists and is not a zombie), from /proc.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}
