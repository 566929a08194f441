//! Using a path confined to `--root` without an escape by race.
//!
//! `paths::confine` decides by name whether a path lies inside the root, and
//! resolves it the way the kernel would (for clear refusals naming the path).
//! Between that check and the system call that uses the path, a process on
//! the machine that can write inside the root could swap a directory of the
//! path for a symlink pointing out. So with a root nothing is used by name:
//! - a path to open is opened with `openat2(2)` relative to a descriptor of
//!   the root held since start, with `RESOLVE_BENEATH` (the kernel refuses
//!   every step out of it, by `..`, an absolute path or a link, with EXDEV)
//!   and `RESOLVE_NO_MAGICLINKS` (no `/proc/…/fd` jumps);
//! - a directory *entry* to look at or change (rename, remove, symlink,
//!   mkdir, a write's temporary file, a commit's destination) is reached
//!   through a descriptor of its parent, opened the same way, with `*at`
//!   calls that never follow the entry itself (`O_NOFOLLOW`,
//!   `AT_SYMLINK_NOFOLLOW`, or calls that never follow: unlinkat, renameat,
//!   symlinkat, mkdirat, readlinkat).
//!
//! The path `confine` resolved holds no `..` and no link, so the kernel
//! resolves the same thing, or refuses if it changed to lead out: a swap can
//! make a call fail (EXDEV is reported as a policy refusal), never escape.
//!
//! Without `--root`, the same functions use the path as given, with the std
//! calls the executor always made: nothing changes and nothing is slower.
//!
//! openat2 exists since Linux 5.6; [`Root::open`] refuses to start without it.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The root's canonical path and a descriptor of it, opened at start: paths
/// are resolved beneath the directory that was checked then, even if the
/// root's own path is changed later.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    /// Canonical (absolute, no symlinks).
    pub path: PathBuf,
    fd: Arc<OwnedFd>,
}

impl Root {
    /// Opens the canonical `path` with openat2 itself, which also tells
    /// whether the kernel has it. The error is the executor's refusal to
    /// start.
    pub fn open(path: PathBuf) -> Result<Root, String> {
        let c = cstring(path.as_os_str()).map_err(|e| format!("--root {}: {e}", path.display()))?;
        let opened = openat2(
            libc::AT_FDCWD,
            &c,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            libc::RESOLVE_NO_MAGICLINKS,
        );
        let fd = opened.map_err(|e| refusal(&path, &e, &kernel_release()))?;
        // A process's cwd and a mode change are reached through the
        // descriptor's /proc/self/fd link: without /proc, refuse now rather
        // than fail every process/start.
        if fs::metadata(fd_path(&fd)).is_err() {
            return Err(format!(
                "--root {}: /proc is not mounted, and --root needs /proc/self/fd to start \
                 processes in a directory opened beneath the root",
                path.display()
            ));
        }
        Ok(Root {
            path,
            fd: Arc::new(fd),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Why `--root` cannot be used, from the error of opening it with openat2
/// (`release`: the kernel's, for the message).
pub(crate) fn refusal(root: &Path, err: &io::Error, release: &str) -> String {
    match err.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "--root {}: this kernel (Linux {release}) has no openat2(2), which --root needs \
             to resolve every path beneath the root without a race (Linux 5.6 or later); \
             run on a newer kernel, or leave --root out",
            root.display()
        ),
        // A seccomp filter that does not know the call (older container
        // runtimes) answers EPERM rather than ENOSYS.
        Some(libc::EPERM) => format!(
            "--root {}: openat2(2) is not permitted here (Linux {release}; a seccomp \
             filter?), and --root needs it to resolve every path beneath the root \
             without a race; allow openat2, or leave --root out",
            root.display()
        ),
        _ => format!("--root {}: {err}", root.display()),
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "of unknown version".into())
}

/// A path that led out of the root when the kernel resolved it, although
/// it was inside when checked: something changed it meanwhile. The caller
/// reports it as a policy refusal (see `fs::io_error`).
#[derive(Debug)]
pub(crate) struct Escape {
    pub root: PathBuf,
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "it leads outside the executor's root {} (--root): a part of it was replaced \
             while it was in use",
            self.root.display()
        )
    }
}

