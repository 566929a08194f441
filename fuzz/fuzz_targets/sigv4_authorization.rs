//! The `Authorization: AWS4-HMAC-SHA256 …` header of a codex executor's
//! register and upgrade requests, parsed before any key is looked up: any
//! client that can reach the gateway sends it.
#![no_main]

use execgate_gateway::fuzz_api::parse_authorization;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(auth) = parse_authorization(value) {
        // What parsed is made of the header's own text.
        assert!(value.contains(&auth.key_id));
        assert!(value.contains(&auth.signature));
    }
});
