//! Streaming file transfer through the gateway, shared by `copy_path` and
//! the `/files` routes.
//!
//! Bytes move in chunks of [`CHUNK`] with [`fs/readRange`] on the source and
//! [`fs/writeRange`] into a staged temporary beside the destination; the
//! next chunk is read while the current one is written. What was read is
//! hashed, and `fs/commitFile` checks that hash on the destination's disk
//! before renaming the file into place. So gateway memory stays at a few
//! chunks whatever the file size, and a destination path only ever holds a
//! complete, verified file.
//!
//! Who hashes ([`Verify`]): a source that announces [ext] `digests` hashes
//! what it read (`fs/readRange {hash}`, then `fs/readDigest`), with BLAKE3
//! when the destination verifies BLAKE3 too, else with SHA-256; the gateway
//! then relays the bytes without hashing them. Otherwise (a codex source, an
//! older executor, a `PUT` from a client) the gateway hashes SHA-256 of what
//! it relays, as before. Either way the destination's file is checked
//! against a digest of the bytes as the source gave them.
//!
//! These are [ext] methods. An executor without them (a stock codex) is
//! served by [`fallback`], with ordinary commands through `process/start`:
//! slower, but the same guarantees (verified hash, staged then renamed).
//!
//! [`fs/readRange`]: execgate_protocol::exec::method::FS_READ_RANGE
//! [`fs/writeRange`]: execgate_protocol::exec::method::FS_WRITE_RANGE

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::exec::{
    digest, method, CommitFileParams, CommitFileResult, CreateDirectoryParams, DirEntry, Empty,
    ExtCapabilities, Metadata, PathParams, ReadDigestParams, ReadDigestResult, ReadDirectoryResult,
    ReadHash, ReadRangeParams, ReadRangeResult, RemoveParams, RenameParams, SymlinkParams,
    WriteRangeParams,
};
use execgate_protocol::jsonrpc::code as rpc_code;
use execgate_protocol::uri::path_to_uri;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::link::{Link, LinkError};
use crate::ops::Error;
use crate::secret::random_id;

mod fallback;

/// Bytes per readRange/writeRange request.
pub const CHUNK: u64 = 1024 * 1024;
/// Requests in flight per direction. Positioned reads and writes do not
/// depend on each other, so several can overlap their round trips; this
/// bounds gateway memory at a few chunks (raw + base64) per transfer.
pub const IN_FLIGHT: usize = 2;
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a transfer stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The request itself is wrong (missing source, existing destination…):
    /// the tool reports it as its own failure.
    #[error("{0}")]
    Refused(String),
    /// An executor cannot take part.
    #[error("{0}")]
    Api(Error),
}

impl From<Error> for TransferError {
    fn from(e: Error) -> Self {
        TransferError::Api(e)
    }
}

impl From<TransferError> for Error {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Refused(m) => Error::bad_request(m),
            TransferError::Api(e) => e,
        }
    }
}

/// Maps a link error: the executor's refusal becomes `Refused` (naming
/// `path`), a dead link stays an API error (503).
pub(crate) fn on<'a>(path: &'a Path, what: &str) -> impl Fn(LinkError) -> TransferError + 'a {
    let what = what.to_string();
    move |e| match e {
        LinkError::Rpc { error, .. } if error.code == rpc_code::NOT_FOUND => {
            TransferError::Refused(format!("{}: no such file or directory", path.display()))
        }
        LinkError::Rpc { error, .. } => {
            TransferError::Refused(format!("{what} {}: {}", path.display(), error.message))
        }
        other => TransferError::Api(other.into()),
    }
}

pub fn uri(path: &Path) -> Result<String, TransferError> {
    path_to_uri(path).ok_or_else(|| {
        TransferError::Refused(format!("{} is not an absolute path", path.display()))
    })
}

