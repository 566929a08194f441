//! Sweeping stale staged files: the hidden `.name.execgate-part-<hex>` files
//! a transfer (`PUT /files`, `copy_path`) leaves behind when the gateway dies
//! between its first `fs/writeRange` and its `fs/commitFile` or `fs/remove`.
//!
//! Where to look: the executor cannot scan the whole disk, and a staged file
//! lies beside its destination, anywhere. So every directory `fs/writeRange`
//! wrote a staged file in is recorded, in memory and in a small journal
//! (`<state dir>/staged-<executor id>.dirs`, one directory per line, appended
//! when a directory is new), so that an executor restarted after the crash
//! still knows where to look. At start, then every `max_age / 4` (between 1 s
//! and 10 min), each recorded directory is listed and every staged file in
//! it (by name, a regular file, never a link) that nobody wrote for
//! `max_age` (`executor --stale-staged-secs`, default 1 h) is removed. A
//! transfer in progress writes its file every few seconds (the gateway gives
//! up on a silent executor much sooner), so an hour without a write means
//! nobody will commit it. A directory with no staged file left is forgotten,
//! and the journal rewritten without it.
//!
//! A directory is swept only while it is still where it was when recorded
//! (its canonical path unchanged): a directory swapped for a link since is
//! skipped, so the sweep never follows a link out of `--root`. Only names of
//! the staged pattern are ever removed. Not swept: the executor's own
//! `write_file` temporaries (`.execgate-<hex>.tmp`, removed on any error;
//! only a crash of the executor mid-write leaves one), and the staged files
//! of a codex executor (the gateway stages through its shell there).

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Infix of a staged file's name (`gateway::transfer::staging_path`).
const PART_INFIX: &[u8] = b".execgate-part-";
/// Hex digits after the infix.
const PART_ID_LEN: usize = 12;

pub(crate) struct StagedSweep {
    dirs: Mutex<Dirs>,
    /// Where `dirs` is kept across restarts; `None`: only in memory.
    journal: Option<PathBuf>,
    /// A staged file nobody wrote for this long is stale.
    pub max_age: Duration,
}

#[derive(Default)]
struct Dirs {
    /// Canonical directories that held a staged file and may still.
    canonical: BTreeSet<PathBuf>,
    /// Each directory as `fs/writeRange` named it, with its canonical path:
    /// the set lookup that spares each write a `canonicalize`.
    seen: HashMap<PathBuf, PathBuf>,
}

/// Whether `name` is a staged file's: `.<name>.execgate-part-<12 hex>`.
pub(crate) fn is_staged_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    if name.first() != Some(&b'.') || name.len() < 1 + PART_INFIX.len() + PART_ID_LEN {
        return false;
    }
    let (head, id) = name.split_at(name.len() - PART_ID_LEN);
    head.ends_with(PART_INFIX)
        && id
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

impl StagedSweep {
    /// Loads the journal, if any (a missing one is an empty one).
    pub fn new(journal: Option<PathBuf>, max_age: Duration) -> StagedSweep {
        let mut dirs = Dirs::default();
        if let Some(path) = &journal {
            match fs::read(path) {
                Ok(bytes) => {
                    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        let dir = PathBuf::from(std::ffi::OsString::from_vec(line.to_vec()));
                        dirs.canonical.insert(dir);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(journal = %path.display(), "cannot read the staged files' journal: {err}");
                }
            }
        }
        StagedSweep {
            dirs: Mutex::new(dirs),
            journal,
            max_age,
        }
    }

