//! `cargo xtask gpu-kit`: packs `.gpu/` (git-ignored), everything a GPU machine without a Rust
//! toolchain or network needs to run `bash .gpu/check.sh` (xtask/gpu/check.sh):
//!
//! - `metaloop`: the release binary;
//! - `tests/NAME`: the release test binaries of every `tests/*.rs` of the workspace's crates that
//!   mentions `Cuda`, stripped;
//! - `lib/`: the shared libraries `ldd` finds for those binaries outside libtorch, CUDA and the C
//!   library (Open MPI, hwloc, libevent, ...), and `ompi/`: Open MPI's `mpirun`, its plugins and
//!   help files, relocated through `OPAL_PREFIX` (two ranks on one GPU need it);
//! - `tree/`: every crate's `tests/fixtures` and `configs/` at their paths in the repository, and
//!   `kit.env` (the path the tests were compiled at, where check.sh puts the tree back when that
//!   path lacks it: the tests read fixtures through `CARGO_MANIFEST_DIR`);
//! - `configs/`: the configs check.sh runs;
//! - `data/omniglot/`: a generated dataset in Omniglot's layout (xtask/gpu/gen_omniglot.py);
//! - `wheels/`: the peers (higher, TorchOpt) and what they need beyond that machine's PyTorch, for
//!   CPython 3.12 (`pip download`; cached in the per-user cache, so a second kit needs no network);
//! - `check.sh`, `report.py`, `gen_omniglot.py` and `peers/peers.py`.
//!
//! The whole kit stays under 60 MiB, so that it travels in one go.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::{cargo, setup};

/// The kit's size limit (the device tool carries 64 MiB with the working tree).
const MAX_BYTES: u64 = 60 << 20;
/// Where the tests read their fixtures (and configs), relative to the repository root.
const FIXTURE_DIRS: &[&str] = &[
    "tests/fixtures",
    "runtime/tests/fixtures",
    "engine/tests/fixtures",
    "launcher/tests/fixtures",
    "configs",
];
/// The crates whose `tests/` may hold CUDA tests.
const CRATES: &[&str] = &[".", "runtime", "engine", "launcher"];
/// The peers and their needs that the GPU machines' image lacks (it has torch and numpy).
const WHEELS: &[&str] = &["higher==0.2.1", "torchopt==0.7.3", "optree==0.20.0"];
/// Shared libraries that the GPU machine has (its PyTorch, CUDA, the C library): never packed.
const SYSTEM_LIBS: &[&str] = &[
    "libtorch",
    "libc10",
    "libgomp",
    "libcudart",
    "libnv",
    "libcu",
    "libc.so",
    "libm.so",
    "libdl.so",
    "librt.so",
    "libpthread.so",
    "libutil.so",
    "libgcc_s.so",
    "libstdc++.so",
    "libz.so",
    "ld-linux",
];

/// Builds the kit into `<repo>/.gpu`.
pub fn run(_args: &[String]) -> Result<ExitCode> {
    let env = setup::run(false)?;
    let root = setup::repo_root();
    let kit = root.join(".gpu");
    if kit.exists() {
        std::fs::remove_dir_all(&kit)
            .with_context(|| format!("cannot remove {}", kit.display()))?;
    }
    for dir in ["tests", "lib", "peers", "data"] {
        std::fs::create_dir_all(kit.join(dir))?;
    }
    build_binaries(&root, &kit)?;
    copy_libraries(&kit)?;
    for rel in FIXTURE_DIRS {
        if root.join(rel).is_dir() {
            copy_tree(&root.join(rel), &kit.join("tree").join(rel))?;
        }
    }
    copy_tree(&root.join("configs"), &kit.join("configs"))?;
    for (from, to) in [
        ("xtask/gpu/check.sh", "check.sh"),
        ("xtask/gpu/report.py", "report.py"),
        ("xtask/gpu/gen_omniglot.py", "gen_omniglot.py"),
        ("benches/peers/peers.py", "peers/peers.py"),
    ] {
        std::fs::copy(root.join(from), kit.join(to))
            .with_context(|| format!("cannot copy {from}"))?;
    }
    std::fs::write(
        kit.join("kit.env"),
        format!("BUILD_ROOT={}\n", shell_quote(&root.display().to_string())),
    )?;
    let status = Command::new(&env.python)
        .arg(kit.join("gen_omniglot.py"))
        .arg(kit.join("data/omniglot"))
        .arg("--zip")
        .status()
        .context("cannot run gen_omniglot.py")?;
    if !status.success() {
        bail!("gen_omniglot.py failed");
    }
    peer_wheels(&env.python, &kit.join("wheels"));
    let bytes = size_of(&kit);
    println!(
        "xtask: gpu-kit: {} ({:.1} MiB)",
        kit.display(),
        bytes as f64 / (1u64 << 20) as f64
    );
    if bytes > MAX_BYTES {
        bail!(
            "{} is {:.1} MiB, over the 60 MiB limit",
            kit.display(),
            bytes as f64 / (1u64 << 20) as f64
        );
    }
    println!("xtask: gpu-kit: on the GPU machine, from the repository root: bash .gpu/check.sh --out DIR");
    Ok(ExitCode::SUCCESS)
}

