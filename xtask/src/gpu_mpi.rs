//! Open MPI for the GPU kit (`cargo xtask gpu-kit`): `mpirun` with its plugins, help files and
//! PMIx, packed into `.gpu/ompi/` so that two ranks can share the GPU machine's one device
//! (`run.comm = "mpi"`), where no Open MPI is installed.
//!
//! Open MPI finds its plugins and help files under its configured prefix, which `OPAL_PREFIX`
//! replaces at run time; PMIx likewise under `PMIX_INSTALL_PREFIX`. So the tree is copied with the
//! same layout below the prefix (`ompi_info --path all` names each directory), the libraries the
//! plugins need go to `ompi/lib/`, and check.sh sets both variables. Nothing is packed when this
//! machine has no Open MPI (the check then reports the MPI step as skipped).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpu_kit::{copy_needed, copy_tree};

/// Open MPI's installation directories, from `ompi_info --path all`.
struct Paths {
    prefix: PathBuf,
    bindir: PathBuf,
    pkglibdir: PathBuf,
    pkgdatadir: PathBuf,
}

fn paths() -> Option<Paths> {
    let out = Command::new("ompi_info")
        .args(["--path", "all"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| PathBuf::from(v.trim()))
        })
    };
    Some(Paths {
        prefix: get("Prefix")?,
        bindir: get("Bindir")?,
        pkglibdir: get("Pkglibdir")?,
        pkgdatadir: get("Pkgdatadir")?,
    })
}

/// `dir` moved from below `prefix` to below `to`.
fn under(to: &Path, prefix: &Path, dir: &Path) -> PathBuf {
    to.join(dir.strip_prefix(prefix).unwrap_or(dir))
}

/// Packs Open MPI into `kit/ompi` (see the module documentation).
pub fn pack(kit: &Path) -> Result<()> {
    let Some(p) = paths() else {
        eprintln!("xtask: gpu-kit: warning: no ompi_info here: the kit has no mpirun");
        return Ok(());
    };
    let ompi = kit.join("ompi");
    let bin = under(&ompi, &p.prefix, &p.bindir);
    std::fs::create_dir_all(&bin)?;
    let mut bins = Vec::new();
    for (from, to) in [("orterun", "mpirun"), ("orted", "orted")] {
        let src = p.bindir.join(from);
        if src.exists() {
            let dest = bin.join(to);
            std::fs::copy(&src, &dest).with_context(|| format!("cannot copy {}", src.display()))?;
            bins.push(dest);
        }
    }
    let plugins = under(&ompi, &p.prefix, &p.pkglibdir);
    copy_tree(&p.pkglibdir, &plugins)?;
    copy_tree(&p.pkgdatadir, &under(&ompi, &p.prefix, &p.pkgdatadir))?;
    bins.extend(shared_objects(&plugins));
    // PMIx: libpmix's own prefix is the directory above the lib/ holding it.
    if let Some(pmix) = pmix_prefix() {
        let to = ompi.join("pmix");
        for sub in ["lib/pmix", "share/pmix"] {
            if pmix.join(sub).is_dir() {
                copy_tree(&pmix.join(sub), &to.join(sub))?;
            }
        }
        bins.extend(shared_objects(&to.join("lib/pmix")));
    }
    copy_needed(&bins, &ompi.join("lib"))
}

/// The installation prefix of the libpmix that Open MPI's PMIx plugin loads, if any.
fn pmix_prefix() -> Option<PathBuf> {
    let out = Command::new("ldconfig").arg("-p").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lib = text
        .lines()
        .find(|l| l.trim_start().starts_with("libpmix.so.2 "))?
        .split("=> ")
        .nth(1)?
        .trim()
        .to_string();
    let real = std::fs::canonicalize(lib).ok()?;
    // Debian: /usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so.2.x (ldconfig may name a link to it).
    let dir = real.parent()?;
    if dir.join("pmix").is_dir() {
        return dir.parent().map(Path::to_path_buf);
    }
    let debian = dir.join("pmix2");
    debian.join("lib/pmix").is_dir().then_some(debian)
}

fn shared_objects(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "so"))
        .collect()
}