    /// How often to sweep.
    pub fn interval(&self) -> Duration {
        (self.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    /// `fs/writeRange` wrote `path`: if it is a staged file, remember its
    /// directory. Costs a set lookup unless the directory is new.
    pub fn saw(&self, path: &Path) {
        let (Some(name), Some(parent)) = (path.file_name(), path.parent()) else {
            return;
        };
        if !is_staged_name(name) {
            return;
        }
        if self.lock().seen.contains_key(parent) {
            return;
        }
        // Recorded canonical, so that the sweep can tell if it moved.
        let Ok(dir) = fs::canonicalize(parent) else {
            return;
        };
        let new = {
            let mut dirs = self.lock();
            dirs.seen.insert(parent.to_path_buf(), dir.clone());
            dirs.canonical.insert(dir.clone())
        };
        if new {
            self.append(&dir);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dirs> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, dir: &Path) {
        let Some(journal) = &self.journal else {
            return;
        };
        if dir.as_os_str().as_bytes().contains(&b'\n') {
            // Cannot be one line; swept while this executor runs.
            return;
        }
        let appended = (|| {
            if let Some(parent) = journal.parent() {
                create_private_dir(parent)?;
            }
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(journal)?;
            let mut line = dir.as_os_str().as_bytes().to_vec();
            line.push(b'\n');
            file.write_all(&line)
        })();
        if let Err(err) = appended {
            tracing::warn!(journal = %journal.display(), "cannot record a staged file's directory: {err}");
        }
    }

    /// Removes every staged file in the recorded directories that nobody
    /// wrote for `max_age` before `now`; returns the paths removed.
    /// Blocking: run it off the runtime.
    pub fn sweep(&self, now: SystemTime) -> Vec<PathBuf> {
        let dirs: Vec<PathBuf> = self.lock().canonical.iter().cloned().collect();
        let mut removed = Vec::new();
        let mut done = Vec::new();
        for dir in dirs {
            match self.sweep_dir(&dir, now, &mut removed) {
                // Nothing staged left there: forget it.
                Ok(false) => done.push(dir),
                Ok(true) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => done.push(dir),
                Err(err) => {
                    tracing::debug!(dir = %dir.display(), "not sweeping staged files: {err}");
                    done.push(dir);
                }
            }
        }
        if !done.is_empty() {
            let mut dirs = self.lock();
            for dir in &done {
                dirs.canonical.remove(dir);
            }
            dirs.seen.retain(|_, canonical| !done.contains(canonical));
            let keep: Vec<PathBuf> = dirs.canonical.iter().cloned().collect();
            drop(dirs);
            self.rewrite(&keep);
        }
        for path in &removed {
            tracing::info!(path = %path.display(), "removed a stale staged file");
        }
        removed
    }

    /// Sweeps one directory; true if a staged file (a fresh one) remains.
    fn sweep_dir(
        &self,
        dir: &Path,
        now: SystemTime,
        removed: &mut Vec<PathBuf>,
    ) -> io::Result<bool> {
        // Only where it was: a directory replaced by a link since is skipped
        // (and forgotten), it may lead out of --root.
        if fs::canonicalize(dir)? != dir {
            return Err(io::Error::other("it moved, or a link leads there now"));
        }
        let mut remains = false;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if !is_staged_name(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < self.max_age {
                remains = true;
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(path = %path.display(), "cannot remove a stale staged file: {err}");
                }
            }
        }
        Ok(remains)
    }

    /// Replaces the journal with `dirs`, atomically.
    fn rewrite(&self, dirs: &[PathBuf]) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut text = Vec::new();
        for dir in dirs {
            if !dir.as_os_str().as_bytes().contains(&b'\n') {
                text.extend_from_slice(dir.as_os_str().as_bytes());
                text.push(b'\n');
            }
        }
        let temp = journal.with_extension("dirs.tmp");
        let written = fs::write(&temp, &text).and_then(|()| fs::rename(&temp, journal));
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            tracing::warn!(journal = %journal.display(), "cannot rewrite the staged files' journal: {err}");
        }
    }
}

/// Creates `dir` (and its parents) readable by its owner only.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The default state directory: `$XDG_STATE_HOME/execgate`, else
/// `~/.local/state/execgate`; `None` without either.
pub(crate) fn default_state_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_STATE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| from("HOME").map(|home| home.join(".local/state")))
        .map(|dir| dir.join("execgate"))
}

