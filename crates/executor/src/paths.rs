//! Turning the paths the gateway sends into local paths.
//!
//! The protocol speaks `file://` URIs. We also take plain paths, because API
//! callers and older clients send them: absolute ones as they are, relative
//! ones (and the empty string) against the executor's working directory.
//!
//! With `--root`, every path is then **confined** ([`confine`]): resolved
//! the way the kernel would resolve it (each symbolic link followed where it
//! is met, `..` applied to what the path has become so far), with the part
//! that does not exist yet taken literally, and refused unless the result
//! lies inside the root. A dangling link is resolved to the path it names,
//! so a write cannot create a file outside through one.
//!
//! The caller then works on that resolved path as a [`Target`], which the
//! kernel resolves again beneath a descriptor of the root (see `beneath`):
//! the check by name gives the refusals their meaning and their messages,
//! the kernel makes sure that a path changed after the check cannot lead
//! out (a race between check and use).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use execgate_protocol::jsonrpc::RpcError;
use execgate_protocol::uri::uri_to_path;

use crate::beneath::{Root, Target};

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

/// Whether the last component of a path is followed when it is a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    /// Opened through the link (read, write, list, cwd): the link's target
    /// is what must be inside the root.
    Follow,
    /// The directory entry itself is looked at (`fs/getMetadata`): the link
    /// must be inside the root, not its target.
    Inspect,
    /// The directory entry itself is changed (rename, remove, symlink,
    /// commit's destination): like `Inspect`, and it must not be the root
    /// itself, whose entry lives outside it.
    Entry,
}

/// Where paths resolve: relative ones against `workdir`; with a root, every
/// path must resolve inside it.
#[derive(Debug, Clone)]
pub(crate) struct PathRules {
    /// Absolute.
    pub workdir: PathBuf,
    /// The canonical root and its descriptor, when `--root` is set.
    pub root: Option<Root>,
}

impl PathRules {
    pub fn new(workdir: PathBuf) -> Self {
        PathRules {
            workdir,
            root: None,
        }
    }

    /// A `file://` URI or plain path as the local path to work on: as given
    /// without a root; resolved and confined with one (-32030 if outside).
    pub fn resolve(&self, raw: &str, last: Last) -> Result<Target<'_>, RpcError> {
        let path = resolve(&self.workdir, raw)?;
        self.confine(&path, last)
    }

    /// [`resolve`](Self::resolve) for an absolute local path.
    pub fn confine(&self, path: &Path, last: Last) -> Result<Target<'_>, RpcError> {
        let Some(root) = &self.root else {
            return Ok(Target::free(path.to_path_buf()));
        };
        let resolved = confine(&root.path, path, last).map_err(|e| e.into_rpc(path))?;
        if last == Last::Entry && resolved == root.path {
            return Err(RpcError::policy_denied(format!(
                "{} is the executor's root {} itself, which cannot be renamed, removed or replaced (--root)",
                path.display(),
                root.path.display()
            )));
        }
        Target::beneath(root, resolved)
            .map_err(|e| RpcError::policy_denied(format!("{}: {e}", path.display())))
    }

    /// What the link at `path` (already resolved) points to, followed as
    /// far as it stays inside the root; `None` when it is dangling, loops or
    /// leads out of the root (then nothing outside is described).
    pub fn follow_metadata(&self, path: &Path) -> Option<std::fs::Metadata> {
        let Some(root) = &self.root else {
            return std::fs::metadata(path).ok();
        };
        let resolved = confine(&root.path, path, Last::Follow).ok()?;
        let target = Target::beneath(root, resolved).ok()?;
        target.open(libc::O_PATH, 0).ok()?.metadata().ok()
    }
}

/// Why a path could not be confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfineError {
    /// It resolves to `resolved`, which is not inside `root`.
    Outside { resolved: PathBuf, root: PathBuf },
    /// Too many symbolic links (a loop): the kernel would say ELOOP.
    Loop,
}

impl ConfineError {
    /// The protocol error for `path` (as requested, made absolute).
    pub(crate) fn into_rpc(self, path: &Path) -> RpcError {
        match self {
            ConfineError::Outside { resolved, root } if resolved == path => {
                RpcError::policy_denied(format!(
                    "{} is outside the executor's root {} (--root)",
                    path.display(),
                    root.display()
                ))
            }
            ConfineError::Outside { resolved, root } => RpcError::policy_denied(format!(
                "{} resolves to {}, which is outside the executor's root {} (--root)",
                path.display(),
                resolved.display(),
                root.display()
            )),
            ConfineError::Loop => RpcError::invalid_params(format!(
                "{}: too many levels of symbolic links",
                path.display()
            )),
        }
    }
}

