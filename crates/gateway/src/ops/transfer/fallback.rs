//! Transfers with an executor that lacks execgate's file extensions (a stock
//! codex), done with ordinary commands through `process/start`.
//!
//! codex can only read or write whole files (`fs/readFile`, `fs/writeFile`),
//! keeps just 1 MiB of a process's output, and cannot close a process's
//! stdin. So each piece is small and self-terminating:
//! - read a range: `tail -c +OFFSET FILE | head -c LEN` (at most [`PIECE`]
//!   bytes, within codex's output retention);
//! - append a piece: `fs/writeFile` of a part file, then `cat PART >> STAGED`;
//! - commit: compare `sha256sum` (or `shasum -a 256`), `chmod`, `mv -f`;
//! - trees: `tar` into one file on the source, copied as above, and
//!   unpacked into the staged directory on the destination.
//!
//! The executor's machine needs `sh`, `tail`, `head`, `cat`, `mv`, `chmod`,
//! `tar` and `sha256sum` or `shasum`: any Linux or macOS has them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use execgate_protocol::blob::Blob;
use execgate_protocol::exec::{method, Empty, WriteFileParams};

use super::{on, uri, TransferError};
use crate::link::Link;
use crate::ops::tools::shell::{run, Command, Completed, RunError};

/// Bytes per piece: well inside codex's 1 MiB output retention.
pub const PIECE: u64 = 512 * 1024;
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `sh -c SCRIPT sh ARGS…` and requires exit status 0.
async fn sh(
    link: &Arc<Link>,
    script: &str,
    args: &[&str],
    what: &str,
) -> Result<Completed, TransferError> {
    let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let cwd = link
        .handshake()
        .map(|h| h.info.cwd.clone())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "file:///".into());
    let done = run(
        None,
        link,
        Command {
            argv,
            cwd,
            env: BTreeMap::new(),
            timeout: STEP_TIMEOUT,
            sandbox: None,
            max_output: None,
        },
    )
    .await
    .map_err(|e| match e {
        RunError::Start(e) => TransferError::Refused(format!("{what}: {e}")),
        RunError::Api(e) => TransferError::Api(e),
    })?;
    if done.timed_out || done.exit_code() != Some(0) || done.missing_bytes() > 0 {
        return Err(TransferError::Refused(format!(
            "{what} failed on '{}' (exit {:?}{}): {}",
            link.name,
            done.exit_code(),
            if done.timed_out { ", timed out" } else { "" },
            String::from_utf8_lossy(done.stderr()).trim()
        )));
    }
    Ok(done)
}

fn path_str(path: &Path) -> Result<&str, TransferError> {
    path.to_str()
        .ok_or_else(|| TransferError::Refused(format!("{} is not UTF-8", path.display())))
}

/// `[offset, offset+len)` of a file, `len` at most [`PIECE`].
pub async fn read_range(
    link: &Arc<Link>,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Bytes, TransferError> {
    let len = len.min(PIECE);
    let done = sh(
        link,
        r#"tail -c +"$1" "$3" | head -c "$2""#,
        &[&(offset + 1).to_string(), &len.to_string(), path_str(path)?],
        &format!("reading {}", path.display()),
    )
    .await?;
    Ok(Bytes::copy_from_slice(done.stdout()))
}

/// Permission bits of a path (codex's getMetadata has no mode).
pub async fn mode(link: &Arc<Link>, path: &Path) -> Result<Option<u32>, TransferError> {
    let done = sh(
        link,
        r#"stat -c %a "$1" 2>/dev/null || stat -f %Lp "$1""#,
        &[path_str(path)?],
        &format!("inspecting {}", path.display()),
    )
    .await?;
    Ok(u32::from_str_radix(String::from_utf8_lossy(done.stdout()).trim(), 8).ok())
}

/// Creates (or empties) the staged file.
pub async fn create(link: &Arc<Link>, staged: &Path) -> Result<(), TransferError> {
    write_whole(link, staged, &[]).await
}

async fn write_whole(link: &Arc<Link>, path: &Path, data: &[u8]) -> Result<(), TransferError> {
    link.request::<_, Empty>(
        method::FS_WRITE_FILE,
        &WriteFileParams {
            path: uri(path)?,
            data_base64: Blob::from(data),
            create_parents: None,
        },
        STEP_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(on(path, "writing"))
}

/// Appends `data` to the staged file, a piece at a time.
pub async fn append(link: &Arc<Link>, staged: &Path, data: &[u8]) -> Result<(), TransferError> {
    let part = staged.with_extension("piece");
    for piece in data.chunks(PIECE as usize) {
        write_whole(link, &part, piece).await?;
        sh(
            link,
            r#"cat "$1" >> "$2" && rm -f "$1""#,
            &[path_str(&part)?, path_str(staged)?],
            &format!("appending to {}", staged.display()),
        )
        .await?;
    }
    Ok(())
}

/// Verifies the staged file's SHA-256, sets its mode and renames it into
/// place; a mismatch removes it.
pub async fn commit(
    link: &Arc<Link>,
    staged: &Path,
    dest: &Path,
    sha256: &str,
    mode: Option<u32>,
) -> Result<(), TransferError> {
    let mode = mode.map(|m| format!("{m:o}")).unwrap_or_default();
    sh(
        link,
        r#"h=$( (sha256sum "$1" 2>/dev/null || shasum -a 256 "$1") | cut -d' ' -f1)
if [ "$h" != "$2" ]; then rm -f "$1"; echo "sha256 mismatch: the staged file has $h" >&2; exit 3; fi
if [ -n "$4" ]; then chmod "$4" "$1" || exit 4; fi
mv -f "$1" "$3""#,
        &[path_str(staged)?, sha256, path_str(dest)?, &mode],
        &format!("committing {}", dest.display()),
    )
    .await
    .map(|_| ())
}

/// Renames a path (`mv`): for staged trees.
pub async fn rename(link: &Arc<Link>, from: &Path, to: &Path) -> Result<(), TransferError> {
    sh(
        link,
        r#"mv "$1" "$2""#,
        &[path_str(from)?, path_str(to)?],
        &format!("renaming into {}", to.display()),
    )
    .await
    .map(|_| ())
}

/// Packs the tree at `dir` into the tar file `archive` on the same executor.
pub async fn pack(link: &Arc<Link>, dir: &Path, archive: &Path) -> Result<(), TransferError> {
    sh(
        link,
        r#"tar -C "$1" -cf "$2" ."#,
        &[path_str(dir)?, path_str(archive)?],
        &format!("packing {}", dir.display()),
    )
    .await
    .map(|_| ())
}

/// Unpacks `archive` into the new directory `dir`, then removes the archive.
pub async fn unpack(link: &Arc<Link>, archive: &Path, dir: &Path) -> Result<(), TransferError> {
    sh(
        link,
        r#"mkdir "$2" && tar -C "$2" -xpf "$1" && rm -f "$1""#,
        &[path_str(archive)?, path_str(dir)?],
        &format!("unpacking into {}", dir.display()),
    )
    .await
    .map(|_| ())
}
