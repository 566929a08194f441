//! The reaper: a small helper process that kills the executor's process
//! groups when the executor dies without killing them itself (SIGKILL, a
//! crash, an abort, the OOM killer).
//!
//! A graceful stop kills every group ([`ShutdownGuard`](crate::state)), but
//! a SIGKILLed executor runs no code, and its children, each the leader of
//! its own process group, kept running unreachable. So at its first use the
//! executor forks a helper that holds the read end of a pipe and does
//! nothing else. The executor writes each process group it starts to the
//! pipe, and each group it gives up (the leader reaped and the output at EOF:
//! from then on the group id may be reused, see [`super`]). When the pipe
//! reads EOF, the executor is gone, whatever the reason: the helper SIGKILLs
//! every group still registered and exits.
//!
//! Why not `PR_SET_PDEATHSIG` in each child: it reaches only the direct
//! child, not the rest of its group (`sleep 300 &`), it fires when the
//! *thread* that forked the child ends rather than the executor, and it needs
//! code between fork and exec, which turns std's `posix_spawn` fast path into
//! a fork of the whole executor (about twice the spawn cost, BENCHMARKS.md).
//! The helper costs one non-blocking 4-byte `write` per start and per finish:
//! 3.4 µs for both together, measured against 0.69 ms (p50) for a spawn and
//! wait of `/bin/true` on the same (busy, 2-core) machine, i.e. about 0.5 %.
//!
//! The helper is forked from a multi-threaded process, so between `fork` and
//! `_exit` it makes only async-signal-safe system calls and never allocates:
//! its registry is a bitmap over every possible pid (512 KiB of address
//! space, allocated before the fork; only the pages touched become memory).
//! It closes every descriptor it inherited but its end of the pipe (else it
//! would hold the children's output pipes open), and ignores the signals a
//! terminal or a service manager sends to a whole group, so that it outlives
//! the executor long enough to do its job. It cannot catch a group whose
//! members moved to a new session (`setsid`), nor a child started in the
//! instant between its spawn and its registration.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Linux's highest possible pid (`PID_MAX_LIMIT` on 64-bit), so the bitmap
/// covers every pid `/proc/sys/kernel/pid_max` can allow.
const PID_LIMIT: usize = 1 << 22;

struct Reaper {
    /// The pipe's write end: non-blocking, close-on-exec (so no child holds
    /// it and the helper sees EOF exactly when the executor is gone).
    pipe: OwnedFd,
    pid: libc::pid_t,
    /// Set after the first failed write, so that it is logged once.
    broken: AtomicBool,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

/// Starts the helper unless it runs already. Called when the executor
/// starts, so that a failure shows in its log at once; [`register`] starts it
/// too, for executors made some other way (tests).
pub(crate) fn start() {
    REAPER.get_or_init(|| match spawn() {
        Ok(reaper) => {
            tracing::debug!(pid = reaper.pid, "reaper started");
            Some(reaper)
        }
        Err(err) => {
            tracing::warn!(
                "cannot start the reaper process ({err}): if the executor is killed \
                 with SIGKILL, the processes it started keep running"
            );
            None
        }
    });
}

/// Has the helper kill group `pgid` if the executor dies.
pub(crate) fn register(pgid: i32) {
    if pgid > 1 {
        send(pgid);
    }
}

/// The executor no longer owns group `pgid` (it finished): forget it.
pub(crate) fn unregister(pgid: i32) {
    if pgid > 1 {
        send(-pgid);
    }
}

fn send(message: i32) {
    start();
    if let Some(Some(reaper)) = REAPER.get() {
        reaper.send(message);
    }
}

impl Reaper {
    fn send(&self, message: i32) {
        let bytes = message.to_ne_bytes();
        let fd = self.pipe.as_raw_fd();
        let write = || {
            // SAFETY: writes 4 bytes from a live buffer to a descriptor we
            // own. At most PIPE_BUF bytes: the write is atomic, all or nothing.
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if n == bytes.len() as isize {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        let mut written = write();
        if written
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
        {
            // 16k messages wait: a burst of spawns while the helper was not
            // scheduled. Wait a little for room rather than lose one (a lost
            // "forget" could later kill a reused group), never for long.
            let mut pollfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pollfd, 1, 100) };
            written = write();
        }
        if let Err(err) = written {
            if !self.broken.swap(true, Ordering::Relaxed) {
                // EAGAIN: the helper is stopped; EPIPE: it died.
                tracing::warn!(
                    pid = self.pid,
                    "cannot reach the reaper process ({err}): if the executor is killed \
                     with SIGKILL, some processes it started may keep running"
                );
            }
        }
    }
}

fn spawn() -> io::Result<Reaper> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Everything the child uses is prepared here: it must not allocate.
    let mut pgids = vec![0u64; PID_LIMIT / 64];
    let dev_null = c"/dev/null";
    let name = c"execgate-reaper";
    // SAFETY: fork has no memory-safety preconditions; the child below only
    // makes async-signal-safe calls and touches memory that exists already.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child; see `helper`.
        unsafe { helper(read.as_raw_fd(), &mut pgids, dev_null, name) }
    }
    drop(read);
    drop(pgids);
    // Non-blocking: a stopped helper must never stall a spawn.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(write.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(write.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(Reaper {
        pipe: write,
        pid,
        broken: AtomicBool::new(false),
    })
}

