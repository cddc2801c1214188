//! A run directory: everything one meta-training run leaves on disk.
//!
//! ```text
//! <out_dir>/<name>/
//!   config.toml      the resolved config (file + overrides), as the run used it
//!   metrics.jsonl    one JSON object per logged iteration
//!   checkpoints/     ckpt-<iteration>.safetensors + ckpt-<iteration>.json (see crate::checkpoint)
//!   report.json      the final meta-test and validation reports
//!   model.safetensors  θ0 with PyTorch state_dict names (PyTorch's load_state_dict reads it)
//!   model.best.safetensors  the same at the best validation so far, and best.json its
//!                    iteration and value (crate::selection)
//!   plots/           PNG learning curves (written by the launcher)
//! ```
//!
//! A run directory is created in one rename, complete with its config, so a failure before or
//! during creation leaves nothing half-written. Callers create it only after every input was
//! validated and the datasets were loaded. This module writes files and never prints; what the
//! lines of `metrics.jsonl` and `report.json` hold is the caller's (serialisable) type.
//!
//! A [`RunDir`] holds the directory's advisory lock ([`RunLock`]: `flock` on `<run>/.lock`, which
//! holds the holder's pid) for as long as it is open, so that two processes never write one run
//! directory (interleaved metrics, one pruning the other's checkpoints). `metaloop eval` takes
//! the same lock while it reads.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::atomic::{write_atomic, write_atomic_with};
pub use crate::config_hash::{
    config_hash, hash_matches, neutral_keys, result_config, NEUTRAL_KEYS, REPRODUCIBLE_NEUTRAL_KEYS,
};
use crate::{Error, Result};

/// The file names inside a run directory.
pub const CONFIG: &str = "config.toml";
pub const METRICS: &str = "metrics.jsonl";
pub const REPORT: &str = "report.json";
pub const CHECKPOINTS: &str = "checkpoints";
pub const MODEL: &str = "model.safetensors";
pub const BEST_MODEL: &str = "model.best.safetensors";
pub const BEST: &str = "best.json";
pub const PLOTS: &str = "plots";
pub const LOCK: &str = ".lock";

/// Makes each staging directory's name unique, also between threads of one process.
static STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The advisory lock (`flock`, exclusive) on a run directory; released when dropped (or when the
/// process ends, however it ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of the run directory `root` for a writer (train, resume) without waiting,
    /// creating the lock file if need be and writing this process's pid into it:
    /// [`Error::RunDirBusy`], naming the holder's pid, when another process holds it.
    pub fn acquire(root: &Path) -> Result<RunLock> {
        let path = root.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        Self::take(root, &path, &file)?;
        file.set_len(0)
            .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
            .and_then(|()| file.flush())
            .map_err(io(&path))?;
        Ok(RunLock { _file: file })
    }

    /// The same lock for a reader (`metaloop eval`), which writes nothing: `None` when the run
    /// directory has no lock file (one written before locks existed) or it cannot be opened.
    pub fn acquire_for_reading(root: &Path) -> Result<Option<RunLock>> {
        let path = root.join(LOCK);
        let Ok(file) = File::open(&path) else {
            return Ok(None);
        };
        Self::take(root, &path, &file)?;
        Ok(Some(RunLock { _file: file }))
    }

    /// `flock`s `file` (the lock file `path` of `root`) without waiting.
    fn take(root: &Path, path: &Path, file: &File) -> Result<()> {
        match file.try_lock() {
            Ok(()) => Ok(()),
            Err(fs::TryLockError::WouldBlock) => Err(Error::RunDirBusy {
                path: root.to_path_buf(),
                holder: holder(path, file),
            }),
            Err(fs::TryLockError::Error(e)) => Err(io(path)(e)),
        }
    }
}

/// Who holds the lock on `file`: the pid that the kernel lists for its inode in /proc/locks (a
/// reader writes no pid), else the pid the writer wrote into it.
fn holder(path: &Path, file: &File) -> String {
    use std::os::unix::fs::MetadataExt;
    let inode = file.metadata().map(|m| m.ino()).ok();
    let listed = fs::read_to_string("/proc/locks").ok().and_then(|locks| {
        locks.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ino = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
            (f.get(1) == Some(&"FLOCK") && Some(ino) == inode).then(|| f[4].to_string())
        })
    });
    let written = fs::read_to_string(path).unwrap_or_default();
    match listed.as_deref().unwrap_or(written.trim()) {
        "" => "another process".to_string(),
        pid => format!("pid {pid}"),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open run directory, appending to its `metrics.jsonl`.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    metrics: File,
    _lock: RunLock,
}

