//! Raw file bytes to and from a caller, of any size, with constant gateway
//! memory: what `GET` and `PUT /envs/{name}/files` do, without their HTTP
//! (ranges, headers and bodies are `crate::http::files`'). Both go through
//! [`crate::ops::transfer`], which falls back to ordinary commands on an
//! executor without execgate's file extensions (a stock codex).
//!
//! - A download opens the file ([`open_download`]: the environment, its
//!   policy, a regular file) and a [`ReadAhead`] task then reads `[start,
//!   end)` ahead of the caller by one chunk, into a channel.
//! - An upload ([`upload`]) streams the bytes into a staged file beside the
//!   target, then `fs/commitFile` verifies its SHA-256 and renames it into
//!   place: the target is replaced atomically and keeps its mode.
//!
//! Both fill in the caller's audit record: a download's bytes out as they
//! go; an upload's arguments are its bytes, hashed while they stream.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use execgate_protocol::connectors::{error_code as code, UploadResponse};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::link::Link;
use crate::ops::audit::RecordExt as _;
use crate::ops::error::FILE_NOT_FOUND;
use crate::ops::state::AppState;
use crate::ops::tools::resolve_path;
use crate::ops::transfer::{self, Sink, TransferError, CHUNK};
use crate::ops::Error;
use crate::store::audit_log::AuditEntry;

/// A missing file is `file_not_found`; other refusals `bad_request`.
fn file_error(e: TransferError) -> Error {
    match e {
        TransferError::Refused(m) if m.ends_with("no such file or directory") => {
            Error::new(FILE_NOT_FOUND, m)
        }
        other => other.into(),
    }
}

/// A regular file, opened for reading.
pub struct Download {
    pub link: Arc<Link>,
    pub path: PathBuf,
    pub size: u64,
}

/// The caller's file `path` on environment `name`, checked readable.
pub async fn open_download(
    state: &AppState,
    caller: &Caller,
    name: &str,
    path: &str,
    audit: &mut AuditEntry,
) -> Result<Download, Error> {
    let link = crate::ops::environment::environment(state, caller, name).await?;
    audit.record().set_link(&link);
    crate::ops::policy::check_download(&link)?;
    let resolved = resolve_path(&link, "path", path)?;
    let meta = transfer::stat(&link, &resolved).await.map_err(file_error)?;
    if !meta.is_file {
        return Err(Error::bad_request(format!("{path} is not a regular file")));
    }
    Ok(Download {
        link,
        path: resolved,
        size: meta.size,
    })
}

/// Reads `[offset, end)` ahead of the reader by one chunk, into `tx`.
pub struct ReadAhead {
    pub link: Arc<Link>,
    pub path: PathBuf,
    pub offset: u64,
    pub end: u64,
    pub tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl ReadAhead {
    /// Reads to the end (or until the reader goes away, or a read fails),
    /// then completes `audit`.
    pub async fn run(mut self, mut audit: AuditEntry) {
        while self.offset < self.end {
            let want = CHUNK.min(self.end - self.offset);
            let chunk = match transfer::read_range(&self.link, &self.path, self.offset, want).await
            {
                Ok(c) if c.is_empty() => {
                    audit.fail(code::EXECUTOR_ERROR);
                    Err(std::io::Error::other(
                        "the file shrank while it was being read",
                    ))
                }
                Ok(c) => Ok(c),
                Err(e) => {
                    audit.fail(match &e {
                        TransferError::Refused(_) => code::BAD_REQUEST,
                        TransferError::Api(a) => a.code,
                    });
                    Err(std::io::Error::other(e.to_string()))
                }
            };
            let n = chunk.as_ref().map_or(0, |c| c.len() as u64);
            let failed = chunk.is_err();
            // The client went away (the record says cancelled), or the
            // read failed: stop either way.
            if self.tx.send(chunk).await.is_err() || failed {
                return;
            }
            self.offset += n;
            audit.record().add_bytes_out(n);
        }
        audit.succeed();
    }
}

/// Replaces (or creates) the caller's file `path` on environment `name`
/// with `body`, atomically. A replaced file keeps its mode.
pub async fn upload<E: std::fmt::Display>(
    state: &AppState,
    caller: &Caller,
    name: &str,
    path: &str,
    create_parents: bool,
    body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    audit: &mut AuditEntry,
) -> Result<UploadResponse, Error> {
    let link = crate::ops::environment::environment(state, caller, name).await?;
    audit.record().set_link(&link);
    crate::ops::policy::check_upload(&link)?;
    let resolved = resolve_path(&link, "path", path)?;
    // Keep the mode of a file being replaced; refuse to replace a directory.
    // A link is written through (as write_file does) and the file it points
    // to keeps its mode, which the executor sees to: the link's own mode
    // (0777) must not become the file's.
    let mode = match transfer::stat(&link, &resolved).await {
        Ok(m) if m.is_directory => {
            return Err(Error::bad_request(format!("{path} is a directory")))
        }
        Ok(m) if m.is_symlink => None,
        Ok(m) => m.mode,
        Err(TransferError::Refused(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut sink = Sink::create(link, &resolved, create_parents)
        .await
        .map_err(file_error)?;
    match pump(&mut sink, body, audit).await {
        Ok(()) => {
            let r = sink.commit(mode).await?;
            Ok(UploadResponse {
                path: path.to_string(),
                bytes: r.size,
                sha256: r.sha256,
            })
        }
        Err(e) => {
            sink.abort().await;
            Err(e)
        }
    }
}

/// Moves `body` into the sink in chunks of [`CHUNK`], hashing it for the
/// audit record as it goes.
async fn pump<E: std::fmt::Display>(
    sink: &mut Sink,
    mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    audit: &mut AuditEntry,
) -> Result<(), Error> {
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let r = async {
        let mut buf = BytesMut::with_capacity(CHUNK as usize);
        while let Some(frame) = body.next().await {
            let data = frame.map_err(|e| {
                Error::bad_request(format!(
                    "the upload was interrupted: {e}; nothing was written"
                ))
            })?;
            hasher.update(&data);
            received += data.len() as u64;
            buf.extend_from_slice(&data);
            while buf.len() as u64 >= CHUNK {
                let chunk = buf.split_to(CHUNK as usize);
                sink.write(chunk.freeze()).await?;
            }
        }
        sink.write(buf.freeze()).await?;
        Ok(())
    }
    .await;
    let rec = audit.record();
    rec.set_args_digest(hex::encode(hasher.finalize()), received);
    rec.add_bytes_in(received);
    r
}
