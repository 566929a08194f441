//! Capability tokens as `/bridge` receives them. Two ways in: the input as
//! a whole token (refused before the payload is looked at unless its
//! signature matches, which random bytes never do), and the input as the
//! payload of a correctly signed token, so that the claims parser and the
//! checks after it are fuzzed too.
#![no_main]

use execgate_gateway::fuzz_api::{sign_parts, verify, CapTokenSecret, HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = CapTokenSecret::new(b"fuzz-secret-fuzz-secret-fuzz-secret!".to_vec())
        .expect("a long enough secret");
    let now = 1_700_000_000;
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = verify(&secret, token, now);
    }
    let signed = sign_parts(&secret, HEADER, data);
    if let Ok(claims) = verify(&secret, &signed, now) {
        assert!(now < claims.exp, "an accepted token has not expired");
        assert!(!claims.turn_id.is_empty() && !claims.workspace_id.is_empty());
    }
});