/// The release binary and the stripped release test binaries of every tests/*.rs naming `Cuda`.
fn build_binaries(root: &Path, kit: &Path) -> Result<()> {
    let ok =
        crate::run_status(cargo().args(["build", "--release", "-q", "-p", "metaloop-launcher"]))?;
    if ok != ExitCode::SUCCESS {
        bail!("cargo build --release -p metaloop-launcher failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    std::fs::copy(target.join("release/metaloop"), kit.join("metaloop"))
        .context("cannot copy target/release/metaloop")?;
    let names = cuda_test_names(root)?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--no-run",
        "--workspace",
        "-q",
        "--message-format=json",
    ]);
    for n in &names {
        cmd.args(["--test", n]);
    }
    let out = cmd.output().context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "cargo test --release --no-run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (m["executable"].as_str(), m["target"]["name"].as_str())
        else {
            continue;
        };
        if m["reason"] == "compiler-artifact" && m["target"]["kind"][0] == "test" {
            let dest = kit.join("tests").join(name);
            let status = Command::new("strip").arg("-o").arg(&dest).arg(exe).status();
            if !status.is_ok_and(|s| s.success()) {
                std::fs::copy(exe, &dest)?;
            }
        }
    }
    Ok(())
}

/// The names of tests/*.rs files that mention `Cuda` (the tests with a CUDA path).
fn cuda_test_names(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let files = CRATES
        .iter()
        .filter_map(|c| std::fs::read_dir(root.join(c).join("tests")).ok())
        .flatten();
    for entry in files {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && std::fs::read_to_string(&path)?.contains("Cuda")
        {
            names.push(
                path.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    names.sort();
    Ok(names)
}

/// The libraries the kit's binaries need beyond the GPU machine's own, and Open MPI's launcher.
fn copy_libraries(kit: &Path) -> Result<()> {
    let mut bins = vec![kit.join("metaloop")];
    for e in std::fs::read_dir(kit.join("tests"))? {
        bins.push(e?.path());
    }
    copy_needed(&bins, &kit.join("lib"))?;
    crate::gpu_mpi::pack(kit)
}

/// Copies (dereferenced) every library `ldd` finds for `bins` that is not a [`SYSTEM_LIBS`] one.
pub(crate) fn copy_needed(bins: &[PathBuf], dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    for bin in bins {
        let out = Command::new("ldd")
            .arg(bin)
            .output()
            .context("cannot run ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(path) = line.split("=> ").nth(1).and_then(|r| r.split(' ').next()) else {
                continue;
            };
            let name = Path::new(path)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            let torch_dir = path.contains("/torch/lib/") || path.contains("/.libtorch/");
            if !path.starts_with('/')
                || torch_dir
                || SYSTEM_LIBS.iter().any(|s| name.starts_with(s))
            {
                continue;
            }
            let to = dest.join(&*name);
            if !to.exists() {
                std::fs::copy(path, &to).with_context(|| format!("cannot copy {path}"))?;
            }
        }
    }
    Ok(())
}

/// Downloads the peers' wheels for CPython 3.12 on x86-64 into the per-user cache (once) and
/// copies them into `dest`. Without network and cache it says so and packs none: the check then
/// reports the peers that could not run.
fn peer_wheels(python: &Path, dest: &Path) {
    let cache = python
        .parent()
        .and_then(Path::parent)
        .map(|venv| venv.with_file_name("gpu-wheels"))
        .unwrap_or_else(|| PathBuf::from(".gpu-wheels"));
    let _ = std::fs::create_dir_all(&cache);
    let mut missing = Vec::new();
    for spec in WHEELS {
        let stem = spec.replace("==", "-");
        let have = std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&stem))
            })
            .unwrap_or(false);
        if !have {
            missing.push(*spec);
        }
    }
    if !missing.is_empty() {
        let mut cmd = Command::new(python);
        cmd.args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .args(["--python-version", "3.12", "--implementation", "cp"])
        .args([
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_27_x86_64",
        ])
        .args([
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
        ])
        .args(["--platform", "manylinux1_x86_64", "--platform", "any"])
        .arg("-d")
        .arg(&cache)
        .args(&missing);
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "xtask: gpu-kit: warning: pip download {} failed (no network?): the kit has no peers' wheels; {}",
                missing.join(" "),
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            ),
            Err(e) => eprintln!("xtask: gpu-kit: warning: cannot run pip download: {e}"),
        }
    }
    let _ = std::fs::create_dir_all(dest);
    for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".whl") {
            let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
        }
    }
}

/// Copies the directory `from` into `to` (files and folders; links followed).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let path = entry?.path();
        let dest = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest)
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => size_of(&p),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        })
        .sum()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