/// How many links one path may go through, as Linux allows (MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// Resolves the absolute `path` against the file system and checks that it
/// lies inside `root`, which must be canonical. Returns the resolved path:
/// no `.`, `..` or symlinks in its existing part (and none in the rest,
/// which is taken literally). See the module docs.
pub(crate) fn confine(root: &Path, path: &Path, last: Last) -> Result<PathBuf, ConfineError> {
    let mut pending: VecDeque<OsString> = parts(path).collect();
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    // Every component is looked at, even below a missing one: `..` can lead
    // back from a missing directory to an existing link.
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        let follow = !pending.is_empty() || last == Last::Follow;
        if follow {
            match std::fs::symlink_metadata(&next) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(ConfineError::Loop);
                    }
                    let target = std::fs::read_link(&next).map_err(|_| ConfineError::Loop)?;
                    if target.is_absolute() {
                        resolved = PathBuf::from("/");
                    }
                    // The target's parts come first; `resolved` stays the
                    // link's directory, which a relative target starts from.
                    for p in parts(&target).collect::<Vec<_>>().into_iter().rev() {
                        pending.push_front(p);
                    }
                    continue;
                }
                // Not a link; or missing, not a directory, no permission: the
                // operation itself will fail the same way, so the component
                // is taken literally.
                Ok(_) | Err(_) => {}
            }
        }
        resolved = next;
    }
    if resolved.starts_with(root) {
        Ok(resolved)
    } else {
        Err(ConfineError::Outside {
            resolved,
            root: root.to_path_buf(),
        })
    }
}