impl RunDir {
    /// Creates `root` holding `config.toml` (the text `config_toml`), an empty `metrics.jsonl`
    /// and `checkpoints/`. Fails with [`Error::RunDirExists`] when `root` exists. The directory
    /// is assembled under a hidden temporary name beside `root` and renamed into place.
    pub fn create(root: &Path, config_toml: &str) -> Result<RunDir> {
        if root.exists() {
            return Err(Error::RunDirExists {
                path: root.to_path_buf(),
            });
        }
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = root.file_name().ok_or_else(|| Error::RunDir {
            path: root.to_path_buf(),
            reason: "a run directory needs a name".into(),
        })?;
        if let Some(file) = parent.ancestors().find(|a| a.is_file()) {
            return Err(Error::OutDirNotDirectory {
                path: file.to_path_buf(),
            });
        }
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        let staging = parent.join(format!(
            ".{}.creating-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // The lock is taken inside the staging directory and moves with it: no other process
        // can take the new run directory between its rename and its opening.
        let build = || -> Result<RunLock> {
            fs::create_dir(&staging).map_err(io(&staging))?;
            let lock = RunLock::acquire(&staging)?;
            fs::create_dir(staging.join(CHECKPOINTS)).map_err(io(&staging))?;
            write_atomic(&staging.join(CONFIG), config_toml.as_bytes())?;
            write_atomic(&staging.join(METRICS), b"")?;
            // Another run may have taken the name since the check above: renaming onto its
            // (non-empty) directory fails, and that is the same refusal as the check's.
            fs::rename(&staging, root).map_err(|source| {
                if root.exists() {
                    Error::RunDirExists {
                        path: root.to_path_buf(),
                    }
                } else {
                    io(root)(source)
                }
            })?;
            File::open(&parent)
                .and_then(|d| d.sync_all())
                .map_err(io(&parent))?;
            Ok(lock)
        };
        match build() {
            Ok(lock) => Self::open_locked(root, lock),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// Opens an existing run directory (one holding `config.toml`) to continue it, taking its
    /// lock ([`Error::RunDirBusy`] when another process holds it).
    pub fn open(root: &Path) -> Result<RunDir> {
        let config = root.join(CONFIG);
        if !config.is_file() {
            return Err(Error::RunDir {
                path: root.to_path_buf(),
                reason: format!("not a run directory (no {CONFIG})"),
            });
        }
        let lock = RunLock::acquire(root)?;
        Self::open_locked(root, lock)
    }

    fn open_locked(root: &Path, lock: RunLock) -> Result<RunDir> {
        let metrics_path = root.join(METRICS);
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(io(&metrics_path))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            metrics,
            _lock: lock,
        })
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<run>/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// `<run>/metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    /// `<run>/checkpoints`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    /// `<run>/report.json`.
    pub fn report_path(&self) -> PathBuf {
        self.root.join(REPORT)
    }

    /// `<run>/model.safetensors`.
    pub fn model_path(&self) -> PathBuf {
        self.root.join(MODEL)
    }

    /// `<run>/model.best.safetensors`.
    pub fn best_model_path(&self) -> PathBuf {
        self.root.join(BEST_MODEL)
    }

    /// `<run>/plots`.
    pub fn plots_dir(&self) -> PathBuf {
        self.root.join(PLOTS)
    }

    /// The text of `config.toml`.
    pub fn config_text(&self) -> Result<String> {
        let path = self.config_path();
        fs::read_to_string(&path).map_err(io(&path))
    }

    /// Appends one line to `metrics.jsonl` and flushes it.
    pub fn log<T: Serialize>(&mut self, line: &T) -> Result<()> {
        let path = self.metrics_path();
        let mut text = serde_json::to_string(line).map_err(|e| Error::RunDir {
            path: path.clone(),
            reason: format!("cannot serialise a metrics line: {e}"),
        })?;
        text.push('\n');
        self.metrics.write_all(text.as_bytes()).map_err(io(&path))?;
        self.metrics.flush().map_err(io(&path))
    }

    /// Fsyncs `metrics.jsonl` (done with every checkpoint, so logged lines up to a checkpoint
    /// survive a crash).
    pub fn sync_metrics(&self) -> Result<()> {
        self.metrics.sync_data().map_err(io(&self.metrics_path()))
    }

    /// Keeps only the lines of `metrics.jsonl` whose `iteration` is at most `iteration` (and
    /// drops a torn last line): on resume from a checkpoint, lines logged after it are redone.
    pub fn truncate_metrics_after(&mut self, iteration: u64) -> Result<()> {
        let path = self.metrics_path();
        let file = File::open(&path).map_err(io(&path))?;
        let mut kept = String::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io(&path))?;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if value
                .get("iteration")
                .and_then(|v| v.as_u64())
                .is_some_and(|it| it <= iteration)
            {
                kept.push_str(&line);
                kept.push('\n');
            }
        }
        write_atomic(&path, kept.as_bytes())?;
        self.metrics = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(())
    }

    /// Writes `report.json` atomically.
    pub fn write_report<T: Serialize>(&self, report: &T) -> Result<PathBuf> {
        let path = self.report_path();
        let json = serde_json::to_vec_pretty(report).map_err(|e| Error::RunDir {
            path: path.clone(),
            reason: format!("cannot serialise the report: {e}"),
        })?;
        write_atomic(&path, &json)?;
        Ok(path)
    }

    /// Writes θ0 as `model.safetensors` (atomically), with PyTorch state_dict names.
    pub fn write_model(&self, params: &metaloop_runtime::Params) -> Result<PathBuf> {
        write_params(self.model_path(), params)
    }
}

/// Writes θ0 as the safetensors file `path` (atomically), with PyTorch state_dict names.
pub fn write_params(path: PathBuf, params: &metaloop_runtime::Params) -> Result<PathBuf> {
    write_atomic_with(&path, |tmp| {
        params.save(tmp).map_err(|e| Error::RunDir {
            path: path.clone(),
            reason: e.to_string(),
        })
    })?;
    Ok(path)
}
