//! The environment a child process starts with.
//!
//! Without an `envPolicy` the child gets exactly the `env` of the request.
//! With one, the environment is built the way codex `exec-server` builds it,
//! so that both executors behave alike for the gateway:
//!
//! 1. start from the executor's own environment (`inherit: "all"`), from
//!    nothing (`"none"`), or from a few core variables (`"core"`: PATH, HOME,
//!    SHELL, USER, LANG, TMPDIR, …);
//! 2. unless `ignoreDefaultExcludes`, drop variables whose name matches
//!    `*KEY*`, `*SECRET*` or `*TOKEN*`, so that credentials of the executor's
//!    own environment do not leak into every command an agent runs;
//! 3. drop the names matching `exclude`;
//! 4. if `includeOnly` is not empty, keep only the names matching it;
//! 5. apply `set`;
//! 6. apply the request's `env` on top.
//!
//! Patterns are case-insensitive globs (`*` any run, `?` one character).
//! Step 5 after step 4 means `set` always wins (codex applies `includeOnly`
//! last; explicit values surviving is the less surprising choice).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

use execgate_protocol::exec::EnvPolicy;

/// A child environment. `OsString` because the executor's own environment
/// may hold names or values that are not UTF-8; they are passed through.
pub(crate) type ChildEnv = BTreeMap<OsString, OsString>;

const DEFAULT_EXCLUDES: [&str; 3] = ["*KEY*", "*SECRET*", "*TOKEN*"];
const CORE_VARS: [&str; 11] = [
    "PATH", "SHELL", "TMPDIR", "TEMP", "TMP", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "LOGNAME",
    "USER",
];

/// Builds the child environment; `parent` is the executor's environment.
/// Errors are messages for an invalid-params answer.
pub(crate) fn child_env(
    env: &BTreeMap<String, String>,
    policy: Option<&EnvPolicy>,
    parent: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<ChildEnv, String> {
    // The OS keeps `NAME=value` strings: a name with `=` would set another
    // variable than the one asked for (`A=B` → `A` set to `B=…`), and a NUL
    // would cut the string. Refused rather than passed on (the gateway
    // refuses them too; this holds for any client of the protocol).
    let set = policy.map(|p| &p.set).into_iter().flatten();
    for (name, value) in env.iter().chain(set) {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "environment variable name {name:?} is empty or contains '=' or NUL"
            ));
        }
        if value.contains('\0') {
            return Err(format!(
                "the value of environment variable {name:?} contains NUL"
            ));
        }
    }
    let mut out = ChildEnv::new();
    if let Some(policy) = policy {
        let inherited = parent.into_iter();
        match policy.inherit.as_str() {
            "all" => out.extend(inherited),
            "none" => {}
            "core" => out.extend(inherited.filter(|(name, _)| {
                CORE_VARS
                    .iter()
                    .any(|core| name.as_os_str() == OsStr::new(core))
            })),
            other => {
                return Err(format!(
                    "envPolicy.inherit must be \"all\", \"none\" or \"core\", not {other:?}"
                ))
            }
        }
        if !policy.ignore_default_excludes {
            out.retain(|name, _| !matches_any(name, &DEFAULT_EXCLUDES));
        }
        if !policy.exclude.is_empty() {
            out.retain(|name, _| !matches_any(name, &policy.exclude));
        }
        if !policy.include_only.is_empty() {
            out.retain(|name, _| matches_any(name, &policy.include_only));
        }
        for (name, value) in &policy.set {
            out.insert(name.into(), value.into());
        }
    }
    for (name, value) in env {
        out.insert(name.into(), value.into());
    }
    Ok(out)
}

fn matches_any<S: AsRef<str>>(name: &OsStr, patterns: &[S]) -> bool {
    let name = name.to_string_lossy();
    patterns
        .iter()
        .any(|pattern| glob_match(pattern.as_ref(), &name))
}

