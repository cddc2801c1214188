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
use crate::checkpoint;
use crate::config::TrainConfig;
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

/// The keys that change no number a run computes or writes: how often it checks, logs and
/// checkpoints, how long a collective may take, and where decoded images are cached. They are
/// left out of [`config_hash`], so `train --resume` may change them (docs/run-directory.md says
/// why each one is neutral). Keys that change the summation order (`run.threads`,
/// `run.workers`, `run.task_chunk`, `run.comm`) change f32 and f64 rounding, and stay in.
pub const NEUTRAL_KEYS: [&str; 7] = [
    "run.consistency_every",
    "run.collective_timeout_s",
    "task.cache_dir",
    "log.every",
    "log.checkpoint_every",
    "log.keep_checkpoints",
    "log.tensorboard",
];

/// `cfg` with every key of [`NEUTRAL_KEYS`] at its default: the part of a config that decides
/// the results.
pub fn result_config(cfg: &TrainConfig) -> TrainConfig {
    let d = TrainConfig::default();
    let mut c = cfg.clone();
    c.run.consistency_every = d.run.consistency_every;
    c.run.collective_timeout_s = d.run.collective_timeout_s;
    c.task.cache_dir = d.task.cache_dir;
    c.log.every = d.log.every;
    c.log.checkpoint_every = d.log.checkpoint_every;
    c.log.keep_checkpoints = d.log.keep_checkpoints;
    c.log.tensorboard = d.log.tensorboard;
    c
}

/// sha256 (hex) of the canonical JSON form of a config's [`result_config`]: two configs have
/// the same hash exactly when every value but the neutral ones is the same, however their TOML
/// files were written. A config whose neutral keys are at their defaults keeps the hash it had
/// before neutral keys were left out.
pub fn config_hash(cfg: &TrainConfig) -> String {
    full_hash(&result_config(cfg))
}

/// Whether `recorded` (a checkpoint's hash) was written by `cfg`: its [`config_hash`], or the
/// hash of the whole config, which checkpoints written before [`NEUTRAL_KEYS`] existed hold.
pub fn hash_matches(cfg: &TrainConfig, recorded: &str) -> bool {
    recorded == config_hash(cfg) || recorded == full_hash(cfg)
}

/// sha256 (hex) of the canonical JSON form of every value of `cfg`.
fn full_hash(cfg: &TrainConfig) -> String {
    // Serialising plain structs of strings and numbers cannot fail.
    let json = serde_json::to_vec(cfg).unwrap_or_default();
    checkpoint::sha256_hex(&json)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every leaf of `cfg`'s JSON form, as (dotted key, value).
    fn leaves(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, serde_json::Value)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(x, &key, out);
                }
            }
            _ => out.push((prefix.to_string(), v.clone())),
        }
    }

    /// The default config with `key` changed to another value of its type, if it deserializes.
    fn changed(key: &str, value: &serde_json::Value) -> Option<TrainConfig> {
        use serde_json::Value;
        let other = match value {
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) if n.is_u64() => Value::from(n.as_u64()? + 3),
            Value::Number(n) => Value::from(n.as_f64()? * 0.5 + 0.25),
            Value::String(s) => Value::from(format!("{s}x")),
            _ => return None,
        };
        let mut json = serde_json::to_value(TrainConfig::default()).ok()?;
        let (table, leaf) = key.split_once('.')?;
        json[table][leaf] = other;
        serde_json::from_value(json).ok()
    }

    #[test]
    fn neutral_keys_leave_the_hash_alone_and_every_other_key_changes_it() {
        let base = TrainConfig::default();
        let mut all = Vec::new();
        leaves(&serde_json::to_value(&base).unwrap(), "", &mut all);
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        for key in NEUTRAL_KEYS {
            assert!(keys.contains(&key), "{key} is not a config key");
        }
        let mut checked = 0;
        for (key, value) in &all {
            let Some(cfg) = changed(key, value) else {
                continue;
            };
            assert_ne!(cfg, base, "{key}");
            let neutral = NEUTRAL_KEYS.contains(&key.as_str());
            assert_eq!(config_hash(&cfg) == config_hash(&base), neutral, "{key}");
            // The whole config's hash, which older checkpoints hold, still tells them apart.
            assert!(hash_matches(&cfg, &full_hash(&cfg)), "{key}");
            assert!(!hash_matches(&base, &full_hash(&cfg)), "{key}");
            checked += 1;
        }
        assert!(checked > 35, "only {checked} keys could be changed");
    }

    #[test]
    fn a_config_with_neutral_keys_at_their_defaults_keeps_its_former_hash() {
        let mut cfg = TrainConfig::default();
        cfg.outer.lr = 0.5;
        assert_eq!(config_hash(&cfg), full_hash(&cfg));
    }
}
