//! The GPU check's dry run: xtask/gpu/check.sh, laid out as `cargo xtask gpu-kit` packs it, runs
//! every step on the CPU with tiny sizes (this `metaloop` binary, this test binary as the kit's
//! test binary, the set-up venv's Python for the peers), so that the script cannot rot between
//! GPU runs. Its report must pass: "tf32" refused as expected on the CPU, everything else run.

mod common;

use common::bounded::OutputWithin;
use common::{json, scratch};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The set-up venv's Python (it has torch, higher and TorchOpt): `LIBTORCH` is its torch package.
fn venv_python() -> PathBuf {
    let torch = std::env::var("LIBTORCH")
        .unwrap_or_else(|_| repo().join(".libtorch").display().to_string());
    let torch = std::fs::canonicalize(&torch).unwrap_or_else(|e| panic!("LIBTORCH {torch}: {e}"));
    // <venv>/lib/python3.X/site-packages/torch -> <venv>/bin/python
    torch.ancestors().nth(4).unwrap().join("bin/python")
}

/// A kit as gpu-kit lays it out, with links instead of copies.
fn kit(dir: &Path) -> PathBuf {
    let kit = dir.join("kit");
    let link = |from: &Path, to: &str| std::os::unix::fs::symlink(from, kit.join(to)).unwrap();
    std::fs::create_dir_all(kit.join("peers")).unwrap();
    std::fs::create_dir_all(kit.join("tests")).unwrap();
    for f in ["check.sh", "report.py", "gen_omniglot.py"] {
        link(&repo().join("xtask/gpu").join(f), f);
    }
    link(&repo().join("benches/peers/peers.py"), "peers/peers.py");
    link(&repo().join("configs"), "configs");
    link(Path::new(env!("CARGO_BIN_EXE_metaloop")), "metaloop");
    link(&std::env::current_exe().unwrap(), "tests/gpu_check_dry_run");
    kit
}

#[test]
fn the_gpu_check_runs_on_the_cpu_and_writes_its_report() {
    let dir = scratch("gpu-check", "dry");
    let kit = kit(&dir);
    let out = dir.join("out");
    let run = Command::new("bash")
        .arg(kit.join("check.sh"))
        // 400 s: about 70 s on an idle machine, several times that beside the rest of the suite
        // on 2 cores (the budget skips the steps past it, which fails the test).
        .args(["--dry-run", "--budget", "400", "--out"])
        .arg(&out)
        .arg("--python")
        .arg(venv_python())
        .env("OMP_NUM_THREADS", "1")
        .output_within_limit();
    let log = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "check.sh --dry-run failed:\n{log}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for f in [
        "gpu-report.md",
        "gpu-report.json",
        "check.log",
        "logs.tar.gz",
    ] {
        assert!(out.join(f).is_file(), "{f} missing:\n{log}");
    }
    let report = json(&out.join("gpu-report.json"));
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["ok"], true, "{log}");
    let steps = report["steps"].as_array().unwrap();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}:\n{log}"))
    };
    assert!(step("test-gpu_check_dry_run")["listed"].as_u64().unwrap() >= 1);
    // The dry run's workloads (ResNet-12 runs on the GPU only) and its peers (on omniglot).
    for w in ["omniglot20", "omniglot", "sinusoid"] {
        let r = &step(&format!("bench-{w}-bf16"))["result"];
        assert_eq!(r["precision"], "bf16", "{r}");
        assert!(r["tasks_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let fused = &step(&format!("bench-{w}-default+fused"))["result"];
        assert_eq!(fused["fused"], true, "{fused}");
        assert!(step(&format!("bench-{w}-tf32"))["status"]
            .as_str()
            .unwrap()
            .starts_with("refused"));
    }
    // The convolution switches (on the GPU: every convolutional workload).
    let gemm = &step("bench-omniglot-gemm")["result"];
    assert_eq!(gemm["conv_tasks"], "gemm", "{gemm}");
    let nhwc = &step("bench-omniglot-nhwc")["result"];
    assert_eq!(nhwc["channels_last"], true, "{nhwc}");
    // The memory goal's step, planned (on the GPU: ResNet-12 into 70 GiB).
    let planned = &step("bench-sinusoid-budget1")["result"];
    assert_eq!(planned["plan"]["budget_gib"], 1.0, "{planned}");
    assert_eq!(planned["plan"]["budget_source"], "run.memory_budget_gib");
    for peer in ["torchfunc", "higher", "torchopt"] {
        let r = &step(&format!("peer-{peer}-omniglot"))["result"];
        assert!(r["tasks_per_s"].as_f64().unwrap() > 0.0, "{peer}: {r}");
    }
    let train = &report["training"];
    let acc = train["accuracy_after"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{train}");
    assert!(report["mpi"]["ok"].as_bool().unwrap(), "{}", report["mpi"]);
    let md = std::fs::read_to_string(out.join("gpu-report.md")).unwrap();
    assert!(md.contains("| omniglot20 | bf16 |"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}
