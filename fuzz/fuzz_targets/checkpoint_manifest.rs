//! A checkpoint manifest of arbitrary bytes (`ckpt-000000001.json`) beside a valid tensors
//! file: `checkpoint::read` must return the checkpoint or an error, never panic, and never read a
//! file outside the checkpoint's directory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metaloop_engine::checkpoint;
use metaloop_fuzz::{scratch, write};

fuzz_target!(|data: &[u8]| {
    let dir = scratch("manifest");
    let tensors = [("theta".to_string(), tch::Tensor::from_slice(&[1.0f64, 2.0]))];
    if tch::Tensor::write_safetensors(&tensors, dir.join("ckpt-000000001.safetensors")).is_err() {
        return;
    }
    write(&dir.join("ckpt-000000001.json"), data);
    if let Ok(ckpt) = checkpoint::read(&dir.join("ckpt-000000001.json")) {
        assert_eq!(ckpt.manifest.iteration, 1);
        assert!(!ckpt.manifest.tensors.contains('/'));
    }
    let _ = std::fs::remove_dir_all(&dir);
});
