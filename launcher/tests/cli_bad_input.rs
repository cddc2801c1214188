//! Bad input to `metaloop`: exit code 2, exactly one line on stderr naming the file or key and
//! what was expected, and nothing written (no run directory).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaloop-bad-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

const TINY: &str = "[run]\nname = \"tiny\"\n[model]\nhidden = [4]\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";

/// Runs `metaloop args` in a fresh directory holding `c.toml` (= `config`); asserts exit code 2,
/// one stderr line, and that the directory afterwards holds only `c.toml`. Returns the line.
fn rejects(name: &str, config: &str, args: &[&str]) -> String {
    let dir = scratch(name);
    fs::write(dir.join("c.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_metaloop"))
        .current_dir(&dir)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("c.toml")],
        "files were written"
    );
    fs::remove_dir_all(&dir).unwrap();
    stderr.trim().to_string()
}

fn train(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["train", "--config", "c.toml"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn an_unknown_key_in_the_file_is_named_with_the_keys_allowed() {
    let line = rejects(
        "unknown-file",
        &TINY.replace("iterations = 2\n", "iterations = 2\nlrr = 0.1\n"),
        &train(&[]),
    );
    // The allowed keys in the order the config declares them (the list grows with the config).
    assert!(line.starts_with("metaloop: c.toml: unknown key `outer.lrr` (expected one of optimizer, lr, meta_batch, iterations"), "{line}");
    assert!(line.ends_with(')'), "{line}");
}

#[test]
fn an_unknown_key_in_a_set_is_named() {
    let line = rejects(
        "unknown-set",
        TINY,
        &train(&["--set", "algorithm.inner_lrr=0.1"]),
    );
    assert!(line.starts_with("metaloop: --set: unknown key `algorithm.inner_lrr` (expected one of name, inner_steps,"), "{line}");
}

#[test]
fn an_out_of_range_value_is_named_with_what_is_allowed() {
    let line = rejects("range", TINY, &train(&["--set", "algorithm.inner_lr=-1"]));
    assert_eq!(
        line,
        "metaloop: --set: algorithm.inner_lr: must be a finite number > 0, got -1"
    );
    let line = rejects(
        "range-file",
        &TINY.replace("meta_batch = 2", "meta_batch = 0"),
        &train(&[]),
    );
    assert_eq!(
        line,
        "metaloop: c.toml: outer.meta_batch: must be >= 1, got 0"
    );
}

#[test]
fn a_wrong_type_is_named() {
    let line = rejects(
        "type",
        TINY,
        &train(&["--set", "outer.iterations=\"many\""]),
    );
    assert!(
        line.starts_with("metaloop: --set: outer.iterations: invalid type: string \"many\""),
        "{line}"
    );
}

#[test]
fn a_toml_syntax_error_gives_its_line() {
    let line = rejects("syntax", "[outer\niterations = 2\n", &train(&[]));
    assert!(
        line.starts_with("metaloop: c.toml: line 1, column"),
        "{line}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let line = rejects("no-config", TINY, &["train", "--config", "nope.toml"]);
    assert_eq!(line, "metaloop: nope.toml: no such file");
}

#[test]
fn a_missing_dataset_directory_is_named() {
    let config = "[run]\nname = \"omni\"\n[task]\nkind = \"omniglot\"\nroot = \"no/such/omniglot\"\nways = 5\nshots = 1\n[model]\nbackbone = \"conv4\"\n";
    let line = rejects("dataset", config, &train(&[]));
    assert!(
        line.contains("no/such/omniglot") && line.contains("no such directory"),
        "{line}"
    );
}

#[test]
fn resume_without_a_checkpoint_is_refused() {
    let line = rejects("resume", TINY, &train(&["--resume"]));
    assert_eq!(
        line,
        format!(
            "metaloop: --resume: no checkpoint in {}",
            Path::new("runs/tiny/checkpoints").display()
        )
    );
}

#[test]
fn eval_of_a_missing_checkpoint_is_refused() {
    let line = rejects(
        "eval",
        TINY,
        &[
            "eval",
            "--checkpoint",
            "runs/x/checkpoints/ckpt-000000001.json",
        ],
    );
    assert!(
        line.contains("runs/x/checkpoints/ckpt-000000001.json") && line.contains("no such file"),
        "{line}"
    );
}

#[test]
fn plot_of_a_directory_without_metrics_is_refused() {
    let line = rejects("plot", TINY, &["plot", "."]);
    assert!(
        line.contains("metrics.jsonl") && line.contains("no such file"),
        "{line}"
    );
}

#[test]
fn an_existing_run_directory_is_not_overwritten() {
    let dir = scratch("exists");
    fs::write(dir.join("c.toml"), TINY).unwrap();
    fs::create_dir_all(dir.join("runs/tiny")).unwrap();
    fs::write(dir.join("runs/tiny/mine.txt"), "keep").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_metaloop"))
        .current_dir(&dir)
        .args(train(&[]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("run directory already exists"), "{stderr}");
    let left: Vec<_> = fs::read_dir(dir.join("runs/tiny"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("mine.txt")]);
    fs::remove_dir_all(&dir).unwrap();
}
