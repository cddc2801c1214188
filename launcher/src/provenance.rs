//! What produced a run: `run.json` in the run directory, and the same fields in `report.json`.
//! The command line, metaloop's version and git commit, libtorch's version, each rank's host and
//! device, the start and end times of this invocation, and the restarts of `launch
//! --max-restarts` (launcher::restart).

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;
use metaloop_engine::atomic::write_atomic;
use metaloop_engine::config::TrainConfig;
use metaloop_runtime::comm::Communicator;
use serde::{Deserialize, Serialize};

use crate::restart::Restart;

/// `run.json`, in the run directory.
pub const RUN_JSON: &str = "run.json";

/// One rank's place: its host and its device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Place {
    pub rank: usize,
    pub host: String,
    pub device: String,
}

/// The provenance of one invocation of `train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    pub command_line: Vec<String>,
    pub metaloop_version: String,
    /// `git rev-parse HEAD` when the binary was built ("unknown" outside a git clone).
    pub git_commit: String,
    /// From `torch/version.py` beside the libtorch the binary was built against.
    pub libtorch_version: String,
    pub ranks: usize,
    pub places: Vec<Place>,
    /// UTC, RFC 3339.
    pub started: String,
    /// UTC, RFC 3339; absent while the run goes on or when it was stopped.
    pub ended: Option<String>,
    /// Why `launch --max-restarts` started this invocation, when it restarted a failed job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// Every restart of the run so far, oldest first: those of the earlier invocations, then
    /// this one's (filled in when `run.json` is written).
    #[serde(default)]
    pub restarts: Vec<serde_json::Value>,
    /// The run's earlier invocations, once read from `run.json`.
    #[serde(skip)]
    earlier: Option<Vec<serde_json::Value>>,
}

/// This process's host name ("unknown" when it cannot be read).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Every rank's place, gathered over `comm` (one broadcast per rank). Collective.
fn places(cfg: &TrainConfig, comm: &dyn Communicator) -> Result<Vec<Place>> {
    let device = metaloop_engine::setup::device(cfg.run.device)
        .map_or_else(|_| "unknown".into(), |d| format!("{d:?}"));
    let mine = serde_json::to_vec(&Place {
        rank: comm.rank(),
        host: host(),
        device,
    })?;
    let mut out = Vec::with_capacity(comm.size());
    for r in 0..comm.size() {
        let mut bytes = if r == comm.rank() {
            mine.clone()
        } else {
            Vec::new()
        };
        if comm.size() > 1 {
            comm.broadcast_bytes(&mut bytes, r)?;
        }
        out.push(serde_json::from_slice(&bytes)?);
    }
    Ok(out)
}

impl Provenance {
    /// The provenance of this invocation, started now. Collective.
    pub fn gather(cfg: &TrainConfig, comm: &dyn Communicator) -> Result<Provenance> {
        // Rank 0 alone writes it; a bad value ends the job from rank 0, once.
        let restart = match comm.rank() {
            0 => Restart::from_env()?,
            _ => None,
        };
        Ok(Provenance {
            command_line: std::env::args().collect(),
            metaloop_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("METALOOP_GIT_COMMIT").into(),
            libtorch_version: env!("METALOOP_LIBTORCH_VERSION").into(),
            ranks: comm.size(),
            places: places(cfg, comm)?,
            started: utc_now(),
            ended: None,
            restart,
            restarts: Vec::new(),
            earlier: None,
        })
    }

    /// Marks the invocation finished now.
    pub fn end(&mut self) {
        self.ended = Some(utc_now());
    }

    /// Writes `run.json` into `root` atomically: this invocation, the earlier ones of the run
    /// (resumes) under `earlier`, read from the file on this invocation's first write, and
    /// every restart under `restarts`.
    pub fn write(&mut self, root: &Path) -> Result<()> {
        let path = root.join(RUN_JSON);
        let earlier = self
            .earlier
            .get_or_insert_with(|| earlier_invocations(&path))
            .clone();
        self.restarts = earlier
            .iter()
            .filter_map(|e| e.get("restart").filter(|r| !r.is_null()).cloned())
            .collect();
        if let Some(r) = &self.restart {
            self.restarts.push(serde_json::to_value(r)?);
        }
        let mut value = serde_json::to_value(&*self)?;
        value["earlier"] = serde_json::Value::Array(earlier);
        write_atomic(&path, &serde_json::to_vec_pretty(&value)?)?;
        Ok(())
    }
}

/// The invocations an existing `run.json` records: its `earlier` ones, then its own.
fn earlier_invocations(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(mut old)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    // Derived from the invocations themselves.
    old.remove("restarts");
    let mut earlier = match old.remove("earlier") {
        Some(serde_json::Value::Array(a)) => a,
        _ => Vec::new(),
    };
    earlier.push(serde_json::Value::Object(old));
    earlier
}

/// Now, UTC, as RFC 3339 to the second (the checkpoints' own format).
fn utc_now() -> String {
    metaloop_engine::checkpoint::rfc3339_utc(SystemTime::now())
}

#[cfg(test)]
mod tests {
    fn rfc3339(secs: u64) -> String {
        metaloop_engine::checkpoint::rfc3339_utc(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1709251199`: the last second of February in a leap year.
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
    }
}
