//! Starting a child: with pipes, or under a pseudo-terminal.
//!
//! Both ways end in a `tokio::process::Child`, so exit statuses (including
//! the signal that killed a child) and reaping work the same for both.
//!
//! - **Pipes.** stdout and stderr are pipes; stdin is a pipe when asked for,
//!   else `/dev/null`. The child leads a new process group
//!   (`process_group(0)`), so the whole group can be signalled.
//! - **Pty.** portable-pty opens the terminal pair and owns the master side
//!   (reader, writer, resize). The child is spawned here rather than with
//!   portable-pty's `spawn_command`, because that one allocates between fork
//!   and exec (unsafe in a multi-threaded process), overrides `SHELL` and
//!   `argv[0]`, silently falls back to `$HOME` for a missing cwd, and reports
//!   a killing signal by name only, losing the 128+N exit code. The child opens
//!   the slave as stdin/stdout/stderr, becomes a session leader (so it is its
//!   own process group) and takes the terminal as its controlling tty.
//!
//! **Fast spawn.** A bare program name is looked up here, in the child's own
//! `PATH`, and the child started by its full path: std then uses
//! `posix_spawn` (vfork and exec, ~0.5 ms here) rather than forking the whole
//! executor (~1 ms), which it must do when a bare name meets a changed `PATH`
//! or when there is code to run between fork and exec. So the pipes path
//! runs none; the signal dispositions it would reset are seen to by
//! [`stop_passing_on_ignored_signals`] instead. (The pty path runs such code
//! anyway, so it also resets every signal in the child.) `posix_spawn` does
//! not run a file without `#!` under `/bin/sh` as `execvp` does; [`spawn`]
//! does, when the first attempt fails with `ENOEXEC`.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use portable_pty::{MasterPty, PtySize};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::env::ChildEnv;

/// Everything needed to start one child.
pub(crate) struct SpawnRequest {
    pub argv: Vec<String>,
    pub arg0: Option<String>,
    pub cwd: PathBuf,
    pub env: ChildEnv,
    /// Start under a terminal of this size instead of pipes.
    pub pty: Option<PtySize>,
    /// Give the child a stdin pipe (without a pty).
    pub pipe_stdin: bool,
    /// Start it confined (`--sandbox`, a call's `sandbox`): see `sandbox`.
    pub confinement: Option<crate::sandbox::Confinement>,
}

/// A started child and its I/O handles.
pub(crate) struct Spawned {
    pub child: Child,
    /// Its pid, which is also its process group id.
    pub pgid: i32,
    pub io: ChildIo,
}

pub(crate) enum ChildIo {
    Pipes {
        stdin: Option<ChildStdin>,
        stdout: ChildStdout,
        stderr: ChildStderr,
    },
    Pty {
        master: Box<dyn MasterPty + Send>,
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
    },
}

pub(crate) fn spawn(mut request: SpawnRequest) -> io::Result<Spawned> {
    // A confined child is started, the same way, from a confined thread.
    if let Some(confinement) = request.confinement.take() {
        return crate::sandbox::spawn_confined(confinement, move || spawn(request));
    }
    let Some((program, args)) = request.argv.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "argv must not be empty",
        ));
    };
    let resolved = resolve_program(
        OsStr::new(program),
        request.env.get(OsStr::new("PATH")),
        &request.cwd,
    );
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    // argv[0] stays what the caller wrote, not the resolved path.
    let arg0 = OsString::from(request.arg0.as_deref().unwrap_or(program));
    match start(&request, &resolved, &args, &arg0) {
        // A file with neither a binary's header nor `#!`: execvp runs it
        // with /bin/sh, and so does the executor. (posix_spawn, which the
        // executor uses, has no such fallback of its own.)
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let sh = Path::new("/bin/sh");
            let mut sh_args = vec![resolved.into_os_string()];
            sh_args.extend(args);
            start(&request, sh, &sh_args, sh.as_os_str())
        }
        started => started,
    }
}

fn start(
    request: &SpawnRequest,
    program: &Path,
    args: &[OsString],
    arg0: &OsStr,
) -> io::Result<Spawned> {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&request.cwd)
        .env_clear()
        .envs(&request.env)
        // A backstop: the process table kills whole groups, but if the task
        // that owns the `Child` is dropped some other way, its leader dies too.
        .kill_on_drop(true)
        .arg0(arg0);
    match request.pty {
        None => spawn_with_pipes(command, request.pipe_stdin),
        Some(size) => spawn_with_pty(command, size),
    }
}

