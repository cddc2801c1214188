//! Puts libtorch on the rpath of this crate's binaries and tests (see runtime/link_libtorch.rs),
//! and records the provenance `run.json` names: the git commit (`METALOOP_GIT_COMMIT`) and
//! libtorch's version (`METALOOP_LIBTORCH_VERSION`, from `torch/version.py` beside its lib dir).
include!("../runtime/link_libtorch.rs");

use std::process::Command;

fn main() {
    let lib = libtorch_lib_from("DEP_METALOOP_RUNTIME_LIBTORCH_LIB");
    link_libtorch(&lib);
    println!("cargo:rustc-env=METALOOP_GIT_COMMIT={}", git_commit());
    println!(
        "cargo:rustc-env=METALOOP_LIBTORCH_VERSION={}",
        libtorch_version(&lib)
    );
}

/// The output of `git args`, trimmed; `None` without git or outside a clone.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `git rev-parse HEAD`, or "unknown". Reruns when HEAD or its branch moves.
fn git_commit() -> String {
    for name in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// `__version__` of `torch/version.py` (the parent of libtorch's lib dir), or "unknown".
fn libtorch_version(lib: &str) -> String {
    let lib = std::fs::canonicalize(lib).unwrap_or_else(|_| lib.into());
    let path = lib.parent().map(|t| t.join("version.py"));
    let text = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    if let Some(p) = &path {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("__version__"))
        .and_then(|rest| rest.split(['\'', '"']).nth(1))
        .unwrap_or("unknown")
        .to_string()
}
