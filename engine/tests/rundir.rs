//! The run directory (engine::rundir): creation in one rename, refusals, locks, metrics.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use metaloop_engine::config::TrainConfig;
use metaloop_engine::rundir::*;
use metaloop_engine::{Error, Result};
use serde::Serialize;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaloop-rundir-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[derive(Serialize)]
struct Line {
    iteration: u64,
    meta_loss: f64,
}

#[test]
fn an_out_dir_that_is_a_file_is_refused_naming_it() {
    let out = scratch("outfile");
    fs::create_dir_all(&out).unwrap();
    let file = out.join("runs");
    fs::write(&file, b"not a folder").unwrap();
    let err = RunDir::create(&file.join("run-a"), "").unwrap_err();
    assert!(err.is_user_input(), "{err}");
    assert!(
        matches!(&err, Error::OutDirNotDirectory { path } if *path == file),
        "{err}"
    );
    assert!(err.to_string().contains("run.out_dir"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"not a folder");
    let _ = fs::remove_dir_all(&out);
}

#[test]
fn racing_creators_get_one_directory_and_run_dir_exists() {
    let out = scratch("race");
    for round in 0..20 {
        let root = out.join(format!("run-{round}"));
        let results: Vec<Result<RunDir>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| RunDir::create(&root, "x = 1\n")))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, Error::RunDirExists { .. }),
                    "round {round}: {e}"
                );
            }
        }
    }
    // No staging directory is left behind.
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = fs::remove_dir_all(&out);
}

#[test]
fn create_writes_the_config_and_refuses_an_existing_directory() {
    let out = scratch("create");
    let root = out.join("run-a");
    let run = RunDir::create(&root, "[run]\nname = \"run-a\"\n").unwrap();
    assert_eq!(run.config_text().unwrap(), "[run]\nname = \"run-a\"\n");
    assert!(run.checkpoints_dir().is_dir());
    assert_eq!(fs::read_to_string(run.metrics_path()).unwrap(), "");
    assert!(matches!(
        RunDir::create(&root, ""),
        Err(Error::RunDirExists { .. })
    ));
    // Only the run directory is left: no staging directory.
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("run-a")]);
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn metrics_lines_append_and_truncate_to_a_checkpoint() {
    let out = scratch("metrics");
    let root = out.join("r");
    let mut run = RunDir::create(&root, "").unwrap();
    for it in [10, 20, 30] {
        run.log(&Line {
            iteration: it,
            meta_loss: it as f64 / 10.0,
        })
        .unwrap();
    }
    // A torn last line, as a kill in the middle of a write leaves.
    fs::OpenOptions::new()
        .append(true)
        .open(run.metrics_path())
        .unwrap()
        .write_all(b"{\"iterat")
        .unwrap();
    run.truncate_metrics_after(20).unwrap();
    run.log(&Line {
        iteration: 30,
        meta_loss: 9.0,
    })
    .unwrap();
    let text = fs::read_to_string(run.metrics_path()).unwrap();
    assert_eq!(
        text,
        "{\"iteration\":10,\"meta_loss\":1.0}\n{\"iteration\":20,\"meta_loss\":2.0}\n{\"iteration\":30,\"meta_loss\":9.0}\n"
    );
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_second_open_of_a_run_directory_in_use_is_refused_with_the_holders_pid() {
    let out = scratch("lock");
    let root = out.join("r");
    let first = RunDir::create(&root, "").unwrap();
    let err = RunDir::open(&root).unwrap_err();
    assert!(err.is_user_input());
    let text = err.to_string();
    assert!(
        text.contains("in use by pid") && text.contains(&std::process::id().to_string()),
        "{text}"
    );
    assert!(RunLock::acquire(&root).is_err());
    drop(first);
    let again = RunDir::open(&root).unwrap();
    drop(again);
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn open_needs_a_config() {
    let out = scratch("open");
    fs::create_dir_all(&out).unwrap();
    let err = RunDir::open(&out).unwrap_err().to_string();
    assert!(err.contains("no config.toml"), "{err}");
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn config_hash_follows_values() {
    let a = TrainConfig::default();
    let mut b = TrainConfig::default();
    assert_eq!(config_hash(&a), config_hash(&b));
    b.outer.lr = 2e-3;
    assert_ne!(config_hash(&a), config_hash(&b));
    assert_eq!(config_hash(&a).len(), 64);
}
