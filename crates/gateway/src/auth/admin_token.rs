//! The admin token: where it is, and [`matches`]. The extractor that
//! checks it is `crate::http::extract::AdminCaller`.
//!
//! The token is read from `--admin-token-file`, or else from
//! `<data-dir>/admin-token`, which the first start creates (mode 0600,
//! like `up-token`). It is compared in constant time (as SHA-256 digests,
//! so not even its length shows).

use std::io::Write;
use std::path::Path;

use crate::secret::{self, SecretString};

/// The token's file in the data dir.
pub const FILE_NAME: &str = "admin-token";

/// The admin token from `file`, or from the data dir's `admin-token`,
/// created with a new random token if missing.
pub fn load_or_create(data_dir: &Path, file: Option<&Path>) -> Result<SecretString, String> {
    if let Some(file) = file {
        return read(file).map_err(|e| format!("--admin-token-file {}: {e}", file.display()));
    }
    let path = data_dir.join(FILE_NAME);
    let describe = |e: std::io::Error| format!("{}: {e}", path.display());
    let token = secret::random_token("ega_", 32);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(&path)
    {
        Ok(mut f) => {
            writeln!(f, "{token}").map_err(describe)?;
            f.sync_all().map_err(describe)?;
            tracing::info!(path = %path.display(), "generated the admin token");
            Ok(SecretString::new(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(describe(e)),
    }
}

fn read(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the file is empty; put the admin token in it".into());
    }
    Ok(SecretString::new(token))
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    #[cfg(unix)]
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }

    #[cfg(not(unix))]
    fn mode_0600(&mut self) -> &mut Self {
        self
    }
}

/// Whether `token` is the admin token (`None`: no token is). Compared in
/// constant time, as SHA-256 digests.
pub fn matches(expected: Option<&SecretString>, token: &str) -> bool {
    expected.is_some_and(|expected| {
        secret::constant_time_eq(
            secret::sha256_hex(token.as_bytes()).as_bytes(),
            secret::sha256_hex(expected.expose().as_bytes()).as_bytes(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), None).unwrap();
        assert!(a.expose().starts_with("ega_") && a.expose().len() > 40);
        let b = load_or_create(dir.path(), None).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let file = dir.path().join("mine");
        std::fs::write(&file, "  chosen-token\n").unwrap();
        assert_eq!(
            load_or_create(dir.path(), Some(&file)).unwrap().expose(),
            "chosen-token"
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(load_or_create(dir.path(), Some(&file))
            .unwrap_err()
            .contains("empty"));
        let missing = dir.path().join("missing");
        assert!(load_or_create(dir.path(), Some(&missing))
            .unwrap_err()
            .contains("--admin-token-file"));
    }
}
