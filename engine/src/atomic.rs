//! Atomic file writes, the crate's one way to replace a file: run directory files, checkpoints
//! and the decode cache all write through [`write_atomic`].
//!
//! Each write goes to a uniquely named temporary file beside the target (so two processes never
//! share one), is fsynced, renamed into place, and the directory is fsynced. A crash at any
//! moment leaves the old file or the new one, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// The marker in temporary file names: `.<name>.tmp-<pid>-<n>`.
const TMP_MARK: &str = ".tmp-";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fsyncs a directory so that renames inside it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// A temporary name beside `path` that no other write (of this or another process) uses.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = N.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}{TMP_MARK}{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. On failure the temporary file is removed and `path` is as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = File::create(tmp).map_err(io(tmp))?;
        f.write_all(bytes).map_err(io(tmp))
    })
}

/// [`write_atomic`] for content that `fill` writes into the file it is given (a serializer that
/// writes files itself).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let result = fill(&tmp)
        .and_then(|()| {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(io(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// True for a temporary file of a file named `prefix*`, left by a write of this process or of a
/// process that is gone. Also true for the fixed names of earlier versions: `prefix*.tmp` and
/// `prefix*.scratch`.
pub(crate) fn leftover_tmp(name: &str, prefix: &str) -> bool {
    let Some((_, rest)) = name.split_once(TMP_MARK) else {
        return name.starts_with(prefix) && (name.ends_with(".tmp") || name.ends_with(".scratch"));
    };
    let pid = rest.split('-').next().unwrap_or("");
    name.strip_prefix('.')
        .is_some_and(|n| n.starts_with(prefix))
        && (pid == std::process::id().to_string() || !Path::new("/proc").join(pid).exists())
}
