//! Checkpoints of a meta-training run: a safetensors file of named tensors plus a JSON manifest
//! (iteration, sha256 of the tensors file, config hash, sampler state, creation time).
//!
//! Writes are atomic: each file goes to a temporary name, is fsynced, renamed into place, and the
//! directory is fsynced. The manifest is written last, so a checkpoint exists exactly when its
//! manifest does; a crash at any moment leaves the previous checkpoints intact. Reading verifies
//! the sha256, and [`latest`] falls back to the previous checkpoint (with a warning naming the bad
//! file) when the newest is truncated or corrupt.
//!
//! A manifest is trusted no further than it must be: its tensors file must be a plain file name
//! in the same directory, its iteration must be the one in its own file name, and the tensors are
//! parsed from the very bytes whose sha256 was checked. [`agreed`] lets rank 0 alone read the
//! checkpoint and send it to the other ranks, so that resuming needs no shared file system.
//!
//! Every file goes through `crate::atomic`, the crate's one atomic write.
//!
//! This module knows nothing of models or configs beyond the tensors and hash it is given, and
//! never prints: warnings are returned for the launcher to show.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use metaloop_runtime::comm::Communicator;
use metaloop_runtime::files::{read_bounded, MAX_TENSOR_FILE, MAX_TEXT_FILE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::atomic::{leftover_tmp, sync_dir, tmp_path, write_atomic};
pub use crate::tensor_file::parse_tensors;
use crate::tensor_file::safetensors_bytes;
use crate::{Error, Result};

/// The version of the checkpoint format written by [`write`]. 2: the meta-parameters under the
/// model file's names (engine::model_file, engine::resume), where 1 had `theta` and `hparam.*`.
pub const FORMAT: u32 = 2;

/// Where the task sampler stands: tasks are a pure function of (seed, iteration, task index), so
/// these two numbers restore it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    /// The next outer iteration to sample (= outer iterations completed).
    pub iteration: u64,
}

/// The JSON manifest written beside each tensors file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Outer iterations completed when the checkpoint was taken.
    pub iteration: u64,
    /// The tensors file's name, in the same directory.
    pub tensors: String,
    /// sha256 of the tensors file, lowercase hex.
    pub sha256: String,
    /// Size of the tensors file in bytes.
    pub bytes: u64,
    /// Hash of the resolved config the run was started with ([`crate::rundir::config_hash`]).
    pub config_hash: String,
    pub sampler: SamplerState,
    /// UTC creation time, RFC 3339 (`2026-11-26T21:41:03Z`).
    pub created: String,
}

/// A checkpoint read back and verified.
#[derive(Debug)]
pub struct Checkpoint {
    /// The manifest's path.
    pub path: PathBuf,
    pub manifest: Manifest,
    /// The tensors, on the CPU, in the file's order.
    pub tensors: Vec<(String, Tensor)>,
    /// Newer checkpoints that were skipped because they are unusable, one line each, naming the
    /// file (filled by [`latest`]; empty from [`read`]).
    pub warnings: Vec<String>,
    /// The tensors file's bytes, as verified against the manifest's sha256.
    pub bytes: Vec<u8>,
}

impl Checkpoint {
    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// The manifest's file name for `iteration`: `ckpt-000000100.json`.
pub fn manifest_name(iteration: u64) -> String {
    format!("ckpt-{iteration:09}.json")
}

/// The tensors file's name for `iteration`: `ckpt-000000100.safetensors`.
pub fn tensors_name(iteration: u64) -> String {
    format!("ckpt-{iteration:09}.safetensors")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Writes the checkpoint of `iteration` into `dir` (created if missing) and keeps only the
/// newest `keep` checkpoints (at least one). Returns the manifest's path.
pub fn write(
    dir: &Path,
    iteration: u64,
    tensors: &[(String, Tensor)],
    config_hash: &str,
    sampler: SamplerState,
    keep: usize,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors_path = dir.join(tensors_name(iteration));
    let manifest_path = dir.join(manifest_name(iteration));
    let scratch = tmp_path(&tensors_path);
    let bytes = safetensors_bytes(tensors, &scratch)?;
    let manifest = Manifest {
        format: FORMAT,
        iteration,
        tensors: tensors_name(iteration),
        sha256: sha256_hex(&bytes),
        bytes: bytes.len() as u64,
        config_hash: config_hash.to_string(),
        sampler,
        created: rfc3339_utc(SystemTime::now()),
    };
    write_atomic(&tensors_path, &bytes)?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| {
        bad(
            &manifest_path,
            format!("cannot serialise the manifest: {e}"),
        )
    })?;
    write_atomic(&manifest_path, &json)?;
    prune(dir, keep.max(1))?;
    Ok(manifest_path)
}

/// The iteration in a checkpoint file name, if it is one of ours.
fn iteration_of(name: &str, ext: &str) -> Option<u64> {
    let digits = name.strip_prefix("ckpt-")?.strip_suffix(ext)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Manifests in `dir`, newest first, as (iteration, path).
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if let Some(it) = name.to_str().and_then(|n| iteration_of(n, ".json")) {
            found.push((it, entry.path()));
        }
    }
    found.sort_by_key(|(it, _)| std::cmp::Reverse(*it));
    Ok(found)
}

