//! The `fs/*` methods: files and directories on the executor's machine.
//!
//! Each method is a function from its params and a [`Ctx`] to its result,
//! named in the method table (`methods`), which decodes the params, runs
//! it on tokio's blocking pool and encodes the result. Every function here
//! is synchronous (std::fs): a multi-step operation such as a recursive
//! copy then costs one thread hop instead of one per system call.
//!
//! Every path goes through [`PathRules`], and is used as a [`Target`] or an
//! [`Entry`] (see `beneath`): with `--root`, through descriptors beneath
//! the root, so that a path changed between its check and its use cannot
//! lead out.
//!
//! Errors: a missing file or directory is -32004 (the message names the
//! path), bad parameters -32602, any other I/O failure -32603 with the OS
//! message. Defaults follow codex `exec-server`: `createDirectory` and
//! `remove` are recursive unless told otherwise, and `remove` ignores a
//! missing path unless `force` is false.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use execgate_protocol::blob::Blob;
use execgate_protocol::exec::{
    CommitFileParams, CommitFileResult, CopyParams, CreateDirectoryParams, DirEntry, Empty,
    Metadata, PathParams, ReadDigestParams, ReadDigestResult, ReadDirectoryResult, ReadFileResult,
    ReadRangeParams, ReadRangeResult, RemoveParams, RenameParams, SymlinkParams, WriteFileParams,
    WriteRangeParams,
};
use execgate_protocol::jsonrpc::RpcError;

use crate::beneath::{self, Entry, Escape, Kind, Target};
use crate::digest::ReadHashes;
use crate::paths::{Last, PathRules};
use crate::staged::StagedHashes;

/// What the `fs/*` methods work with besides their parameters.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// Resolve every path.
    pub rules: &'a PathRules,
    /// `fs/writeRange` feeds them, `fs/commitFile` takes them.
    pub staged: &'a StagedHashes,
    /// [ext] `fs/readRange {hash}` feeds them, `fs/readDigest` takes them.
    pub reads: &'a ReadHashes,
}

/// Maps an I/O error on `path` to the protocol's error codes: a path that
/// led out of the root when used is refused as policy (-32030).
fn io_error(action: &str, path: &Path, err: io::Error) -> RpcError {
    if let Some(escape) = err.get_ref().and_then(|e| e.downcast_ref::<Escape>()) {
        return RpcError::policy_denied(format!("{action} {}: {escape}", path.display()));
    }
    if err.kind() == io::ErrorKind::NotFound {
        RpcError::not_found(format!("no such file or directory: {}", path.display()))
    } else {
        RpcError::internal(format!("{action} {}: {err}", path.display()))
    }
}

pub(crate) fn read_file(
    params: PathParams,
    Ctx { rules, .. }: Ctx<'_>,
) -> Result<ReadFileResult, RpcError> {
    let target = rules.resolve(&params.path, Last::Follow)?;
    let fail = |e| io_error("reading", &target.path, e);
    let mut file = open_regular(&target)?;
    let size = file.metadata().map_err(fail)?.len();
    let mut data = Vec::with_capacity(size.min(MAX_PRESIZE) as usize);
    file.read_to_end(&mut data).map_err(fail)?;
    Ok(ReadFileResult {
        data_base64: Blob::from(data),
    })
}

/// Opens `path` for reading if it is a regular file; anything else (a FIFO,
/// a device, a socket, a directory) is -32602 at once. `O_NONBLOCK` makes
/// the open itself return: a plain open of a FIFO waits for a writer
/// forever, holding a blocking-pool thread and the caller's request. (On a
/// regular file the flag changes nothing.)
fn open_regular(target: &Target<'_>) -> Result<File, RpcError> {
    let fail = |e| io_error("reading", &target.path, e);
    let file = target
        .open(libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .map_err(fail)?;
    if !file.metadata().map_err(fail)?.is_file() {
        return Err(RpcError::invalid_params(format!(
            "{} is not a regular file",
            target.path.display()
        )));
    }
    Ok(file)
}

/// The most `fs/readRange` allocates before it has read anything.
const MAX_PRESIZE: u64 = 64 << 20;

pub(crate) fn read_range(
    params: ReadRangeParams,
    Ctx { rules, reads, .. }: Ctx<'_>,
) -> Result<ReadRangeResult, RpcError> {
    let target = rules.resolve(&params.path, Last::Follow)?;
    let fail = |e| io_error("reading", &target.path, e);
    let mut file = open_regular(&target)?;
    let size = file.metadata().map_err(fail)?.len();
    let mut data = Vec::new();
    if params.offset < size {
        let available = size - params.offset;
        let want = match params.length {
            0 => available,
            n => n.min(available),
        };
        file.seek(SeekFrom::Start(params.offset)).map_err(fail)?;
        // Sized up front: from an empty Vec, `read_to_end` reads 32 bytes,
        // then doubles, reallocating and copying a 1 MiB transfer chunk's
        // bytes over a dozen reads. (Capped: a huge `want` may still fail
        // half-way, and is then grown into as before.)
        data.reserve_exact(want.min(MAX_PRESIZE) as usize);
        // `take` bounds the read even if the file grows meanwhile.
        file.take(want).read_to_end(&mut data).map_err(fail)?;
    }
    let data = bytes::Bytes::from(data);
    if let Some(hash) = &params.hash {
        // Here, while the bytes are in this thread's cache; a clone of
        // `Bytes` is a reference, not a copy.
        reads.read(&hash.id, &hash.algorithm, params.offset, data.clone())?;
    }
    Ok(ReadRangeResult {
        data_base64: Blob::from(data),
        size,
    })
}

/// [ext] `fs/readDigest`: the digest of what the reads of one transfer
/// returned (see [`crate::digest`]).
pub(crate) fn read_digest(
    params: ReadDigestParams,
    Ctx { reads, .. }: Ctx<'_>,
) -> Result<ReadDigestResult, RpcError> {
    let (algorithm, digest, size) = reads.finish(&params.id)?;
    Ok(ReadDigestResult {
        algorithm: algorithm.into(),
        digest,
        size,
    })
}

pub(crate) fn write_file(
    params: WriteFileParams,
    Ctx { rules, .. }: Ctx<'_>,
) -> Result<Empty, RpcError> {
    let resolved = rules.resolve(&params.path, Last::Follow)?;
    let path = resolved.path.clone();
    let data = params
        .data_base64
        .to_bytes()
        .map_err(|e| RpcError::invalid_params(format!("dataBase64 is not valid base64: {e}")))?;
    // Writing through a symlink replaces the file it points to, as a plain
    // write would, rather than replacing the link with a file. With a root,
    // `confine` followed every link already; one that appears since is
    // replaced, not followed.
    let target = if rules.root.is_none() {
        Target::free(follow_symlink(&path))
    } else {
        resolved
    };
    let parent = match target.path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => {
            return Err(RpcError::invalid_params(format!(
                "cannot write {}: it has no parent directory",
                path.display()
            )))
        }
    };
    // By name: this only chooses the error, or whether to create the
    // parents; what is written is reached through the kernel below.
    if !parent.is_dir() {
        if params.create_parents == Some(true) {
            rules
                .confine(parent, Last::Follow)?
                .create_dir_all()
                .map_err(|e| io_error("creating", parent, e))?;
        } else if parent.exists() {
            return Err(RpcError::invalid_params(format!(
                "parent of {} is not a directory",
                path.display()
            )));
        } else {
            return Err(RpcError::not_found(format!(
                "parent directory does not exist: {} (pass createParents to create it)",
                parent.display()
            )));
        }
    }
    atomic_write(&target, &data).map_err(|e| io_error("writing", &path, e))?;
    Ok(Empty {})
}

