//! The gateway's layers, checked: a module names only layers below its own.
//!
//! ```text
//! http  >  ops  >  link, auth  >  store        (secret, metrics: leaves)
//! ```
//!
//! This reads the sources under `src/` and fails when a lower layer names a
//! higher one (`crate::http` in `ops`, `crate::ops` in `link`…), when a
//! layer below `http` names axum or an HTTP status, or when `secret` names
//! any other module. What is checked is the code that ships: comments (a
//! doc may say where the other half of a feature lives) and the unit tests
//! at the bottom of a file (`#[cfg(test)] mod …`, and `tests.rs` files),
//! which may drive an operation through the layers above it, are not.
//!
//! [`ALLOWED`] would list an edge allowed on purpose (with why); it is
//! empty. (The bridge relay re-verifies renewal tokens through
//! `link::host::LinkHost`, so `link` does not name `auth`.)

use std::path::{Path, PathBuf};

/// The layers, with what each may not name.
const RULES: &[(&str, &[&str])] = &[
    (
        "store",
        &[
            "crate::http",
            "crate::ops",
            "crate::link",
            "crate::auth",
            "axum",
            "StatusCode",
        ],
    ),
    (
        "auth",
        &[
            "crate::http",
            "crate::ops",
            "crate::link",
            "axum",
            "StatusCode",
        ],
    ),
    ("link", &["crate::http", "crate::ops", "crate::auth"]),
    ("ops", &["crate::http", "axum", "StatusCode"]),
];

/// (file under src/, forbidden name it may use anyway, why).
const ALLOWED: &[(&str, &str, &str)] = &[];

/// The code of a source file that the rules apply to: no comments, and
/// nothing from the first `#[cfg(test)]` module on.
fn shipped_code(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // A trailing comment.
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    // `crate::{http, ops::x}` names `crate::http` and `crate::ops`.
    let mut expanded = out.clone();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("crate::{") {
        let after = &rest[i + "crate::{".len()..];
        let group = &after[..after.find('}').unwrap_or(after.len())];
        for item in group.split(',') {
            let name = item.trim().split("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                expanded.push_str(&format!("\ncrate::{name}"));
            }
        }
        rest = after;
    }
    expanded
}

/// Whether `code` names `name` as a path or word (`crate::ops` but not
/// `crate::opsx`; `axum` but not `axum_x`).
fn names(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + name.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        (name.ends_with("::") || !word(after)) && (name.starts_with("crate::") || !word(before))
    })
}

/// The violations in one file (`rel`: its path under src/).
fn violations(rel: &str, source: &str) -> Vec<String> {
    let layer = rel.split('/').next().unwrap_or("");
    let code = shipped_code(source);
    let mut found = Vec::new();
    if rel == "secret.rs" {
        for line in code.lines().filter(|l| l.contains("crate::")) {
            if !line.contains("crate::secret") {
                found.push(format!("{rel}: the leaf `secret` names `{}`", line.trim()));
            }
        }
    }
    // `metrics` (the registry every layer records into) is a leaf too, and
    // knows nothing of HTTP.
    if rel == "metrics.rs" {
        for line in code.lines().filter(|l| l.contains("crate::")) {
            if !line.contains("crate::metrics") {
                found.push(format!("{rel}: the leaf `metrics` names `{}`", line.trim()));
            }
        }
        for name in ["axum", "StatusCode"] {
            if names(&code, name) {
                found.push(format!("{rel}: the leaf `metrics` names `{name}`"));
            }
        }
    }
    for (ruled, forbidden) in RULES {
        if layer != *ruled {
            continue;
        }
        for name in *forbidden {
            let allowed = ALLOWED.iter().any(|(f, n, _)| *f == rel && n == name);
            if !allowed && names(&code, name) {
                found.push(format!("{rel}: layer `{layer}` names `{name}`"));
            }
        }
        // A layer's root module reaching the crate root with `super::`.
        if rel == format!("{layer}/mod.rs") && names(&code, "super::") {
            found.push(format!("{rel}: names the crate root through `super::`"));
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn no_layer_names_a_higher_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut found = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if RULES.iter().any(|(l, _)| rel.starts_with(&format!("{l}/"))) {
            checked += 1;
        }
        found.extend(violations(&rel, &std::fs::read_to_string(file).unwrap()));
    }
    assert!(
        checked >= 30,
        "only {checked} files under the layers: did src/ move?"
    );
    assert!(
        found.is_empty(),
        "layering violations:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_allowed_edge_is_still_needed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (file, name, why) in ALLOWED {
        let code = shipped_code(&std::fs::read_to_string(src.join(file)).unwrap());
        assert!(
            names(&code, name),
            "{file} no longer names {name} ({why}): drop the exception"
        );
    }
}

/// The checker itself finds what it must, and only that.
#[test]
fn the_checker_sees_violations() {
    let up = "use crate::http::error::ApiError;\n";
    assert_eq!(violations("ops/x.rs", up).len(), 1);
    assert_eq!(
        violations("store/x.rs", "use crate::{ops, secret};\n").len(),
        1
    );
    assert_eq!(
        violations("auth/x.rs", "fn f() -> axum::Router { todo!() }\n").len(),
        1
    );
    assert_eq!(
        violations("link/x.rs", "use crate::ops::state::AppState;\n").len(),
        1
    );
    assert_eq!(
        violations("secret.rs", "use crate::store::Store;\n").len(),
        1
    );
    assert_eq!(violations("ops/mod.rs", "use super::http;\n").len(), 1);
    // Downward, comments, tests: fine.
    assert!(violations("http/x.rs", "use crate::ops::Error;\n").is_empty());
    assert!(violations("ops/x.rs", "use crate::link::Link;\nuse crate::opsx::Y;\n").is_empty());
    assert!(violations("ops/x.rs", "//! the routes are `crate::http::admin`\n").is_empty());
    let with_tests =
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::http::error::ApiError;\n}\n";
    assert!(violations("ops/x.rs", with_tests).is_empty());
    assert_eq!(
        violations("link/connect.rs", "use crate::auth::captoken;\n").len(),
        1
    );
}