/// Removes all but the newest `keep` checkpoints, tensors files without a manifest older than
/// the newest kept one, and leftovers of interrupted writes.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let manifests = list(dir)?;
    let oldest_kept = manifests.get(keep.saturating_sub(1)).map(|(it, _)| *it);
    for (it, path) in manifests.iter().skip(keep) {
        // Manifest first: a crash in between leaves an orphan tensors file, never a manifest
        // that names a missing file.
        fs::remove_file(path).map_err(io(path))?;
        let tensors = dir.join(tensors_name(*it));
        match fs::remove_file(&tensors) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&tensors)(e)),
        }
    }
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale_tmp = leftover_tmp(name, "ckpt-");
        let orphan = iteration_of(name, ".safetensors")
            .is_some_and(|it| oldest_kept.is_some_and(|o| it < o));
        if stale_tmp || orphan {
            let path = entry.path();
            fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    sync_dir(dir)
}

/// Reads and verifies the checkpoint whose manifest (`ckpt-*.json`) or tensors file
/// (`ckpt-*.safetensors`) is `path`: the manifest must parse, name a tensors file in its own
/// directory and the iteration of its own file name; the tensors file must have the recorded size
/// and sha256 and parse as safetensors.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let manifest_path =
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => path.to_path_buf(),
            Some("safetensors") => path.with_extension("json"),
            _ => return Err(bad(
                path,
                "expected a checkpoint manifest `ckpt-<iteration>.json` or its `.safetensors` file",
            )),
        };
    let text = read_input(&manifest_path, MAX_TEXT_FILE)?;
    let manifest = parse_manifest(&manifest_path, &text)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let tensors_path = dir.join(&manifest.tensors);
    let bytes = read_input(&tensors_path, MAX_TENSOR_FILE)?;
    verified(manifest_path, manifest, bytes, &tensors_path)
}

/// Reads a file a checkpoint names: a FIFO, a device or an oversized file is the user's input
/// error ([`Error::Checkpoint`]), not a hang or an exhausted memory.
fn read_input(path: &Path, max: u64) -> Result<Vec<u8>> {
    read_bounded(path, max).map_err(|e| match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::InvalidData => bad(path, e.to_string()),
        _ => io(path)(e),
    })
}

/// Parses a manifest read from `path` and checks what it may name: the format, a plain tensors
/// file name, and the iteration of `path`'s own name (`ckpt-<iteration>.json`).
pub fn parse_manifest(path: &Path, text: &[u8]) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(text)
        .map_err(|e| bad(path, format!("manifest is not valid: {e}")))?;
    if manifest.format != FORMAT {
        return Err(bad(
            path,
            format!(
                "manifest format {} (this build reads {FORMAT})",
                manifest.format
            ),
        ));
    }
    let mut parts = Path::new(&manifest.tensors).components();
    let plain = matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none();
    if !plain {
        return Err(bad(
            path,
            format!(
                "tensors {:?} is not a plain file name beside the manifest",
                manifest.tensors
            ),
        ));
    }
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| iteration_of(n, ".json"));
    if named != Some(manifest.iteration) {
        return Err(bad(
            path,
            format!(
                "the manifest says iteration {}, its file name says {}",
                manifest.iteration,
                named.map_or_else(|| "none".into(), |n| n.to_string())
            ),
        ));
    }
    Ok(manifest)
}