/// The file a symlink points to (through any chain of links), or `path`
/// itself if it is not a link. A dangling link resolves to its target path,
/// so that writing creates the file it names.
fn follow_symlink(path: &Path) -> PathBuf {
    let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return path.to_path_buf();
    }
    if let Ok(real) = fs::canonicalize(path) {
        return real;
    }
    match fs::read_link(path) {
        Ok(target) if target.is_absolute() => target,
        Ok(target) => path.parent().unwrap_or(Path::new("/")).join(target),
        Err(_) => path.to_path_buf(),
    }
}

/// Writes `data` to a temporary file beside `target`, then renames it over
/// `target`: readers see the old content or the new, never a mix. The file
/// keeps the permissions of the one it replaces (an executable stays
/// executable). There is no fsync: the write is atomic, not durable.
fn atomic_write(target: &Target<'_>, data: &[u8]) -> io::Result<()> {
    let existing = target.metadata().ok();
    if existing.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        ));
    }
    let entry = target.entry()?;
    // A short name of our own: the target's name plus a suffix could exceed
    // the file system's name length limit.
    let temp = entry.sibling(&format!(".execgate-{:016x}.tmp", rand::random::<u64>()))?;
    let result = (|| {
        let mut file = temp.open(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o666)?;
        file.write_all(data)?;
        if let Some(existing) = &existing {
            file.set_permissions(existing.permissions())?;
        }
        drop(file);
        temp.rename(&entry)
    })();
    if result.is_err() {
        let _ = temp.remove_file();
    }
    result
}

pub(crate) fn create_directory(
    params: CreateDirectoryParams,
    Ctx { rules, .. }: Ctx<'_>,
) -> Result<Empty, RpcError> {
    let target = rules.resolve(&params.path, Last::Follow)?;
    let created = if params.recursive.unwrap_or(true) {
        target.create_dir_all()
    } else {
        target.entry().and_then(|entry| entry.create_dir())
    };
    created.map_err(|e| io_error("creating directory", &target.path, e))?;
    if let Some(mode) = params.mode {
        target
            .set_mode(mode)
            .map_err(|e| io_error("setting the mode of", &target.path, e))?;
    }
    Ok(Empty {})
}

/// The directory entry of `target`, errors mapped for `action`.
fn entry_of(target: &Target<'_>, action: &str) -> Result<Entry, RpcError> {
    target
        .entry()
        .map_err(|e| io_error(action, &target.path, e))
}

/// [ext] `fs/rename`: atomic within one file system.
pub(crate) fn rename(params: RenameParams, Ctx { rules, .. }: Ctx<'_>) -> Result<Empty, RpcError> {
    let from = rules.resolve(&params.source_path, Last::Entry)?;
    let to = rules.resolve(&params.destination_path, Last::Entry)?;
    entry_of(&from, "renaming")?
        .rename(&entry_of(&to, "renaming into")?)
        .map_err(|e| io_error("renaming", &from.path, e))?;
    Ok(Empty {})
}

/// [ext] `fs/writeRange`: one chunk of a streamed transfer into a staged
/// file. Several may be in flight, each a positioned write; `staged` keeps
/// the running hash of what they wrote, for the commit.
pub(crate) fn write_range(
    params: WriteRangeParams,
    Ctx { rules, staged, .. }: Ctx<'_>,
) -> Result<Empty, RpcError> {
    use std::os::unix::fs::FileExt;
    let target = rules.resolve(&params.path, Last::Follow)?;
    let path = &target.path;
    let data = params
        .data_base64
        .to_bytes()
        .map_err(|e| RpcError::invalid_params(format!("dataBase64 is not valid base64: {e}")))?;
    if let Some(d) = params.digest.as_deref() {
        if crate::digest::Hasher::new(d).is_none() {
            return Err(RpcError::invalid_params(format!(
                "digest {d:?} is not one of {:?}",
                crate::digest::SUPPORTED
            )));
        }
    }
    let truncate = if params.truncate { libc::O_TRUNC } else { 0 };
    let file = target
        .open(libc::O_WRONLY | libc::O_CREAT | truncate, 0o666)
        .map_err(|e| io_error("opening", path, e))?;
    file.write_all_at(&data, params.offset)
        .map_err(|e| io_error("writing", path, e))?;
    start_writeback(&file, params.offset, data.len() as u64);
    staged.wrote(
        path,
        &file,
        params.offset,
        data,
        params.truncate,
        params.digest.as_deref(),
    );
    Ok(Empty {})
}

/// Asks the kernel to start writing this range to disk now, without
/// waiting: `fs/commitFile`'s fsync then finds most of a large transfer on
/// disk already, instead of flushing all of it at the end (seconds per GiB
/// on this machine's disk; BENCHMARKS.md). Only a hint: errors are
/// ignored, and the fsync still decides.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    #[cfg(target_os = "linux")]
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file.as_raw_fd(), offset, len);
}

