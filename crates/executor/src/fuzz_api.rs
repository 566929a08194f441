//! A small public window on path handling, for the fuzz targets in
//! `fuzz/` only. Not a stable API (hidden from the docs).
//!
//! Path resolution stays `pub(crate)`; the fuzz targets are a separate
//! crate, so they get exactly the two operations that take untrusted
//! strings: turning a request's path (a `file://` URI or a plain path) into
//! a local one, and confining it to a root (`--root`).

use std::path::{Path, PathBuf};

use crate::paths::{self, Last};

/// A request's path made local: a `file://` URI or a plain path, relative
/// ones against `workdir`. `Err` is the protocol error's message.
pub fn resolve(workdir: &Path, raw: &str) -> Result<PathBuf, String> {
    paths::resolve(workdir, raw).map_err(|e| e.message)
}

/// `raw` resolved and confined to the canonical `root` (relative paths
/// against it), the last component followed when it is a link (`follow`)
/// or looked at itself. `Err` is the protocol error's message.
pub fn confine(root: &Path, raw: &str, follow: bool) -> Result<PathBuf, String> {
    let last = if follow { Last::Follow } else { Last::Inspect };
    // The check by name: what decides inside or out (the kernel's use of
    // the result, `beneath`, needs a live root and is not parsing).
    let path = paths::resolve(root, raw).map_err(|e| e.message)?;
    paths::confine(root, &path, last).map_err(|e| e.into_rpc(&path).message)
}
