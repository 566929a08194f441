//! Random identifiers and secrets, and how they are hashed and compared.
//! Tokens are only ever stored as SHA-256; comparisons of secrets are
//! constant-time.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `prefix` followed by `bytes` random bytes, base64url without padding.
pub fn random_token(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    )
}

/// `prefix` followed by `bytes` random bytes in lowercase hex: ids that are
/// safe in URLs, paths and file names.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!("{prefix}{}", hex::encode(buf))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A secret held in memory (shared secrets read from files). Its `Debug`
/// never shows it, so a logged config does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_long_enough() {
        let a = random_token("egp_", 32);
        let b = random_token("egp_", 32);
        assert_ne!(a, b);
        // 32 bytes = 256 bits = 43 base64url characters.
        assert_eq!(a.len(), 4 + 43);
        assert!(random_id("exe_", 8).starts_with("exe_"));
        assert_eq!(random_id("", 8).len(), 16);
    }

    #[test]
    fn hashing_and_comparison() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(b"x", b"x"));
        assert!(!constant_time_eq(b"x", b"y"));
        assert!(!constant_time_eq(b"x", b"xy"));
        assert!(!format!("{:?}", SecretString::new("hunter2")).contains("hunter2"));
    }
}
