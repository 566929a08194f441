//! apply_patch's grammar (codex's patch format), as an agent sends it: the
//! parser, then each update's hunks applied to a file's text. The input is
//! the file's text, a NUL byte, then the patch. Whatever the text, parsing
//! and applying answer Ok or Err, never panic.
#![no_main]

use execgate_gateway::fuzz_api::{apply_hunks, parse, FileOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (original, patch) = text.split_once('\0').unwrap_or(("", text));
    let Ok(ops) = parse(patch) else {
        return;
    };
    for op in &ops {
        if let FileOp::Update { hunks, .. } = op {
            let _ = apply_hunks(original, hunks);
        }
    }
});
