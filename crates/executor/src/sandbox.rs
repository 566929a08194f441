//! `--sandbox`: every process the executor starts runs confined by the
//! kernel (Landlock), and a call may ask for a narrower confinement
//! (`process/start {sandbox}`), never a wider one.
//!
//! **What is confined.** Writes (creating, changing, removing, renaming,
//! truncating files; `ioctl` on devices from ABI 5) only beneath the write
//! paths (`--root`, else `--workdir`, and each `--sandbox-write`) and to a
//! few devices every program expects ([`DEVICES`]). Reads (and execution)
//! everywhere, or only beneath `--sandbox-read` paths plus what running a
//! program needs ([`READ_SYSTEM`], the executor's `PATH`) and the write
//! paths. With `--sandbox-net deny`, TCP connect and bind (ABI 4). From
//! ABI 6, two scopes: no connecting to an abstract unix socket made outside
//! the sandbox, no signals to processes outside it.
//!
//! **Never unconfined.** The kernel's Landlock ABI is checked at start
//! against what was asked ([`check_support`]): below ABI 3 (Linux 6.2; the
//! first that confines `truncate`) or, for `--sandbox-net deny`, ABI 4
//! (Linux 6.7), the executor refuses to start, naming the kernel and the
//! ABI. Rulesets are built with the crate's hard-requirement compatibility
//! (every right asked for is handled or the build fails) for the kernel's
//! own ABI (capped at 7, the newest tested here), and a restriction that is
//! not `FullyEnforced` fails the spawn.
//!
//! **How a child gets it.** Landlock confines a thread and whatever it
//! starts afterwards, and cannot be lifted. So `--sandbox` keeps one
//! long-lived spawner thread, restricted once at start (which must be
//! `FullyEnforced`, or the executor refuses to start), and every confined
//! spawn runs the usual spawn code there ([`spawn_confined`]): std keeps
//! its `posix_spawn` fast path (restricting between fork and exec would
//! force a fork of the whole executor), and all processes share one
//! Landlock domain, so the ABI 6 scopes do not stop a shell from signalling
//! a process an earlier call started. A call's narrower ruleset is applied
//! by a fresh thread started from there (it inherits the domain, then
//! stacks the narrower one: a nested domain, which the outer processes can
//! still signal, not the other way round); without `--sandbox`, by a fresh
//! thread of the executor. The executor's own threads stay unconfined, so
//! the file tools (`fs/*`) are governed by `--root`, not by this.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use execgate_protocol::exec::{NetAccess, SandboxRequest};
use execgate_protocol::jsonrpc::RpcError;
use execgate_protocol::policy::SandboxPolicy;
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

/// Devices every process may write (and read): what shells and most
/// programs open for writing whatever they do, and the terminals (a pty
/// process's own, `/dev/tty`, and those a program makes, e.g. `script`).
pub const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// Readable beneath these, besides `--sandbox-read`, when reads are
/// confined: the programs, their libraries and configuration (dynamic
/// loader cache, users, locales, certificates), devices and `/proc` (a
/// confined process cannot reach another's `/proc/PID/environ` or `mem`
/// anyway: Landlock refuses ptrace-like access outside its domain). The
/// directories of the executor's `PATH` are added too.
pub const READ_SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/dev", "/proc",
];

/// The oldest ABI that confines every kind of write (`truncate` from 3).
const MIN_ABI_FS: u32 = 3;
/// The oldest ABI that confines TCP.
const MIN_ABI_NET: u32 = 4;
/// The oldest ABI with scopes (abstract unix sockets, signals).
const MIN_ABI_SCOPES: u32 = 6;
/// The newest ABI whose rights are used (tested on this project's kernels).
/// ABI 9 adds confining connections to pathname unix sockets; not used yet.
const MAX_ABI: u32 = 7;

