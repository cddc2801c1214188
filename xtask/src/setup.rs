//! `cargo xtask setup`: everything the build needs, installed once per user and reused.
//!
//! - libtorch 2.11.0: a Python venv with `torch==2.11.0` from PyPI, in the per-user cache
//!   (`$XDG_CACHE_HOME/metaloop` or `~/.cache/metaloop`), shared by every clone and CI run. It is
//!   built in a temporary directory and renamed into place, so an interrupted set-up leaves
//!   nothing half-installed. `.libtorch` in the clone links to its `torch` package
//!   (`.cargo/config.toml` points `LIBTORCH` there).
//! - TensorBoard (`tensorboard==2.21.0`) in the same venv: engine/tests/tensorboard.rs reads the
//!   event files metaloop writes back with TensorBoard's own reader.
//! - The CUDA C runtime headers of PyTorch's CUDA (`nvidia-cuda-crt`) in the same venv, which
//!   libtorch's CUDA headers need (runtime/build.rs).
//! - Open MPI and libclang (for rsmpi's bindings): installed with apt-get when running as root,
//!   otherwise the exact command is printed.
//! - Slurm and munge, for the one-node cluster test (launcher/tests/slurm_one_node.rs): installed
//!   with apt-get when running as root; otherwise, or when apt-get fails, a note is printed and
//!   that test skips with a message.
//!
//! Idempotent: a second run checks a stamp file and a few paths, and takes well under a second.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch that tch 0.24.0 expects, and that the GPU machines carry.
pub const TORCH_VERSION: &str = "2.11.0";
/// Peers used by fixture generators and benchmarks (both work with torch 2.11.0: higher's and TorchOpt's requirements allow it).
const PEERS: &[&str] = &["higher==0.2.1", "torchopt==0.7.3"];
/// TensorBoard's own event reader, with which engine/tests/tensorboard.rs reads back the run's scalars.
const TENSORBOARD: &[&str] = &["tensorboard==2.21.0"];
/// Free space the venv needs: the CUDA-enabled wheel with its NVIDIA packages is about 4.6 GB.
const VENV_BYTES: u64 = 7 << 30;
// iproute2: `ip netns` for the two-host test (launcher/tests/multihost.rs).
const APT_PACKAGES: &str = "libopenmpi-dev openmpi-bin libclang-dev iproute2";
const STAMP: &str = ".metaloop-setup-complete";

/// What set-up produced.
pub struct Env {
    /// The venv's Python interpreter.
    pub python: PathBuf,
}

/// The clone's root (the parent of xtask/), found at run time.
///
/// Not from `env!("CARGO_MANIFEST_DIR")`: two clones sharing a `CARGO_TARGET_DIR` share this
/// binary, and a path fixed at compile time would then point into the other clone. `cargo run`
/// sets `CARGO_MANIFEST_DIR` for the binary it starts; otherwise the working directory and its
/// parents are searched for `xtask/Cargo.toml`.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        if let Some(root) = Path::new(&dir).parent().filter(|r| is_root(r)) {
            return root.to_path_buf();
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .find(|d| is_root(d))
        .map(Path::to_path_buf)
        .unwrap_or(cwd)
}

fn is_root(dir: &Path) -> bool {
    dir.join("xtask").join("Cargo.toml").is_file() && dir.join("Cargo.toml").is_file()
}

/// The libtorch directory every cargo command of xtask builds against: the venv's torch package
/// in the per-user cache, the target of `.libtorch`.
///
/// One path for every clone, so that clones sharing a `CARGO_TARGET_DIR` reuse torch-sys's build
/// (its build script reruns whenever the string `LIBTORCH` changes). `None` before set-up.
pub fn stable_libtorch() -> Option<PathBuf> {
    std::fs::read_link(repo_root().join(".libtorch")).ok()
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("metaloop"));
    }
    let home = std::env::var_os("HOME").context(
        "neither XDG_CACHE_HOME nor HOME is set: set one of them to a writable directory",
    )?;
    Ok(PathBuf::from(home).join(".cache").join("metaloop"))
}

