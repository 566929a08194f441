//! Where the capability-token secret comes from: `--cap-token-secret-file
//! FILE`, else `<data-dir>/cap-token-secret`, generated at first use (by
//! `execgate serve` or `execgate admin captoken create`, whichever runs
//! first) with mode 0600. Both read it the same way, so tokens minted by
//! the CLI verify on the gateway.
//!
//! The HMAC key is the file's text without surrounding whitespace (at least
//! 32 bytes), so the same secret can be shared with another minter (the
//! reference's control plane) as a plain string. A generated file holds 64
//! hex characters from 32 random bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{CapTokenError, CapTokenSecret};

/// The generated secret's file name inside the data dir.
pub const FILE_NAME: &str = "cap-token-secret";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("capability token secret {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("capability token secret {path}: {source}")]
    Weak {
        path: PathBuf,
        source: CapTokenError,
    },
}

/// The secret from `file` when given, else the data dir's (generated if
/// missing).
pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<CapTokenSecret, KeyFileError> {
    match file {
        Some(f) => read(f),
        None => load_or_generate(&data_dir.join(FILE_NAME)),
    }
}

/// Reads a secret file.
pub fn read(path: &Path) -> Result<CapTokenSecret, KeyFileError> {
    let text = std::fs::read(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    CapTokenSecret::new(text.trim_ascii().to_vec()).map_err(|source| KeyFileError::Weak {
        path: path.to_owned(),
        source,
    })
}

/// Reads `path`, creating it first (0600, 32 random bytes as hex) if it
/// does not exist. Two processes racing to create it agree on one secret:
/// each writes a private temporary file and hard-links it into place, which
/// fails for all but the first; the losers read the winner's.
pub fn load_or_generate(path: &Path) -> Result<CapTokenSecret, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        return read(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let secret = crate::secret::random_id("", 32);
    let tmp = path.with_file_name(format!(".{FILE_NAME}.{}", crate::secret::random_id("", 6)));
    let written = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(None, dir.path()).unwrap();
        let b = load(None, dir.path()).unwrap();
        assert_eq!(a, b);
        let path = dir.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64, "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_explicit_file_wins_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, format!("{}\n", "k".repeat(40))).unwrap();
        let s = load(Some(&f), dir.path()).unwrap();
        assert_eq!(s, CapTokenSecret::new("k".repeat(40)).unwrap());
        assert!(!dir.path().join(FILE_NAME).exists());
        std::fs::write(&f, "short\n").unwrap();
        let e = load(Some(&f), dir.path()).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        let e = load(Some(&dir.path().join("missing")), dir.path()).unwrap_err();
        assert!(matches!(e, KeyFileError::Io { .. }));
    }

    #[test]
    fn racing_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || load_or_generate(&p).unwrap())
            })
            .collect();
        let secrets: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
    }
}