impl std::error::Error for Escape {}

/// A confined path, ready to be used (see the module docs).
#[derive(Debug)]
pub(crate) struct Target<'a> {
    /// As resolved: for messages, for the staged hashes, and for every use
    /// without a root.
    pub path: PathBuf,
    /// With a root: it, and the path relative to it ("." for the root).
    beneath: Option<(&'a Root, CString)>,
}

impl<'a> Target<'a> {
    /// `path`, used as it is.
    pub fn free(path: PathBuf) -> Target<'static> {
        Target {
            path,
            beneath: None,
        }
    }

    /// Whether it is used beneath a root (through the kernel) rather than
    /// by name.
    pub fn is_beneath(&self) -> bool {
        self.beneath.is_some()
    }

    /// `path`, which `confine` resolved inside `root`.
    pub fn beneath(root: &'a Root, path: PathBuf) -> io::Result<Target<'a>> {
        let rel = match path.strip_prefix(&root.path) {
            Ok(rel) if rel.as_os_str().is_empty() => Path::new("."),
            Ok(rel) => rel,
            Err(_) => return Err(escape(root)),
        };
        let rel = cstring(rel.as_os_str())?;
        Ok(Target {
            path,
            beneath: Some((root, rel)),
        })
    }

    /// Opens the file or directory, following a link at the end (which
    /// must stay beneath the root). `flags` are open(2)'s; `O_CLOEXEC` is
    /// always added.
    pub fn open(&self, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        match &self.beneath {
            None => open_path(&self.path, flags, mode),
            Some((root, rel)) => Ok(File::from(open_beneath(root, rel, flags, mode)?)),
        }
    }

    /// `fs::metadata` (following a link at the end, beneath the root).
    pub fn metadata(&self) -> io::Result<Metadata> {
        match &self.beneath {
            None => fs::metadata(&self.path),
            Some(_) => self.open(libc::O_PATH, 0)?.metadata(),
        }
    }

    /// The directory entry itself: its parent, opened beneath the root, and
    /// its name.
    pub fn entry(&self) -> io::Result<Entry> {
        let Some((root, rel)) = &self.beneath else {
            return Ok(Entry {
                path: self.path.clone(),
                at: None,
            });
        };
        let rel = Path::new(OsStr::from_bytes(rel.to_bytes()));
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            // The root itself ("."), which `confine` lets through only for
            // looking at it: as the entry "." of itself.
            return Ok(Entry {
                path: self.path.clone(),
                at: Some((Arc::new(root.fd.try_clone()?), c".".to_owned())),
            });
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir = open_beneath(
            root,
            &cstring(parent.as_os_str())?,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        Ok(Entry {
            path: self.path.clone(),
            at: Some((Arc::new(dir), cstring(name)?)),
        })
    }

    /// `fs::create_dir_all`, one directory at a time beneath the root, none
    /// followed if it is (or becomes) a link.
    pub fn create_dir_all(&self) -> io::Result<()> {
        let Some((root, rel)) = &self.beneath else {
            return fs::create_dir_all(&self.path);
        };
        let mut dir = root.fd.try_clone()?;
        for part in Path::new(OsStr::from_bytes(rel.to_bytes())).iter() {
            if part == "." {
                continue;
            }
            let name = cstring(part)?;
            // SAFETY: a valid descriptor and C string.
            if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EEXIST) {
                    return Err(err);
                }
            }
            dir = openat(
                dir.as_raw_fd(),
                &name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
        }
        Ok(())
    }

    /// Sets the permission bits (following a link at the end, beneath).
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let permissions = fs::Permissions::from_mode(mode & 0o7777);
        if self.beneath.is_none() {
            return fs::set_permissions(&self.path, permissions);
        }
        // fchmod needs a descriptor opened for reading or writing, which a
        // directory without read permission refuses; through the O_PATH
        // descriptor's /proc entry, chmod reaches exactly the inode opened
        // (glibc's fchmodat emulation does the same).
        let file = self.open(libc::O_PATH, 0)?;
        fs::set_permissions(fd_path(&file), permissions)
    }

    /// The directory's entries (not sorted).
    pub fn list(&self) -> io::Result<Listing> {
        let Some(_) = &self.beneath else {
            let mut entries = Vec::new();
            for entry in fs::read_dir(&self.path)? {
                let entry = entry?;
                let kind = entry.file_type().map_or(Kind::Unknown, Kind::of);
                entries.push((entry.file_name(), kind));
            }
            return Ok(Listing {
                path: self.path.clone(),
                dir: None,
                entries,
            });
        };
        let dir = self.open(libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let entries = read_names(dir.as_fd())?
            .into_iter()
            .map(|(name, d_type)| {
                (
                    OsString::from_vec(name.into_bytes()),
                    Kind::of_dirent(d_type),
                )
            })
            .collect();
        Ok(Listing {
            path: self.path.clone(),
            dir: Some(Arc::new(dir.into())),
            entries,
        })
    }
}

