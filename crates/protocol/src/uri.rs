//! `file://` URIs, which the executor protocol uses for every path.

use std::path::{Path, PathBuf};

/// `/a/b` → `file:///a/b`. `None` unless `path` is absolute.
pub fn path_to_uri(path: &Path) -> Option<String> {
    url::Url::from_file_path(path).ok().map(String::from)
}

/// `file:///a/b` → `/a/b`. Plain absolute paths are accepted too, because
/// codex and older executors sometimes send them.
pub fn uri_to_path(uri: &str) -> Option<PathBuf> {
    if uri.starts_with('/') {
        return Some(PathBuf::from(uri));
    }
    let url = url::Url::parse(uri).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    url.to_file_path().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_spaces_and_unicode() {
        let p = Path::new("/tmp/a b/ü#x");
        let uri = path_to_uri(p).unwrap();
        assert!(uri.starts_with("file:///tmp/a%20b/"));
        assert_eq!(uri_to_path(&uri).unwrap(), p);
    }

    #[test]
    fn rejects_relative_and_other_schemes() {
        assert!(path_to_uri(Path::new("rel/x")).is_none());
        assert!(uri_to_path("http://x/y").is_none());
        assert!(uri_to_path("rel").is_none());
        assert_eq!(uri_to_path("/abs").unwrap(), PathBuf::from("/abs"));
    }
}