/// Runs set-up; with `peers`, also installs higher and TorchOpt into the venv.
pub fn run(peers: bool) -> Result<Env> {
    let venv = cache_dir()?.join(format!("torch-{TORCH_VERSION}"));
    let python = venv.join("bin").join("python");
    let torch_dir = ensure_venv(&venv, &python)?;
    ensure_extra(
        &venv,
        &python,
        "tensorboard",
        "import tensorboard.backend.event_processing.event_accumulator",
        TENSORBOARD,
    )?;
    if peers {
        ensure_peers(&venv, &python)?;
    }
    ensure_cuda_headers(&python, &torch_dir);
    link_libtorch(&torch_dir)?;
    ensure_mpi()?;
    ensure_slurm();
    Ok(Env { python })
}

/// Makes sure the venv exists with torch==TORCH_VERSION; returns the torch package directory.
fn ensure_venv(venv: &Path, python: &Path) -> Result<PathBuf> {
    let stamp = venv.join(STAMP);
    if let Ok(dir) = std::fs::read_to_string(&stamp) {
        let dir = PathBuf::from(dir.trim());
        if dir.join("lib").join("libtorch.so").exists() && python.exists() {
            return Ok(dir);
        }
    }
    // A venv made earlier without a stamp (by hand, or by an older set-up): adopt it if it holds
    // the right torch.
    if python.exists() {
        if let Ok(dir) = torch_dir_of(python) {
            std::fs::write(&stamp, dir.display().to_string())
                .with_context(|| format!("cannot write {}", stamp.display()))?;
            return Ok(dir);
        }
    }
    let system_python = check_system_python()?;
    let parent = venv.parent().expect("the venv has a parent");
    std::fs::create_dir_all(parent).with_context(|| {
        format!(
            "cannot create the cache directory {}: set XDG_CACHE_HOME to a writable directory",
            parent.display()
        )
    })?;
    check_free_space(parent, VENV_BYTES)?;

    let partial = parent.join(format!(
        "torch-{TORCH_VERSION}.partial-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    eprintln!(
        "xtask: setup: creating the libtorch venv in {} (first time only: about 75 s and 4.6 GB)",
        venv.display()
    );
    let out = Command::new(&system_python)
        .args(["-m", "venv"])
        .arg(&partial)
        .output()
        .context("cannot run python3 -m venv")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        bail!(
            "python3 -m venv failed ({}): install Python's venv module (apt-get install -y python3-venv) and rerun",
            last_line(&out.stderr)
        );
    }
    let spec = format!("torch=={TORCH_VERSION}");
    if let Err(e) = pip_install(
        &partial.join("bin").join("python"),
        &[&spec, "numpy", "safetensors"],
    ) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    // Rename into place; a concurrent set-up may have won the race, which is fine.
    if let Err(e) = std::fs::rename(&partial, venv) {
        let _ = std::fs::remove_dir_all(&partial);
        if !venv.exists() {
            bail!("cannot move the new venv into {}: {e}", venv.display());
        }
    }
    let dir = torch_dir_of(python)?;
    std::fs::write(&stamp, dir.display().to_string())
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(dir)
}

/// The venv's torch package directory, if it holds torch TORCH_VERSION with libtorch inside.
fn torch_dir_of(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(version), Some(dir)) = (lines.next(), lines.next()) else {
        bail!(
            "{} has no usable torch: {}",
            python.display(),
            last_line(&out.stderr)
        );
    };
    // The wheel reports e.g. "2.11.0+cu130".
    if version.split('+').next() != Some(TORCH_VERSION) {
        bail!("{} has torch {version}, expected {TORCH_VERSION}: delete {} and rerun `cargo xtask setup`", python.display(), python.parent().and_then(Path::parent).unwrap_or(python).display());
    }
    let dir = PathBuf::from(dir);
    if !dir.join("lib").join("libtorch.so").exists() {
        bail!(
            "{} has no lib/libtorch.so: delete the venv and rerun `cargo xtask setup`",
            dir.display()
        );
    }
    Ok(dir)
}