/// What a directory listing says an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Other,
    /// Not said: look.
    Unknown,
}

impl Kind {
    fn of(t: fs::FileType) -> Kind {
        if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else if t.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        }
    }

    fn of_dirent(d_type: u8) -> Kind {
        match d_type {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_UNKNOWN => Kind::Unknown,
            _ => Kind::Other,
        }
    }

    /// What `meta` (of the entry itself, not followed) describes.
    pub fn of_metadata(meta: &Metadata) -> Kind {
        Kind::of(meta.file_type())
    }
}

/// A directory's entries, and the directory to reach them through.
pub(crate) struct Listing {
    pub path: PathBuf,
    dir: Option<Arc<OwnedFd>>,
    pub entries: Vec<(OsString, Kind)>,
}

impl Listing {
    /// The entry `name` of this directory.
    pub fn entry(&self, name: &OsStr) -> io::Result<Entry> {
        Ok(Entry {
            path: self.path.join(name),
            at: match &self.dir {
                None => None,
                Some(dir) => Some((dir.clone(), cstring(name)?)),
            },
        })
    }
}

/// A directory entry, looked at or changed without following it: by path
/// without a root, else by its parent's descriptor and its name.
pub(crate) struct Entry {
    pub path: PathBuf,
    at: Option<(Arc<OwnedFd>, CString)>,
}

impl Entry {
    /// An entry of the same directory.
    pub fn sibling(&self, name: &str) -> io::Result<Entry> {
        Ok(Entry {
            path: self.path.with_file_name(name),
            at: match &self.at {
                None => None,
                Some((dir, _)) => Some((dir.clone(), cstring(OsStr::new(name))?)),
            },
        })
    }

    /// Opens the entry, never through a link: `O_NOFOLLOW` is added (a link
    /// gives ELOOP, or the link itself with `O_PATH`).
    pub fn open(&self, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let flags = flags | libc::O_NOFOLLOW;
        match &self.at {
            None => open_path(&self.path, flags, mode),
            Some((dir, name)) => Ok(File::from(openat(dir.as_raw_fd(), name, flags, mode)?)),
        }
    }

    /// `fs::symlink_metadata`.
    pub fn symlink_metadata(&self) -> io::Result<Metadata> {
        match &self.at {
            None => fs::symlink_metadata(&self.path),
            // An O_PATH descriptor of the entry itself, even a link: its
            // metadata is the entry's.
            Some(_) => self.open(libc::O_PATH, 0)?.metadata(),
        }
    }

    /// `fs::read_link`.
    pub fn read_link(&self) -> io::Result<PathBuf> {
        let Some((dir, name)) = &self.at else {
            return fs::read_link(&self.path);
        };
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes.
            let n = unsafe {
                libc::readlinkat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n < buf.len() {
                buf.truncate(n);
                return Ok(PathBuf::from(OsString::from_vec(buf)));
            }
            // Possibly truncated: try again with more room.
            buf.resize(buf.len() * 2, 0);
        }
    }

