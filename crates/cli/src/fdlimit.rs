//! The descriptor limit: `serve`, `executor` and `up` raise the soft
//! `RLIMIT_NOFILE` to the hard limit at start and log the result.
//!
//! Every connection, WebSocket, pipe and spill file is a descriptor, and the
//! usual soft limit (1,024) is far below what a gateway facing many clients,
//! or an executor running many processes, needs; the hard limit is what the
//! administrator allows, so taking it all is safe. Here in the cli, which
//! both the gateway and the executor crates are wired from, so neither
//! needs the other (nor libc for this).

/// Raises the soft limit to the hard limit (on macOS also capped by
/// `OPEN_MAX`, which `setrlimit` requires) and returns the soft limit in
/// force afterwards. A failure is logged and leaves the limit as it was.
pub fn raise_nofile_limit(what: &str) -> u64 {
    let Some((soft, hard)) = get() else {
        tracing::warn!("{what}: cannot read RLIMIT_NOFILE");
        return 1024;
    };
    // An unlimited hard limit cannot be the soft one (Linux caps it at
    // fs.nr_open, 1,048,576 by default).
    let target = hard.min(1 << 20);
    // macOS refuses a soft limit above OPEN_MAX.
    #[cfg(target_os = "macos")]
    let target = target.min(libc::OPEN_MAX as u64);
    if target > soft {
        let lim = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we pass; no memory is shared.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!("{what}: cannot raise RLIMIT_NOFILE from {soft} to {target}: {e}");
            return soft;
        }
    }
    let now = get().map_or(soft, |(s, _)| s);
    tracing::info!(
        nofile = now,
        was = soft,
        hard,
        "{what}: open file limit (RLIMIT_NOFILE)"
    );
    now
}

/// The soft limit in force now.
pub fn current() -> u64 {
    get().map_or(1024, |(soft, _)| soft)
}

fn get() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    // RLIM_INFINITY is u64::MAX: it stays "very large".
    // rlim_t is u64 on Linux and macOS.
    Some((lim.rlim_cur, lim.rlim_max))
}