/// The normal and `..` components of a path (`/` and `.` dropped).
fn parts(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
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

    /// A root inside a temp dir, with `outside/` beside it holding a file.
    struct Tree {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("sub/file"), "in").unwrap();
        std::fs::write(outside.join("secret"), "out").unwrap();
        Tree {
            _dir: dir,
            root,
            outside,
        }
    }

    fn link(target: &Path, at: &Path) {
        std::os::unix::fs::symlink(target, at).unwrap();
    }

    fn outside(t: &Tree, path: &Path, last: Last) -> PathBuf {
        match confine(&t.root, path, last) {
            Err(ConfineError::Outside { resolved, root }) => {
                assert_eq!(root, t.root);
                resolved
            }
            other => panic!("{} should be outside, got {other:?}", path.display()),
        }
    }

    #[test]
    fn paths_inside_resolve_to_themselves_even_when_missing() {
        let t = tree();
        for p in ["sub/file", "sub", "", "sub/deeper/new", "new/dir/file"] {
            let path = t.root.join(p);
            assert_eq!(confine(&t.root, &path, Last::Follow).unwrap(), path, "{p}");
        }
        assert_eq!(
            confine(&t.root, &t.root.join("sub/./deeper/../file"), Last::Follow).unwrap(),
            t.root.join("sub/file")
        );
    }

    #[test]
    fn dot_dot_and_absolute_paths_outside_are_refused() {
        let t = tree();
        assert_eq!(
            outside(&t, &t.root.join("../outside/secret"), Last::Follow),
            t.outside.join("secret")
        );
        assert_eq!(
            outside(&t, &t.root.join("sub/../../x"), Last::Entry),
            t.root.parent().unwrap().join("x")
        );
        // `..` beyond `/` stays at `/`, as in the kernel.
        assert_eq!(
            outside(
                &t,
                &t.root.join("../../../../../../../../../etc/passwd"),
                Last::Follow
            ),
            PathBuf::from("/etc/passwd")
        );
        assert_eq!(
            outside(&t, Path::new("/etc/passwd"), Last::Inspect),
            PathBuf::from("/etc/passwd")
        );
        // A sibling whose name starts like the root is not inside it.
        let sibling = PathBuf::from(format!("{}2/x", t.root.display()));
        outside(&t, &sibling, Last::Follow);
        // `..` through a missing directory is still applied.
        outside(&t, &t.root.join("missing/../../outside/new"), Last::Follow);
        // ... and leads back to links, which are still followed.
        link(&t.outside, &t.root.join("dir_out"));
        outside(&t, &t.root.join("missing/../dir_out/secret"), Last::Follow);
        outside(
            &t,
            &t.root.join("missing/deeper/../../dir_out/x"),
            Last::Entry,
        );
    }

    #[test]
    fn links_to_outside_are_refused_when_followed() {
        let t = tree();
        link(&t.outside, &t.root.join("dir_out"));
        link(&t.outside.join("secret"), &t.root.join("file_out"));
        link(Path::new("../outside/secret"), &t.root.join("relative_out"));
        assert_eq!(
            outside(&t, &t.root.join("dir_out/secret"), Last::Follow),
            t.outside.join("secret")
        );
        // Through the link as a directory, even for a path that does not
        // exist yet, and even when only the entry is changed.
        outside(&t, &t.root.join("dir_out/new"), Last::Entry);
        outside(&t, &t.root.join("file_out"), Last::Follow);
        outside(&t, &t.root.join("relative_out"), Last::Follow);
        // The link itself lies inside: it may be inspected, renamed, removed.
        assert_eq!(
            confine(&t.root, &t.root.join("file_out"), Last::Entry).unwrap(),
            t.root.join("file_out")
        );
        assert_eq!(
            confine(&t.root, &t.root.join("dir_out"), Last::Inspect).unwrap(),
            t.root.join("dir_out")
        );
    }

    #[test]
    fn a_dangling_link_resolves_to_what_it_names() {
        let t = tree();
        link(&t.outside.join("not-yet"), &t.root.join("dangling_out"));
        link(Path::new("sub/not-yet"), &t.root.join("dangling_in"));
        // Writing through it would create a file outside.
        assert_eq!(
            outside(&t, &t.root.join("dangling_out"), Last::Follow),
            t.outside.join("not-yet")
        );
        assert_eq!(
            confine(&t.root, &t.root.join("dangling_in"), Last::Follow).unwrap(),
            t.root.join("sub/not-yet")
        );
    }

    #[test]
    fn links_that_stay_inside_are_followed() {
        let t = tree();
        link(Path::new("sub/deeper"), &t.root.join("in_dir"));
        link(&t.root.join("sub/file"), &t.root.join("in_file"));
        // `..` after a link applies to its target, as in the kernel.
        link(Path::new("sub/deeper"), &t.root.join("hop"));
        assert_eq!(
            confine(&t.root, &t.root.join("in_dir/x"), Last::Follow).unwrap(),
            t.root.join("sub/deeper/x")
        );
        assert_eq!(
            confine(&t.root, &t.root.join("in_file"), Last::Follow).unwrap(),
            t.root.join("sub/file")
        );
        assert_eq!(
            confine(&t.root, &t.root.join("hop/../file"), Last::Follow).unwrap(),
            t.root.join("sub/file")
        );
    }

    #[test]
    fn a_link_loop_is_an_error_not_a_hang() {
        let t = tree();
        link(Path::new("b"), &t.root.join("a"));
        link(Path::new("a"), &t.root.join("b"));
        assert_eq!(
            confine(&t.root, &t.root.join("a"), Last::Follow),
            Err(ConfineError::Loop)
        );
    }

    #[test]
    fn a_root_given_through_a_symlink_is_used_canonical() {
        let t = tree();
        let alias = t.root.parent().unwrap().join("alias");
        link(&t.root, &alias);
        let root = std::fs::canonicalize(&alias).unwrap();
        assert_eq!(root, t.root);
        // Paths through the alias resolve to the real root.
        assert_eq!(
            confine(&root, &alias.join("sub/file"), Last::Follow).unwrap(),
            t.root.join("sub/file")
        );
        // The alias itself, not followed, is an entry outside the root.
        assert!(confine(&root, &alias, Last::Entry).is_err());
    }

    #[test]
    fn rules_map_escapes_to_policy_denied_naming_path_and_root() {
        let t = tree();
        let rules = PathRules {
            workdir: t.root.clone(),
            root: Some(Root::open(t.root.clone()).unwrap()),
        };
        let err = rules
            .resolve("../outside/secret", Last::Follow)
            .unwrap_err();
        assert_eq!(err.code, code::POLICY_DENIED);
        assert!(err.message.contains("../outside/secret"), "{}", err.message);
        assert!(
            err.message.contains(&t.root.display().to_string()),
            "{}",
            err.message
        );
        assert_eq!(
            rules.resolve("sub/file", Last::Follow).unwrap().path,
            t.root.join("sub/file")
        );
        assert_eq!(rules.resolve("", Last::Follow).unwrap().path, t.root);
        let err = rules.resolve("", Last::Entry).unwrap_err();
        assert_eq!(err.code, code::POLICY_DENIED, "the root itself is no entry");
        // Without a root nothing changes: paths are taken as given.
        let free = PathRules::new(t.root.clone());
        assert_eq!(
            free.resolve("../outside/secret", Last::Follow)
                .unwrap()
                .path,
            t.root.join("../outside/secret")
        );
    }
}
