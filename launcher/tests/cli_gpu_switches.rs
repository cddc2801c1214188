//! The GPU switches on the CPU: `bench --conv-tasks` and `--channels-last`, `bench --precision` ("bf16" runs here, "tf32" is refused naming
//! `run.precision`), `run.comm = "nccl"` refused on a CPU run naming `run.comm`, and the CPU's
//! bench and metrics lines without device memory.

mod common;

use common::{metaloop, metrics, ok, scratch, TINY_SINUSOID};

fn json_line(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("a result line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn bench(precision: &str) -> [&str; 13] {
    [
        "bench",
        "--workload",
        "omniglot",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--meta-batch",
        "2",
        "--steps",
        "1",
        "--precision",
        precision,
    ]
}

#[test]
fn bench_runs_bf16_on_the_cpu_and_refuses_tf32() {
    let dir = scratch("gpu-switches", "bench");
    let mut args = bench("bf16").to_vec();
    args.push("--json");
    let r = json_line(&ok(&metaloop(&dir, &args)));
    assert_eq!(r["precision"], "bf16", "{r}");
    assert!(r["tasks_per_s"].as_f64().unwrap() > 0.0, "{r}");
    // The CPU has no device counters: peak_mib is the resident peak.
    assert!(r["peak_device_mib"].is_null(), "{r}");
    assert!(r["peak_mib"].as_f64().unwrap() > 0.0, "{r}");
    let text = ok(&metaloop(&dir, &bench("fp32")));
    assert!(
        text.contains("fp32 precision") && text.contains("peak RSS"),
        "{text}"
    );
    for (value, says) in [
        ("tf32", "run.precision: \"tf32\" needs a CUDA device"),
        ("half", "--precision: must be one of"),
    ] {
        let out = metaloop(&dir, &bench(value));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_takes_the_convolution_switches() {
    let dir = scratch("gpu-switches", "conv");
    let mut args = bench("default").to_vec();
    args.extend(["--conv-tasks", "gemm", "--channels-last", "--json"]);
    let r = json_line(&ok(&metaloop(&dir, &args)));
    assert_eq!(r["conv_tasks"], "gemm", "{r}");
    assert_eq!(r["channels_last"], true, "{r}");
    assert!(r["tasks_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let mut args = bench("default").to_vec();
    args.extend(["--conv-tasks", "winograd"]);
    let out = metaloop(&dir, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--conv-tasks: must be one of"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cpu_runs_refuse_nccl_and_tf32_and_log_no_device_memory() {
    let dir = scratch("gpu-switches", "train");
    std::fs::write(dir.join("tiny.toml"), TINY_SINUSOID).unwrap();
    for (set, says) in [
        (
            "run.comm=\"nccl\"",
            "run.comm: \"nccl\" needs run.device = \"cuda\"",
        ),
        (
            "run.precision=\"tf32\"",
            "run.precision: \"tf32\" needs a CUDA device",
        ),
        ("run.comm=\"tcp\"", "run.comm"),
    ] {
        let out = metaloop(&dir, &["train", "--config", "tiny.toml", "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {stderr}");
        assert!(stderr.contains(says), "{set}: {stderr}");
        assert!(!dir.join("runs/tiny").exists(), "{set}: nothing is written");
    }
    let args = [
        "train",
        "--config",
        "tiny.toml",
        "--set",
        "run.comm=\"mpi\"",
        "--set",
        "run.precision=\"fp32\"",
    ];
    ok(&metaloop(&dir, &args));
    for line in metrics(&dir.join("runs/tiny")) {
        assert!(line.get("peak_device_mib").is_none(), "{line}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
