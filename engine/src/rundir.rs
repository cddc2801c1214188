//! A run directory: everything one meta-training run leaves on disk.
//!
//! ```text
//! <out_dir>/<name>/
//!   config.toml      the resolved config (file + overrides), as the run used it
//!   metrics.jsonl    one JSON object per logged iteration
//!   checkpoints/     ckpt-<iteration>.safetensors + ckpt-<iteration>.json (see crate::checkpoint)
//!   report.json      the final meta-test and validation reports
//!   model.safetensors  θ0 with PyTorch state_dict names (PyTorch's load_state_dict reads it)
//!   plots/           PNG learning curves (written by the launcher)
//! ```
//!
//! A run directory is created in one rename, complete with its config, so a failure before or
//! during creation leaves nothing half-written. Callers create it only after every input was
//! validated and the datasets were loaded. This module writes files and never prints; what the
//! lines of `metrics.jsonl` and `report.json` hold is the caller's (serialisable) type.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{self, write_atomic};
use crate::config::TrainConfig;
use crate::{Error, Result};

/// The file names inside a run directory.
pub const CONFIG: &str = "config.toml";
pub const METRICS: &str = "metrics.jsonl";
pub const REPORT: &str = "report.json";
pub const CHECKPOINTS: &str = "checkpoints";
pub const MODEL: &str = "model.safetensors";
pub const PLOTS: &str = "plots";

/// sha256 (hex) of a config's canonical JSON form: two configs have the same hash exactly when
/// every value is the same, however their TOML files were written.
pub fn config_hash(cfg: &TrainConfig) -> String {
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
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        let staging = parent.join(format!(
            ".{}.creating-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let build = || -> Result<()> {
            fs::create_dir(&staging).map_err(io(&staging))?;
            fs::create_dir(staging.join(CHECKPOINTS)).map_err(io(&staging))?;
            write_atomic(&staging.join(CONFIG), config_toml.as_bytes())?;
            write_atomic(&staging.join(METRICS), b"")?;
            fs::rename(&staging, root).map_err(io(root))?;
            File::open(&parent)
                .and_then(|d| d.sync_all())
                .map_err(io(&parent))
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        Self::open(root)
    }

    /// Opens an existing run directory (one holding `config.toml`) to continue it.
    pub fn open(root: &Path) -> Result<RunDir> {
        let config = root.join(CONFIG);
        if !config.is_file() {
            return Err(Error::RunDir {
                path: root.to_path_buf(),
                reason: format!("not a run directory (no {CONFIG})"),
            });
        }
        let metrics_path = root.join(METRICS);
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(io(&metrics_path))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            metrics,
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
        let path = self.model_path();
        let tmp = self.root.join(format!("{MODEL}.tmp"));
        params.save(&tmp).map_err(|e| Error::RunDir {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.root))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("metaloop-rundir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[derive(Serialize)]
    struct Line {
        iteration: u64,
        meta_loss: f64,
    }

    #[test]
    fn create_writes_the_config_and_refuses_an_existing_directory() {
        let out = scratch("create");
        let root = out.join("run-a");
        let run = RunDir::create(&root, "[run]\nname = \"run-a\"\n").unwrap();
        assert_eq!(run.config_text().unwrap(), "[run]\nname = \"run-a\"\n");
        assert!(run.checkpoints_dir().is_dir());
        assert_eq!(fs::read_to_string(run.metrics_path()).unwrap(), "");
        assert!(matches!(
            RunDir::create(&root, ""),
            Err(Error::RunDirExists { .. })
        ));
        // Only the run directory is left: no staging directory.
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("run-a")]);
        fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn metrics_lines_append_and_truncate_to_a_checkpoint() {
        let out = scratch("metrics");
        let root = out.join("r");
        let mut run = RunDir::create(&root, "").unwrap();
        for it in [10, 20, 30] {
            run.log(&Line {
                iteration: it,
                meta_loss: it as f64 / 10.0,
            })
            .unwrap();
        }
        // A torn last line, as a kill in the middle of a write leaves.
        fs::OpenOptions::new()
            .append(true)
            .open(run.metrics_path())
            .unwrap()
            .write_all(b"{\"iterat")
            .unwrap();
        run.truncate_metrics_after(20).unwrap();
        run.log(&Line {
            iteration: 30,
            meta_loss: 9.0,
        })
        .unwrap();
        let text = fs::read_to_string(run.metrics_path()).unwrap();
        assert_eq!(
            text,
            "{\"iteration\":10,\"meta_loss\":1.0}\n{\"iteration\":20,\"meta_loss\":2.0}\n{\"iteration\":30,\"meta_loss\":9.0}\n"
        );
        fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn open_needs_a_config() {
        let out = scratch("open");
        fs::create_dir_all(&out).unwrap();
        let err = RunDir::open(&out).unwrap_err().to_string();
        assert!(err.contains("no config.toml"), "{err}");
        fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn config_hash_follows_values() {
        let a = TrainConfig::default();
        let mut b = TrainConfig::default();
        assert_eq!(config_hash(&a), config_hash(&b));
        b.outer.lr = 2e-3;
        assert_ne!(config_hash(&a), config_hash(&b));
        assert_eq!(config_hash(&a).len(), 64);
    }
}
