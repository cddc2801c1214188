//! MAML++'s per-step BatchNorm (`model.per_step_batchnorm`) with running statistics kept in
//! training (`eval.batchnorm = "running"`, BNRS) under `metaloop launch`: with
//! `run.reproducible` the model file (θ0 with `[inner_steps, C]` BatchNorm rows, and the
//! running statistics under PyTorch's buffer names) has the same bytes on 1 and 2 ranks, and on
//! 2 workers in chunks of one task; `metaloop eval` of that file repeats the training run's
//! meta-test.

mod common;

use common::bounded::OutputWithin;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// 5-way 1-shot Conv-4 (4 filters) on 16×16 folder images, per-step BatchNorm, running
/// statistics, 2 inner steps, meta-batch 4 (2 + 2 on two ranks), 6 iterations, reproducible.
const CONFIG: &str = r#"
[run]
dtype = "f32"
reproducible = true
[task]
kind = "folder"
root = "data/train"
test_root = "data/test"
ways = 5
shots = 1
queries = 2
image_size = 16
[model]
backbone = "conv4"
filters = 4
per_step_batchnorm = true
[algorithm]
inner_steps = 2
inner_lr = 0.4
[outer]
meta_batch = 4
iterations = 6
[eval]
every = 3
val_tasks = 4
test_tasks = 8
batchnorm = "running"
[log]
tensorboard = false
"#;

/// `metaloop launch -n <ranks> -- train` in `dir` with `sets`; the run directory.
fn train(dir: &Path, name: &str, ranks: usize, sets: &[&str]) -> PathBuf {
    let mut cmd = Command::new(common::metaloop_binary());
    cmd.current_dir(dir)
        .args([
            "launch",
            "-n",
            &ranks.to_string(),
            "--",
            "train",
            "--config",
            "c.toml",
        ])
        .args(["--set", &format!("run.name=\"{name}\"")]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let done = cmd.output_within_limit();
    assert!(
        done.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    dir.join("runs").join(name)
}

/// The report's meta-test accuracy and query loss after adaptation.
fn test_after(report: &Path) -> (f64, f64) {
    let v = common::json(report);
    let test = &v["test"];
    (
        test["accuracy_after"]["mean"].as_f64().unwrap(),
        test["loss_after"]["mean"].as_f64().unwrap(),
    )
}

#[test]
fn running_statistics_have_the_same_bytes_on_any_ranks_and_eval_reads_them() {
    let dir = common::scratch("cli", "running-stats");
    fs::write(dir.join("c.toml"), CONFIG).unwrap();
    common::folder_dataset(&dir, 16, 3);
    let one = train(&dir, "one", 1, &[]);
    let bytes = fs::read(one.join("model.safetensors")).unwrap();
    for (name, ranks, sets) in [
        ("two", 2, &[][..]),
        ("chunks", 1, &["run.workers=2", "run.task_chunk=1"][..]),
    ] {
        let other = train(&dir, name, ranks, sets);
        assert!(
            fs::read(other.join("model.safetensors")).unwrap() == bytes,
            "{name}: other model bytes than one rank"
        );
    }
    let tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(one.join("model.safetensors")).unwrap();
    let get = |n: &str| &tensors.iter().find(|(m, _)| m == n).unwrap().1;
    assert_eq!(get("0.1.weight").size(), [2, 4]);
    let var = get("3.1.running_var");
    assert_eq!(var.size(), [2, 4]);
    // Trained away from the default variance 1, and each step's row its own.
    assert!((var - 1.0).abs().max().double_value(&[]) > 1e-3);
    assert!((var.get(0) - var.get(1)).abs().max().double_value(&[]) > 1e-6);
    // `metaloop eval` restores the statistics with θ0 and repeats the report's meta-test.
    let done = Command::new(common::metaloop_binary())
        .current_dir(&dir)
        .args(["eval", "--checkpoint", "runs/one"])
        .output_within_limit();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (accuracy, loss) = test_after(&one.join("report.json"));
    let want = format!("after {:.2}%", 100.0 * accuracy);
    assert!(stdout.contains(&want), "{stdout} vs {want}");
    assert!(
        stdout.contains(&format!("→ {loss:.3}")),
        "{stdout} vs {loss}"
    );
    fs::remove_dir_all(&dir).ok();
}
