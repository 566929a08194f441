//! [ext] The digests a streamed transfer is verified with, and the running
//! hashes of what `fs/readRange {hash}` read on a transfer's source.
//!
//! Why the source hashes: a transfer's guarantee is that the destination's
//! file holds exactly the bytes the source read. The gateway used to hash
//! what it relayed (a SHA-256 pass of its own, ~1 CPU-second per GiB on this
//! host) and the destination to verify against it. Hashing on the source,
//! right after the read, while the bytes are in its cache, covers more of
//! the path (the source's link, the gateway, the destination's link) and
//! lets the gateway relay bytes without touching them. Between two execgate
//! executors the digest is BLAKE3 (0.24 s per GiB here against SHA-256's
//! 0.9-1.1 with the CPU's SHA extensions; BENCHMARKS.md, "Copies (issue
//! 22)"); toward codex it stays SHA-256, which `sha256sum` can check.
//!
//! Reads that come back out of order (several are in flight, each on a
//! blocking-pool thread) wait for the gap before them, as the destination's
//! running hash does ([`crate::staged`]); anything the running hash cannot
//! account for makes `fs/readDigest` refuse, and the gateway fails the copy
//! rather than vouch for bytes nobody hashed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use execgate_protocol::exec::digest;
use execgate_protocol::jsonrpc::RpcError;
use sha2::Digest as _;

use crate::staged::Running;

/// The digests this executor announces (`ExtCapabilities::digests`).
pub(crate) const SUPPORTED: &[&str] = &[digest::SHA256, digest::BLAKE3];

/// A hash being computed, of one of the [`SUPPORTED`] digests.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A fresh hasher for `algorithm`; `None` for a name not [`SUPPORTED`].
    pub fn new(algorithm: &str) -> Option<Hasher> {
        match algorithm {
            digest::SHA256 => Some(Hasher::Sha256(sha2::Sha256::new())),
            digest::BLAKE3 => Some(Hasher::Blake3(Box::default())),
            _ => None,
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Hasher::Sha256(_) => digest::SHA256,
            Hasher::Blake3(_) => digest::BLAKE3,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest so far, lowercase hex.
    pub fn hex(&self) -> String {
        match self {
            Hasher::Sha256(h) => hex_lower(&h.clone().finalize()),
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Running hashes kept at once on a source; the oldest is dropped beyond it
/// (a transfer abandoned before its `fs/readDigest`).
pub(crate) const MAX_READS: usize = 32;

/// Each running hash by the caller's id, with its age (to evict the
/// oldest), and the next age.
type ById = (HashMap<String, (u64, Arc<Mutex<Running>>)>, u64);

/// The running hashes of `fs/readRange {hash}`, by the caller's id.
#[derive(Default)]
pub(crate) struct ReadHashes {
    by_id: Mutex<ById>,
}

impl ReadHashes {
    /// Records that a read of the transfer `id` returned `data` at
    /// `offset`. The first read seen of an id creates its running hash (it
    /// need not be the one at offset 0: reads may finish out of order).
    pub fn read(
        &self,
        id: &str,
        algorithm: &str,
        offset: u64,
        data: Bytes,
    ) -> Result<(), RpcError> {
        let running = {
            let mut guard = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
            let (map, next_age) = &mut *guard;
            match map.get(id) {
                Some((_, r)) => r.clone(),
                None => {
                    let hasher = Hasher::new(algorithm).ok_or_else(|| {
                        RpcError::invalid_params(format!(
                            "hash.algorithm {algorithm:?} is not one of {SUPPORTED:?}"
                        ))
                    })?;
                    if map.len() >= MAX_READS {
                        let oldest = map
                            .iter()
                            .min_by_key(|(_, (age, _))| *age)
                            .map(|(k, _)| k.clone());
                        if let Some(oldest) = oldest {
                            map.remove(&oldest);
                        }
                    }
                    *next_age += 1;
                    let r = Arc::new(Mutex::new(Running::with(hasher)));
                    map.insert(id.to_owned(), (*next_age, r.clone()));
                    r
                }
            }
        };
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        if running.algorithm() != algorithm {
            running.break_off();
        }
        running.add(offset, data);
        Ok(())
    }

    /// `fs/readDigest`: the digest of `[0, size)` as read, and forgets it.
    pub fn finish(&self, id: &str) -> Result<(&'static str, String, u64), RpcError> {
        let running = {
            let mut guard = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
            guard.0.remove(id).map(|(_, r)| r)
        };
        let Some(running) = running else {
            return Err(RpcError::invalid_params(format!(
                "no reads are being hashed as {id:?} (none was made, or more than {MAX_READS} \
                 transfers ran at once)"
            )));
        };
        let running = running.lock().unwrap_or_else(|e| e.into_inner());
        running.complete().ok_or_else(|| {
            RpcError::invalid_params(format!(
                "the reads hashed as {id:?} did not cover the file exactly once from its start \
                 (overlapping or missing ranges, or too many read out of order)"
            ))
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.lock().unwrap().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(data: &[u8]) -> Bytes {
        Bytes::copy_from_slice(data)
    }

    fn blake(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    #[test]
    fn reads_in_any_order_give_the_digest_of_the_whole() {
        let h = ReadHashes::default();
        h.read("t", "blake3", 6, b(b"world")).unwrap();
        h.read("t", "blake3", 0, b(b"hello ")).unwrap();
        assert_eq!(
            h.finish("t").unwrap(),
            ("blake3", blake(b"hello world"), 11)
        );
        // Forgotten once taken.
        assert!(h.finish("t").is_err());
        h.read("s", "sha256", 0, b(b"abc")).unwrap();
        assert_eq!(
            h.finish("s").unwrap().1,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn gaps_overlaps_and_unknown_names_are_refused() {
        let h = ReadHashes::default();
        h.read("gap", "blake3", 0, b(b"ab")).unwrap();
        h.read("gap", "blake3", 4, b(b"ef")).unwrap();
        assert!(h.finish("gap").is_err());
        h.read("over", "blake3", 0, b(b"abcd")).unwrap();
        h.read("over", "blake3", 2, b(b"cd")).unwrap();
        assert!(h.finish("over").is_err());
        h.read("mix", "blake3", 0, b(b"ab")).unwrap();
        h.read("mix", "sha256", 2, b(b"cd")).unwrap();
        assert!(h.finish("mix").is_err());
        assert!(h.read("md5", "md5", 0, b(b"x")).is_err());
        assert!(h.finish("never").is_err());
    }

    #[test]
    fn the_oldest_running_hash_is_dropped_beyond_the_limit() {
        let h = ReadHashes::default();
        for i in 0..=MAX_READS {
            h.read(&format!("t{i}"), "blake3", 0, b(b"x")).unwrap();
        }
        assert_eq!(h.len(), MAX_READS);
        assert!(h.finish("t0").is_err());
        assert!(h.finish(&format!("t{MAX_READS}")).is_ok());
    }
}
