//! `cargo xtask fuzz [SECONDS] [TARGET...]`: runs every fuzz target of `fuzz/` (cargo-fuzz,
//! libFuzzer) for SECONDS each (default 60), and fails when one of them finds a crash.
//!
//! cargo-fuzz is installed from crates.io when missing. Its builds need nightly flags; stable
//! rustc accepts them with `RUSTC_BOOTSTRAP=1`, which this command sets for cargo-fuzz alone. No
//! sanitizer (`-s none`): the code under test is safe Rust, and what is looked for is panics
//! (with debug assertions on, so overflows count). New inputs go to `fuzz/target/corpus/<target>`
//! (not committed); the committed seeds in `fuzz/corpus/<target>` are only read. A crash leaves
//! its input in `fuzz/artifacts/<target>/` and the command prints how to replay it.

use std::process::{Command, ExitCode};

/// The targets, as in fuzz/Cargo.toml.
const TARGETS: [&str; 7] = [
    "config",
    "miniimagenet_csv",
    "folder_index",
    "zip_listing",
    "checkpoint_manifest",
    "safetensors_header",
    "pickle",
];

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut seconds = 60u64;
    let mut targets = Vec::new();
    for a in args {
        if let Ok(s) = a.parse::<u64>() {
            seconds = s;
        } else if TARGETS.contains(&a.as_str()) {
            targets.push(a.as_str());
        } else {
            anyhow::bail!(
                "fuzz: `{a}` is neither a number of seconds nor a target ({})",
                TARGETS.join(", ")
            );
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    crate::setup::run(false)?;
    let has_cargo_fuzz = crate::cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        println!("xtask: fuzz: installing cargo-fuzz (cargo install cargo-fuzz)");
        if crate::run_status(crate::cargo().args(["install", "cargo-fuzz"]))? != ExitCode::SUCCESS {
            anyhow::bail!("fuzz: `cargo install cargo-fuzz` failed; install it and rerun");
        }
    }
    let root = crate::setup::repo_root();
    let mut failed = Vec::new();
    for target in &targets {
        let fresh = root.join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&fresh)?;
        println!("xtask: fuzz: {target} for {seconds} s");
        let mut cmd = fuzz_command();
        cmd.args(["run", "--sanitizer", "none", target])
            .arg(&fresh)
            .arg(root.join("fuzz/corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=4096",
                "-print_final_stats=1",
            ]);
        if crate::run_status(&mut cmd)? != ExitCode::SUCCESS {
            failed.push(*target);
        }
    }
    if failed.is_empty() {
        println!(
            "xtask: fuzz: {} target(s), {seconds} s each, no crash",
            targets.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "xtask: fuzz: crashed: {} (inputs in fuzz/artifacts/<target>/; replay one with \
             `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <file>`)",
            failed.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `cargo fuzz` with what it needs on stable Rust and on few cores.
fn fuzz_command() -> Command {
    let mut cmd = crate::cargo();
    cmd.arg("fuzz");
    cmd.env("RUSTC_BOOTSTRAP", "1");
    // The loaders decode with rayon and libtorch may start a thread team: one thread each.
    cmd.env("OMP_NUM_THREADS", "1");
    cmd.env("RAYON_NUM_THREADS", "1");
    cmd
}