/// The sandbox options, as given (`--sandbox…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Writable besides `--root` (or the workdir) (`--sandbox-write`).
    pub write: Vec<PathBuf>,
    /// Readable only beneath these (plus [`READ_SYSTEM`], the `PATH` and
    /// the write paths) (`--sandbox-read`); `None`: everywhere.
    pub read: Option<Vec<PathBuf>>,
    /// Refuse TCP connect and bind (`--sandbox-net deny`).
    pub deny_net: bool,
}

/// What the kernel says about Landlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landlock {
    Abi(u32),
    /// Built in but not enabled at boot (`EOPNOTSUPP`).
    NotEnabled,
    /// Not built in (`ENOSYS`).
    Missing,
}

impl Landlock {
    /// Asks the running kernel.
    pub fn probe() -> Landlock {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the
        // ABI version (or an error); it reads and creates nothing.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if v > 0 {
            return Landlock::Abi(u32::try_from(v).unwrap_or(u32::MAX));
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) => Landlock::NotEnabled,
            _ => Landlock::Missing,
        }
    }

    fn abi(self) -> u32 {
        match self {
            Landlock::Abi(n) => n,
            _ => 0,
        }
    }
}

/// The running kernel's release, for messages (`uname -r`).
pub(crate) fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed struct; its fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Whether `kernel` can enforce what was asked: the ABI the rulesets will
/// be built for, or why the executor must refuse to start (naming the
/// kernel `release` and its ABI). Never a partial sandbox.
pub(crate) fn check_support(
    kernel: Landlock,
    release: &str,
    deny_net: bool,
) -> Result<u32, String> {
    let abi = match kernel {
        Landlock::Abi(n) => n,
        Landlock::NotEnabled => {
            return Err(format!(
                "--sandbox: Landlock is built into this kernel (Linux {release}) but not enabled; add landlock to the lsm= boot parameter, or run without --sandbox"
            ))
        }
        Landlock::Missing => {
            return Err(format!(
                "--sandbox: this kernel (Linux {release}) has no Landlock; --sandbox needs Landlock ABI {MIN_ABI_FS} (Linux 6.2 or newer)"
            ))
        }
    };
    if abi < MIN_ABI_FS {
        return Err(format!(
            "--sandbox needs Landlock ABI {MIN_ABI_FS} (Linux 6.2 or newer) to confine every write, and this kernel (Linux {release}) has ABI {abi}; refusing to run processes unconfined"
        ));
    }
    if deny_net && abi < MIN_ABI_NET {
        return Err(format!(
            "--sandbox-net deny needs Landlock ABI {MIN_ABI_NET} (Linux 6.7 or newer), and this kernel (Linux {release}) has ABI {abi}; refusing to run processes with the network open"
        ));
    }
    Ok(abi.min(MAX_ABI))
}

fn abi_of(n: u32) -> ABI {
    match n {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        _ => ABI::V7,
    }
}

/// The executor's sandboxes: its own (`--sandbox`), and what a call may
/// ask for on top.
pub(crate) struct Sandboxes {
    kernel: Landlock,
    release: String,
    base: Option<Sandbox>,
}

/// The checked `--sandbox`.
struct Sandbox {
    abi: u32,
    write: Vec<PathBuf>,
    devices: Vec<PathBuf>,
    read: Option<Vec<PathBuf>>,
    deny_net: bool,
    /// The spawner thread, confined by the executor's ruleset.
    spawner: mpsc::Sender<Job>,
}

/// Work for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// How a confined spawn is confined: on the executor's spawner thread
/// (`--sandbox`), then by a call's narrower ruleset.
pub(crate) struct Confinement {
    spawner: Option<mpsc::Sender<Job>>,
    narrower: Option<RulesetCreated>,
}

impl Sandboxes {
    /// Checks `config` (when given) against the kernel; `default_write` is
    /// `--root`, or the workdir. Errors name the option.
    pub fn new(config: Option<&SandboxConfig>, default_write: &Path) -> Result<Sandboxes, String> {
        Self::with_kernel(config, default_write, Landlock::probe(), kernel_release())
    }

