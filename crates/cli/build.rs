//! Links the `execgate` binary with packed relative relocations (DT_RELR)
//! when the C library it will run against supports them.
//!
//! Why: the binary is position-independent, and its ~39,000 relative
//! relocations took 940 KB as `.rela.dyn`, which the dynamic loader reads at
//! every start. Those pages stayed in every process's RSS: an idle executor
//! measured 10.9–11.2 MiB with them and 9.8–9.9 MiB without (BENCHMARKS.md).
//! Packed, they take ~11 KB.
//!
//! A DT_RELR binary needs glibc 2.36 or later at run time, and the linker
//! records that need (`GLIBC_ABI_DT_RELR`), so an older glibc refuses it at
//! start. It is therefore only asked for when building on and for the same
//! glibc machine, and that glibc is new enough; anything else (cross builds,
//! musl, older glibc) links as before.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("-linux-gnu") {
        return;
    }
    if glibc_version().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The glibc this build script runs on: the target's, as host == target.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_version() -> Option<(u32, u32)> {
    use std::ffi::{c_char, CStr};
    extern "C" {
        fn gnu_get_libc_version() -> *const c_char;
    }
    // SAFETY: glibc returns a pointer to a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version.to_str().ok()?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_version() -> Option<(u32, u32)> {
    None
}