/// Case-insensitive glob match of a whole name: `*` matches any run of
/// characters, `?` exactly one, everything else itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let name: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    // Iterative matcher with single-star backtracking: linear in practice,
    // and never exponential, whatever the pattern.
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None; // (star position, name position)
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, n));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            // Let the last star swallow one more character and retry.
            p = star + 1;
            n = matched + 1;
            backtrack = Some((star, n));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> Vec<(OsString, OsString)> {
        [
            ("PATH", "/bin"),
            ("HOME", "/home/u"),
            ("GITHUB_TOKEN", "t"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("EDITOR", "vi"),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    fn policy(inherit: &str) -> EnvPolicy {
        EnvPolicy {
            inherit: inherit.into(),
            ignore_default_excludes: false,
            exclude: vec![],
            set: BTreeMap::new(),
            include_only: vec![],
        }
    }

    fn names(env: &ChildEnv) -> Vec<String> {
        env.keys()
            .map(|k| k.to_string_lossy().into_owned())
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn without_a_policy_the_env_is_exactly_the_request_env() {
        let env = child_env(&map(&[("ONLY", "1")]), None, parent()).unwrap();
        assert_eq!(names(&env), vec!["ONLY"]);
    }

    #[test]
    fn inherit_all_drops_default_excludes_unless_told_not_to() {
        let env = child_env(&BTreeMap::new(), Some(&policy("all")), parent()).unwrap();
        assert_eq!(names(&env), vec!["EDITOR", "HOME", "LANG", "PATH"]);

        let mut keep = policy("all");
        keep.ignore_default_excludes = true;
        let env = child_env(&BTreeMap::new(), Some(&keep), parent()).unwrap();
        assert_eq!(env.len(), 6);
    }

    #[test]
    fn names_with_equals_or_nul_and_empty_names_are_refused() {
        for bad in ["", "A=B", "A\0B"] {
            let e = child_env(&map(&[(bad, "1")]), None, parent()).unwrap_err();
            assert!(e.contains("name"), "{bad:?}: {e}");
            let mut p = policy("none");
            p.set = map(&[(bad, "1")]);
            assert!(child_env(&BTreeMap::new(), Some(&p), parent()).is_err());
        }
        assert!(child_env(&map(&[("A", "x\0")]), None, parent()).is_err());
        assert!(child_env(&map(&[("A", "B=1")]), None, parent()).is_ok());
    }

    #[test]
    fn inherit_none_and_core() {
        let env = child_env(&BTreeMap::new(), Some(&policy("none")), parent()).unwrap();
        assert!(env.is_empty());
        let env = child_env(&BTreeMap::new(), Some(&policy("core")), parent()).unwrap();
        assert_eq!(names(&env), vec!["HOME", "LANG", "PATH"]);
        assert!(child_env(&BTreeMap::new(), Some(&policy("some")), parent()).is_err());
    }

    #[test]
    fn exclude_include_only_set_and_env_apply_in_order() {
        let mut p = policy("all");
        p.exclude = vec!["ed*".into()];
        p.include_only = vec!["PATH".into(), "HOME".into(), "EDITOR".into()];
        p.set = BTreeMap::from([
            ("FROM_SET".into(), "s".into()),
            ("HOME".into(), "/x".into()),
        ]);
        let env = child_env(&map(&[("HOME", "/y"), ("EXTRA", "e")]), Some(&p), parent()).unwrap();
        // EDITOR excluded (case-insensitive), LANG not included, FROM_SET set
        // despite includeOnly, and the request env wins over `set`.
        assert_eq!(names(&env), vec!["EXTRA", "FROM_SET", "HOME", "PATH"]);
        assert_eq!(env[OsStr::new("HOME")], OsString::from("/y"));
    }

    #[test]
    fn set_may_reintroduce_an_excluded_name() {
        let mut p = policy("all");
        p.set = BTreeMap::from([("MY_TOKEN".into(), "explicit".into())]);
        let env = child_env(&BTreeMap::new(), Some(&p), parent()).unwrap();
        assert_eq!(env[OsStr::new("MY_TOKEN")], OsString::from("explicit"));
        assert!(!env.contains_key(OsStr::new("GITHUB_TOKEN")));
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("*KEY*", "aws_secret_access_key"));
        assert!(glob_match("*key*", "KEYRING"));
        assert!(glob_match("PATH", "path"));
        assert!(!glob_match("PATH", "PATHS"));
        assert!(glob_match("PATH*", "PATHS"));
        assert!(glob_match("L?NG", "LANG"));
        assert!(!glob_match("L?NG", "LNG"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYbZc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("**x", "x"));
        assert!(!glob_match("", "x"));
    }
}
