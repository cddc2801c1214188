//! Project automation: `cargo xtask <command>`.
//!
//! - `setup`: idempotent; installs what the build needs (libtorch 2.11.0 from PyTorch's wheel in a
//!   per-user venv, Open MPI and libclang from Debian) and links `.libtorch` for `.cargo/config.toml`.
//!   Every other command runs it first.
//! - `demo`: the main job on its embedded default (a meta-training on CPU).
//! - `test`: every test, the mpirun ones included.
//! - `docs`: regenerates docs/configuration.md from the config types and prints the docs'
//!   sentence lengths.
//! - `fixtures`: regenerates the committed PyTorch fixtures (needs higher and TorchOpt in the venv).
//! - `setup` and `test` also build the Python package (python/) into the venv; `test` runs its
//!   pytest suite after the Rust tests.
//! - `fuzz [SECONDS] [TARGET...]`: runs the cargo-fuzz targets of `fuzz/` (60 s each by default).
//! - `gpu-kit`: packs `.gpu/` for a GPU machine without Rust or network; there
//!   `bash .gpu/check.sh --out DIR` runs the GPU check (xtask/gpu/check.sh).
//!
//! Each failure ends with one line saying what to do, and exit code 2 for bad input or a missing
//! prerequisite that this tool cannot install.

mod bench;
mod docs;
mod fuzz;
mod gpu_kit;
mod gpu_mpi;
mod python;
mod setup;

use std::process::{Command, ExitCode};

const USAGE: &str =
    "usage: cargo xtask <setup [--peers] | demo | test [cargo test args...] | docs [--measure] | fixtures | fuzz [seconds] [target...] | gpu-kit>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run(args.iter().any(|a| a == "--peers"))
            .and_then(|env| python::install(&env))
            .map(|_| ExitCode::SUCCESS),
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("docs") => docs::run(&args[1..]),
        Some("fixtures") => fixtures(),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("gpu-kit") => gpu_kit::run(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}`; {USAGE}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("xtask: no command; {USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command inheriting stdio; returns its exit code as ours.
pub(crate) fn run_status(cmd: &mut Command) -> anyhow::Result<ExitCode> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start {:?}: {e}", cmd.get_program()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    })
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(setup::repo_root());
    // The per-user cache's path rather than the clone's `.libtorch` link: see `stable_libtorch`.
    // `.cargo/config.toml` does not force its value, so this one wins.
    if let Some(dir) = setup::stable_libtorch() {
        cmd.env("LIBTORCH", dir);
    }
    // mpirun refuses root unless told; CI runs as root. Tests pass --oversubscribe themselves.
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

/// `cargo xtask demo`: the main job on its embedded default, in release mode.
fn demo(extra: &[String]) -> anyhow::Result<ExitCode> {
    setup::run(false)?;
    run_status(
        cargo()
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "metaloop-launcher",
                "--bin",
                "metaloop",
                "--",
                "demo",
            ])
            .args(extra),
    )
}

/// `cargo xtask test`: every test of the workspace (unit, integration with mpirun, doc).
///
/// With cargo-nextest installed, doc tests run first and nextest runs the rest, one process per
/// test (MPI can be initialised once per process), ending with its one-line summary; otherwise
/// plain `cargo test`.
fn test(extra: &[String]) -> anyhow::Result<ExitCode> {
    let env = setup::run(false)?;
    python::install(&env)?;
    let rust = rust_tests(extra)?;
    let python = python::test(&env)?;
    Ok(if rust != ExitCode::SUCCESS {
        rust
    } else {
        python
    })
}

/// Every Rust test of the workspace (see [`test`]).
fn rust_tests(extra: &[String]) -> anyhow::Result<ExitCode> {
    // Tests run in parallel, one process each, on few cores: libtorch's default thread team per
    // process oversubscribes them and its spinning workers then slow every test many times over.
    // One intra-op thread per test process (unless the caller chose otherwise).
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        std::env::set_var("OMP_NUM_THREADS", "1");
    }
    let has_nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nextest {
        return run_status(
            cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(extra),
        );
    }
    let doc = run_status(cargo().args(["test", "--workspace", "--doc"]))?;
    let all = run_status(
        cargo()
            .args([
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "--failure-output",
                "final",
            ])
            .args(extra),
    )?;
    Ok(if doc != ExitCode::SUCCESS { doc } else { all })
}

/// `cargo xtask fixtures`: reruns every committed fixture generator with the set-up venv.
fn fixtures() -> anyhow::Result<ExitCode> {
    let env = setup::run(true)?;
    let root = setup::repo_root();
    let mut scripts = Vec::new();
    // Fixtures sit beside their generators: the root's tests/, each crate's tests/ and python/tests/.
    for dir in ["", "runtime", "engine", "launcher", "python"] {
        collect_generators(&root.join(dir).join("tests/fixtures"), &mut scripts)?;
    }
    scripts.sort();
    for script in &scripts {
        println!(
            "xtask: fixtures: {}",
            script.strip_prefix(&root).unwrap_or(script).display()
        );
        let code = run_status(
            Command::new(&env.python)
                .arg(script.file_name().expect("a script path has a file name"))
                .current_dir(script.parent().expect("a script path has a parent")),
        )?;
        if code != ExitCode::SUCCESS {
            anyhow::bail!("fixture generator {} failed", script.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn collect_generators(
    dir: &std::path::Path,
    out: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_generators(&path, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("gen_") && n.ends_with(".py"))
        {
            out.push(path);
        }
    }
    Ok(())
}
