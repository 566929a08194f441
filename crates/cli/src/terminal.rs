//! The local terminal, for `execgate exec -t`: raw mode and the window size,
//! through libc's termios directly (a few calls; no crate needed).

use std::io;
use std::os::fd::RawFd;

/// The terminal size of `fd` as `(cols, rows)`, if it is a terminal.
pub fn size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ writes one into it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // `as _`: the request's type differs between libcs.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ as _, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Raw mode on a terminal until dropped: every byte (Ctrl-C is 0x03, Ctrl-D
/// 0x04) goes to the remote terminal, whose own line discipline interprets
/// it, and nothing is echoed locally. Dropping restores the saved settings.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    pub fn enable(fd: RawFd) -> io::Result<RawMode> {
        // SAFETY: termios is plain data, filled by tcgetattr before use.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores settings tcgetattr returned for the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