/// The checkpoint of `manifest` whose tensors file (`tensors_path`) holds `bytes`: the size and
/// sha256 are checked, and the tensors are parsed from these same bytes.
fn verified(
    path: PathBuf,
    manifest: Manifest,
    bytes: Vec<u8>,
    tensors_path: &Path,
) -> Result<Checkpoint> {
    if bytes.len() as u64 != manifest.bytes {
        return Err(bad(
            tensors_path,
            format!(
                "{} bytes, the manifest says {} (truncated?)",
                bytes.len(),
                manifest.bytes
            ),
        ));
    }
    let sha = sha256_hex(&bytes);
    if sha != manifest.sha256 {
        return Err(bad(
            tensors_path,
            format!(
                "sha256 {sha} does not match the manifest's {}",
                manifest.sha256
            ),
        ));
    }
    let tensors = parse_tensors(&bytes)
        .map_err(|e| bad(tensors_path, format!("not a safetensors file: {e}")))?;
    Ok(Checkpoint {
        path,
        manifest,
        tensors,
        warnings: Vec::new(),
        bytes,
    })
}

/// The checkpoint every rank resumes from. Rank 0 chooses it with `choose` (reading its own
/// disk) and broadcasts the manifest and the tensors file's bytes; every other rank checks them
/// as [`read`] does. So ranks need no shared file system, and all resume from the same iteration.
/// Collective: every rank calls it. An error of `choose` returns on rank 0 alone (the caller
/// ends the job, see `comm::abort_job`).
pub fn agreed<E: From<Error>>(
    comm: &dyn Communicator,
    choose: impl FnOnce() -> std::result::Result<Checkpoint, E>,
) -> std::result::Result<Checkpoint, E> {
    #[derive(Serialize, Deserialize)]
    struct Head {
        path: PathBuf,
        manifest: Manifest,
        warnings: Vec<String>,
    }
    let root = comm.rank() == 0;
    let mut message = Vec::new();
    let mut chosen = None;
    if root {
        let ckpt = choose()?;
        let head = Head {
            path: ckpt.path.clone(),
            manifest: ckpt.manifest.clone(),
            warnings: ckpt.warnings.clone(),
        };
        let head = serde_json::to_vec(&head)
            .map_err(|e| Error::from(bad(&ckpt.path, format!("cannot serialise: {e}"))))?;
        message.extend_from_slice(&(head.len() as u64).to_le_bytes());
        message.extend_from_slice(&head);
        message.extend_from_slice(&ckpt.bytes);
        chosen = Some(ckpt);
    }
    if comm.size() > 1 {
        comm.broadcast_bytes(&mut message, 0)
            .map_err(|e| E::from(Error::Runtime(e)))?;
    }
    if let Some(ckpt) = chosen {
        return Ok(ckpt);
    }
    let received = Path::new("<checkpoint from rank 0>");
    let split = message
        .get(..8)
        .and_then(|n| usize::try_from(u64::from_le_bytes(n.try_into().ok()?)).ok())
        .filter(|n| n.checked_add(8).is_some_and(|end| end <= message.len()))
        .ok_or_else(|| E::from(bad(received, "a truncated message")))?;
    let head: Head = serde_json::from_slice(&message[8..8 + split])
        .map_err(|e| E::from(bad(received, format!("not a manifest: {e}"))))?;
    let bytes = message.split_off(8 + split);
    let mut ckpt = verified(head.path.clone(), head.manifest, bytes, &head.path)?;
    ckpt.warnings = head.warnings;
    Ok(ckpt)
}

/// The newest usable checkpoint in `dir`. Unusable newer ones (truncated, corrupt, missing their
/// tensors) are skipped, each with a warning naming the file. `Ok(None)` when `dir` holds no
/// checkpoint at all; an error when it holds some and none is usable.
pub fn latest(dir: &Path) -> Result<Option<Checkpoint>> {
    let manifests = list(dir)?;
    if manifests.is_empty() {
        return Ok(None);
    }
    let mut warnings = Vec::new();
    for (_, path) in &manifests {
        match read(path) {
            Ok(mut ckpt) => {
                ckpt.warnings = warnings;
                return Ok(Some(ckpt));
            }
            Err(e) => warnings.push(format!("skipping unusable checkpoint: {e}")),
        }
    }
    Err(Error::NoUsableCheckpoint {
        dir: dir.to_path_buf(),
        reasons: warnings.join("; "),
    })
}

/// `t` as an RFC 3339 UTC time with second precision.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
