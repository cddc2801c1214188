//! engine::checkpoint: written checkpoints read back exactly; truncated, corrupt, garbled or
//! untrusted ones are refused or skipped with a warning naming the file; pruning keeps the
//! newest and removes leftovers of interrupted writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use metaloop_engine::checkpoint::{
    agreed, latest, list, manifest_name, parse_tensors, read, rfc3339_utc, sha256_hex,
    tensors_name, write, Checkpoint, SamplerState,
};
use tch::{Kind, Tensor};

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

/// A fresh `name` directory with checkpoints 1 and 2 (θ = 1, 2, 3 and 2, 3, 4).
fn two_checkpoints(name: &str) -> PathBuf {
    let dir = scratch_dir(name);
    write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
    write(&dir, 2, &tensors(2.0), "cfg", SAMPLER, 3).unwrap();
    dir
}

/// The latest usable checkpoint of `dir`, asserted to be checkpoint 1 with a first warning
/// that contains each of `named`.
fn fell_back_to_the_first(dir: &Path, named: &[&str]) -> Checkpoint {
    let ckpt = latest(dir).unwrap().unwrap();
    assert_eq!(ckpt.manifest.iteration, 1);
    for n in named {
        assert!(ckpt.warnings[0].contains(n), "{}", ckpt.warnings[0]);
    }
    ckpt
}

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
    let dir = two_checkpoints("truncated");
    let newest = dir.join(tensors_name(2));
    let bytes = fs::read(&newest).unwrap();
    fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let ckpt = fell_back_to_the_first(&dir, &["ckpt-000000002.safetensors", "truncated"]);
    assert_eq!(
        Vec::<f64>::try_from(ckpt.tensor("theta").unwrap()).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    assert_eq!(ckpt.warnings.len(), 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_newest_checkpoint_of_the_right_size_is_caught_by_its_sha256() {
    let dir = two_checkpoints("corrupt");
    let newest = dir.join(tensors_name(2));
    let mut bytes = fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&newest, &bytes).unwrap();
    assert!(read(&dir.join(manifest_name(2)))
        .unwrap_err()
        .to_string()
        .contains("sha256"));
    fell_back_to_the_first(&dir, &["ckpt-000000002.safetensors"]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_garbled_manifest_is_skipped_and_named() {
    let dir = two_checkpoints("manifest");
    fs::write(dir.join(manifest_name(2)), b"{\"format\": 1, \"iterat").unwrap();
    fell_back_to_the_first(&dir, &["ckpt-000000002.json"]);
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
fn a_manifest_naming_a_path_or_another_iteration_is_refused() {
    let dir = scratch_dir("manifest-trust");
    let path = write(&dir, 4, &tensors(4.0), "cfg", SAMPLER, 3).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut m = manifest.clone();
        m[key] = value;
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        read(&path).unwrap_err().to_string()
    };
    let outside = dir.join("ckpt-000000004.safetensors");
    for tensors in [
        outside.display().to_string(),
        "../checkpoints/ckpt-000000004.safetensors".into(),
        "sub/ckpt-000000004.safetensors".into(),
        "..".into(),
    ] {
        let err = with("tensors", tensors.clone().into());
        assert!(err.contains("is not a plain file name"), "{tensors}: {err}");
    }
    let err = with("iteration", 5.into());
    assert!(
        err.contains("the manifest says iteration 5, its file name says 4"),
        "{err}"
    );
    fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let copy = dir.join("best.json");
    fs::copy(&path, &copy).unwrap();
    assert!(read(&copy)
        .unwrap_err()
        .to_string()
        .contains("its file name says none"));
    assert_eq!(read(&path).unwrap().manifest.iteration, 4);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_tensors_are_parsed_from_the_bytes_that_were_hashed_in_file_order() {
    let dir = scratch_dir("parsed-bytes");
    let path = write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
    let ckpt = read(&path).unwrap();
    assert_eq!(sha256_hex(&ckpt.bytes), ckpt.manifest.sha256);
    let names: Vec<&str> = ckpt.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3);
    assert_eq!(
        parse_tensors(&ckpt.bytes)
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
        names
    );
    assert!(parse_tensors(&ckpt.bytes[..ckpt.bytes.len() - 1]).is_err());
    // Local: the agreed checkpoint is the chosen one.
    let agreed = agreed(&metaloop_runtime::comm::Local, || read(&path)).unwrap();
    assert_eq!(agreed.manifest, ckpt.manifest);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pruning_removes_leftovers_of_gone_processes_and_of_this_one_only() {
    let dir = scratch_dir("leftovers");
    write(&dir, 1, &tensors(1.0), "cfg", SAMPLER, 3).unwrap();
    let gone = dir.join(".ckpt-000000002.json.tmp-4000000000-0");
    let mine = dir.join(format!(".ckpt-000000002.json.tmp-{}-7", std::process::id()));
    // pid 1 is alive: another process's write in progress.
    let other = dir.join(".ckpt-000000002.json.tmp-1-0");
    for f in [&gone, &mine, &other] {
        fs::write(f, b"{").unwrap();
    }
    write(&dir, 3, &tensors(3.0), "cfg", SAMPLER, 3).unwrap();
    assert!(!gone.exists() && !mine.exists());
    assert!(other.exists());
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