fn check_system_python() -> Result<PathBuf> {
    let python = std::env::var_os("METALOOP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .args(["-c", "import sys; print('%d %d' % sys.version_info[:2])"])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {} ({e}): install Python 3.10 to 3.13 (apt-get install -y python3 python3-venv) or set METALOOP_PYTHON", python.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u32> = text
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    match v.as_slice() {
        [3, minor] if (10..=13).contains(minor) => Ok(python),
        _ => bail!(
            "{} is Python {}, but torch {TORCH_VERSION} wheels need Python 3.10 to 3.13: install one and set METALOOP_PYTHON to it",
            python.display(),
            text.trim()
        ),
    }
}

fn check_free_space(dir: &Path, need: u64) -> Result<()> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output();
    let Ok(out) = out else { return Ok(()) }; // no df: pip will report a full disk itself
    let avail: Option<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok());
    match avail {
        Some(a) if a < need => bail!(
            "disk full: {} has {:.1} GiB free, the libtorch venv needs {:.1} GiB; free space or set XDG_CACHE_HOME to a larger disk",
            dir.display(),
            a as f64 / (1u64 << 30) as f64,
            need as f64 / (1u64 << 30) as f64
        ),
        _ => Ok(()),
    }
}

fn pip_install(python: &Path, packages: &[&str]) -> Result<()> {
    eprintln!("xtask: setup: pip install {}", packages.join(" "));
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(packages)
        .output()
        .with_context(|| format!("cannot run {} -m pip", python.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let what = packages.join(" ");
    if err.contains("No space left") {
        bail!(
            "disk full while installing {what}: free space or set XDG_CACHE_HOME to a larger disk"
        );
    }
    if [
        "ConnectionError",
        "Max retries",
        "Temporary failure in name resolution",
        "Network is unreachable",
        "ProxyError",
    ]
    .iter()
    .any(|m| err.contains(m))
    {
        bail!("cannot reach the Python package registry to install {what}: check the network or set PIP_INDEX_URL to a reachable mirror");
    }
    if err.contains("No matching distribution") {
        bail!("the package registry has no {what} for this Python/platform: use Python 3.10 to 3.13 on x86_64 or aarch64 Linux");
    }
    bail!("pip install {what} failed: {}", last_line(&out.stderr))
}

fn ensure_peers(venv: &Path, python: &Path) -> Result<()> {
    ensure_extra(venv, python, "peers", "import higher, torchopt", PEERS)
}

/// Installs `packages` into the venv unless `import_check` already succeeds there; a stamp file
/// named after `what` makes the next set-up skip even the check.
pub(crate) fn ensure_extra(
    venv: &Path,
    python: &Path,
    what: &str,
    import_check: &str,
    packages: &[&str],
) -> Result<()> {
    let stamp = venv.join(format!(".metaloop-{what}-complete"));
    if stamp.exists() {
        return Ok(());
    }
    let ok = Command::new(python)
        .args(["-c", import_check])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        pip_install(python, packages)?;
    }
    std::fs::write(&stamp, packages.join(" "))
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(())
}

/// The CUDA C runtime headers (`crt/host_defines.h` and the rest of `crt/`) that
/// `cuda_runtime_api.h` includes: PyTorch's CUDA wheel ships nvidia-cuda-runtime's headers
/// without them. With them, runtime's build.rs compiles the fused steps' shim against libtorch's
/// CUDA headers (kernels on libtorch's current stream). A path check when present (fast); a CPU
/// wheel (no nvidia/cu13) needs none. Without network it warns and the build keeps its fallback.
const CUDA_CRT: &str = "nvidia-cuda-crt==13.0.88";

fn ensure_cuda_headers(python: &Path, torch_dir: &Path) {
    let include = torch_dir.join("../nvidia/cu13/include");
    if !include.join("cuda_runtime_api.h").exists() || include.join("crt/host_defines.h").exists() {
        return;
    }
    if let Err(e) = pip_install(python, &[CUDA_CRT]) {
        eprintln!("xtask: setup: warning: {e:#}; CUDA kernels will use the legacy default stream");
    }
}

/// Points `<repo>/.libtorch` at the venv's torch package.
fn link_libtorch(torch_dir: &Path) -> Result<()> {
    let link = repo_root().join(".libtorch");
    if std::fs::read_link(&link).ok().as_deref() == Some(torch_dir) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        if link.is_dir() && !link.symlink_metadata()?.file_type().is_symlink() {
            bail!(
                "{} is a directory, not the link set-up makes: move it away and rerun",
                link.display()
            );
        }
        std::fs::remove_file(&link)
            .with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(torch_dir, &link)
        .with_context(|| format!("cannot create the link {}", link.display()))?;
    Ok(())
}

/// Open MPI (headers, mpicc, mpirun) and libclang for rsmpi's bindgen.
fn ensure_mpi() -> Result<()> {
    let missing = mpi_missing();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        bail!("{} missing and set-up is not root: run `sudo apt-get install -y {APT_PACKAGES}` and rerun", missing.join(", "));
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("{} missing and there is no apt-get: install Open MPI (with headers and mpirun) and libclang with your package manager", missing.join(", "));
    }
    eprintln!(
        "xtask: setup: installing {APT_PACKAGES} ({} missing)",
        missing.join(", ")
    );
    for args in [
        vec!["update", "-q"],
        ["install", "-y", "-q", "--no-install-recommends"]
            .into_iter()
            .chain(APT_PACKAGES.split(' '))
            .collect(),
    ] {
        let out = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot run apt-get")?;
        if !out.status.success() {
            bail!("apt-get {} failed ({}): check the network and run `apt-get install -y {APT_PACKAGES}`", args[0], last_line(&out.stderr));
        }
    }
    let still = mpi_missing();
    if !still.is_empty() {
        bail!(
            "{} still missing after apt-get install {APT_PACKAGES}",
            still.join(", ")
        );
    }
    Ok(())
}

