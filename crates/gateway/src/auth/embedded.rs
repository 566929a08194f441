//! The embedded verifier: the proxy token's SHA-256 is looked up in this
//! gateway's store on every request.
//!
//! No verdict cache here on purpose: `execgate admin token revoke` runs in
//! another process and writes the same database, and a revocation must take
//! effect on the next request. The store answers from memory only while
//! the database files are unchanged (`store::lookups`), which keeps that.

use crate::auth::{ProxyTokenVerifier, VerifyFuture};
use crate::store::Store;

pub struct EmbeddedVerifier {
    store: Store,
}

impl EmbeddedVerifier {
    pub fn new(store: Store) -> Self {
        EmbeddedVerifier { store }
    }
}

impl ProxyTokenVerifier for EmbeddedVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move { Ok(self.store.verify_proxy_token(token).await?) })
    }
}
