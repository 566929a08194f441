//! Turning the paths the gateway sends into local paths.
//!
//! The protocol speaks `file://` URIs. We also take plain paths, because API
//! callers and older clients send them: absolute ones as they are, relative
//! ones (and the empty string) against the executor's working directory.

use std::path::{Path, PathBuf};

use execgate_protocol::jsonrpc::RpcError;
use execgate_protocol::uri::uri_to_path;

/// Resolves a `file://` URI or a plain path against `workdir`.
pub(crate) fn resolve(workdir: &Path, raw: &str) -> Result<PathBuf, RpcError> {
    if raw.is_empty() {
        return Ok(workdir.to_path_buf());
    }
    if raw.starts_with("file:") {
        return uri_to_path(raw)
            .ok_or_else(|| RpcError::invalid_params(format!("not a valid file:// URI: {raw}")));
    }
    if let Some((scheme, _)) = raw.split_once("://") {
        // Only reject things that really look like a scheme, so that a
        // relative path such as `notes://x` (odd, but legal) still works.
        let looks_like_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if looks_like_scheme {
            return Err(RpcError::invalid_params(format!(
                "unsupported URI scheme {scheme:?} in {raw}: paths must be file:// URIs"
            )));
        }
    }
    let path = Path::new(raw);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        workdir.join(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgate_protocol::jsonrpc::code;

    const WORKDIR: &str = "/home/u/project";

    fn ok(raw: &str) -> PathBuf {
        resolve(Path::new(WORKDIR), raw).unwrap()
    }

    #[test]
    fn uris_and_absolute_paths() {
        assert_eq!(ok("file:///tmp/a%20b"), PathBuf::from("/tmp/a b"));
        assert_eq!(ok("/etc/hosts"), PathBuf::from("/etc/hosts"));
    }

    #[test]
    fn relative_and_empty_paths_resolve_against_the_workdir() {
        assert_eq!(
            ok("src/main.rs"),
            PathBuf::from("/home/u/project/src/main.rs")
        );
        assert_eq!(ok("../x"), PathBuf::from("/home/u/project/../x"));
        assert_eq!(ok(""), PathBuf::from(WORKDIR));
        assert_eq!(ok("."), PathBuf::from("/home/u/project/."));
    }

    #[test]
    fn other_schemes_and_bad_uris_are_invalid_params() {
        for raw in ["http://x/y", "s3://bucket/key", "file://remote-host/x"] {
            let err = resolve(Path::new(WORKDIR), raw).unwrap_err();
            assert_eq!(err.code, code::INVALID_PARAMS, "{raw}");
        }
    }
}
