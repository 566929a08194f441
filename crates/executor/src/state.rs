//! The executor's long-lived state, shared by every connection: its settings,
//! its sessions, and the `environmentInfo` it reports to `initialize`.
//!
//! It outlives connections (that is the point of sessions) and dies with
//! [`run`](crate::run); [`ShutdownGuard`] makes sure no child outlives it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use execgate_protocol::exec::{EnvironmentInfo, ExtCapabilities, ShellInfo};
use execgate_protocol::uri::path_to_uri;

use crate::policy::Policy;
use crate::session::SessionRegistry;
use crate::spill::SpillConfig;
use crate::staged::StagedHashes;
use crate::staged_sweep::{self, StagedSweep};
use crate::{ExecutorConfig, ExecutorError};

pub(crate) struct ExecutorState {
    /// Absolute; relative paths and the default cwd resolve against it.
    pub workdir: PathBuf,
    /// The owner's limits; its path rules resolve every path.
    pub policy: Arc<Policy>,
    pub session_ttl: Duration,
    pub exited_retention: Duration,
    pub sessions: SessionRegistry,
    pub environment: EnvironmentInfo,
    /// Running hashes of files `fs/writeRange` is filling.
    pub staged: StagedHashes,
    /// [ext] Running hashes of what `fs/readRange {hash}` read.
    pub reads: crate::digest::ReadHashes,
    /// Where staged files were written, to remove those left behind.
    pub staged_sweep: Arc<StagedSweep>,
}

impl ExecutorState {
    /// Checks the settings that can be checked before connecting.
    pub fn new(config: &ExecutorConfig) -> Result<Self, ExecutorError> {
        let workdir =
            std::path::absolute(&config.workdir).map_err(|source| ExecutorError::Workdir {
                path: config.workdir.clone(),
                source,
            })?;
        match std::fs::metadata(&workdir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ExecutorError::Workdir {
                    path: workdir,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        "not a directory",
                    ),
                })
            }
            Err(source) => {
                return Err(ExecutorError::Workdir {
                    path: workdir,
                    source,
                })
            }
        }
        let spill = spill_config(config)?;
        let tools = match &config.tools_file {
            Some(path) => crate::tools_file::load(path, &workdir)?,
            None => Vec::new(),
        };
        // With a root, the working directory is resolved inside it.
        let (policy, workdir) =
            Policy::new(&config.policy, workdir, &tools).map_err(ExecutorError::Policy)?;
        if policy.announced().is_some_and(|p| p.read_only) && !tools.is_empty() {
            tracing::warn!(
                "--read-only: the custom tools of --tools cannot run (they are processes)"
            );
        }
        let mut environment = environment_info(
            &workdir,
            config.retained_bytes,
            spill.as_ref().map_or(0, |s| s.per_process),
        );
        let ext = environment.execgate.get_or_insert_with(Default::default);
        ext.tools = tools;
        ext.policy = policy.announced();
        ext.sandbox_abi = policy.sandboxes.per_call_abi();
        let journal = config
            .state_dir
            .as_ref()
            .map(|dir| dir.join(staged_sweep::journal_name(&config.token)));
        let staged_sweep = Arc::new(StagedSweep::new(journal, config.stale_staged_after));
        Ok(ExecutorState {
            policy: Arc::new(policy),
            workdir,
            session_ttl: config.session_ttl,
            exited_retention: config.exited_retention,
            sessions: SessionRegistry::new(config.retained_bytes).with_spill(spill),
            environment,
            staged: StagedHashes::with_sweep(staged_sweep.clone()),
            reads: Default::default(),
            staged_sweep,
        })
    }

    /// Expires detached sessions and finished processes.
    pub fn sweep(&self) {
        self.sessions
            .sweep(Instant::now(), self.session_ttl, self.exited_retention);
    }

    /// Removes the staged files transfers left behind (see
    /// [`staged_sweep`]). Blocking: lists directories.
    pub fn sweep_staged(&self) {
        for path in self.staged_sweep.sweep(std::time::SystemTime::now()) {
            self.staged.forget(&path);
        }
    }

    /// How often [`sweep`](Self::sweep) should run: often enough that nothing
    /// outlives its deadline by much, rarely enough to cost nothing.
    pub fn sweep_interval(&self) -> Duration {
        (self.session_ttl.min(self.exited_retention) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(10))
    }
}

/// Kills every child when dropped: when `run` returns or is cancelled.
pub(crate) struct ShutdownGuard(pub Arc<ExecutorState>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.sessions.shutdown();
    }
}

/// The spill directory and bounds, or `None` when spilling is off.
fn spill_config(config: &ExecutorConfig) -> Result<Option<Arc<SpillConfig>>, ExecutorError> {
    if config.spill_bytes == 0 || config.spill_total_bytes == 0 {
        return Ok(None);
    }
    // Per user: the directory is 0700, and another user's would be unusable.
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = config
        .spill_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("execgate-spill-{uid}")));
    let spill = SpillConfig::new(dir.clone(), config.spill_bytes, config.spill_total_bytes)
        .map_err(|source| ExecutorError::SpillDir { path: dir, source })?;
    Ok(Some(Arc::new(spill)))
}

fn environment_info(workdir: &Path, retained_bytes: usize, spill_bytes: u64) -> EnvironmentInfo {
    let shell_path = std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    let shell_name = Path::new(&shell_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| shell_path.clone());
    let ext = ExtCapabilities {
        close_stdin: true,
        binary_frames: true,
        push_control: true,
        resize: true,
        lost_bytes: true,
        read_range: true,
        atomic_write: true,
        retained_bytes: retained_bytes as u64,
        signals: true,
        spill_bytes,
        rename: true,
        file_transfer: true,
        move_on_drain: true,
        trace_context: true,
        digests: crate::digest::SUPPORTED
            .iter()
            .map(|d| d.to_string())
            .collect(),
        ..Default::default()
    };
    EnvironmentInfo {
        shell: ShellInfo {
            name: shell_name,
            path: shell_path,
        },
        executor_version: execgate_protocol::VERSION.into(),
        cwd: path_to_uri(workdir).unwrap_or_default(),
        user_home_dir: std::env::var("HOME").unwrap_or_default(),
        platform_os: std::env::consts::OS.into(),
        // codex sends tempDir as a file:// URI too.
        temp_dir: path_to_uri(&std::env::temp_dir()).unwrap_or_default(),
        capabilities: serde_json::Map::new(),
        execgate: Some(ext),
    }
}