    /// `fs::remove_file` (a link is removed, not its target).
    pub fn remove_file(&self) -> io::Result<()> {
        match &self.at {
            None => fs::remove_file(&self.path),
            Some((dir, name)) => unlinkat(dir.as_fd(), name, 0),
        }
    }

    /// `fs::remove_dir`.
    pub fn remove_dir(&self) -> io::Result<()> {
        match &self.at {
            None => fs::remove_dir(&self.path),
            Some((dir, name)) => unlinkat(dir.as_fd(), name, libc::AT_REMOVEDIR),
        }
    }

    /// `fs::remove_dir_all`: descends through descriptors, never through a
    /// link.
    pub fn remove_dir_all(&self) -> io::Result<()> {
        match &self.at {
            None => fs::remove_dir_all(&self.path),
            Some((dir, name)) => remove_tree(dir.as_fd(), name),
        }
    }

    /// `fs::create_dir`.
    pub fn create_dir(&self) -> io::Result<()> {
        let Some((dir, name)) = &self.at else {
            return fs::create_dir(&self.path);
        };
        // SAFETY: a valid descriptor and C string.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `std::os::unix::fs::symlink(target, self)`.
    pub fn symlink(&self, target: &Path) -> io::Result<()> {
        let Some((dir, name)) = &self.at else {
            return std::os::unix::fs::symlink(target, &self.path);
        };
        let target = cstring(target.as_os_str())?;
        // SAFETY: a valid descriptor and C strings.
        if unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `fs::rename(self, to)`: replaces the entry `to`, whatever it is,
    /// never what it points to.
    pub fn rename(&self, to: &Entry) -> io::Result<()> {
        match (&self.at, &to.at) {
            (Some((from_dir, from)), Some((to_dir, to))) => {
                // SAFETY: valid descriptors and C strings.
                let r = unsafe {
                    libc::renameat(
                        from_dir.as_raw_fd(),
                        from.as_ptr(),
                        to_dir.as_raw_fd(),
                        to.as_ptr(),
                    )
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            _ => fs::rename(&self.path, &to.path),
        }
    }
}

/// `fs::copy(from, to)` for a regular file: the copy gets the source's
/// permissions.
pub(crate) fn copy_file(from: &Entry, to: &Target<'_>) -> io::Result<()> {
    if from.at.is_none() && to.beneath.is_none() {
        return fs::copy(&from.path, &to.path).map(drop);
    }
    let mut source = from.open(libc::O_RDONLY, 0)?;
    let meta = source.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the source is not a regular file",
        ));
    }
    let permissions = meta.permissions();
    let mut destination = {
        use std::os::unix::fs::PermissionsExt;
        to.open(
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            permissions.mode() & 0o7777,
        )?
    };
    destination.set_permissions(permissions)?;
    // copy_file_range between the two files, as fs::copy does.
    io::copy(&mut source, &mut destination).map(drop)
}

/// Removes `name` in `dir`, a directory with everything in it, or anything
/// else. Nothing is followed: a link met is removed itself.
fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let child = match openat(
        dir.as_raw_fd(),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(child) => child,
        // Not a directory (ELOOP: a link).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
            return unlinkat(dir, name, 0);
        }
        Err(e) => return Err(e),
    };
    for (entry, _) in read_names(child.as_fd())? {
        match remove_tree(child.as_fd(), &entry) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    unlinkat(dir, name, libc::AT_REMOVEDIR)
}

fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid descriptor and C string.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The names (and `d_type`s) in the directory open at `dir` (for reading),
/// without `.` and `..`.
fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, u8)>> {
    // fdopendir takes the descriptor it is given: give it a copy.
    let copy = dir.try_clone_to_owned()?;
    // SAFETY: `copy` is a valid descriptor, whose ownership passes to the
    // stream (closed by closedir below).
    let stream = unsafe { libc::fdopendir(copy.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(copy);
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir reports errors only
        // through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid stream, used by this thread only.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break match err.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(err),
            };
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated
        // name, valid until the next readdir.
        let (name, d_type) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push((name.to_owned(), d_type));
        }
    };
    // SAFETY: a valid stream, closed once.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// Opens `path` by name (no root) with open(2)'s `flags`, through std as
