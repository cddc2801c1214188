//! The memory planner (`run.memory_budget_gib`) against a real limit: a reduced ResNet-12
//! (second-order MAML, 5 steps, meta-batch 4, f64) in a child process under `ulimit -v`.
//!
//! The limit is measured here rather than assumed (libtorch's libraries alone map gigabytes
//! that it counts): the planned run's own address-space peak plus a little. The unplanned run
//! fails under it; the planned run trains, meta-tests, reports a peak under its budget, and its
//! first meta-gradient equals the unplanned run's to 1e-10.

mod common;

use common::bounded::limit;
use std::fs;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// 5-way 1-shot, 2 queries per class, 32×32 RGB, ResNet-12 of widths 16-32-64-64, 5 inner steps,
/// meta-batch 4, one iteration of SGD with lr 1: θ1 = θ0 − the first meta-gradient.
const RESNET: &str = r#"
[run]
dtype = "f64"
workers = 1
threads = 1
[task]
kind = "folder"
root = "data/train"
test_root = "data/test"
ways = 5
shots = 1
queries = 2
image_size = 32
[model]
backbone = "resnet12"
widths = [16, 32, 64, 64]
[algorithm]
inner_steps = 5
inner_lr = 0.1
[outer]
meta_batch = 4
iterations = 1
optimizer = "sgd"
lr = 1.0
[eval]
every = 0
test_tasks = 2
[log]
tensorboard = false
"#;

/// What one `metaloop train` did: its exit status, stderr, and the largest address space
/// (`VmPeak`) seen while it ran, KiB.
struct Run {
    status: ExitStatus,
    stderr: String,
    vm_peak_kib: u64,
}

/// `metaloop train --config r.toml --set run.name=<name> <sets>` in `dir`, under `ulimit -v`
/// `limit_kib` when given, polling the child's `VmPeak`.
fn train(dir: &Path, name: &str, limit_kib: Option<u64>, sets: &[&str]) -> Run {
    let script = match limit_kib {
        Some(k) => format!("ulimit -v {k}; exec \"$0\" \"$@\""),
        None => "exec \"$0\" \"$@\"".to_string(),
    };
    let err_path = dir.join(format!("{name}.stderr"));
    let mut cmd = Command::new("sh");
    cmd.current_dir(dir)
        .args(["-c", &script])
        .arg(common::metaloop_binary())
        .args(["train", "--config", "r.toml", "--set"])
        .arg(format!("run.name=\"{name}\""));
    for s in sets {
        cmd.args(["--set", s]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let (started, mut vm_peak_kib) = (Instant::now(), 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let peak = fs::read_to_string(&status_file).ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmPeak:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        });
        vm_peak_kib = vm_peak_kib.max(peak.unwrap_or(0));
        if started.elapsed() > limit() {
            let _ = child.kill();
            panic!("{name}: still running after {:?}", limit());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = fs::read_to_string(&err_path).unwrap();
    fs::remove_file(&err_path).unwrap();
    Run {
        status,
        stderr,
        vm_peak_kib,
    }
}

fn report(dir: &Path, name: &str) -> serde_json::Value {
    common::json(&dir.join("runs").join(name).join("report.json"))
}

fn model(dir: &Path, name: &str) -> Vec<(String, tch::Tensor)> {
    let path = dir.join("runs").join(name).join("model.safetensors");
    let mut t = tch::Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn a_budget_under_a_limit_the_unplanned_run_exceeds_trains_with_the_same_meta_gradient() {
    let dir = common::scratch("memory-budget", "resnet12");
    fs::write(dir.join("r.toml"), RESNET).unwrap();
    // 6 and 5 classes of 4 patterned 32×32 images.
    common::folder_dataset(&dir, 32, 4);

    // The unplanned run without a limit: the reference, and its resident peak.
    let whole = train(&dir, "whole", None, &["run.memory_budget_gib=0"]);
    assert!(whole.status.success(), "{}", whole.stderr);
    let whole_peak_mib = report(&dir, "whole")["peak_mib"].as_f64().unwrap();
    assert!(report(&dir, "whole").get("memory_plan").is_none());

    // A budget of 80% of that peak. The limit: the planned run's own address-space peak (measured
    // without a limit) plus 64 MiB. The unplanned run needs more address space than that
    // (measured here: about 200 MiB more; its unlimited peak is about 400 MiB more).
    let budget_mib = 0.8 * whole_peak_mib;
    let budget = format!("run.memory_budget_gib={:.4}", budget_mib / 1024.0);
    let calibration = train(&dir, "calibration", None, &[&budget]);
    assert!(calibration.status.success(), "{}", calibration.stderr);
    let limit_kib = calibration.vm_peak_kib + 64 * 1024;
    assert!(
        limit_kib < whole.vm_peak_kib,
        "the planned run's address space {} KiB is not below the unplanned run's {} KiB",
        calibration.vm_peak_kib,
        whole.vm_peak_kib
    );

    // Unplanned under the limit: it fails, and never gets to its report.
    let over = train(&dir, "over", Some(limit_kib), &["run.memory_budget_gib=0"]);
    assert!(
        !over.status.success(),
        "the unplanned run fit under {limit_kib} KiB"
    );
    assert!(!dir.join("runs/over/report.json").exists());

    // Planned under the same limit: it trains, meta-tests and stays under its budget.
    let planned = train(&dir, "planned", Some(limit_kib), &[&budget]);
    assert!(planned.status.success(), "{}", planned.stderr);
    let plan_line = planned
        .stderr
        .lines()
        .find(|l| l.starts_with("metaloop: memory plan: "))
        .unwrap_or_else(|| panic!("no plan line: {}", planned.stderr));
    let r = report(&dir, "planned");
    let plan = &r["memory_plan"];
    assert_eq!(plan["budget_source"], "run.memory_budget_gib", "{plan}");
    let chunk = plan["task_chunk"].as_u64().unwrap();
    assert!(
        (1..4).contains(&chunk) || plan["memory"] == "recompute",
        "the plan runs the unplanned setting: {plan_line}"
    );
    let peak = r["peak_mib"].as_f64().unwrap();
    assert!(
        peak < budget_mib,
        "peak {peak} MiB over the budget {budget_mib} MiB"
    );
    assert_eq!(r["test"]["tasks"], 2);
    let first = &common::metrics(&dir.join("runs/planned"))[0];
    assert_eq!(&first["memory_plan"], plan);

    // θ1 = θ0 − g with the same θ0: equal models mean equal first meta-gradients.
    for ((name, a), (other, b)) in model(&dir, "whole").iter().zip(&model(&dir, "planned")) {
        assert_eq!(name, other);
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d <= 1e-10, "`{name}` differs by {d:e}: {plan_line}");
    }

    // A budget below what one task needs: exit 2, one line, no run directory.
    let small = train(&dir, "small", None, &["run.memory_budget_gib=0.05"]);
    assert_eq!(small.status.code(), Some(2), "{}", small.stderr);
    assert_eq!(small.stderr.lines().count(), 1, "{}", small.stderr);
    assert!(
        small
            .stderr
            .starts_with("metaloop: run.memory_budget_gib: a budget of 0.05 GiB"),
        "{}",
        small.stderr
    );
    assert!(small.stderr.contains("a budget of at least "));
    assert!(!dir.join("runs/small").exists());
    fs::remove_dir_all(&dir).unwrap();
}