/// The helper's whole life, in the forked child. Never returns.
///
/// # Safety
/// Only in the child of `fork`, with `read` the pipe's read end.
unsafe fn helper(
    read: libc::c_int,
    pgids: &mut [u64],
    dev_null: &std::ffi::CStr,
    name: &std::ffi::CStr,
) -> ! {
    // Keep nothing of the executor's but the pipe, as fd 3: not its sockets,
    // not its children's output pipes, not the pipe's write end.
    if libc::dup2(read, 3) != 3 {
        libc::_exit(1);
    }
    let null = libc::open(dev_null.as_ptr(), libc::O_RDWR);
    if null >= 0 {
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
    }
    close_from(4);
    libc::fcntl(3, libc::F_SETFD, 0);
    // Its own session: no terminal's ^C or hangup reaches it, and it is no
    // member of a group anyone signals. Also ignore the signals a service
    // manager sends to everything at once: the helper ends by itself when
    // the executor is gone.
    libc::setsid();
    for signal in [
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGPIPE,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        libc::signal(signal, libc::SIG_IGN);
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);

    let mut buf = [0u8; 4096];
    // Bytes of a message split across two reads.
    let mut carry = [0u8; 4];
    let mut carried = 0usize;
    loop {
        let n = libc::read(3, buf.as_mut_ptr().cast(), buf.len());
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        for &byte in &buf[..n as usize] {
            carry[carried] = byte;
            carried += 1;
            if carried == 4 {
                carried = 0;
                apply(pgids, i32::from_ne_bytes(carry));
            }
        }
    }
    // The executor is gone: nothing will ever reach its groups again.
    for (word_index, &word) in pgids.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let bit = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let pgid = (word_index * 64 + bit) as libc::pid_t;
            if pgid > 1 {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
    libc::_exit(0)
}

/// Registers (positive) or forgets (negative) one group in the bitmap.
fn apply(pgids: &mut [u64], message: i32) {
    let pgid = message.unsigned_abs() as usize;
    let Some(word) = pgids.get_mut(pgid / 64) else {
        return;
    };
    let bit = 1u64 << (pgid % 64);
    if message > 0 {
        *word |= bit;
    } else {
        *word &= !bit;
    }
}

/// Closes every descriptor from `first` up.
///
/// # Safety
/// Only where no other code uses those descriptors (the forked child).
unsafe fn close_from(first: libc::c_int) {
    // close_range (Linux 5.9) in one call; else one close per possible fd.
    if libc::syscall(
        libc::SYS_close_range,
        first as libc::c_uint,
        libc::c_uint::MAX,
        0,
    ) == 0
    {
        return;
    }
    let mut limit: libc::rlimit = std::mem::zeroed();
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
    {
        limit.rlim_cur.min(1 << 20) as libc::c_int
    } else {
        1 << 16
    };
    for fd in first..max {
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::time::{Duration, Instant};

    /// The file names of a process's open descriptors.
    fn descriptors(pid: libc::pid_t) -> Vec<String> {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        fds
    }

    #[test]
    fn the_helper_kills_registered_groups_when_the_pipe_closes() {
        let reaper = spawn().unwrap();
        let helper = reaper.pid;
        // It keeps nothing of ours but the pipe (else it would hold our
        // children's output pipes open), and is named for `ps`.
        let comm = || std::fs::read_to_string(format!("/proc/{helper}/comm")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Named last, once it has closed what it inherited.
        while comm().trim() != "execgate-reaper" {
            assert!(Instant::now() < deadline, "{:?}", comm());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(descriptors(helper), ["0", "1", "2", "3"]);

        let start = || {
            std::process::Command::new("sleep")
                .arg("1000")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let (mut registered, mut forgotten) = (start(), start());
        reaper.send(registered.id() as i32);
        reaper.send(forgotten.id() as i32);
        reaper.send(-(forgotten.id() as i32));
        // The executor is gone: the helper sees EOF.
        drop(reaper);
        let status = registered.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // The helper exits (reap it: it is our child).
        let mut code = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(helper, &mut code, 0) }, helper);
        assert!(forgotten.try_wait().unwrap().is_none(), "not registered");
        forgotten.kill().unwrap();
        forgotten.wait().unwrap();
    }

    #[test]
    fn the_bitmap_registers_and_forgets_groups() {
        let mut pgids = vec![0u64; PID_LIMIT / 64];
        apply(&mut pgids, 4242);
        apply(&mut pgids, 64);
        assert_eq!(pgids[4242 / 64], 1 << (4242 % 64));
        assert_eq!(pgids[1], 1);
        apply(&mut pgids, -4242);
        assert_eq!(pgids[4242 / 64], 0);
        // Out of range: ignored, not a panic.
        apply(&mut pgids, i32::MAX);
        apply(&mut pgids, i32::MIN + 1);
    }
}
