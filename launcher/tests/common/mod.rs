//! Helpers shared by the launcher's CLI tests: scratch directories, the `metaloop` binary run with
//! a time limit, a run's files read back, and small images for datasets.
#![allow(dead_code)]

pub mod bounded;
pub mod netns;

// Tests that run themselves as MPI ranks share the runtime's helper.
#[path = "../../../runtime/tests/mpi_support/mod.rs"]
mod mpi_support;
// Only some test files run as MPI ranks; the others leave it unused.
#[allow(unused_imports)]
pub use mpi_support::under_mpirun;

use bounded::OutputWithin;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `metaloop` binary cargo built for this package's tests: the one way these tests find it.
pub fn metaloop_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_metaloop"))
}

/// A fresh, empty `metaloop-<tag>-<name>-<pid>` under the temporary directory.
pub fn scratch(tag: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaloop-{tag}-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny second-order MAML run on sinusoids, `runs/tiny`: 6 iterations of 4 tasks, f64 so that a
/// resume can be compared bit for bit.
pub const TINY_SINUSOID: &str = r#"
[run]
name = "tiny"
dtype = "f64"
[task]
kind = "sinusoid"
shots = 5
queries = 5
[model]
hidden = [8, 8]
[outer]
meta_batch = 4
iterations = 6
[eval]
every = 3
val_tasks = 3
test_tasks = 4
[log]
every = 2
checkpoint_every = 3
keep_checkpoints = 2
"#;

/// Runs the binary in `cwd` with one libtorch thread (tests run side by side; small ops gain
/// nothing from a thread team), within the time limit of [`bounded::limit`].
pub fn metaloop(cwd: &Path, args: &[&str]) -> Output {
    Command::new(metaloop_binary())
        .current_dir(cwd)
        .args(args)
        .args(["--threads", "1"])
        .output_within_limit()
}

/// Asserts that the command succeeded; returns its stdout.
pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// The lines of the run's `metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A `width`×`height` grayscale PNG of one `value` at `path`, its folders created.
pub fn gray_png(path: &Path, width: u32, height: u32, value: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(width, height, image::Luma([value]))
        .save(path)
        .unwrap();
}

/// A folder dataset under `dir`: `data/{train,test}/c<k>/<i>.png`, 6 and 5 classes of
/// `per_class` patterned `side`×`side` RGB images.
pub fn folder_dataset(dir: &Path, side: u32, per_class: u32) {
    for (split, classes) in [("train", 6u32), ("test", 5)] {
        for c in 0..classes {
            for i in 0..per_class {
                let path = dir.join(format!("data/{split}/c{c}/{i}.png"));
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                image::RgbImage::from_fn(side, side, |x, y| {
                    let v = |k: u32| ((x * (c + k) + y * (i + 2 * k) + 37 * c) % 256) as u8;
                    image::Rgb([v(1), v(2), v(3)])
                })
                .save(path)
                .unwrap();
            }
        }
    }
}

/// The names of the entries of `dir`, in the order the file system lists them.
pub fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The lines of `stderr` that metaloop itself printed (not mpirun's notices).
pub fn metaloop_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("metaloop:"))
        .collect()
}