    fn with_kernel(
        config: Option<&SandboxConfig>,
        default_write: &Path,
        kernel: Landlock,
        release: String,
    ) -> Result<Sandboxes, String> {
        let base = match config {
            None => None,
            Some(config) => {
                let abi = check_support(kernel, &release, config.deny_net)?;
                Some(Sandbox::new(config, default_write, abi)?)
            }
        };
        Ok(Sandboxes {
            kernel,
            release,
            base,
        })
    }

    /// What `initialize` announces in the policy; `None` without `--sandbox`.
    pub fn announced(&self) -> Option<SandboxPolicy> {
        let b = self.base.as_ref()?;
        let list = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect();
        Some(SandboxPolicy {
            write: list(&b.write),
            devices: list(&b.devices),
            read: b.read.as_deref().map(list),
            deny_net: b.deny_net,
            landlock_abi: self.kernel.abi(),
            scopes: if b.abi >= MIN_ABI_SCOPES {
                vec!["abstract_unix_socket".into(), "signal".into()]
            } else {
                Vec::new()
            },
        })
    }

    /// The ABI with which a call's `sandbox` is applied (0: it cannot be).
    /// Applied with or without `--sandbox`: narrowing is always safe.
    pub fn per_call_abi(&self) -> u32 {
        let abi = self.kernel.abi();
        if abi >= MIN_ABI_FS {
            abi
        } else {
            0
        }
    }

    /// The confinement of one new process: the executor's sandbox, then
    /// the call's `request` (paths relative to `workdir`) when it asks for
    /// something. A request wider than the executor's sandbox is refused
    /// (-32030); so is one the kernel cannot enforce.
    pub fn for_start(
        &self,
        request: Option<&SandboxRequest>,
        workdir: &Path,
    ) -> Result<Option<Confinement>, RpcError> {
        let narrower = match request {
            Some(r) => self.narrower(r, workdir)?,
            None => None,
        };
        let spawner = self.base.as_ref().map(|b| b.spawner.clone());
        Ok((spawner.is_some() || narrower.is_some()).then_some(Confinement { spawner, narrower }))
    }

