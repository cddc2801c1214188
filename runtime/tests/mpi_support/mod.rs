//! Tests that run themselves as MPI ranks: `under_mpirun` and `run_under_mpirun` (the runtime's,
//! the engine's and the launcher's tests include this module by path).
#![allow(dead_code)]

use std::process::Command;

// One time-limited `Command::output` for every test: the launcher's tests own it.
#[path = "../../../launcher/tests/common/bounded.rs"]
mod bounded;
pub use bounded::OutputWithin;

/// True when this process is one rank of a job started by mpirun (Open MPI) or srun (PMI).
pub fn under_mpirun() -> bool {
    std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMI_SIZE").is_some()
}

/// Runs the test `test_name` of this very test binary as `ranks` MPI ranks under mpirun and
/// asserts that every rank passed. The ranks see `under_mpirun() == true` and run the real body.
pub fn run_under_mpirun(ranks: usize, test_name: &str) {
    run_under_mpirun_with_env(ranks, test_name, &[]);
}

/// [`run_under_mpirun`] with environment variables passed to every rank (`-x NAME=VALUE`).
pub fn run_under_mpirun_with_env(ranks: usize, test_name: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("the test binary's own path");
    let mut cmd = Command::new("mpirun");
    cmd.arg("-n").arg(ranks.to_string());
    // Each rank's stdout in its own file (`<dir>/1/rank.N/stdout`): on the shared terminal the
    // ranks' writes interleave mid-line, which once hid a rank's result line.
    let dir = std::env::temp_dir().join(format!(
        "metaloop-mpirun-{}-{}",
        std::process::id(),
        test_name.replace(':', "_")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
        "--output-filename",
    ]);
    cmd.arg(&dir);
    for (k, v) in env {
        cmd.arg("-x").arg(format!("{k}={v}"));
    }
    cmd.arg(&exe).args([
        "--exact",
        test_name,
        "--nocapture",
        "--test-threads=1",
        "--color=never",
    ]);
    let out = cmd.output_within_limit();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mpirun -n {ranks} {test_name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let mut outputs = Vec::new();
    collect_stdout_files(&dir, &mut outputs);
    let _ = std::fs::remove_dir_all(&dir);
    let passed = outputs
        .iter()
        .filter(|o| o.contains("test result: ok. 1 passed"))
        .count();
    assert_eq!(
        passed,
        ranks,
        "expected {ranks} ranks to pass {test_name}:\n{}\n{stdout}\n{stderr}",
        outputs.join("\n---\n")
    );
}

/// The contents of every file named `stdout` under `dir` (mpirun's --output-filename tree).
fn collect_stdout_files(dir: &std::path::Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_stdout_files(&path, out);
        } else if path.file_name().is_some_and(|n| n == "stdout") {
            out.push(std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}