/// [ext] `fs/commitFile`: verify, set the mode, rename into place. The
/// file is flushed to disk before the rename, so a crash leaves either the
/// old destination or the complete new one.
///
/// The hash to verify is the running one `fs/writeRange` kept when it
/// covers exactly what the file holds (see [`crate::staged`]); otherwise
/// the file is read back.
pub(crate) fn commit_file(
    params: CommitFileParams,
    Ctx { rules, staged, .. }: Ctx<'_>,
) -> Result<CommitFileResult, RpcError> {
    let staged_target = rules.resolve(&params.path, Last::Follow)?;
    let staged_path = &staged_target.path;
    // A destination that is a symlink is written through, as `write_file`
    // does: the file it points to is replaced and the link stays. With a
    // root, `Follow` has resolved the link (refusing a target outside it)
    // and the rename below goes through the kernel beneath the root;
    // without one, the link is followed by name.
    let dest = rules.resolve(&params.destination_path, Last::Follow)?;
    let dest = if dest.is_beneath() {
        dest
    } else {
        Target::free(follow_symlink(&dest.path))
    };
    let file = staged_target
        .open(libc::O_RDONLY, 0)
        .map_err(|e| io_error("opening", staged_path, e))?;
    // [ext] Verified with BLAKE3 when given one, else with SHA-256.
    let (algorithm, expected) = match (&params.blake3, &params.sha256) {
        (Some(b), _) => (execgate_protocol::exec::digest::BLAKE3, Some(b)),
        (None, s) => (execgate_protocol::exec::digest::SHA256, s.as_ref()),
    };
    // Before the mode changes the file's ctime, which the check compares.
    // A running hash of another algorithm is of no use: the file is read.
    let running = staged
        .take(staged_path, &file)
        .filter(|(a, _, _)| *a == algorithm);
    // Without a mode given, a replaced file keeps its own (as `write_file`
    // does), and a new one keeps the staged file's 0666 minus the umask.
    let keep = || {
        use std::os::unix::fs::PermissionsExt;
        dest.metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions().mode() & 0o7777)
    };
    if let Some(mode) = params.mode.or_else(keep) {
        use std::os::unix::fs::PermissionsExt;
        // Before the flush, so that it covers the mode too. On the open
        // file: exactly the one verified and renamed.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| io_error("setting the mode of", staged_path, e))?;
    }
    let (hashed, synced) = match running {
        Some((_, digest, size)) => (Ok((digest, size)), Ok(file.sync_all())),
        // The flush to disk waits on the device and the hash on the CPU:
        // do both at once. (A mismatch, which removes the file, wastes the
        // flush.)
        None => std::thread::scope(|scope| {
            let sync = scope.spawn(|| file.sync_all());
            let hashed = hash_file(&file, algorithm);
            (hashed, sync.join())
        }),
    };
    let (digest, size) = hashed.map_err(|e| io_error("reading", staged_path, e))?;
    let staged_entry = entry_of(&staged_target, "opening")?;
    if let Some(expected) = expected {
        if !expected.eq_ignore_ascii_case(&digest) {
            let _ = staged_entry.remove_file();
            return Err(RpcError::invalid_params(format!(
                "{algorithm} mismatch for {}: expected {expected}, the staged file has {digest}; nothing was written",
                dest.path.display()
            )));
        }
    }
    match synced {
        Ok(result) => result.map_err(|e| io_error("flushing", staged_path, e))?,
        Err(_) => return Err(RpcError::internal("the flush thread panicked")),
    }
    if dest.is_beneath() {
        // Beneath a root both ends go through the kernel; a rename across
        // file systems inside the root is refused rather than copied by name.
        staged_entry
            .rename(&entry_of(&dest, "renaming into")?)
            .map_err(|e| io_error("renaming into", &dest.path, e))?;
    } else {
        rename_into_place(staged_path, &dest.path)
            .map_err(|e| io_error("renaming into", &dest.path, e))?;
    }
    Ok(if algorithm == execgate_protocol::exec::digest::BLAKE3 {
        CommitFileResult {
            sha256: String::new(),
            size,
            blake3: Some(digest),
        }
    } else {
        CommitFileResult {
            sha256: digest,
            size,
            blake3: None,
        }
    })
}

/// Renames the verified staged file to `dest`. When `dest` was reached
/// through a link onto another file system (the staged file lies beside
/// the link), it is copied beside `dest` first, flushed, and renamed from
/// there: the destination still never holds a partial file.
fn rename_into_place(staged: &Path, dest: &Path) -> io::Result<()> {
    match fs::rename(staged, dest) {
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            let dir = dest.parent().unwrap_or(Path::new("/"));
            let temp = dir.join(format!(".execgate-{:016x}.tmp", rand::random::<u64>()));
            let moved = (|| {
                // Copies the permissions too.
                fs::copy(staged, &temp)?;
                File::open(&temp)?.sync_all()?;
                fs::rename(&temp, dest)
            })();
            if moved.is_err() {
                let _ = fs::remove_file(&temp);
                return moved;
            }
            let _ = fs::remove_file(staged);
            Ok(())
        }
        other => other,
    }
}

/// The digest `algorithm` (lower-case hex) and size of what `file` holds,
/// read from its start.
fn hash_file(mut file: &File, algorithm: &str) -> io::Result<(String, u64)> {
    let mut hasher = crate::digest::Hasher::new(algorithm)
        .ok_or_else(|| io::Error::other(format!("no digest {algorithm}")))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.hex(), size))
}

#[cfg(test)]
fn hex_lower(bytes: &[u8]) -> String {
    crate::digest::hex_lower(bytes)
}

/// [ext] `fs/symlink`.
pub(crate) fn symlink(
    params: SymlinkParams,
    Ctx { rules, .. }: Ctx<'_>,
) -> Result<Empty, RpcError> {
    let target = rules.resolve(&params.path, Last::Entry)?;
    entry_of(&target, "creating the symlink")?
        .symlink(Path::new(&params.target))
        .map_err(|e| io_error("creating the symlink", &target.path, e))?;
    Ok(Empty {})
}

pub(crate) fn get_metadata(
    params: PathParams,
    Ctx { rules, .. }: Ctx<'_>,
) -> Result<Metadata, RpcError> {
    let target = rules.resolve(&params.path, Last::Inspect)?;
    let path = &target.path;
    let entry = entry_of(&target, "inspecting")?;
    let link = entry
        .symlink_metadata()
        .map_err(|e| io_error("inspecting", path, e))?;
    let is_symlink = link.file_type().is_symlink();
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        link.permissions().mode() & 0o7777
    };
    // Everything but `isSymlink` describes what a link points to; a dangling
    // link describes itself, and so does a link out of the root (nothing
    // outside is described).
    let meta = if is_symlink {
        rules.follow_metadata(path).unwrap_or(link)
    } else {
        link
    };
    Ok(Metadata {
        is_directory: meta.is_dir(),
        is_file: meta.is_file(),
        is_symlink,
        size: meta.len(),
        created_at_ms: meta.created().map_or(0, millis_since_epoch),
        modified_at_ms: meta.modified().map_or(0, millis_since_epoch),
        mode: Some(mode),
        symlink_target: if is_symlink {
            entry
                .read_link()
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        },
    })
}

