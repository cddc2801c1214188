//! Cluster jobs: plain progress lines in a batch log, `config show`, `train --resume auto`, and
//! the provenance of a run (`run.json`).

mod common;

use common::{metaloop, ok, TINY_SINUSOID as TINY};
use metaloop_engine::config::TrainConfig;
use std::fs;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    common::scratch("cluster", name)
}

#[test]
fn a_batch_log_shows_a_progress_line_every_log_every_iterations() {
    let dir = scratch("batch-log");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    // stderr is a pipe here, as in a Slurm job's output file.
    let out = metaloop(&dir, &["train", "--config", "tiny.toml"]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("iteration "))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, it) in lines.iter().zip([2, 4, 6]) {
        let head = format!("iteration {it}/6: meta-loss ");
        assert!(line.starts_with(&head), "{line}");
        assert!(line.contains(" tasks/s, ETA "), "{line}");
        let eta = line.rsplit("ETA ").next().unwrap();
        assert_eq!(eta.split(':').count(), 3, "{line}");
    }
    assert!(lines[2].ends_with("ETA 0:00:00"), "{}", lines[2]);
}

#[test]
fn config_show_prints_the_resolved_config_with_defaults_and_writes_nothing() {
    let dir = scratch("config-show");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let args = ["config", "show", "--config", "tiny.toml"];
    let out = metaloop(
        &dir,
        &[&args[..], &["--set", "outer.iterations=9"]].concat(),
    );
    let shown: TrainConfig = toml::from_str(&ok(&out)).unwrap();
    let mut expected: TrainConfig = toml::from_str(TINY).unwrap();
    expected.outer.iterations = 9;
    assert_eq!(shown, expected);
    // Defaults the file does not name are shown too.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("keep_checkpoints = 2") && text.contains("inner_lr = "),
        "{text}"
    );
    assert_eq!(common::entries(&dir), ["tiny.toml"]);

    // A bad key: exit 2 and the same one line as `train`, nothing written.
    let bad = ["--set", "outer.lrr=1"];
    let show = metaloop(&dir, &[&args[..], &bad].concat());
    let train = metaloop(
        &dir,
        &[&["train", "--config", "tiny.toml"][..], &bad].concat(),
    );
    assert_eq!(show.status.code(), Some(2));
    assert_eq!(train.status.code(), Some(2));
    let line = String::from_utf8_lossy(&show.stderr);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("unknown key `outer.lrr`"), "{line}");
    assert_eq!(show.stderr, train.stderr);
    assert!(show.stdout.is_empty());
    assert_eq!(common::entries(&dir), ["tiny.toml"]);
}