/// Whether `link` serves the streaming extensions; otherwise the
/// [`fallback`] commands are used.
fn has_ext(link: &Link) -> bool {
    let ext = link.ext();
    ext.read_range && ext.file_transfer && ext.rename
}

/// Who hashes a copied file's bytes, and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The gateway, SHA-256 of what it relays: the source announced no
    /// `digests` (codex, an older executor).
    Gateway,
    /// The source, of what it read (`fs/readRange {hash}`), with this digest.
    Source(&'static str),
}

/// How a copy from `src` to `dst` is verified: BLAKE3 when both ends are
/// executors that announce it (and the destination serves `fileTransfer`,
/// so that its commit can take it), else SHA-256 by the source when it can,
/// else by the gateway. A codex destination checks SHA-256 with
/// `sha256sum`, so it never gets anything else.
pub fn verify_plan(src: &ExtCapabilities, dst: &ExtCapabilities) -> Verify {
    let has = |ext: &ExtCapabilities, d: &str| ext.digests.iter().any(|x| x == d);
    let streams = |ext: &ExtCapabilities| ext.read_range && ext.file_transfer && ext.rename;
    if !streams(src) {
        return Verify::Gateway;
    }
    if has(src, digest::BLAKE3) && has(dst, digest::BLAKE3) && streams(dst) {
        Verify::Source(digest::BLAKE3)
    } else if has(src, digest::SHA256) {
        Verify::Source(digest::SHA256)
    } else {
        Verify::Gateway
    }
}

/// `fs/getMetadata` of a path, not following a final symlink for
/// `is_symlink`/`symlink_target`/`mode`.
pub async fn stat(link: &Link, path: &Path) -> Result<Metadata, TransferError> {
    link.request(
        method::FS_GET_METADATA,
        &PathParams { path: uri(path)? },
        RPC_TIMEOUT,
    )
    .await
    .map_err(on(path, "inspecting"))
}

