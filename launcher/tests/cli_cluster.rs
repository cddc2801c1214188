//! Cluster jobs: plain progress lines in a batch log, `config show`, `train --resume auto`, and
//! the provenance of a run (`run.json`).

mod common;

use common::{metaloop, ok, TINY_SINUSOID as TINY};
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