/// Gives the child default signal dispositions and an empty signal mask,
/// between fork and exec: for the pty path, which forks anyway (see
/// [`stop_passing_on_ignored_signals`] for why).
fn reset_signals(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (signal, sigprocmask); it allocates
    // nothing.
    unsafe {
        command.pre_exec(|| {
            for signal in 1..32 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(none.as_mut_ptr());
            libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Where `program` is, found as `execvp` would find it in the child's `PATH`
/// (relative entries against the child's cwd; an empty entry is the cwd).
/// A name with a `/`, or one found nowhere, is returned as it is: then the
/// spawn itself reports the error it always did.
fn resolve_program(program: &OsStr, path: Option<&OsString>, cwd: &Path) -> PathBuf {
    if program.as_bytes().contains(&b'/') || program.is_empty() {
        return PathBuf::from(program);
    }
    let Some(path) = path else {
        return PathBuf::from(program);
    };
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = Path::new(OsStr::from_bytes(dir));
        let candidate = cwd.join(dir).join(program);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return candidate;
        }
    }
    PathBuf::from(program)
}

/// Signals the executor ignores would stay ignored in its children across
/// exec: an executor started in the background by a non-interactive shell
/// (SIGINT and SIGQUIT ignored) or under `nohup` (SIGHUP) would start
/// processes that `interrupt` or `hangup` cannot reach. A caught signal, on
/// the other hand, is reset to its default by exec. So each signal the
/// protocol (or a terminal) sends that is ignored here gets a handler that
/// does nothing: the executor still ignores it, its children do not.
/// Checked before every spawn, since anything may change a disposition.
pub(crate) fn stop_passing_on_ignored_signals() {
    extern "C" fn ignore(_: libc::c_int) {}
    for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM] {
        // SAFETY: sigaction with valid pointers to initialised structs; the
        // handler is an empty async-signal-safe function.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0
                || current.sa_sigaction != libc::SIG_IGN
            {
                continue;
            }
            let mut handler: libc::sigaction = std::mem::zeroed();
            handler.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            handler.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut handler.sa_mask);
            libc::sigaction(signal, &handler, std::ptr::null_mut());
        }
    }
}

fn spawn_with_pipes(mut command: Command, pipe_stdin: bool) -> io::Result<Spawned> {
    stop_passing_on_ignored_signals();
    command
        .process_group(0)
        .stdin(if pipe_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let pgid = pid_of(&child)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other(
            "child was spawned without its output pipes",
        ));
    };
    let stdin = child.stdin.take();
    Ok(Spawned {
        child,
        pgid,
        io: ChildIo::Pipes {
            stdin,
            stdout,
            stderr,
        },
    })
}

fn spawn_with_pty(mut command: Command, size: PtySize) -> io::Result<Spawned> {
    let pair = portable_pty::native_pty_system()
        .openpty(size)
        .map_err(|e| io::Error::other(format!("cannot open a pseudo-terminal: {e}")))?;
    let slave_path = pair
        .master
        .tty_name()
        .ok_or_else(|| io::Error::other("cannot find the pseudo-terminal's device"))?;
    // O_NOCTTY: opening the slave must not make it *our* controlling tty.
    // std opens with O_CLOEXEC, so other children never inherit it.
    let slave: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_path)?;
    command
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    reset_signals(&mut command);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            // A new session: the child leads its own session and process group.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            // Make the terminal (already on fd 0) the controlling tty, so that
            // ^C, job control and SIGWINCH on resize work as in a terminal.
            // `as _`: the request's type differs between libcs.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Close every slave descriptor on our side, or reading the master would
    // never see EOF after the child exits.
    drop(command);
    drop(pair.slave);
    let pgid = pid_of(&child)?;
    let master = pair.master;
    let reader = master
        .try_clone_reader()
        .map_err(|e| io::Error::other(format!("cannot read the pseudo-terminal: {e}")))?;
    let writer = master
        .take_writer()
        .map_err(|e| io::Error::other(format!("cannot write the pseudo-terminal: {e}")))?;
    Ok(Spawned {
        child,
        pgid,
        io: ChildIo::Pty {
            master,
            reader,
            writer,
        },
    })
}

fn pid_of(child: &Child) -> io::Result<i32> {
    child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| io::Error::other("child exited before its pid was known"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_the_childs_path_like_execvp() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let make = |path: &Path, mode| {
            std::fs::write(path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        make(&a.join("tool"), 0o644); // not executable: skipped
        make(&b.join("tool"), 0o755);
        make(&dir.path().join("here"), 0o755);
        let path = |p: &str| Some(OsString::from(p));
        let cwd = dir.path();
        let find =
            |name: &str, p: Option<OsString>| resolve_program(OsStr::new(name), p.as_ref(), cwd);

        let ab = format!("{}:{}", a.display(), b.display());
        assert_eq!(find("tool", path(&ab)), b.join("tool"));
        // Relative and empty entries are the child's cwd.
        assert_eq!(find("tool", path("a:b")), cwd.join("b").join("tool"));
        assert_eq!(find("here", path(":/nowhere")), cwd.join("here"));
        // Not found, no PATH, or a path already: left to the spawn.
        assert_eq!(find("nope", path(&ab)), PathBuf::from("nope"));
        assert_eq!(find("tool", None), PathBuf::from("tool"));
        assert_eq!(find("./tool", path(&ab)), PathBuf::from("./tool"));
    }
}