/// Debian's Slurm 22.05 and munge, which launcher/tests/slurm_one_node.rs starts as a one-node
/// cluster. Optional: without them that test skips, so a failure here is a note, not an error.
const SLURM_PACKAGES: &[&str] = &["slurmctld", "slurmd", "slurm-client", "munge"];

fn ensure_slurm() {
    // On PATH, not run: Slurm's clients exit non-zero without a cluster's config.
    let have = |prog: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
    };
    if ["slurmctld", "slurmd", "sbatch", "munged"]
        .iter()
        .all(|p| have(p))
    {
        return;
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let list = SLURM_PACKAGES.join(" ");
    if !is_root {
        eprintln!("xtask: setup: Slurm is not installed and set-up is not root; the one-node Slurm test will skip (`sudo apt-get install -y {list}` enables it)");
        return;
    }
    eprintln!("xtask: setup: installing {list} for the one-node Slurm test");
    let out = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(SLURM_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "xtask: setup: apt-get install {list} failed ({}); the one-node Slurm test will skip",
            last_line(&o.stderr)
        ),
        Err(e) => {
            eprintln!("xtask: setup: cannot run apt-get ({e}); the one-node Slurm test will skip")
        }
    }
}

fn mpi_missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    let have = |prog: &str| {
        Command::new(prog)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("mpirun") {
        missing.push("mpirun");
    }
    // mpicc --showme:incdirs names the directory of mpi.h (Open MPI's wrapper).
    let header = Command::new("mpicc")
        .arg("--showme:incdirs")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|d| Path::new(d).join("mpi.h").exists())
        })
        .unwrap_or(false);
    if !header {
        missing.push("Open MPI headers (mpi.h)");
    }
    if !libclang_present() {
        missing.push("libclang");
    }
    if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        missing.push("ip (iproute2)");
    }
    missing
}

fn libclang_present() -> bool {
    if let Some(p) = std::env::var_os("LIBCLANG_PATH") {
        return Path::new(&p).exists();
    }
    let Ok(entries) = std::fs::read_dir("/usr/lib") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        name.to_string_lossy().starts_with("llvm-")
            && std::fs::read_dir(e.path().join("lib"))
                .map(|libs| {
                    libs.flatten().any(|l| {
                        let n = l.file_name().to_string_lossy().into_owned();
                        // libclang-cpp (present on many systems) is not the C API bindgen loads.
                        n == "libclang.so"
                            || n.starts_with("libclang.so.")
                            || (n.starts_with("libclang-") && !n.starts_with("libclang-cpp"))
                    })
                })
                .unwrap_or(false)
    })
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}