    fn narrower(
        &self,
        request: &SandboxRequest,
        workdir: &Path,
    ) -> Result<Option<RulesetCreated>, RpcError> {
        let deny_net = match request.net {
            Some(NetAccess::Deny) => true,
            Some(NetAccess::Allow) if self.base.as_ref().is_some_and(|b| b.deny_net) => {
                return Err(RpcError::policy_denied(
                    "sandbox.net \"allow\" is wider than this executor's sandbox, which denies the network (--sandbox-net deny)",
                ))
            }
            _ => false,
        };
        if request.write.is_none() && !deny_net {
            return Ok(None);
        }
        let abi = self.kernel.abi();
        let needed = if deny_net { MIN_ABI_NET } else { MIN_ABI_FS };
        if abi < needed {
            return Err(RpcError::policy_denied(format!(
                "a sandbox{} needs Landlock ABI {needed}, and this executor's kernel (Linux {}) has ABI {abi}",
                if deny_net { " without network" } else { "" },
                self.release
            )));
        }
        let write = match &request.write {
            None => None,
            Some(paths) => Some(
                paths
                    .iter()
                    .map(|raw| self.narrower_write_path(raw, workdir))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let abi = abi.min(MAX_ABI);
        let devices = existing_devices();
        build(abi, write.as_deref(), &devices, None, deny_net, false)
            .map(Some)
            .map_err(|e| RpcError::internal(format!("cannot build the call's sandbox: {e}")))
    }

    /// A path of a call's `sandbox.write`, canonical, checked against the
    /// executor's own write paths.
    fn narrower_write_path(&self, raw: &str, workdir: &Path) -> Result<PathBuf, RpcError> {
        let path = crate::paths::resolve(workdir, raw)?;
        let path = std::fs::canonicalize(&path).map_err(|e| {
            RpcError::invalid_params(format!("sandbox.write: {}: {e}", path.display()))
        })?;
        if let Some(base) = &self.base {
            let inside = base.write.iter().any(|w| path.starts_with(w))
                || base.devices.iter().any(|d| path.starts_with(d));
            if !inside {
                let allowed: Vec<String> =
                    base.write.iter().map(|p| p.display().to_string()).collect();
                return Err(RpcError::policy_denied(format!(
                    "sandbox.write {} is wider than this executor's sandbox, which allows writes only beneath {}",
                    path.display(),
                    allowed.join(", ")
                )));
            }
        }
        Ok(path)
    }
}

impl Sandbox {
    fn new(config: &SandboxConfig, default_write: &Path, abi: u32) -> Result<Sandbox, String> {
        let canonical = |flag: &str, p: &Path| {
            std::fs::canonicalize(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
        };
        let mut write = vec![canonical("--root/--workdir", default_write)?];
        for p in &config.write {
            push_new(&mut write, canonical("--sandbox-write", p)?);
        }
        let devices = existing_devices();
        let read = match &config.read {
            None => None,
            Some(paths) => {
                let mut read = Vec::new();
                for p in paths {
                    push_new(&mut read, canonical("--sandbox-read", p)?);
                }
                let path_dirs = std::env::var_os("PATH").unwrap_or_default();
                let system = READ_SYSTEM
                    .iter()
                    .map(PathBuf::from)
                    .chain(std::env::split_paths(&path_dirs).filter(|p| p.is_absolute()));
                for p in system {
                    if let Ok(p) = std::fs::canonicalize(p) {
                        push_new(&mut read, p);
                    }
                }
                Some(read)
            }
        };
        let ruleset = build(
            abi,
            Some(&write),
            &devices,
            read.as_deref(),
            config.deny_net,
            abi >= MIN_ABI_SCOPES,
        )
        .map_err(|e| format!("--sandbox: cannot build the Landlock ruleset: {e}"))?;
        Ok(Sandbox {
            abi,
            write,
            devices,
            read,
            deny_net: config.deny_net,
            spawner: start_spawner(ruleset)?,
        })
    }
}

fn push_new(list: &mut Vec<PathBuf>, p: PathBuf) {
    if !list.contains(&p) {
        list.push(p);
    }
}

/// [`DEVICES`] that exist here, canonical.
fn existing_devices() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in DEVICES {
        if let Ok(p) = std::fs::canonicalize(d) {
            push_new(&mut out, p);
        }
    }
    out
}

/// One Landlock ruleset, every right a hard requirement for `abi`: writes
/// only beneath `write` and `devices` (when `write` is given), reads only
/// beneath `read` and those (when `read` is given), no TCP (`deny_net`),
/// and the ABI 6 scopes (`scoped`).
fn build(
    abi: u32,
    write: Option<&[PathBuf]>,
    devices: &[PathBuf],
    read: Option<&[PathBuf]>,
    deny_net: bool,
    scoped: bool,
) -> Result<RulesetCreated, RulesetError> {
    let v = abi_of(abi);
    let write_rights = AccessFs::from_write(v);
    let read_rights = AccessFs::from_read(v);
    let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::HardRequirement);
    let mut handled: BitFlags<AccessFs> = BitFlags::EMPTY;
    if write.is_some() {
        handled |= write_rights;
    }
    if read.is_some() {
        handled |= read_rights;
    }
    if !handled.is_empty() {
        ruleset = ruleset.handle_access(handled)?;
    }
    if deny_net {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    if scoped {
        ruleset = ruleset.scope(Scope::from_all(v))?;
    }
    let mut rules: Vec<(&Path, BitFlags<AccessFs>)> = Vec::new();
    if let Some(write) = write {
        rules.extend(
            write
                .iter()
                .chain(devices)
                .map(|p| (p.as_path(), write_rights | read_rights)),
        );
    } else if read.is_some() {
        rules.extend(devices.iter().map(|p| (p.as_path(), read_rights)));
    }
    if let Some(read) = read {
        rules.extend(read.iter().map(|p| (p.as_path(), read_rights)));
    }
    let mut created = ruleset.create()?;
    for (path, rights) in rules {
        // Only rights this ruleset handles; on a file, only a file's.
        let rights = rights & handled;
        let rights = if path.is_dir() {
            rights
        } else {
            rights & AccessFs::from_file(v)
        };
        // A path gone since it was checked: nothing to allow there.
        let Ok(fd) = PathFd::new(path) else { continue };
        if !rights.is_empty() {
            created = created.add_rule(PathBeneath::new(fd, rights))?;
        }
    }
    Ok(created)
}

/// Starts the spawner thread, confined by `ruleset`, which runs jobs until
/// every sender is gone. Fails (the executor refuses to start) unless the
/// kernel enforces the ruleset fully.
fn start_spawner(ruleset: RulesetCreated) -> Result<mpsc::Sender<Job>, String> {
    let (jobs, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready) = mpsc::channel();
    std::thread::Builder::new()
        .name("sandbox-spawner".into())
        .spawn(move || {
            let restricted = restrict_this_thread(ruleset);
            let ok = restricted.is_ok();
            let _ = ready_tx.send(restricted);
            if ok {
                for job in rx {
                    // A panicking job must not take the spawner down.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            }
        })
        .map_err(|e| format!("--sandbox: cannot start the spawner thread: {e}"))?;
    match ready.recv() {
        Ok(Ok(())) => Ok(jobs),
        Ok(Err(e)) => Err(format!("--sandbox: {e}")),
        Err(_) => Err("--sandbox: the spawner thread died".into()),
    }
}

/// Restricts the calling thread (and so all it starts) with `ruleset`.
/// Anything short of `FullyEnforced` is an error.
fn restrict_this_thread(ruleset: RulesetCreated) -> io::Result<()> {
    let status = ruleset
        .restrict_self()
        .map_err(|e| io::Error::other(format!("cannot apply the sandbox: {e}")))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(io::Error::other(format!(
            "the sandbox is not fully enforced by this kernel ({:?}); not starting the process",
            status.ruleset
        )));
    }
    Ok(())
}

/// Runs `start` confined by `confinement` (see the module docs), so what it
/// starts is confined and the calling thread is not. The caller's tokio
/// runtime (if any) is entered there, for `tokio::process`.
pub(crate) fn spawn_confined<T: Send + 'static>(
    confinement: Confinement,
    start: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let Confinement { spawner, narrower } = confinement;
    let work = move || -> io::Result<T> {
        let Some(narrower) = narrower else {
            let _entered = runtime.as_ref().map(|r| r.enter());
            return start();
        };
        std::thread::Builder::new()
            .name("sandboxed-spawn".into())
            .spawn(move || {
                let _entered = runtime.as_ref().map(|r| r.enter());
                restrict_this_thread(narrower)?;
                start()
            })?
            .join()
            .map_err(|_| io::Error::other("the sandboxed spawn thread panicked"))?
    };
    let Some(spawner) = spawner else {
        return work();
    };
    let (done, result) = mpsc::sync_channel(1);
    spawner
        .send(Box::new(move || {
            let _ = done.send(work());
        }))
        .map_err(|_| io::Error::other("the sandbox's spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the sandbox's spawner thread failed"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn too_old_or_missing_landlock_refuses_naming_the_kernel_and_abi() {
        let e = check_support(Landlock::Abi(2), "5.19.0-test", false).unwrap_err();
        assert!(
            e.contains("Linux 5.19.0-test") && e.contains("ABI 2") && e.contains("ABI 3"),
            "{e}"
        );
        let e = check_support(Landlock::Abi(3), "6.2.0", true).unwrap_err();
        assert!(
            e.contains("--sandbox-net deny") && e.contains("ABI 4") && e.contains("ABI 3"),
            "{e}"
        );
        let e = check_support(Landlock::Missing, "4.19.0", false).unwrap_err();
        assert!(e.contains("no Landlock") && e.contains("4.19.0"), "{e}");
        let e = check_support(Landlock::NotEnabled, "6.8.0", false).unwrap_err();
        assert!(e.contains("not enabled") && e.contains("lsm="), "{e}");
        // Enough: the kernel's own ABI, capped at the newest one used.
        assert_eq!(check_support(Landlock::Abi(3), "6.2", false), Ok(3));
        assert_eq!(check_support(Landlock::Abi(4), "6.7", true), Ok(4));
        assert_eq!(check_support(Landlock::Abi(9), "7.1", true), Ok(MAX_ABI));
        // And the whole start refuses, without touching the kernel.
        let dir = tempfile::tempdir().unwrap();
        let config = SandboxConfig::default();
        let e = Sandboxes::with_kernel(Some(&config), dir.path(), Landlock::Abi(1), "5.13".into())
            .err()
            .expect("refused");
        assert!(e.contains("ABI 1"), "{e}");
        // Without --sandbox nothing is asked of the kernel.
        let s = Sandboxes::with_kernel(None, dir.path(), Landlock::Missing, "4.19".into()).unwrap();
        assert!(s.announced().is_none() && s.per_call_abi() == 0);
    }

    /// Runs `sh -c script` confined by `c`; its exit code.
    fn run_confined(c: Confinement, script: &str) -> i32 {
        let script = script.to_string();
        spawn_confined(c, move || {
            Command::new("/bin/sh")
                .args(["-c", &script])
                .stderr(std::process::Stdio::null())
                .status()
        })
        .unwrap()
        .code()
        .unwrap_or(-1)
    }

    #[test]
    fn a_confined_process_writes_only_where_allowed_and_the_executor_anywhere() {
        if Landlock::probe().abi() < MIN_ABI_FS {
            eprintln!("skipped: no Landlock ABI 3 here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (inside, outside) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let s = Sandboxes::new(Some(&SandboxConfig::default()), &inside).unwrap();
        let c = || s.for_start(None, &inside).unwrap().expect("confined");
        let touch = |p: &Path| format!("echo x > {}", p.join("f").display());
        assert_eq!(run_confined(c(), &touch(&inside)), 0);
        assert_ne!(run_confined(c(), &touch(&outside)), 0);
        assert!(!outside.join("f").exists());
        assert_eq!(run_confined(c(), "echo x > /dev/null"), 0);
        // The executor itself stays unconfined.
        std::fs::write(outside.join("g"), "x").unwrap();

        // A narrower call: only `inside/sub`; wider is refused.
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        let narrow = SandboxRequest {
            write: Some(vec!["sub".into()]),
            net: None,
        };
        let n = || s.for_start(Some(&narrow), &inside).unwrap().unwrap();
        assert_ne!(run_confined(n(), &touch(&inside)), 0);
        assert_eq!(run_confined(n(), &touch(&inside.join("sub"))), 0);
        let wide = SandboxRequest {
            write: Some(vec![outside.display().to_string()]),
            net: None,
        };
        let e = s
            .for_start(Some(&wide), &inside)
            .err()
            .expect("wider refused");
        assert_eq!(
            e.code,
            execgate_protocol::jsonrpc::code::POLICY_DENIED,
            "{e}"
        );
        assert!(e.message.contains("wider"), "{e}");
    }

    /// `cargo test -p execgate-executor --lib spawn_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn spawn_cost() {
        use std::os::unix::process::CommandExt;
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let s = Sandboxes::new(Some(&SandboxConfig::default()), dir.path()).unwrap();
        let n = 300;
        let time = |label: &str, f: &dyn Fn()| {
            f();
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            println!("{label}: {:?} per spawn", t.elapsed() / n);
        };
        time("posix_spawn, unconfined", &|| {
            Command::new("/bin/true").status().unwrap();
        });
        time("fork (pre_exec), unconfined", &|| {
            let mut c = Command::new("/bin/true");
            // SAFETY: does nothing; only forces fork + exec.
            unsafe { c.pre_exec(|| Ok(())) };
            c.status().unwrap();
        });
        time("spawner thread + posix_spawn", &|| {
            let c = s.for_start(None, dir.path()).unwrap().unwrap();
            spawn_confined(c, || Command::new("/bin/true").status()).unwrap();
        });
    }
}
