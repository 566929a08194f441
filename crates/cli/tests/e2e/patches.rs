//! apply_patch end to end: every operation, atomicity across files,
//! expected_sha256, dry runs and malformed patches.

use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::*;

async fn patch(w: &World, patch: &str, extra: Value) -> Value {
    let mut args = json!({ "patch": patch });
    if let Value::Object(m) = extra {
        args.as_object_mut().unwrap().extend(m);
    }
    w.api.call("laptop", "apply_patch", args).await
}

fn read(w: &World, p: &str) -> String {
    std::fs::read_to_string(w.workdir.join(p)).unwrap()
}

/// Names in the work dir that are not the given ones (leftover temporaries).
fn stray_files(w: &World, expected: &[&str]) -> Vec<String> {
    std::fs::read_dir(&w.workdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !expected.contains(&n.as_str()))
        .collect()
}

#[tokio::test]
async fn add_update_delete_and_move_in_one_patch() {
    let w = World::start(&[]).await;
    std::fs::write(
        w.workdir.join("app.py"),
        "import os\n\ndef one():\n    return 1\n\ndef two():\n    return 1\n",
    )
    .unwrap();
    std::fs::write(w.workdir.join("old.txt"), "bye\n").unwrap();
    std::fs::write(w.workdir.join("name.txt"), "a\nb\n").unwrap();
    let r = patch(
        &w,
        "*** Begin Patch\n\
         *** Add File: new/hello.txt\n+Hello\n+World\n\
         *** Update File: app.py\n@@ def one():\n-    return 1\n+    return 10\n@@ def two():\n-    return 1\n+    return 20\n\
         *** Delete File: old.txt\n\
         *** Update File: name.txt\n*** Move to: renamed.txt\n@@\n a\n-b\n+B\n\
         *** End Patch",
        json!({}),
    )
    .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        r["content"][0]["text"],
        "new/hello.txt: added\napp.py: updated\nold.txt: deleted\nname.txt: moved -> renamed.txt"
    );
    assert_eq!(r["structuredContent"]["applied"], true);
    assert_eq!(r["structuredContent"]["files"][3]["action"], "moved");
    assert_eq!(read(&w, "new/hello.txt"), "Hello\nWorld\n");
    assert_eq!(
        read(&w, "app.py"),
        "import os\n\ndef one():\n    return 10\n\ndef two():\n    return 20\n"
    );
    assert!(!w.workdir.join("old.txt").exists());
    assert!(!w.workdir.join("name.txt").exists());
    assert_eq!(read(&w, "renamed.txt"), "a\nB\n");
    assert_eq!(
        stray_files(&w, &["new", "app.py", "renamed.txt"]),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_failing_third_file_leaves_the_first_two_untouched() {
    let w = World::start(&[]).await;
    std::fs::write(w.workdir.join("a.txt"), "one\n").unwrap();
    std::fs::write(w.workdir.join("b.txt"), "two\n").unwrap();
    std::fs::write(w.workdir.join("c.txt"), "three\n").unwrap();
    let r = patch(
        &w,
        "*** Begin Patch\n\
         *** Update File: a.txt\n@@\n-one\n+ONE\n\
         *** Add File: added.txt\n+new\n\
         *** Update File: c.txt\n@@\n-not there\n+x\n\
         *** End Patch",
        json!({}),
    )
    .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["applied"], false);
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("a.txt: updated (not applied)"), "{text}");
    assert!(
        text.contains("c.txt: error: hunk 1 (patch line 9): context not found"),
        "{text}"
    );
    let files = &r["structuredContent"]["files"];
    assert_eq!(files[2]["ok"], false);
    assert_eq!(files[0]["ok"], true);
    assert_eq!(read(&w, "a.txt"), "one\n");
    assert!(!w.workdir.join("added.txt").exists());
    assert_eq!(read(&w, "c.txt"), "three\n");
    assert_eq!(
        stray_files(&w, &["a.txt", "b.txt", "c.txt"]),
        Vec::<String>::new()
    );

    // Other refusals name the file and the reason.
    let r = patch(
        &w,
        "*** Begin Patch\n*** Add File: a.txt\n+x\n*** End Patch",
        json!({}),
    )
    .await;
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("a.txt: error: file exists"),
        "{r}"
    );
    let r = patch(
        &w,
        "*** Begin Patch\n*** Delete File: zzz.txt\n*** End Patch",
        json!({}),
    )
    .await;
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("zzz.txt: error: file missing"),
        "{r}"
    );
}

#[tokio::test]
async fn expected_sha256_guards_against_concurrent_edits() {
    let w = World::start(&[]).await;
    std::fs::write(w.workdir.join("f.txt"), "v1\n").unwrap();
    let good = hex::encode(sha2::Sha256::digest(b"v1\n"));
    let p = "*** Begin Patch\n*** Update File: f.txt\n@@\n-v1\n+v2\n*** End Patch";
    let r = patch(
        &w,
        p,
        json!({"expected_sha256": {"f.txt": "00".repeat(32)}}),
    )
    .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("expected_sha256 mismatch"),
        "{r}"
    );
    assert_eq!(read(&w, "f.txt"), "v1\n");

    // A dry run checks without writing.
    let r = patch(
        &w,
        p,
        json!({"expected_sha256": {"f.txt": good}, "dry_run": true}),
    )
    .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["applied"], false);
    assert_eq!(r["content"][0]["text"], "f.txt: updated (dry run)");
    assert_eq!(read(&w, "f.txt"), "v1\n");

    let r = patch(&w, p, json!({"expected_sha256": {"f.txt": good}})).await;
    assert_eq!(r["structuredContent"]["applied"], true, "{r}");
    assert_eq!(read(&w, "f.txt"), "v2\n");
}

#[tokio::test]
async fn malformed_patches_are_400_with_the_line_number() {
    let w = World::start(&[]).await;
    for (p, line) in [
        ("not a patch", 1),
        (
            "*** Begin Patch\n*** Add File: x\nmissing plus\n*** End Patch",
            3,
        ),
        (
            "*** Begin Patch\n*** Update File: x\n@@\n?bad\n*** End Patch",
            4,
        ),
        ("*** Begin Patch\n*** Add File: x\n+y\n", 3),
    ] {
        let (s, v) = w
            .api
            .call_raw("laptop", "apply_patch", json!({ "patch": p }))
            .await;
        assert_eq!(s, 400, "{p:?}: {v}");
        assert_eq!(v["error"]["code"], "bad_arguments");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("patch line {line}")), "{p:?}: {msg}");
    }
}