fn millis_since_epoch(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn read_directory(
    params: PathParams,
    Ctx { rules, .. }: Ctx<'_>,
) -> Result<ReadDirectoryResult, RpcError> {
    let target = rules.resolve(&params.path, Last::Follow)?;
    let listing = target
        .list()
        .map_err(|e| io_error("listing", &target.path, e))?;
    let mut entries = Vec::new();
    for (name, kind) in listing.entries {
        // Follow links, like getMetadata; a dangling link is neither, and
        // so is a link out of the root. With a root, the listing's own
        // word is taken for what is not a link: looking again by name
        // could meet a link swapped in since.
        let (is_directory, is_file) = match kind {
            Kind::Dir if rules.root.is_some() => (true, false),
            Kind::File if rules.root.is_some() => (false, true),
            Kind::Other if rules.root.is_some() => (false, false),
            _ => match rules.follow_metadata(&listing.path.join(&name)) {
                Some(meta) => (meta.is_dir(), meta.is_file()),
                None => (false, false),
            },
        };
        entries.push(DirEntry {
            file_name: name.to_string_lossy().into_owned(),
            is_directory,
            is_file,
        });
    }
    entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    Ok(ReadDirectoryResult { entries })
}

pub(crate) fn remove(
    params: RemoveParams,
    Ctx { rules, staged, .. }: Ctx<'_>,
) -> Result<Empty, RpcError> {
    let target = rules.resolve(&params.path, Last::Entry)?;
    let path = &target.path;
    // An aborted transfer removes its staged file.
    staged.forget(path);
    let recursive = params.recursive.unwrap_or(true);
    let force = params.force.unwrap_or(true);
    let (meta, entry) = match target
        .entry()
        .and_then(|entry| Ok((entry.symlink_metadata()?, entry)))
    {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound && force => return Ok(Empty {}),
        Err(e) => return Err(io_error("removing", path, e)),
    };
    // A link is removed itself, never what it points to.
    let removed = if meta.is_dir() {
        if recursive {
            entry.remove_dir_all()
        } else {
            entry.remove_dir()
        }
    } else {
        entry.remove_file()
    };
    match removed {
        Err(e) if e.kind() == io::ErrorKind::NotFound && force => Ok(Empty {}),
        other => other
            .map(|()| Empty {})
            .map_err(|e| io_error("removing", path, e)),
    }
}

pub(crate) fn copy(params: CopyParams, Ctx { rules, .. }: Ctx<'_>) -> Result<Empty, RpcError> {
    let source = rules.resolve(&params.source_path, Last::Inspect)?;
    let destination = rules.resolve(&params.destination_path, Last::Follow)?;
    let from = entry_of(&source, "copying")?;
    let meta = from
        .symlink_metadata()
        .map_err(|e| io_error("copying", &source.path, e))?;
    let kind = meta.file_type();
    let copied = if kind.is_dir() {
        if !params.recursive {
            return Err(RpcError::invalid_params(format!(
                "{} is a directory: pass recursive to copy it",
                source.path.display()
            )));
        }
        if is_same_or_inside(&source.path, &destination.path) {
            return Err(RpcError::invalid_params(format!(
                "cannot copy {} into itself ({})",
                source.path.display(),
                destination.path.display()
            )));
        }
        copy_dir(&source, &destination, rules)
    } else if kind.is_symlink() {
        copy_symlink(&from, &destination).map_err(CopyFail::Io)
    } else if kind.is_file() {
        beneath::copy_file(&from, &destination).map_err(CopyFail::Io)
    } else {
        return Err(RpcError::invalid_params(format!(
            "{} is not a regular file, directory or symlink",
            source.path.display()
        )));
    };
    let (source, destination) = (source.path.display(), destination.path.display());
    copied.map_err(|fail| match fail {
        CopyFail::Denied(e) => e,
        CopyFail::Io(e) if e.get_ref().is_some_and(|e| e.is::<Escape>()) => {
            RpcError::policy_denied(format!("copying {source} to {destination}: {e}"))
        }
        CopyFail::Io(e) if e.kind() == io::ErrorKind::NotFound => {
            RpcError::not_found(format!("copying {source} to {destination}: {e}"))
        }
        CopyFail::Io(e) => RpcError::internal(format!("copying {source} to {destination}: {e}")),
    })?;
    Ok(Empty {})
}

/// Why a tree copy stopped.
enum CopyFail {
    Io(io::Error),
    /// A destination inside the tree resolves out of the root (an existing
    /// link there).
    Denied(RpcError),
}

impl From<io::Error> for CopyFail {
    fn from(e: io::Error) -> Self {
        CopyFail::Io(e)
    }
}

/// Copies a directory tree. Links are recreated, not followed, so a link
/// loop cannot make the copy endless. Each destination is confined again:
/// the destination tree may exist already and hold links pointing out.
fn copy_dir(
    source: &Target<'_>,
    destination: &Target<'_>,
    rules: &PathRules,
) -> Result<(), CopyFail> {
    destination.create_dir_all()?;
    let listing = source.list()?;
    for (name, kind) in &listing.entries {
        let from = listing.entry(name)?;
        let to = rules
            .confine(&destination.path.join(name), Last::Follow)
            .map_err(CopyFail::Denied)?;
        let kind = match kind {
            Kind::Unknown => Kind::of_metadata(&from.symlink_metadata()?),
            known => *known,
        };
        match kind {
            Kind::Dir => {
                let from = rules
                    .confine(&from.path, Last::Inspect)
                    .map_err(CopyFail::Denied)?;
                copy_dir(&from, &to, rules)?;
            }
            Kind::Symlink => copy_symlink(&from, &to)?,
            Kind::File => beneath::copy_file(&from, &to)?,
            // Sockets, fifos and devices are skipped.
            Kind::Other | Kind::Unknown => {}
        }
    }
    Ok(())
}

fn copy_symlink(source: &Entry, destination: &Target<'_>) -> io::Result<()> {
    destination.entry()?.symlink(&source.read_link()?)
}

/// Whether `inner` is `outer` or lies inside it, comparing real paths (the
/// part of `inner` that does not exist yet is appended to its real parent).
fn is_same_or_inside(outer: &Path, inner: &Path) -> bool {
    let Ok(outer) = fs::canonicalize(outer) else {
        return false;
    };
    let mut existing = inner;
    let mut missing = Vec::new();
    let inner = loop {
        if let Ok(real) = fs::canonicalize(existing) {
            break missing
                .iter()
                .rev()
                .fold(real, |path: PathBuf, name| path.join(name));
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return false,
        }
    };
    inner.starts_with(&outer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Call, WireResult};
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use bytes::Bytes;
    use execgate_protocol::exec::method;
    use execgate_protocol::jsonrpc::code;
    use serde_json::{json, Value};
    use std::os::unix::fs::PermissionsExt;

    /// The tests' staged hashes: one registry, as in an executor.
    static STAGED: std::sync::LazyLock<StagedHashes> =
        std::sync::LazyLock::new(StagedHashes::default);

    static READS: std::sync::LazyLock<ReadHashes> = std::sync::LazyLock::new(ReadHashes::default);

    fn ctx(rules: &PathRules) -> Ctx<'_> {
        Ctx {
            rules,
            staged: &STAGED,
            reads: &READS,
        }
    }

    /// Runs `fs/*` method `method` as the method table routes it, on this
    /// thread; a method the table does not know is -32601, as from the
    /// dispatcher.
    fn call_with(
        method: &str,
        params: Value,
        payload: &Bytes,
        binary: bool,
        ctx: Ctx<'_>,
    ) -> Result<WireResult, RpcError> {
        let handler =
            crate::methods::fs_handler(method).ok_or_else(|| RpcError::method_not_found(method))?;
        handler(
            Call {
                params,
                payload,
                binary,
            },
            ctx,
        )
    }

    /// A call as from a text frame: base64 in, base64 out.
    fn call(method: &str, params: Value, rules: &PathRules) -> Result<Value, RpcError> {
        let (value, payload) = call_with(method, params, &Bytes::new(), false, ctx(rules))?;
        assert!(payload.is_empty(), "no payload without binary frames");
        Ok(value)
    }

    fn call_ok(method: &str, params: Value, dir: &Path) -> Value {
        call(method, params, &PathRules::new(dir.to_path_buf()))
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn call_err(method: &str, params: Value, dir: &Path) -> RpcError {
        call(method, params, &PathRules::new(dir.to_path_buf())).expect_err(method)
    }

    #[test]
    fn with_binary_frames_file_data_travels_raw_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let rules = PathRules::new(dir.path().to_path_buf());
        let path = dir.path().join("f").display().to_string();
        let data = Bytes::from_static(&[0, 1, 2, 0xff, b'"', b'\\']);
        // writeRange with its bytes in the payload.
        let params = json!({"path": path, "offset": 0, "dataBase64": {"$bin": [0, data.len()]}});
        call_with(method::FS_WRITE_RANGE, params, &data, true, ctx(&rules)).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), data);
        // readRange answers with a reference and the bytes.
        let params = json!({"path": path, "offset": 1, "length": 0});
        let (value, payload) = call_with(
            method::FS_READ_RANGE,
            params,
            &Bytes::new(),
            true,
            ctx(&rules),
        )
        .unwrap();
        assert_eq!(value["dataBase64"], json!({"$bin": [0, 5]}));
        assert_eq!(payload, data.slice(1..));
        // A reference past the payload is a params error, not a panic.
        let params = json!({"path": path, "offset": 0, "dataBase64": {"$bin": [0, 99]}});
        let err = call_with(method::FS_WRITE_RANGE, params, &data, true, ctx(&rules)).unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS, "{err}");
    }

    /// `fs/writeRange`s of `parts` (offset, bytes), in the given order, into
    /// a staged file in `dir`, as a transfer writes them.
    fn write_ranges(dir: &Path, parts: &[(u64, &[u8])]) -> String {
        let staged = dir.join(".staged").display().to_string();
        let create = json!({"path": staged, "offset": 0, "dataBase64": "", "truncate": true});
        call_ok(method::FS_WRITE_RANGE, create, dir);
        for &(offset, data) in parts {
            let params =
                json!({"path": staged, "offset": offset, "dataBase64": BASE64.encode(data)});
            call_ok(method::FS_WRITE_RANGE, params, dir);
        }
        staged
    }

    fn sha256_hex(data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex_lower(&Sha256::digest(data))
    }

    #[test]
    fn commit_verifies_ranges_written_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let staged = write_ranges(dir.path(), &[(5, b" world"), (0, b"hello")]);
        let sha = sha256_hex(b"hello world");
        let params = json!({"path": staged, "destinationPath": "dest", "sha256": sha});
        let r = call_ok(method::FS_COMMIT_FILE, params, dir.path());
        assert_eq!(r, json!({"sha256": sha, "size": 11}));
        assert_eq!(fs::read(dir.path().join("dest")).unwrap(), b"hello world");
        // The commit took the running hash.
        assert!(STAGED
            .take(
                Path::new(&staged),
                &File::open(dir.path().join("dest")).unwrap()
            )
            .is_none());
    }

    #[test]
    fn commit_notices_a_staged_file_changed_behind_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        let staged = write_ranges(dir.path(), &[(0, b"hello")]);
        // Someone else rewrites the staged file with bytes of the same size.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&staged, b"HELLO").unwrap();
        let sha = sha256_hex(b"hello");
        let params = json!({"path": staged, "destinationPath": "dest", "sha256": sha});
        let err = call_err(method::FS_COMMIT_FILE, params, dir.path());
        assert!(err.message.contains("sha256 mismatch"), "{err}");
        assert!(!dir.path().join("dest").exists());
    }

    fn blake3_hex(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    /// [ext] `fs/writeRange {digest: "blake3"}` keeps a BLAKE3, which
    /// `fs/commitFile {blake3}` verifies (a wrong one removes the staged
    /// file); a commit of the other digest reads the file back.
    #[test]
    fn commit_verifies_a_blake3_kept_by_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |parts: &[(u64, &[u8])], name: &str| {
            let staged = dir.path().join(name).display().to_string();
            let create = json!({"path": staged, "offset": 0, "dataBase64": "",
                                "truncate": true, "digest": "blake3"});
            call_ok(method::FS_WRITE_RANGE, create, dir.path());
            for &(offset, data) in parts {
                let params =
                    json!({"path": staged, "offset": offset, "dataBase64": BASE64.encode(data)});
                call_ok(method::FS_WRITE_RANGE, params, dir.path());
            }
            staged
        };
        let b3 = blake3_hex(b"hello world");
        let staged = write(&[(5, b" world"), (0, b"hello")], ".s1");
        let params = json!({"path": staged, "destinationPath": "dest", "blake3": b3});
        let r = call_ok(method::FS_COMMIT_FILE, params, dir.path());
        assert_eq!(r, json!({"blake3": b3, "size": 11}));
        assert_eq!(fs::read(dir.path().join("dest")).unwrap(), b"hello world");

        let staged = write(&[(0, b"hello world")], ".s2");
        let wrong = blake3_hex(b"hello there");
        let params = json!({"path": staged, "destinationPath": "dest2", "blake3": wrong});
        let err = call_err(method::FS_COMMIT_FILE, params, dir.path());
        assert!(err.message.contains("blake3 mismatch"), "{err}");
        assert!(!dir.path().join("dest2").exists());
        assert!(!Path::new(&staged).exists());

        // Kept as BLAKE3, committed by SHA-256: read back, still verified.
        let staged = write(&[(0, b"hello world")], ".s3");
        let sha = sha256_hex(b"hello world");
        let params = json!({"path": staged, "destinationPath": "dest3", "sha256": sha});
        let r = call_ok(method::FS_COMMIT_FILE, params, dir.path());
        assert_eq!(r, json!({"sha256": sha, "size": 11}));

        // The bytes changed behind the writes: a BLAKE3 commit fails too.
        let staged = write(&[(0, b"hello")], ".s4");
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&staged, b"HELLO").unwrap();
        let params =
            json!({"path": staged, "destinationPath": "dest4", "blake3": blake3_hex(b"hello")});
        let err = call_err(method::FS_COMMIT_FILE, params, dir.path());
        assert!(err.message.contains("blake3 mismatch"), "{err}");
        assert!(!dir.path().join("dest4").exists());

        let params = json!({"path": staged, "offset": 0, "dataBase64": "", "digest": "md5"});
        let err = call_err(method::FS_WRITE_RANGE, params, dir.path());
        assert_eq!(err.code, code::INVALID_PARAMS, "{err}");
    }

    /// [ext] `fs/readRange {hash}` then `fs/readDigest`: the source's
    /// digest of what it read, whatever order the reads ran in.
    #[test]
    fn reads_with_a_hash_give_the_digest_of_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"hello world").unwrap();
        let read = |offset: u64, length: u64, id: &str, algorithm: &str| {
            let params = json!({"path": "f", "offset": offset, "length": length,
                                "hash": {"id": id, "algorithm": algorithm}});
            let r = call_ok(method::FS_READ_RANGE, params, dir.path());
            BASE64.decode(r["dataBase64"].as_str().unwrap()).unwrap()
        };
        assert_eq!(read(5, 6, "t1", "blake3"), b" world");
        assert_eq!(read(0, 5, "t1", "blake3"), b"hello");
        let r = call_ok(method::FS_READ_DIGEST, json!({"id": "t1"}), dir.path());
        assert_eq!(
            r,
            json!({"algorithm": "blake3", "digest": blake3_hex(b"hello world"), "size": 11})
        );
        // Taken: a second ask fails, as does one for reads that left a gap.
        let err = call_err(method::FS_READ_DIGEST, json!({"id": "t1"}), dir.path());
        assert_eq!(err.code, code::INVALID_PARAMS, "{err}");
        read(0, 5, "t2", "sha256");
        read(6, 5, "t2", "sha256");
        let err = call_err(method::FS_READ_DIGEST, json!({"id": "t2"}), dir.path());
        assert_eq!(err.code, code::INVALID_PARAMS, "{err}");
        read(0, 0, "t3", "sha256");
        let r = call_ok(method::FS_READ_DIGEST, json!({"id": "t3"}), dir.path());
        assert_eq!(r["digest"], sha256_hex(b"hello world"));
    }

    /// A root (also the workdir) beside `outside/`, which holds `secret`;
    /// the root holds `dir_out` and `file_out`, links to them, and
    /// `dangling_out`, a link to a missing file outside.
    struct Confined {
        _dir: tempfile::TempDir,
        rules: PathRules,
        root: PathBuf,
        outside: PathBuf,
    }

    fn confined() -> Confined {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dir_out")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("file_out")).unwrap();
        std::os::unix::fs::symlink(outside.join("created"), root.join("dangling_out")).unwrap();
        Confined {
            _dir: dir,
            rules: PathRules {
                workdir: root.clone(),
                root: Some(crate::beneath::Root::open(root.clone()).unwrap()),
            },
            root,
            outside,
        }
    }

    impl Confined {
        fn ok(&self, method: &str, params: Value) -> Value {
            call(method, params, &self.rules).unwrap_or_else(|e| panic!("{method}: {e}"))
        }

        fn denied(&self, method: &str, params: Value) {
            let err = call(method, params.clone(), &self.rules).expect_err(method);
            assert_eq!(err.code, code::POLICY_DENIED, "{method} {params}: {err}");
            assert!(
                err.message.contains(&self.root.display().to_string()),
                "the message names the root: {err}"
            );
        }

        /// What `outside/` holds: escapes must leave it as it was.
        fn outside_listing(&self) -> Vec<(String, Vec<u8>)> {
            let mut all: Vec<_> = fs::read_dir(&self.outside)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let data = fs::read(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), data)
                })
                .collect();
            all.sort();
            all
        }
    }

    #[test]
    fn every_method_is_confined_to_the_root() {
        let c = confined();
        fs::write(c.root.join("inside"), "in").unwrap();
        let before = c.outside_listing();
        let out = c.outside.join("secret").display().to_string();
        let data = b64(b"pwned");
        for (method, params) in [
            (method::FS_READ_FILE, json!({"path": "../outside/secret"})),
            (method::FS_READ_FILE, json!({"path": out})),
            (method::FS_READ_FILE, json!({"path": "file_out"})),
            (method::FS_READ_FILE, json!({"path": "dir_out/secret"})),
            (
                method::FS_READ_RANGE,
                json!({"path": "file_out", "offset": 0, "length": 0}),
            ),
            (method::FS_READ_DIRECTORY, json!({"path": "dir_out"})),
            (method::FS_READ_DIRECTORY, json!({"path": ".."})),
            (method::FS_GET_METADATA, json!({"path": "dir_out/secret"})),
            (
                method::FS_WRITE_FILE,
                json!({"path": "../outside/secret", "dataBase64": data}),
            ),
            (
                method::FS_WRITE_FILE,
                json!({"path": "file_out", "dataBase64": data}),
            ),
            (
                method::FS_WRITE_FILE,
                json!({"path": "dangling_out", "dataBase64": data}),
            ),
            (
                method::FS_WRITE_FILE,
                json!({"path": "dir_out/new", "dataBase64": data, "createParents": true}),
            ),
            (
                method::FS_WRITE_RANGE,
                json!({"path": "dangling_out", "offset": 0, "dataBase64": data}),
            ),
            (
                method::FS_WRITE_RANGE,
                json!({"path": "../outside/new", "offset": 0, "dataBase64": data}),
            ),
            (
                method::FS_CREATE_DIRECTORY,
                json!({"path": "dir_out/newdir"}),
            ),
            (
                method::FS_CREATE_DIRECTORY,
                json!({"path": "../outside/newdir"}),
            ),
            (method::FS_REMOVE, json!({"path": "dir_out/secret"})),
            (method::FS_REMOVE, json!({"path": "../outside"})),
            (method::FS_REMOVE, json!({"path": ""})),
            (
                method::FS_RENAME,
                json!({"sourcePath": "inside", "destinationPath": "../outside/moved"}),
            ),
            (
                method::FS_RENAME,
                json!({"sourcePath": "dir_out/secret", "destinationPath": "stolen"}),
            ),
            (
                method::FS_RENAME,
                json!({"sourcePath": "inside", "destinationPath": "dir_out/moved"}),
            ),
            (
                method::FS_COMMIT_FILE,
                json!({"path": "inside", "destinationPath": "dir_out/committed"}),
            ),
            (
                method::FS_COMMIT_FILE,
                json!({"path": "file_out", "destinationPath": "stolen"}),
            ),
            (
                method::FS_SYMLINK,
                json!({"target": "x", "path": "dir_out/link"}),
            ),
            (
                method::FS_COPY,
                json!({"sourcePath": "dir_out/secret", "destinationPath": "stolen", "recursive": false}),
            ),
            (
                method::FS_COPY,
                json!({"sourcePath": "inside", "destinationPath": "../outside/copied", "recursive": false}),
            ),
            (
                method::FS_COPY,
                json!({"sourcePath": "inside", "destinationPath": "file_out", "recursive": false}),
            ),
            (
                method::FS_COPY,
                json!({"sourcePath": "inside", "destinationPath": "dangling_out", "recursive": false}),
            ),
        ] {
            c.denied(method, params);
        }
        assert_eq!(c.outside_listing(), before, "nothing changed outside");
        assert!(!c.root.join("stolen").exists());
        assert_eq!(fs::read(c.root.join("inside")).unwrap(), b"in");
    }

    #[test]
    fn links_out_of_the_root_are_reported_not_followed() {
        let c = confined();
        let meta = c.ok(method::FS_GET_METADATA, json!({"path": "file_out"}));
        assert_eq!(meta["isSymlink"], true);
        assert_eq!(meta["isFile"], false, "the target outside is not described");
        let meta = c.ok(method::FS_GET_METADATA, json!({"path": "dir_out"}));
        assert_eq!(meta["isDirectory"], false);
        let list = c.ok(method::FS_READ_DIRECTORY, json!({"path": ""}));
        for entry in list["entries"].as_array().unwrap() {
            assert_eq!(entry["isFile"], false, "{entry}");
            assert_eq!(entry["isDirectory"], false, "{entry}");
        }
        // The links themselves live inside: they can be removed (not what
        // they point to).
        c.ok(method::FS_REMOVE, json!({"path": "file_out"}));
        assert!(c.outside.join("secret").exists());
    }

    #[test]
    fn a_tree_copy_does_not_write_through_links_in_an_existing_destination() {
        let c = confined();
        fs::create_dir_all(c.root.join("src")).unwrap();
        fs::write(c.root.join("src/secret"), "overwritten").unwrap();
        fs::create_dir_all(c.root.join("dst")).unwrap();
        std::os::unix::fs::symlink(c.outside.join("secret"), c.root.join("dst/secret")).unwrap();
        c.denied(
            method::FS_COPY,
            json!({"sourcePath": "src", "destinationPath": "dst", "recursive": true}),
        );
        assert_eq!(fs::read(c.outside.join("secret")).unwrap(), b"secret");
    }

    #[test]
    fn inside_the_root_everything_works_through_links_that_stay_inside() {
        let c = confined();
        fs::create_dir_all(c.root.join("real")).unwrap();
        std::os::unix::fs::symlink("real", c.root.join("alias")).unwrap();
        c.ok(
            method::FS_WRITE_FILE,
            json!({"path": "alias/f", "dataBase64": b64(b"x"), "createParents": true}),
        );
        assert_eq!(fs::read(c.root.join("real/f")).unwrap(), b"x");
        let read = c.ok(method::FS_READ_FILE, json!({"path": "alias/f"}));
        assert_eq!(read["dataBase64"], b64(b"x"));
        c.ok(
            method::FS_RENAME,
            json!({"sourcePath": "alias/f", "destinationPath": "g"}),
        );
        c.ok(
            method::FS_COPY,
            json!({"sourcePath": "real", "destinationPath": "copy", "recursive": true}),
        );
        assert!(c.root.join("copy").is_dir());
        let abs = c.root.join("g").display().to_string();
        let read = c.ok(method::FS_READ_FILE, json!({"path": abs}));
        assert_eq!(read["dataBase64"], b64(b"x"));
    }

    fn b64(data: &[u8]) -> String {
        BASE64.encode(data)
    }

    #[test]
    fn write_then_read_whole_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        call_ok(
            method::FS_WRITE_FILE,
            json!({"path": "a.txt", "dataBase64": b64(b"hello world")}),
            d,
        );
        let read = call_ok(method::FS_READ_FILE, json!({"path": "a.txt"}), d);
        assert_eq!(read["dataBase64"], b64(b"hello world"));

        let range = |offset: u64, length: u64| {
            call_ok(
                method::FS_READ_RANGE,
                json!({"path": "a.txt", "offset": offset, "length": length}),
                d,
            )
        };
        assert_eq!(range(6, 3)["dataBase64"], b64(b"wor"));
        assert_eq!(
            range(6, 0)["dataBase64"],
            b64(b"world"),
            "0 reads to the end"
        );
        assert_eq!(range(6, 100)["dataBase64"], b64(b"world"));
        assert_eq!(range(50, 5)["dataBase64"], "", "beyond EOF reads nothing");
        assert_eq!(range(0, 1)["size"], 11);
    }

    #[test]
    fn uris_work_like_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("with space.txt");
        let uri = execgate_protocol::uri::path_to_uri(&file).unwrap();
        call_ok(
            method::FS_WRITE_FILE,
            json!({"path": uri, "dataBase64": b64(b"x")}),
            Path::new("/"),
        );
        assert_eq!(fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn write_needs_an_existing_parent_unless_asked_to_create_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = call_err(
            method::FS_WRITE_FILE,
            json!({"path": "new/deep/f", "dataBase64": b64(b"1")}),
            d,
        );
        assert_eq!(err.code, code::NOT_FOUND);
        assert!(err.message.contains("new/deep"), "{}", err.message);
        call_ok(
            method::FS_WRITE_FILE,
            json!({"path": "new/deep/f", "dataBase64": b64(b"1"), "createParents": true}),
            d,
        );
        assert_eq!(fs::read(d.join("new/deep/f")).unwrap(), b"1");
    }

    #[test]
    fn write_replaces_atomically_keeping_permissions_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let script = d.join("run.sh");
        fs::write(&script, "old").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        call_ok(
            method::FS_WRITE_FILE,
            json!({"path": "run.sh", "dataBase64": b64(b"new")}),
            d,
        );
        assert_eq!(fs::read(&script).unwrap(), b"new");
        let mode = fs::metadata(&script).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let names: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["run.sh"]);
    }

    #[test]
    fn write_through_a_symlink_updates_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("real"), "old").unwrap();
        std::os::unix::fs::symlink("real", d.join("link")).unwrap();
        call_ok(
            method::FS_WRITE_FILE,
            json!({"path": "link", "dataBase64": b64(b"new")}),
            d,
        );
        assert!(fs::symlink_metadata(d.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(d.join("real")).unwrap(), b"new");
    }

    #[test]
    fn bad_params_and_bad_base64() {
        let d = Path::new("/tmp");
        let err = call_err(
            method::FS_WRITE_FILE,
            json!({"path": "x", "dataBase64": "!!"}),
            d,
        );
        assert_eq!(err.code, code::INVALID_PARAMS);
        let err = call_err(method::FS_READ_FILE, json!({"nopath": 1}), d);
        assert_eq!(err.code, code::INVALID_PARAMS);
        assert!(err.message.contains("path"), "{}", err.message);
        let err = call_err(method::FS_READ_FILE, json!({"path": "http://x/y"}), d);
        assert_eq!(err.code, code::INVALID_PARAMS);
        let err = call_err("fs/frobnicate", json!({}), d);
        assert_eq!(err.code, code::METHOD_NOT_FOUND);
    }

    #[test]
    fn missing_paths_are_not_found_and_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (method, params) in [
            (method::FS_READ_FILE, json!({"path": "nope"})),
            (
                method::FS_READ_RANGE,
                json!({"path": "nope", "offset": 0, "length": 0}),
            ),
            (method::FS_GET_METADATA, json!({"path": "nope"})),
            (method::FS_READ_DIRECTORY, json!({"path": "nope"})),
            (method::FS_REMOVE, json!({"path": "nope", "force": false})),
            (
                method::FS_COPY,
                json!({"sourcePath": "nope", "destinationPath": "x", "recursive": false}),
            ),
            (
                method::FS_CREATE_DIRECTORY,
                json!({"path": "a/b", "recursive": false}),
            ),
        ] {
            let err = call_err(method, params, d);
            assert_eq!(err.code, code::NOT_FOUND, "{method}: {err}");
            assert!(err.message.contains(d.to_str().unwrap()), "{method}: {err}");
        }
    }

    #[test]
    fn other_io_errors_are_internal() {
        let dir = tempfile::tempdir().unwrap();
        let err = call_err(
            method::FS_CREATE_DIRECTORY,
            json!({"path": ".", "recursive": false}),
            dir.path(),
        );
        assert_eq!(err.code, code::INTERNAL_ERROR, "already exists");
    }

    #[test]
    fn reading_what_is_not_a_regular_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        for (method, params, what) in [
            (method::FS_READ_FILE, json!({"path": "fifo"}), "fifo"),
            (
                method::FS_READ_RANGE,
                json!({"path": "fifo", "offset": 0, "length": 10}),
                "fifo",
            ),
            (method::FS_READ_FILE, json!({"path": "."}), "directory"),
            (
                method::FS_READ_RANGE,
                json!({"path": "/dev/null", "offset": 0, "length": 10}),
                "device",
            ),
        ] {
            let err =
                call(method, params, &PathRules::new(dir.path().to_path_buf())).expect_err(what);
            assert_eq!(err.code, code::INVALID_PARAMS, "{method} {what}: {err}");
            assert!(err.message.contains("not a regular file"), "{err}");
        }
        // Before the fix, opening the FIFO blocked until a writer came.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn directories_metadata_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        call_ok(method::FS_CREATE_DIRECTORY, json!({"path": "x/y/z"}), d);
        fs::write(d.join("x/file"), "12345").unwrap();
        std::os::unix::fs::symlink("file", d.join("x/link")).unwrap();
        std::os::unix::fs::symlink("missing", d.join("x/dangling")).unwrap();

        let meta = call_ok(method::FS_GET_METADATA, json!({"path": "x/link"}), d);
        assert_eq!(meta["isSymlink"], true);
        assert_eq!(meta["isFile"], true);
        assert_eq!(meta["size"], 5);
        assert!(meta["modifiedAtMs"].as_i64().unwrap() > 1_600_000_000_000);
        let meta = call_ok(method::FS_GET_METADATA, json!({"path": "x/y"}), d);
        assert_eq!(meta["isDirectory"], true);
        assert_eq!(meta["isSymlink"], false);
        let meta = call_ok(method::FS_GET_METADATA, json!({"path": "x/dangling"}), d);
        assert_eq!(meta["isSymlink"], true);

        let list = call_ok(method::FS_READ_DIRECTORY, json!({"path": "x"}), d);
        assert_eq!(
            list,
            json!({"entries": [
                {"fileName": "dangling", "isDirectory": false, "isFile": false},
                {"fileName": "file", "isDirectory": false, "isFile": true},
                {"fileName": "link", "isDirectory": false, "isFile": true},
                {"fileName": "y", "isDirectory": true, "isFile": false},
            ]})
        );
    }

    #[test]
    fn remove_files_directories_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("tree/sub")).unwrap();
        fs::write(d.join("tree/sub/f"), "").unwrap();
        fs::write(d.join("target"), "keep").unwrap();
        std::os::unix::fs::symlink(d.join("target"), d.join("link")).unwrap();

        let err = call_err(
            method::FS_REMOVE,
            json!({"path": "tree", "recursive": false}),
            d,
        );
        assert_eq!(err.code, code::INTERNAL_ERROR, "not empty");
        call_ok(method::FS_REMOVE, json!({"path": "tree"}), d);
        assert!(!d.join("tree").exists());
        call_ok(method::FS_REMOVE, json!({"path": "link"}), d);
        assert!(
            d.join("target").exists(),
            "a link is removed, not its target"
        );
        call_ok(method::FS_REMOVE, json!({"path": "never-existed"}), d);
        call_ok(
            method::FS_REMOVE,
            json!({"path": "never-existed", "force": true}),
            d,
        );
    }

    #[test]
    fn copy_files_and_trees() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("src/inner")).unwrap();
        fs::write(d.join("src/a"), "A").unwrap();
        fs::write(d.join("src/inner/b"), "B").unwrap();
        std::os::unix::fs::symlink("a", d.join("src/link")).unwrap();

        call_ok(
            method::FS_COPY,
            json!({"sourcePath": "src/a", "destinationPath": "a2", "recursive": false}),
            d,
        );
        assert_eq!(fs::read(d.join("a2")).unwrap(), b"A");

        let err = call_err(
            method::FS_COPY,
            json!({"sourcePath": "src", "destinationPath": "dst", "recursive": false}),
            d,
        );
        assert_eq!(err.code, code::INVALID_PARAMS);

        call_ok(
            method::FS_COPY,
            json!({"sourcePath": "src", "destinationPath": "dst", "recursive": true}),
            d,
        );
        assert_eq!(fs::read(d.join("dst/inner/b")).unwrap(), b"B");
        assert_eq!(
            fs::read_link(d.join("dst/link")).unwrap(),
            PathBuf::from("a")
        );

        let err = call_err(
            method::FS_COPY,
            json!({"sourcePath": "src", "destinationPath": "src/inner/again", "recursive": true}),
            d,
        );
        assert_eq!(err.code, code::INVALID_PARAMS, "copy into itself");
    }
}
