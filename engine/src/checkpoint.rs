//! Checkpoints of a meta-training run: a safetensors file of named tensors plus a JSON manifest
//! (iteration, sha256 of the tensors file, config hash, sampler state, creation time).
//!
//! Writes are atomic: each file goes to a temporary name, is fsynced, renamed into place, and the
//! directory is fsynced. The manifest is written last, so a checkpoint exists exactly when its
//! manifest does; a crash at any moment leaves the previous checkpoints intact. Reading verifies
//! the sha256, and [`latest`] falls back to the previous checkpoint (with a warning naming the bad
//! file) when the newest is truncated or corrupt.
//!
//! This module knows nothing of models or configs beyond the tensors and hash it is given, and
//! never prints: warnings are returned for the launcher to show.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::{Error, Result};

/// The version of the manifest format written by [`write`].
pub const FORMAT: u32 = 1;

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

/// Fsyncs a directory so that renames inside it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `bytes` to `path` atomically: `<path>.tmp`, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Serialises tensors to safetensors bytes (detached, contiguous, on the CPU).
fn safetensors_bytes(tensors: &[(String, Tensor)], scratch: &Path) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    // tch serialises to a file only; write to a scratch file and read the bytes back.
    Tensor::write_safetensors(&cpu, scratch)?;
    let bytes = fs::read(scratch).map_err(io(scratch))?;
    fs::remove_file(scratch).map_err(io(scratch))?;
    Ok(bytes)
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
    let scratch = dir.join(format!("{}.scratch", tensors_name(iteration)));
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
        let stale_tmp =
            name.starts_with("ckpt-") && (name.ends_with(".tmp") || name.ends_with(".scratch"));
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
/// (`ckpt-*.safetensors`) is `path`: the manifest must parse, the tensors file must have the
/// recorded size and sha256 and parse as safetensors.
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
    let text = fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| bad(&manifest_path, format!("manifest is not valid: {e}")))?;
    if manifest.format != FORMAT {
        return Err(bad(
            &manifest_path,
            format!(
                "manifest format {} (this build reads {FORMAT})",
                manifest.format
            ),
        ));
    }
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let tensors_path = dir.join(&manifest.tensors);
    let bytes = fs::read(&tensors_path).map_err(io(&tensors_path))?;
    if bytes.len() as u64 != manifest.bytes {
        return Err(bad(
            &tensors_path,
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
            &tensors_path,
            format!(
                "sha256 {sha} does not match the manifest's {}",
                manifest.sha256
            ),
        ));
    }
    let tensors = Tensor::read_safetensors(&tensors_path)
        .map_err(|e| bad(&tensors_path, format!("not a safetensors file: {e}")))?;
    Ok(Checkpoint {
        path: manifest_path,
        manifest,
        tensors,
        warnings: Vec::new(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("metaloop-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn tensors(v: f64) -> Vec<(String, Tensor)> {
        vec![
            ("theta".into(), Tensor::from_slice(&[v, v + 1.0, v + 2.0])),
            (
                "hparam.lr".into(),
                Tensor::from_slice(&[0.01f32]).reshape([1]),
            ),
            ("outer.step".into(), Tensor::from_slice(&[7i64])),
        ]
    }

    const SAMPLER: SamplerState = SamplerState {
        seed: 3,
        iteration: 0,
    };

    #[test]
    fn write_then_read_round_trips_every_tensor_and_the_manifest() {
        let dir = scratch_dir("roundtrip");
        let path = write(
            &dir,
            10,
            &tensors(1.5),
            "cfg",
            SamplerState {
                seed: 3,
                iteration: 10,
            },
            3,
        )
        .unwrap();
        assert_eq!(path, dir.join("ckpt-000000010.json"));
        let ckpt = read(&path).unwrap();
        assert_eq!(ckpt.manifest.iteration, 10);
        assert_eq!(ckpt.manifest.config_hash, "cfg");
        assert_eq!(
            ckpt.manifest.sampler,
            SamplerState {
                seed: 3,
                iteration: 10
            }
        );
        assert_eq!(
            ckpt.manifest.sha256,
            sha256_hex(&fs::read(dir.join(tensors_name(10))).unwrap())
        );
        let theta = ckpt.tensor("theta").unwrap();
        assert_eq!(theta.kind(), Kind::Double);
        assert_eq!(Vec::<f64>::try_from(theta).unwrap(), vec![1.5, 2.5, 3.5]);
        assert_eq!(ckpt.tensor("hparam.lr").unwrap().kind(), Kind::Float);
        assert_eq!(
            Vec::<i64>::try_from(ckpt.tensor("outer.step").unwrap()).unwrap(),
            vec![7]
        );
        // No temporary files are left behind.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["ckpt-000000010.json", "ckpt-000000010.safetensors"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_newest_k_checkpoints_are_kept() {
        let dir = scratch_dir("keep");
        for it in [5, 10, 15, 20] {
            write(&dir, it, &tensors(it as f64), "cfg", SAMPLER, 2).unwrap();
        }
        let kept: Vec<u64> = list(&dir).unwrap().into_iter().map(|(it, _)| it).collect();
        assert_eq!(kept, vec![20, 15]);
        assert!(!dir.join(tensors_name(10)).exists());
        assert!(!dir.join(tensors_name(5)).exists());
        assert_eq!(latest(&dir).unwrap().unwrap().manifest.iteration, 20);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_newest_checkpoint_falls_back_to_the_previous_with_a_warning() {
        let dir = scratch_dir("truncated");
        write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
        write(&dir, 2, &tensors(2.0), "cfg", SAMPLER, 3).unwrap();
        let newest = dir.join(tensors_name(2));
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        let ckpt = latest(&dir).unwrap().unwrap();
        assert_eq!(ckpt.manifest.iteration, 1);
        assert_eq!(
            Vec::<f64>::try_from(ckpt.tensor("theta").unwrap()).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        assert_eq!(ckpt.warnings.len(), 1);
        assert!(
            ckpt.warnings[0].contains("ckpt-000000002.safetensors"),
            "{}",
            ckpt.warnings[0]
        );
        assert!(
            ckpt.warnings[0].contains("truncated"),
            "{}",
            ckpt.warnings[0]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_newest_checkpoint_of_the_right_size_is_caught_by_its_sha256() {
        let dir = scratch_dir("corrupt");
        write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
        write(&dir, 2, &tensors(2.0), "cfg", SAMPLER, 3).unwrap();
        let newest = dir.join(tensors_name(2));
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&newest, &bytes).unwrap();
        assert!(read(&dir.join(manifest_name(2)))
            .unwrap_err()
            .to_string()
            .contains("sha256"));
        let ckpt = latest(&dir).unwrap().unwrap();
        assert_eq!(ckpt.manifest.iteration, 1);
        assert!(ckpt.warnings[0].contains("ckpt-000000002.safetensors"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_garbled_manifest_is_skipped_and_named() {
        let dir = scratch_dir("manifest");
        write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
        write(&dir, 2, &tensors(2.0), "cfg", SAMPLER, 3).unwrap();
        fs::write(dir.join(manifest_name(2)), b"{\"format\": 1, \"iterat").unwrap();
        let ckpt = latest(&dir).unwrap().unwrap();
        assert_eq!(ckpt.manifest.iteration, 1);
        assert!(
            ckpt.warnings[0].contains("ckpt-000000002.json"),
            "{}",
            ckpt.warnings[0]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupted_write_leaves_the_previous_checkpoint_as_latest() {
        // A crash after the tensors file was renamed but before the manifest was: an orphan
        // tensors file and a temporary manifest. Neither counts as a checkpoint.
        let dir = scratch_dir("interrupted");
        write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
        fs::write(dir.join(tensors_name(2)), b"partial").unwrap();
        fs::write(dir.join(format!("{}.tmp", manifest_name(2))), b"{").unwrap();
        let ckpt = latest(&dir).unwrap().unwrap();
        assert_eq!(ckpt.manifest.iteration, 1);
        assert!(ckpt.warnings.is_empty());
        // The next write cleans up the leftovers.
        write(&dir, 3, &tensors(3.0), "cfg", SAMPLER, 3).unwrap();
        assert!(!dir.join(format!("{}.tmp", manifest_name(2))).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_checkpoint_is_none_and_only_unusable_ones_is_an_error() {
        let dir = scratch_dir("none");
        assert!(latest(&dir).unwrap().is_none());
        write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
        fs::write(dir.join(tensors_name(1)), b"").unwrap();
        let err = latest(&dir).unwrap_err().to_string();
        assert!(
            err.contains("no usable checkpoint") && err.contains("ckpt-000000001.safetensors"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
