//! metaloop for Python (python/): `cargo xtask setup` builds the package with maturin and installs
//! it into the project's venv; `cargo xtask test` then runs its pytest suite there.
//!
//! The build runs without pip's build isolation, with maturin pinned and installed in the venv
//! once, so that later builds need no network. Its Rust crate (python/Cargo.toml) is outside the
//! workspace and has its own target directory (python/target): its torch-sys is built with the
//! `python-extension` feature, which the workspace's binaries must not link.

use anyhow::{bail, Context, Result};
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::setup::{self, Env};

/// The build backend, the test runner, and the peer that the side-by-side tests run.
const TOOLS: &[&str] = &["maturin==1.16.0", "pytest==9.2.0", "higher==0.2.1"];

/// Builds python/ and installs it into the venv (a no-op rebuild takes seconds; the first one
/// compiles torch-sys for Python, several minutes).
pub fn install(env: &Env) -> Result<()> {
    let venv = env
        .python
        .parent()
        .and_then(|bin| bin.parent())
        .context("the venv's python is not in <venv>/bin")?;
    setup::ensure_extra(
        venv,
        &env.python,
        "python-tools",
        "import maturin, pytest, higher",
        TOOLS,
    )?;
    check_headers(&env.python)?;
    let root = setup::repo_root();
    eprintln!(
        "xtask: python: building python/ (maturin) into {}",
        venv.display()
    );
    let start = Instant::now();
    let out = Command::new(&env.python)
        .args([
            "-m",
            "pip",
            "install",
            "--no-build-isolation",
            "--no-deps",
            "--force-reinstall",
        ])
        .args([
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "./python",
        ])
        .current_dir(&root)
        .output()
        .with_context(|| format!("cannot run {} -m pip", env.python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        bail!("building the Python package failed: run `{} -m pip install -v ./python` for the full output", env.python.display());
    }
    eprintln!(
        "xtask: python: installed metaloop in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// torch-sys compiles libtorch's Python bindings for the extension: it needs Python.h.
fn check_headers(python: &std::path::Path) -> Result<()> {
    let code = "import os, sysconfig; print(os.path.isfile(os.path.join(sysconfig.get_path('include'), 'Python.h')))";
    let out = Command::new(python)
        .args(["-c", code])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if String::from_utf8_lossy(&out.stdout).trim() != "True" {
        bail!("{} has no Python.h, which the Python package's build needs: install Python's headers (apt-get install -y python3-dev) and rerun", python.display());
    }
    Ok(())
}

/// Runs python/tests with the venv's pytest (against the installed package).
pub fn test(env: &Env) -> Result<ExitCode> {
    let root = setup::repo_root();
    crate::run_status(
        Command::new(&env.python)
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "python/tests",
            ])
            .current_dir(&root),
    )
}
