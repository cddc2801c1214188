//! `metaloop bench`: one JSON line per workload with the overrides applied, a workload that runs
//! out of memory under `ulimit -v` reported as a result (`"oom": true`), and bad flags refused.

mod common;

use common::bounded::OutputWithin;
use common::{metaloop, ok, scratch};
use std::process::Command;

fn json_line(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("a result line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn bench_prints_one_json_line_with_the_overrides() {
    let dir = scratch("bench", "json");
    let args = [
        "bench",
        "--workload",
        "sinusoid",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--meta-batch",
        "3",
        "--steps",
        "2",
        "--memory",
        "recompute",
        "--task-chunk",
        "2",
        "--json",
    ];
    let r = json_line(&ok(&metaloop(&dir, &args)));
    assert_eq!(r["peer"], "metaloop");
    assert_eq!(r["workload"], "sinusoid");
    assert_eq!(r["meta_batch"], 3);
    assert_eq!(r["steps"], 2);
    assert_eq!(r["memory"], "recompute");
    assert_eq!(r["task_chunk"], 2);
    assert!(r["tasks_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["peak_mib"].as_f64().unwrap() > 0.0, "{r}");
    for (flag, value, says) in [
        (
            "--memory",
            "fast",
            "--memory: must be one of \"full\", \"recompute\", got \"fast\"",
        ),
        ("--meta-batch", "0", "--meta-batch: must be >= 1, got 0"),
        ("--workload", "resnet50", "unknown workload \"resnet50\""),
    ] {
        let out = metaloop(&dir, &["bench", flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The 20-step ResNet-12 workload with full tracking needs far more than 6 GiB of address space
/// (about 1.5 GiB per step and task): the refused allocation ends the benchmark with an
/// out-of-memory result and exit code 0, as peers.py reports its own.
#[test]
fn a_workload_over_the_memory_limit_is_reported_as_out_of_memory() {
    let dir = scratch("bench", "oom");
    let out = Command::new("sh")
        .current_dir(&dir)
        .arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", 6u64 << 20))
        .arg(env!("CARGO_BIN_EXE_metaloop"))
        .args([
            "--threads",
            "1",
            "bench",
            "--workload",
            "miniimagenet-resnet12-long",
        ])
        .args(["--iters", "1", "--warmup", "0", "--json"])
        .output_within_limit();
    let r = json_line(&ok(&out));
    assert_eq!(r["oom"], true, "{r}");
    assert_eq!(r["workload"], "miniimagenet-resnet12-long");
    assert_eq!(r["steps"], 20);
    assert!(r["peak_mib"].as_f64().unwrap() < 6.0 * 1024.0, "{r}");
    std::fs::remove_dir_all(&dir).unwrap();
}