/// The journal's file name for the executor of `token` (`{id}.{secret}`):
/// by its id, so that two executors on one machine keep apart, never by its
/// secret.
pub(crate) fn journal_name(token: &str) -> String {
    let id: String = token
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    let id = if id.is_empty() { "executor".into() } else { id };
    format!("staged-{id}.dirs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn staged_names_are_recognised_and_nothing_else() {
        for name in [
            ".a.txt.execgate-part-0123456789ab",
            "..execgate-part-ffffffffffff",
        ] {
            assert!(is_staged_name(OsStr::new(name)), "{name}");
        }
        for name in [
            "a.txt.execgate-part-0123456789ab",
            ".a.txt.execgate-part-0123456789a",
            ".a.txt.execgate-part-0123456789AB",
            ".a.txt.execgate-part-0123456789abc",
            ".execgate-0123456789abcdef.tmp",
            ".a.txt",
        ] {
            assert!(!is_staged_name(OsStr::new(name)), "{name}");
        }
    }

    fn set_mtime(path: &Path, ago: Duration) {
        let file = fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn stale_staged_files_are_removed_fresh_ones_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let journal = state.path().join("sub").join(journal_name("exe_1.secret"));
        let d = fs::canonicalize(dir.path()).unwrap();
        let stale = d.join(".big.tar.execgate-part-0123456789ab");
        let fresh = d.join(".big.tar.execgate-part-ba9876543210");
        let other = d.join(".notes.txt");
        for path in [&stale, &fresh, &other] {
            fs::write(path, b"x").unwrap();
        }
        let link = d.join(".link.execgate-part-aaaaaaaaaaaa");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        set_mtime(&stale, Duration::from_secs(7200));
        set_mtime(&other, Duration::from_secs(7200));

        let sweep = StagedSweep::new(Some(journal.clone()), Duration::from_secs(3600));
        sweep.saw(&fresh);
        sweep.saw(&other); // not a staged name: not recorded
        let recorded = fs::read_to_string(&journal).unwrap();
        assert_eq!(recorded, format!("{}\n", d.display()));

        // A restarted executor knows the directory from the journal.
        let restarted = StagedSweep::new(Some(journal.clone()), Duration::from_secs(3600));
        assert_eq!(restarted.sweep(SystemTime::now()), vec![stale.clone()]);
        assert!(!stale.exists());
        assert!(fresh.exists() && other.exists());
        assert!(
            fs::symlink_metadata(&link).is_ok(),
            "a link is never removed"
        );
        // The fresh one is still there: the directory stays recorded.
        assert_eq!(fs::read_to_string(&journal).unwrap(), recorded);

        // Once it is stale too, it goes, and so does the directory.
        set_mtime(&fresh, Duration::from_secs(7200));
        assert_eq!(restarted.sweep(SystemTime::now()), vec![fresh.clone()]);
        assert_eq!(fs::read_to_string(&journal).unwrap(), "");
        assert!(restarted.sweep(SystemTime::now()).is_empty());
    }

    #[test]
    fn a_directory_swapped_for_a_link_is_not_swept() {
        let base = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(base.path()).unwrap();
        let (inside, outside) = (base.join("inside"), base.join("outside"));
        fs::create_dir(&inside).unwrap();
        fs::create_dir(&outside).unwrap();
        let sweep = StagedSweep::new(None, Duration::from_secs(60));
        sweep.saw(&inside.join(".f.execgate-part-0123456789ab"));
        // The recorded directory becomes a link to another one.
        fs::remove_dir(&inside).unwrap();
        std::os::unix::fs::symlink(&outside, &inside).unwrap();
        let victim = outside.join(".f.execgate-part-0123456789ab");
        fs::write(&victim, b"x").unwrap();
        set_mtime(&victim, Duration::from_secs(3600));
        assert!(sweep.sweep(SystemTime::now()).is_empty());
        assert!(victim.exists());
    }

    #[test]
    fn journal_names_use_the_executor_id_only() {
        assert_eq!(journal_name("exe_abc.s3cret"), "staged-exe_abc.dirs");
        assert_eq!(journal_name("../../x"), "staged-executor.dirs");
        assert_eq!(journal_name(""), "staged-executor.dirs");
    }
}