/// Whether `path` exists on `link`.
pub async fn exists(link: &Link, path: &Path) -> Result<bool, TransferError> {
    match stat(link, path).await {
        Ok(_) => Ok(true),
        Err(TransferError::Refused(m)) if m.ends_with("no such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads `[offset, offset+len)` of a file; fewer bytes at its end (and, on
/// an executor without the extensions, at most [`fallback::PIECE`]).
pub async fn read_range(
    link: &Arc<Link>,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Bytes, TransferError> {
    read_range_hashed(link, path, offset, len, None).await
}

/// [`read_range`], feeding the source's running hash `hash` when given
/// (only for a source whose `digests` has its algorithm: [`verify_plan`]).
async fn read_range_hashed(
    link: &Arc<Link>,
    path: &Path,
    offset: u64,
    len: u64,
    hash: Option<ReadHash>,
) -> Result<Bytes, TransferError> {
    if !has_ext(link) {
        return fallback::read_range(link, path, offset, len).await;
    }
    let r: ReadRangeResult = link
        .request(
            method::FS_READ_RANGE,
            &ReadRangeParams {
                path: uri(path)?,
                offset,
                length: len,
                hash,
            },
            RPC_TIMEOUT,
        )
        .await
        .map_err(on(path, "reading"))?;
    r.data_base64
        .to_bytes()
        .map_err(|e| TransferError::Api(Error::internal(format!("executor sent bad base64: {e}"))))
}

/// Where a file is written before it is verified and renamed into place:
/// a hidden sibling, so the rename stays within one file system.
pub fn staging_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    dest.with_file_name(format!(".{name}.execgate-part-{}", random_id("", 6)))
}

/// A file being written in order, chunk by chunk, to a staged temporary.
pub struct Sink {
    link: Arc<Link>,
    /// The executor serves writeRange/commitFile (else [`fallback`]).
    ext: bool,
    staged: PathBuf,
    dest: PathBuf,
    offset: u64,
    /// Over the bytes in order, whatever order the writes complete in;
    /// `None` when the source hashes ([`Verify::Source`]).
    hasher: Option<Sha256>,
    /// The running hash the destination keeps (`fs/writeRange {digest}`);
    /// `None`: SHA-256, which every version keeps.
    digest: Option<&'static str>,
    /// Writes sent and not yet answered, at most [`IN_FLIGHT`]. Each is a
    /// task of its own, so that it goes out at once rather than when this
    /// sink is next awaited (which, as futures polled only from here, they
    /// did one read round trip late).
    pending: FuturesUnordered<tokio::task::JoinHandle<Result<(), TransferError>>>,
}

impl Sink {
    /// Starts writing `dest` (creating its parent when `create_parents`).
    pub async fn create(
        link: Arc<Link>,
        dest: &Path,
        create_parents: bool,
    ) -> Result<Sink, TransferError> {
        Sink::create_verified(link, dest, create_parents, Verify::Gateway).await
    }

    /// As [`Sink::create`]; with [`Verify::Source`] the sink does not hash,
    /// and [`Sink::commit_with`] is given the source's digest.
    pub async fn create_verified(
        link: Arc<Link>,
        dest: &Path,
        create_parents: bool,
        verify: Verify,
    ) -> Result<Sink, TransferError> {
        if create_parents {
            if let Some(parent) = dest.parent() {
                link.request::<_, Empty>(
                    method::FS_CREATE_DIRECTORY,
                    &CreateDirectoryParams {
                        path: uri(parent)?,
                        recursive: Some(true),
                        mode: None,
                    },
                    RPC_TIMEOUT,
                )
                .await
                .map_err(on(parent, "creating"))?;
            }
        }
        let staged = staging_path(dest);
        let ext = has_ext(&link);
        let mut sink = Sink {
            link,
            ext,
            staged,
            dest: dest.to_owned(),
            offset: 0,
            hasher: (verify == Verify::Gateway).then(Sha256::new),
            digest: match verify {
                Verify::Source(d) if ext && d != digest::SHA256 => Some(d),
                _ => None,
            },
            pending: FuturesUnordered::new(),
        };
        // Create (and truncate) the staged file now, so an empty file works.
        if ext {
            sink.write_at(0, &[], true).await?;
        } else {
            fallback::create(&sink.link, &sink.staged).await?;
        }
        Ok(sink)
    }

    async fn write_at(
        &mut self,
        offset: u64,
        data: &[u8],
        truncate: bool,
    ) -> Result<(), TransferError> {
        self.link
            .request::<_, Empty>(
                method::FS_WRITE_RANGE,
                &WriteRangeParams {
                    path: uri(&self.staged)?,
                    offset,
                    data_base64: Blob::from(data),
                    truncate,
                    digest: self.digest.map(str::to_owned),
                },
                RPC_TIMEOUT,
            )
            .await
            .map(|_| ())
            .map_err(on(&self.dest, "writing"))
    }

    /// Queues `data` after what was written so far. With the extensions,
    /// up to [`IN_FLIGHT`] positioned writes overlap; [`Sink::commit`] waits
    /// for them all.
    pub async fn write(&mut self, data: Bytes) -> Result<(), TransferError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.ext {
            while self.pending.len() >= IN_FLIGHT {
                if let Some(r) = self.pending.next().await {
                    joined(r)?;
                }
            }
            let link = self.link.clone();
            let params = WriteRangeParams {
                path: uri(&self.staged)?,
                offset: self.offset,
                data_base64: Blob::from(data.clone()),
                truncate: false,
                digest: None,
            };
            let dest = self.dest.clone();
            self.pending.push(tokio::spawn(async move {
                link.request::<_, Empty>(method::FS_WRITE_RANGE, &params, RPC_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(on(&dest, "writing"))
            }));
        } else {
            fallback::append(&self.link, &self.staged, &data).await?;
        }
        // While the write travels.
        if let Some(h) = &mut self.hasher {
            h.update(&data);
        }
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Waits for every queued write.
    async fn flush(&mut self) -> Result<(), TransferError> {
        while let Some(r) = self.pending.next().await {
            joined(r)?;
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.offset
    }

    /// Verifies the staged file against what was sent, sets `mode`, and
    /// renames it into place. Returns the SHA-256.
    pub async fn commit(self, mode: Option<u32>) -> Result<CommitFileResult, TransferError> {
        self.commit_with(mode, None).await
    }

    /// [`Sink::commit`], verifying `given` (algorithm, hex digest) instead
    /// of the sink's own SHA-256 (which it kept only with
    /// [`Verify::Gateway`]).
    pub async fn commit_with(
        mut self,
        mode: Option<u32>,
        given: Option<(&'static str, String)>,
    ) -> Result<CommitFileResult, TransferError> {
        if let Err(e) = self.flush().await {
            self.abort().await;
            return Err(e);
        }
        let (algorithm, expected) = match (given, &self.hasher) {
            (Some(g), _) => g,
            (None, Some(h)) => (digest::SHA256, hex::encode(h.clone().finalize())),
            (None, None) => {
                self.abort().await;
                return Err(TransferError::Api(Error::internal(
                    "a transfer verified by its source was committed without its digest",
                )));
            }
        };
        let blake3 = algorithm == digest::BLAKE3;
        if blake3 && (!self.ext || self.digest != Some(digest::BLAKE3)) {
            self.abort().await;
            return Err(TransferError::Api(Error::internal(
                "a BLAKE3 digest for a destination that was not asked to keep one",
            )));
        }
        let sha256 = expected.clone();
        if !self.ext {
            return match fallback::commit(&self.link, &self.staged, &self.dest, &sha256, mode).await
            {
                Ok(()) => Ok(CommitFileResult {
                    sha256,
                    size: self.offset,
                    blake3: None,
                }),
                Err(e) => {
                    self.abort().await;
                    Err(e)
                }
            };
        }
        let r: Result<CommitFileResult, _> = self
            .link
            .request(
                method::FS_COMMIT_FILE,
                &CommitFileParams {
                    path: uri(&self.staged)?,
                    destination_path: uri(&self.dest)?,
                    sha256: (!blake3).then_some(sha256),
                    mode,
                    blake3: blake3.then_some(expected),
                },
                RPC_TIMEOUT,
            )
            .await;
        match r {
            Ok(r) if r.size == self.offset => Ok(r),
            Ok(r) => Err(TransferError::Refused(format!(
                "{}: wrote {} bytes but {} arrived",
                self.dest.display(),
                self.offset,
                r.size
            ))),
            Err(e) => {
                self.abort().await;
                Err(on(&self.dest, "committing")(e))
            }
        }
    }

    /// Removes the staged file (best effort; the link may be gone).
    pub async fn abort(&mut self) {
        // Writes already sent land first, so none can follow the removal.
        while self.pending.next().await.is_some() {}
        remove(&self.link, &self.staged).await;
    }
}

/// A write task's result; a task that panicked or was cancelled is an
/// internal error.
fn joined(
    r: Result<Result<(), TransferError>, tokio::task::JoinError>,
) -> Result<(), TransferError> {
    r.unwrap_or_else(|e| {
        Err(TransferError::Api(Error::internal(format!(
            "a write task failed: {e}"
        ))))
    })
}

/// Best-effort removal (recursive).
pub async fn remove(link: &Link, path: &Path) {
    if let Ok(u) = uri(path) {
        let _ = link
            .request::<_, Empty>(
                method::FS_REMOVE,
                &RemoveParams {
                    path: u,
                    recursive: Some(true),
                    force: Some(true),
                },
                RPC_TIMEOUT,
            )
            .await;
    }
}

/// What [`copy_file`] copied: its size and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// `sha256` or `blake3` ([`Verify`]).
    pub algorithm: &'static str,
    /// Lowercase hex.
    pub digest: String,
}

/// Copies one regular file, chunk by chunk, reading the next chunk while
/// the current one is written.
pub async fn copy_file(
    src: &Arc<Link>,
    src_path: &Path,
    size: u64,
    dst: &Arc<Link>,
    dst_path: &Path,
    mode: Option<u32>,
) -> Result<Copied, TransferError> {
    let mode = match mode {
        Some(m) => Some(m),
        None if !has_ext(src) => fallback::mode(src, src_path).await?,
        None => None,
    };
    // An empty file has no read to hash: the gateway hashes nothing then.
    let verify = match size {
        0 => Verify::Gateway,
        _ => verify_plan(&src.ext(), &dst.ext()),
    };
    let hash = match verify {
        Verify::Source(algorithm) => Some(ReadHash {
            id: random_id("rh_", 12),
            algorithm: algorithm.to_owned(),
        }),
        Verify::Gateway => None,
    };
    let mut sink = Sink::create_verified(dst.clone(), dst_path, false, verify).await?;
    let result = async {
        // Reads overlap too, but are consumed in order.
        let mut reads = FuturesOrdered::new();
        let mut next_read = 0u64;
        let mut expected = 0u64;
        loop {
            while reads.len() < IN_FLIGHT && next_read < size {
                let len = CHUNK.min(size - next_read);
                let (src, path, at) = (src.clone(), src_path.to_owned(), next_read);
                let hash = hash.clone();
                reads.push_back(async move {
                    read_range_hashed(&src, &path, at, len, hash)
                        .await
                        .map(|b| (at, len, b))
                });
                next_read += len;
            }
            let Some(r) = reads.next().await else { break };
            let (at, len, chunk) = r?;
            if at != expected || chunk.len() as u64 > len {
                return Err(TransferError::Refused(format!(
                    "{}: the file changed during the copy",
                    src_path.display()
                )));
            }
            if (chunk.len() as u64) < len {
                // A short read (the fallback reads smaller pieces, or the file
                // shrank): read the rest of this range next, in order.
                let rest = at + chunk.len() as u64;
                if chunk.is_empty() {
                    return Err(TransferError::Refused(format!(
                        "{}: the file shrank during the copy",
                        src_path.display()
                    )));
                }
                sink.write(chunk).await?;
                expected = rest;
                // Drop the reads queued after this one and re-queue from here.
                reads = FuturesOrdered::new();
                next_read = rest;
                continue;
            }
            sink.write(chunk).await?;
            expected += len;
        }
        if sink.written() != size {
            return Err(TransferError::Refused(format!(
                "{}: the file changed during the copy ({} bytes expected, {} read)",
                src_path.display(),
                size,
                sink.written()
            )));
        }
        // The source's digest of what it read, which the destination's
        // file must match.
        let Some(hash) = &hash else { return Ok(None) };
        let d: ReadDigestResult = src
            .request(
                method::FS_READ_DIGEST,
                &ReadDigestParams {
                    id: hash.id.clone(),
                },
                RPC_TIMEOUT,
            )
            .await
            .map_err(on(src_path, "hashing what was read of"))?;
        if d.algorithm != hash.algorithm || d.size != size {
            return Err(TransferError::Refused(format!(
                "{}: the source hashed {} bytes with {}, not the {size} read with {}",
                src_path.display(),
                d.size,
                d.algorithm,
                hash.algorithm
            )));
        }
        Ok(Some(d.digest))
    }
    .await;
    match result {
        Ok(given) => {
            let given = match verify {
                Verify::Source(algorithm) => given.map(|d| (algorithm, d)),
                Verify::Gateway => None,
            };
            let r = sink.commit_with(mode, given).await?;
            let (algorithm, digest) = match r.blake3 {
                Some(b) => (digest::BLAKE3, b),
                None => (digest::SHA256, r.sha256),
            };
            Ok(Copied {
                bytes: r.size,
                algorithm,
                digest,
            })
        }
        Err(e) => {
            sink.abort().await;
            Err(e)
        }
    }
}

/// Totals of a tree copy.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeStats {
    pub bytes: u64,
    pub files: u64,
}

/// Copies a directory tree: directories (with their modes), regular files
/// and symlinks (not followed). `dst_root` must not exist yet.
pub async fn copy_tree(
    src: &Arc<Link>,
    src_root: &Path,
    dst: &Arc<Link>,
    dst_root: &Path,
) -> Result<TreeStats, TransferError> {
    if has_ext(src) && has_ext(dst) {
        walk_copy(src, src_root, dst, dst_root).await
    } else {
        tar_copy(src, src_root, dst, dst_root).await
    }
}

/// The tree as one tar file: packed on the source, copied like any file,
/// unpacked into `dst_root` on the destination.
async fn tar_copy(
    src: &Arc<Link>,
    src_root: &Path,
    dst: &Arc<Link>,
    dst_root: &Path,
) -> Result<TreeStats, TransferError> {
    let stats = count_tree(src, src_root).await?;
    let src_archive = staging_path(&src_root.with_extension("tar"));
    let dst_archive = staging_path(&dst_root.with_extension("tar"));
    let copied = async {
        fallback::pack(src, src_root, &src_archive).await?;
        let size = stat(src, &src_archive).await?.size;
        copy_file(src, &src_archive, size, dst, &dst_archive, None).await?;
        fallback::unpack(dst, &dst_archive, dst_root).await
    }
    .await;
    remove(src, &src_archive).await;
    if copied.is_err() {
        remove(dst, &dst_archive).await;
    }
    copied.map(|_| stats)
}

/// Regular files and their bytes under `root` (symlinks not followed).
async fn count_tree(link: &Arc<Link>, root: &Path) -> Result<TreeStats, TransferError> {
    let mut stats = TreeStats::default();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let listing: ReadDirectoryResult = link
            .request(
                method::FS_READ_DIRECTORY,
                &PathParams { path: uri(&dir)? },
                RPC_TIMEOUT,
            )
            .await
            .map_err(on(&dir, "listing"))?;
        for entry in listing.entries {
            let p = dir.join(&entry.file_name);
            let meta = stat(link, &p).await?;
            if meta.is_symlink {
                continue;
            }
            if meta.is_directory {
                stack.push(p);
            } else if meta.is_file {
                stats.files += 1;
                stats.bytes += meta.size;
            }
        }
    }
    Ok(stats)
}

/// File by file, with the extensions on both sides.
async fn walk_copy(
    src: &Arc<Link>,
    src_root: &Path,
    dst: &Arc<Link>,
    dst_root: &Path,
) -> Result<TreeStats, TransferError> {
    let mut stats = TreeStats::default();
    // Iterative depth-first walk: (source dir, destination dir, mode).
    let root_meta = stat(src, src_root).await?;
    let mut stack = vec![(src_root.to_owned(), dst_root.to_owned(), root_meta.mode)];
    while let Some((sdir, ddir, mode)) = stack.pop() {
        dst.request::<_, Empty>(
            method::FS_CREATE_DIRECTORY,
            &CreateDirectoryParams {
                path: uri(&ddir)?,
                recursive: Some(false),
                mode,
            },
            RPC_TIMEOUT,
        )
        .await
        .map_err(on(&ddir, "creating"))?;
        let listing: ReadDirectoryResult = src
            .request(
                method::FS_READ_DIRECTORY,
                &PathParams { path: uri(&sdir)? },
                RPC_TIMEOUT,
            )
            .await
            .map_err(on(&sdir, "listing"))?;
        let mut entries: Vec<DirEntry> = listing.entries;
        entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        for entry in entries {
            let s = sdir.join(&entry.file_name);
            let d = ddir.join(&entry.file_name);
            let meta = stat(src, &s).await?;
            if meta.is_symlink {
                let target = meta.symlink_target.clone().ok_or_else(|| {
                    TransferError::Refused(format!("{}: cannot read the symlink", s.display()))
                })?;
                dst.request::<_, Empty>(
                    method::FS_SYMLINK,
                    &SymlinkParams {
                        target,
                        path: uri(&d)?,
                    },
                    RPC_TIMEOUT,
                )
                .await
                .map_err(on(&d, "linking"))?;
            } else if meta.is_directory {
                stack.push((s, d, meta.mode));
            } else if meta.is_file {
                let copied = copy_file(src, &s, meta.size, dst, &d, meta.mode).await?;
                stats.bytes += copied.bytes;
                stats.files += 1;
            }
            // Sockets, fifos and devices are skipped: they have no bytes to copy.
        }
    }
    Ok(stats)
}

/// Renames `from` to `to` on one executor.
pub async fn rename(link: &Arc<Link>, from: &Path, to: &Path) -> Result<(), TransferError> {
    if !has_ext(link) {
        return fallback::rename(link, from, to).await;
    }
    link.request::<_, Empty>(
        method::FS_RENAME,
        &RenameParams {
            source_path: uri(from)?,
            destination_path: uri(to)?,
        },
        RPC_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(on(to, "renaming into"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> ExtCapabilities {
        ExtCapabilities {
            read_range: true,
            file_transfer: true,
            rename: true,
            digests: vec!["sha256".into(), "blake3".into()],
            ..Default::default()
        }
    }

    /// An execgate executor from before `digests`.
    fn older() -> ExtCapabilities {
        ExtCapabilities {
            digests: vec![],
            ..ours()
        }
    }

    /// A stock codex announces no extension at all.
    fn codex() -> ExtCapabilities {
        ExtCapabilities::default()
    }

    #[test]
    fn blake3_only_between_two_executors_that_announce_it() {
        assert_eq!(verify_plan(&ours(), &ours()), Verify::Source("blake3"));
        // A destination that cannot take a BLAKE3 commit: the source
        // still hashes, with SHA-256, which codex checks with sha256sum.
        assert_eq!(verify_plan(&ours(), &older()), Verify::Source("sha256"));
        assert_eq!(verify_plan(&ours(), &codex()), Verify::Source("sha256"));
        // A source that cannot hash its reads: the gateway hashes SHA-256.
        assert_eq!(verify_plan(&older(), &ours()), Verify::Gateway);
        assert_eq!(verify_plan(&codex(), &ours()), Verify::Gateway);
        assert_eq!(verify_plan(&codex(), &codex()), Verify::Gateway);
        // Only SHA-256 announced: no BLAKE3 even toward a new destination.
        let sha_only = ExtCapabilities {
            digests: vec!["sha256".into()],
            ..ours()
        };
        assert_eq!(verify_plan(&sha_only, &ours()), Verify::Source("sha256"));
        assert_eq!(verify_plan(&ours(), &sha_only), Verify::Source("sha256"));
    }

    /// What an executor announces reaches the plan through the wire form:
    /// an older executor's `execgate` object (no `digests`) parses to none.
    #[test]
    fn an_announcement_without_digests_means_none() {
        let old: ExtCapabilities = serde_json::from_value(serde_json::json!({
            "readRange": true, "fileTransfer": true, "rename": true, "binaryFrames": true
        }))
        .unwrap();
        assert!(old.digests.is_empty());
        assert_eq!(verify_plan(&old, &ours()), Verify::Gateway);
        let new: ExtCapabilities = serde_json::from_value(serde_json::json!({
            "readRange": true, "fileTransfer": true, "rename": true,
            "digests": ["sha256", "blake3"]
        }))
        .unwrap();
        assert_eq!(verify_plan(&new, &new), Verify::Source("blake3"));
    }
}