/// the executor always did (the same system call, no extra allocation).
fn open_path(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let access = flags & libc::O_ACCMODE;
    let create = flags & libc::O_CREAT != 0;
    fs::OpenOptions::new()
        .read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .create(create)
        .create_new(create && flags & libc::O_EXCL != 0)
        .truncate(flags & libc::O_TRUNC != 0)
        .mode(mode)
        .custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC))
        .open(path)
}

/// `/proc/self/fd/N` of an open file: the kernel resolves it to exactly the
/// file opened (a "magic link"), whatever happens to its path meanwhile.
pub(crate) fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// openat2 beneath the root; EXDEV (a step out of it) becomes [`Escape`].
fn open_beneath(
    root: &Root,
    rel: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    openat2(
        root.fd().as_raw_fd(),
        rel,
        flags,
        mode,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EXDEV) => escape(root),
        _ => e,
    })
}

fn escape(root: &Root) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        Escape {
            root: root.path.clone(),
        },
    )
}

fn openat2(
    dir: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its empty value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    let flags = flags | libc::O_CLOEXEC;
    how.flags = flags as u64;
    // The kernel refuses a mode without O_CREAT or O_TMPFILE.
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = resolve;
    // EAGAIN: a rename elsewhere raced a `..` in the resolution (the kernel
    // cannot then vouch for it); trying again is what it asks for.
    for _ in 0..16 {
        // SAFETY: valid pointers for the duration of the call; the size is
        // that of the struct passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor, ours to own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            return Err(err);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

fn openat(dir: RawFd, path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: a valid C string; the mode is passed as open(2)'s vararg.
        let fd = unsafe {
            libc::openat(
                dir,
                path.as_ptr(),
                flags | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor, ours to own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a path must not contain a NUL byte",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_openat2_root_refuses_to_start_and_says_why() {
        let root = Path::new("/srv/project");
        let no = refusal(root, &io::Error::from_raw_os_error(libc::ENOSYS), "5.4.0");
        assert!(no.contains("--root /srv/project"), "{no}");
        assert!(no.contains("openat2"), "{no}");
        assert!(no.contains("Linux 5.4.0"), "{no}");
        assert!(no.contains("5.6"), "{no}");
        let blocked = refusal(root, &io::Error::from_raw_os_error(libc::EPERM), "6.1");
        assert!(blocked.contains("seccomp"), "{blocked}");
        let other = refusal(root, &io::Error::from_raw_os_error(libc::ENOENT), "6.1");
        assert!(!other.contains("openat2"), "{other}");
    }

    #[test]
    fn this_kernel_has_openat2() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(fs::canonicalize(dir.path()).unwrap()).unwrap();
        fs::write(dir.path().join("f"), "x").unwrap();
        let t = Target::beneath(&root, root.path.join("f")).unwrap();
        assert_eq!(
            fs::read_to_string(fd_path(&t.open(libc::O_RDONLY, 0).unwrap())).unwrap(),
            "x"
        );
    }

    /// Static escapes are refused by the kernel too (when `confine` was
    /// raced and let one through).
    #[test]
    fn the_kernel_refuses_steps_out_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(base.join("root")).unwrap();
        fs::write(base.join("secret"), "out").unwrap();
        std::os::unix::fs::symlink(&base, base.join("root/abs")).unwrap();
        std::os::unix::fs::symlink("..", base.join("root/rel")).unwrap();
        let root = Root::open(base.join("root")).unwrap();
        for via in ["abs/secret", "rel/secret"] {
            let t = Target::beneath(&root, root.path.join(via)).unwrap();
            let err = t.open(libc::O_RDONLY, 0).unwrap_err();
            assert!(
                err.get_ref().is_some_and(|e| e.is::<Escape>()),
                "{via}: {err}"
            );
            let err = t.entry().map(drop).unwrap_err();
            assert!(
                err.get_ref().is_some_and(|e| e.is::<Escape>()),
                "{via}: {err}"
            );
        }
        assert!(Target::beneath(&root, base.join("secret")).is_err());
    }
}
