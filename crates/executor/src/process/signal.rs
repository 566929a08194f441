//! Signals: the protocol's signal names, and delivering a signal to a whole
//! process group.
//!
//! Every child runs in its own process group (under a pty, its own session),
//! so signalling the group reaches the shell *and* whatever it started in the
//! background. Signalling only the direct child would leave `sleep 300 &`
//! running after a "terminate".

use std::io;

/// The signal a `process/signal` name stands for. The protocol's names are
/// `interrupt`, `terminate`, `kill` and `hangup`; the usual `SIGINT`/`INT`
/// spellings are accepted too.
pub(crate) fn from_name(name: &str) -> Option<libc::c_int> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "INTERRUPT" | "INT" => libc::SIGINT,
        "TERMINATE" | "TERM" => libc::SIGTERM,
        "KILL" => libc::SIGKILL,
        "HANGUP" | "HUP" => libc::SIGHUP,
        _ => return None,
    })
}

/// Sends `signal` to every process of group `pgid`.
///
/// Refuses `pgid <= 1`: `killpg(0, …)` would signal the executor's own group
/// and `killpg(1, …)` init's, and neither can ever be a child's group.
pub(crate) fn kill_group(pgid: i32, signal: libc::c_int) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an error from [`kill_group`] only means the group is already gone.
pub(crate) fn is_gone(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_map_to_signals() {
        assert_eq!(from_name("interrupt"), Some(libc::SIGINT));
        assert_eq!(from_name("terminate"), Some(libc::SIGTERM));
        assert_eq!(from_name("kill"), Some(libc::SIGKILL));
        assert_eq!(from_name("hangup"), Some(libc::SIGHUP));
    }

    #[test]
    fn usual_spellings_are_accepted() {
        assert_eq!(from_name("SIGINT"), Some(libc::SIGINT));
        assert_eq!(from_name("term"), Some(libc::SIGTERM));
        assert_eq!(from_name("SIGKILL"), Some(libc::SIGKILL));
        assert_eq!(from_name("HUP"), Some(libc::SIGHUP));
    }

    #[test]
    fn unknown_names_are_refused() {
        for name in ["", "stop", "SIGSTOP", "9", "usr1", "SIG"] {
            assert_eq!(from_name(name), None, "{name}");
        }
    }

    #[test]
    fn never_signals_our_own_group_or_init() {
        for pgid in [-5, 0, 1] {
            let err = kill_group(pgid, 0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
