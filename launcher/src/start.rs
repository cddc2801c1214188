//! Where `train` starts: a fresh run directory, the latest checkpoint of an existing one
//! (`--resume`), or whichever applies (`--resume auto`, for job scripts that are requeued).
//!
//! Everything here is checked before anything is written, so bad input leaves nothing behind.

use std::path::{Path, PathBuf};

use anyhow::Result;
use metaloop_engine::checkpoint::{self, Checkpoint};
use metaloop_engine::config::TrainConfig;
use metaloop_engine::rundir;
use metaloop_engine::Error as EngineError;
use metaloop_runtime::comm::Communicator;

use crate::config;
use crate::errors::{bad, setup_error};

/// The value of `train --resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resume {
    /// The latest checkpoint, which must exist (plain `--resume`).
    Latest,
    /// The latest checkpoint if the run directory has one, else a fresh start.
    Auto,
}

/// The run directory of a config.
pub fn run_root(cfg: &TrainConfig) -> PathBuf {
    Path::new(&cfg.run.out_dir).join(&cfg.run.name)
}

/// Where a run starts, agreed on by every rank.
pub enum Start {
    /// A new run directory.
    Fresh,
    /// The existing run directory, which holds no checkpoint yet (a job stopped before its
    /// first one): its iterations are redone from the start (`--resume auto`).
    Again,
    /// The checkpoint to continue from.
    From(Checkpoint),
}

impl Start {
    /// The checkpoint this run continues from.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        match self {
            Start::From(c) => Some(c),
            _ => None,
        }
    }
}
/// Keys whose values differ between two configs (dotted, sorted).
fn differing_keys(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                let null = serde_json::Value::Null;
                for k in keys {
                    let (a, b) = (x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null));
                    walk(a, b, &config::dotted(prefix, k), out);
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        &serde_json::to_value(a).unwrap_or_default(),
        &serde_json::to_value(b).unwrap_or_default(),
        "",
        &mut out,
    );
    out
}

/// Checks that the run directory `root` (if it has a config) was made by `cfg`.
fn check_same_config(cfg: &TrainConfig, root: &Path) -> Result<()> {
    let stored_path = root.join(rundir::CONFIG);
    if let Ok(text) = std::fs::read_to_string(&stored_path) {
        let stored = config::resolve(&stored_path.display().to_string(), &text, &[])?;
        let mut diff = differing_keys(&stored, cfg);
        // Keys that change no result may change on a resume (rundir::neutral_keys).
        let neutral = rundir::neutral_keys(cfg);
        diff.retain(|k| !neutral.contains(&k.as_str()));
        if !diff.is_empty() {
            return Err(bad(format!(
                "--resume: the config differs from {} in {} (resume with the run's own config)",
                stored_path.display(),
                diff.join(", ")
            )));
        }
    }
    Ok(())
}

/// The checkpoint `--resume` continues from, after checking that the run was made by `cfg`.
fn resume_checkpoint(cfg: &TrainConfig, root: &Path) -> Result<Checkpoint> {
    let dir = root.join(rundir::CHECKPOINTS);
    check_same_config(cfg, root)?;
    let ckpt = match checkpoint::latest(&dir) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(bad(format!("--resume: no checkpoint in {}", dir.display()))),
        Err(e) => return Err(bad(format!("--resume: {e}"))),
    };
    if !rundir::hash_matches(cfg, &ckpt.manifest.config_hash) {
        return Err(bad(format!(
            "--resume: {} was written by another config (hash {}) than this one",
            ckpt.path.display(),
            ckpt.manifest.config_hash
        )));
    }
    Ok(ckpt)
}

/// Rewrites the `config.toml` of the run directory `root` that `cfg` continues, when a key that
/// changes no result (rundir::NEUTRAL_KEYS) differs: the file holds the values in use. Rank 0.
pub fn record_config(root: &Path, cfg: &TrainConfig) -> Result<()> {
    let path = root.join(rundir::CONFIG);
    let text = config::to_toml(cfg)?;
    if std::fs::read_to_string(&path).is_ok_and(|old| old != text) {
        metaloop_engine::atomic::write_atomic(&path, text.as_bytes())?;
    }
    Ok(())
}

/// Whether the run directory `root` holds a checkpoint manifest.
fn has_checkpoint(root: &Path) -> bool {
    checkpoint::list(&root.join(rundir::CHECKPOINTS)).is_ok_and(|l| !l.is_empty())
}

/// The cheap part of [`starting_point`], for `launch` to check before mpirun starts: a fresh
/// run's directory must not exist, and a resumed one must hold a checkpoint. The ranks check
/// again, fully.
pub fn check_start(cfg: &TrainConfig, resume: Option<Resume>) -> Result<()> {
    let root = run_root(cfg);
    match resume {
        None if root.exists() => Err(setup_error(EngineError::RunDirExists { path: root })),
        Some(Resume::Latest) if !has_checkpoint(&root) => Err(bad(format!(
            "--resume: no checkpoint in {}",
            root.join(rundir::CHECKPOINTS).display()
        ))),
        Some(Resume::Auto) if root.exists() && !has_checkpoint(&root) => {
            check_same_config(cfg, &root)
        }
        _ => Ok(()),
    }
}

/// Where the run starts, agreed on by every rank. Nothing is written.
pub fn starting_point(
    cfg: &TrainConfig,
    root: &Path,
    resume: Option<Resume>,
    comm: &dyn Communicator,
) -> Result<Start> {
    let latest = match resume {
        Some(Resume::Latest) => true,
        Some(Resume::Auto) => agreed_flag(comm, || has_checkpoint(root))?,
        None => false,
    };
    if latest {
        // Rank 0 reads and checks the checkpoint and sends it: no shared file system needed.
        let ckpt = checkpoint::agreed(comm, || resume_checkpoint(cfg, root))?;
        return Ok(Start::From(ckpt));
    }
    if comm.rank() != 0 || !root.exists() {
        return Ok(Start::Fresh);
    }
    if resume == Some(Resume::Auto) {
        check_same_config(cfg, root)?;
        return Ok(Start::Again);
    }
    Err(setup_error(EngineError::RunDirExists {
        path: root.to_path_buf(),
    }))
}

/// Rank 0's `value`, on every rank.
fn agreed_flag(comm: &dyn Communicator, value: impl FnOnce() -> bool) -> Result<bool> {
    let mut bytes = Vec::new();
    if comm.rank() == 0 {
        bytes.push(u8::from(value()));
    }
    if comm.size() > 1 {
        comm.broadcast_bytes(&mut bytes, 0)?;
    }
    Ok(bytes.first() == Some(&1))
}

/// Removes the model selection of a run started [`Start::Again`]: its validations are redone.
pub fn forget_best(root: &Path) -> Result<()> {
    for name in [rundir::BEST, rundir::BEST_MODEL] {
        match std::fs::remove_file(root.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(e).context(root.join(name).display().to_string()))
            }
            _ => {}
        }
    }
    Ok(())
}
