//! Paths from the executor protocol (`file://` URIs or plain paths), made
//! local and confined to `--root`. The root is a fresh directory holding
//! links that stay inside, lead out, dangle and loop; whatever the path,
//! a confined result lies inside the root, with no `.` or `..` left.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use execgate_executor::fuzz_api::{confine, resolve};
use libfuzzer_sys::fuzz_target;

/// The canonical root, made once per fuzzing process.
static ROOT: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("execgate-fuzz-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("sub/file"), b"x").unwrap();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    };
    link("sub", "in");
    link("/", "out");
    link("../..", "sub/up");
    link("nowhere/at/all", "dangling");
    link("loop", "loop");
    link("sub/deeper/../file", "file_link");
    dir.canonicalize().unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let root: &Path = &ROOT;
    let _ = resolve(root, raw);
    for follow in [true, false] {
        if let Ok(p) = confine(root, raw, follow) {
            assert!(p.starts_with(root), "{raw:?} confined to {p:?}");
            assert!(
                p.components()
                    .all(|c| !matches!(c, Component::CurDir | Component::ParentDir)),
                "{raw:?} confined to {p:?}"
            );
        }
    }
});
